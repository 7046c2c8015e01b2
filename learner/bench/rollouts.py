"""art-bench section e: rollout tokens per second with the image vs text-only, same prompts
(the HF engine; and vLLM's CPU build when .venv-vllm exists, with its log-prob mismatch
against the learner)."""

from __future__ import annotations

import logging
import os
import time

from learner.bench.common import BenchContext, png
from learner.driver.cli import compose_config
from learner.driver.cluster import create_workers, start_ray
from learner.learner import Learner, LearnerSettings
from learner.models import resolve_model_path
from shared.artifact import png_to_pil
from shared.engines import VLLM_VENV_PYTHON
from shared.images import seed_image
from shared.messages import RolloutRequest, SamplingConfig, WorkerSettings
from shared.prompts import render_prompt

LETTER = "e"
TITLE = "rollout throughput with and without the image"
logger = logging.getLogger("art.bench")


def bench_rollouts(model: str, size: int, prompts: int, group: int, tokens: int) -> dict:
    # start-up time: a heavy library, loaded when this runs
    from hydra.utils import get_class

    # The worker class from its import path, as the driver creates it (learner/ never
    # imports rollout_worker/); its engine is the HF engine the embedded default runs.
    worker_cls = get_class(compose_config().rollout.worker_cls)
    engine = worker_cls(WorkerSettings("hf", resolve_model_path(model))).engine
    image = png_to_pil(png(seed_image("noise", size, size)))
    out = {"model": model}
    for with_image in (True, False):
        requests = [
            RolloutRequest(
                i,
                render_prompt(
                    engine.processor, f"Question {i}: what is {i} + 2?", with_image=with_image
                ),
                group,
                with_image=with_image,
            )
            for i in range(prompts)
        ]
        sampling = SamplingConfig(max_new_tokens=tokens, seed=0)
        engine.generate(requests[:1], image, 0, sampling)  # warm up
        start = time.perf_counter()
        groups = engine.generate(requests, image, 0, sampling)
        elapsed = time.perf_counter() - start
        n = sum(len(c.token_ids) for g in groups for c in g)
        out["image" if with_image else "text_only"] = {"tokens": n, "tokens_per_s": n / elapsed}

    return out


def bench_vllm_rollouts(model: str, size: int, prompts: int, group: int, tokens: int) -> dict:
    """Section e with the production engine: vLLM's CPU build in a rollout worker running in
    .venv-vllm (as `rollout=vllm` runs it), image vs text-only on the same prompts, and how far
    its bf16 log-probs are from the float32 learner's on the image completions."""
    # start-up time: a heavy library, loaded when this runs
    import numpy as np

    cfg = compose_config(
        "rollout=vllm", "rollout.num_workers=1", "rollout.num_gpus_per_worker=0",
        # every core, as the HF engine has in this process (Ray sets OMP_NUM_THREADS from it)
        f"rollout.num_cpus_per_worker={os.cpu_count()}",
        f"rollout.max_model_len={max(1024, size * size // 256 + tokens + 128)}",
    )  # fmt: skip
    path = resolve_model_path(model)
    ray, owns = start_ray(cfg)
    start = time.perf_counter()
    (worker,) = create_workers(cfg, ray, path)
    ray.get(worker.__ray_ready__.remote())
    out = {"model": model, "engine_start_s": time.perf_counter() - start}
    try:
        learner = Learner(LearnerSettings(path, model, size, size, init="noise"))
        update = learner.image_update()
        ray.get(worker.set_image.remote(update.version, update.png))
        processor = learner.processor
        for with_image in (True, False):
            requests = [
                RolloutRequest(
                    i,
                    render_prompt(
                        processor, f"Question {i}: what is {i} + 2?", with_image=with_image
                    ),
                    group,
                    with_image=with_image,
                )
                for i in range(prompts)
            ]
            sampling = SamplingConfig(max_new_tokens=tokens, seed=0)
            ray.get(worker.generate.remote(requests[:1], sampling))  # warm up
            start = time.perf_counter()
            groups = ray.get(worker.generate.remote(requests, sampling))
            elapsed = time.perf_counter() - start
            n = sum(len(c.token_ids) for g in groups for c in g)
            out["image" if with_image else "text_only"] = {"tokens": n, "tokens_per_s": n / elapsed}
            if with_image:
                completions = [c for g in groups for c in g]
                recomputed = learner.compute_logprobs(completions)
                diffs = np.concatenate(
                    [
                        np.abs(np.subtract(c.logprobs, lp))
                        for c, lp in zip(completions, recomputed, strict=True)
                    ]
                )
                out["mismatch"] = {
                    "tokens": int(diffs.size),
                    "mean_abs": float(diffs.mean()),
                    "max_abs": float(diffs.max()),
                }
    finally:
        ray.kill(worker)
        if owns:
            ray.shutdown()
    return out


def run(ctx: BenchContext) -> dict:
    out = {"rollouts": [bench_rollouts("tiny", 64, 8, 4, 16)]}
    if not ctx.quick:
        out["rollouts"].append(bench_rollouts("qwen3_5_0_8b_random", 256, 2, 2, 16))

    if os.environ.get("ART_VLLM_PYTHON") or VLLM_VENV_PYTHON.exists():
        logger.info("e. vLLM's CPU build (an engine start per model: about a minute)")
        out["vllm_rollouts"] = [bench_vllm_rollouts("tiny", 64, 8, 4, 16)]
        if not ctx.quick:
            out["vllm_rollouts"].append(bench_vllm_rollouts("qwen3_5_0_8b_random", 256, 2, 2, 16))
    else:
        logger.info("e. no .venv-vllm (make install-vllm): the vLLM figures are left out")
    return out


def format_lines(report: dict) -> list[str]:
    lines = []
    if report.get("rollouts"):
        lines += ["", "e. rollout tokens per second, same prompts (HF engine, CPU)"]
        for r in report["rollouts"]:
            lines.append(
                f"{r['model']:<22} image {r['image']['tokens_per_s']:>8.1f} tok/s   text-only "
                f"{r['text_only']['tokens_per_s']:>8.1f} tok/s   ratio "
                f"{r['image']['tokens_per_s'] / r['text_only']['tokens_per_s']:.2f}"
            )
    if report.get("vllm_rollouts"):
        lines += ["", "e. the same with vLLM's CPU build (bf16, .venv-vllm; learner float32)"]
        for r in report["vllm_rollouts"]:
            m = r["mismatch"]
            lines.append(
                f"{r['model']:<22} image {r['image']['tokens_per_s']:>8.1f} tok/s   text-only "
                f"{r['text_only']['tokens_per_s']:>8.1f} tok/s   ratio "
                f"{r['image']['tokens_per_s'] / r['text_only']['tokens_per_s']:.2f}   start "
                f"{r['engine_start_s']:.0f} s   |logprob delta| mean {m['mean_abs']:.1e} max "
                f"{m['max_abs']:.1e} ({m['tokens']} tokens)"
            )
    return lines


def targets(report: dict) -> dict:
    return {}
