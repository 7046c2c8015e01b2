"""art-bench (`make bench`): the project's performance figures, side by side in one process.

a. learner update time and peak memory: this learner vs a naive one (a separate old-log-prob
   pass, one image encode per sequence, logits over every position, weights with
   `requires_grad=True`) on the same batch, on the tiny model and on the published
   Qwen3.5-0.8B architecture (random weights, CPU, a small batch);
b. the learner's forward+backward time over its forward time;
c. broadcast: the PNG vs the model's full weights (`ray.put` + every worker's `get`) to 1, 2,
   4 and 8 workers on another Ray node with its own object store;
d. end-to-end steps per second on the embedded default with 2 workers, synchronous
   (`algo.max_staleness=0`) vs overlapped (1), same seed;
e. rollout tokens per second with the image vs text-only, same prompts (HF engine; and vLLM's
   CPU build when .venv-vllm exists, with its log-prob mismatch against the learner);
f. scaling: one all-reduce of the image gradient vs a full-weight and a rank-16 LoRA gradient
   of the same model (gloo, two processes; `learner/bench/allreduce.py`), and the update time
   of 1 vs 2 data-parallel learner replicas on the same batch (with the all-reduce time).
Prints a table (ratios next to figures: these machines are noisy) and writes `bench.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

from learner.bench.memory import reset_peak_rss, status_kib
from shared.atomic import write_text_atomic
from shared.storage import ATOMIC_NOTE, exits_on_storage_errors

logger = logging.getLogger("art.bench")
TARGETS = {
    "learner_speedup_0_8b": 1.5,  # at least
    "fwd_bwd_over_fwd": 2.2,  # at most
    "sync_bytes_ratio": 1000.0,  # at least
    "overlap_speedup": 1.3,  # at least
}


# ---- memory and time ----------------------------------------------------------------------
def measure(fn, repeats: int = 1) -> dict:
    """Median wall time and the peak RSS above the RSS before, of `fn()` (Linux)."""
    import gc

    times, peaks = [], []
    for _ in range(repeats):
        gc.collect()
        before = reset_peak_rss()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        peaks.append((status_kib("VmHWM") - before) / 1024)
    return {"time_s": statistics.median(times), "peak_mib": max(peaks)}


# ---- a, b: the learner ----------------------------------------------------------------------
def synthetic_groups(learner, prompts: int, group: int, tokens: int, seed: int = 0):
    """Scored groups of random completions, with the prompt ids an engine would send."""
    import torch

    from shared.messages import Completion, ScoredGroup
    from shared.prompts import render_prompt

    gen = torch.Generator().manual_seed(seed)
    n_image = learner.policy.spec.num_image_tokens(*learner.image.size)
    groups = []
    for r in range(prompts):
        prompt = render_prompt(learner.processor, f"Question {r}: what is {r} + {r + 1}?")
        expanded = prompt.replace("<|image_pad|>", "<|image_pad|>" * n_image, 1)
        ids = tuple(learner.processor.tokenizer(expanded, add_special_tokens=False)["input_ids"])
        comps = tuple(
            Completion(
                r,
                tuple(torch.randint(0, 250, (tokens,), generator=gen).tolist()),
                (0.0,) * tokens,
                "length",
                "",
                learner.version,
                ids,
            )
            for _ in range(group)
        )
        groups.append(ScoredGroup(prompt, comps, tuple(float(i % 2) for i in range(group))))
    return groups


def bench_learner(model: str, size: int, prompts: int, group: int, tokens: int, repeats: int):
    import copy

    from learner.bench.naive import naive_gradient
    from learner.dapo import dapo_loss, group_advantages
    from learner.learner import Batch, Learner
    from learner.models import resolve_model_path

    learner = Learner(resolve_model_path(model), model, size, size, init="noise", num_minibatches=1)
    groups = synthetic_groups(learner, prompts, group, tokens)
    state = learner.state_dict()

    def optimized():
        learner.load_state_dict(copy.deepcopy(state))
        learner.update(groups)

    def naive():
        learner.load_state_dict(copy.deepcopy(state))
        learner.image.theta_CHW.grad = naive_gradient(learner, groups)
        learner.optimizer.step()

    batch = Batch.from_groups(groups)
    rows = list(range(len(batch)))
    advantages_B = group_advantages(batch.rewards_GN).reshape(-1)

    def forward():
        encoded = learner.encode(grad=True)
        lp, mask = learner.policy.sequence_logprobs(encoded, batch.prompt_ids, batch.token_ids)
        dapo_loss(lp, lp.detach(), advantages_B, mask)

    def forward_backward():
        import torch

        old = torch.zeros(len(batch), batch.max_len)
        learner.accumulate_gradient(batch, rows, old, advantages_B, fill_old=set(rows))
        learner.image.theta_CHW.grad = None

    optimized()  # warm up (first-call allocations, lazy kernels)
    out = {"model": model, "image": size, "batch": f"{prompts}x{group}x{tokens} tokens"}
    out["optimized"] = measure(optimized, repeats)
    out["naive"] = measure(naive, repeats)
    out["forward"] = measure(forward, max(repeats, 3))  # a ratio of two short timings
    out["forward_backward"] = measure(forward_backward, max(repeats, 3))
    out["speedup"] = out["naive"]["time_s"] / out["optimized"]["time_s"]
    out["memory_ratio"] = out["naive"]["peak_mib"] / max(out["optimized"]["peak_mib"], 1e-9)
    out["fwd_bwd_over_fwd"] = out["forward_backward"]["time_s"] / out["forward"]["time_s"]
    return out


# ---- c: broadcast -------------------------------------------------------------------------
class Receiver:
    """A stand-in rollout worker on the other node: fetches what is broadcast."""

    def get(self, refs) -> int:
        import ray

        value = ray.get(refs[0])
        if isinstance(value, bytes):
            return len(value)
        return int(sum(a.nbytes for a in value.values()))


def weights_payload(model: str) -> dict:
    """The model's state dict in bfloat16 (what a weight sync ships), as numpy buffers."""
    import torch
    from transformers import AutoModelForImageTextToText

    from learner.models import resolve_model_path

    hf = AutoModelForImageTextToText.from_pretrained(
        resolve_model_path(model), dtype=torch.bfloat16
    )
    seen, out = set(), {}
    for name, tensor in hf.state_dict().items():
        if tensor.data_ptr() in seen:  # tied weights (embedding = lm_head) ship once
            continue
        seen.add(tensor.data_ptr())
        out[name] = tensor.detach().contiguous().view(torch.int16).numpy()
    return out


def bench_sync(models: list[str], png_bytes: dict[str, bytes], workers: tuple, repeats: int):
    import ray

    from learner.bench.local_cluster import two_node_cluster

    payloads = {m: weights_payload(m) for m in models}
    biggest = max(sum(a.nbytes for a in p.values()) for p in payloads.values())
    store = int(biggest * 2.5) + 500_000_000
    results = []
    with two_node_cluster({"head_node": 1}, {"remote_node": 100}, 2, store, False) as cluster:
        os.environ["RAY_AUTH_MODE"] = "disabled"
        ray.init(address=cluster["gcs"], log_to_driver=False, _node_ip_address="127.0.0.1")
        try:
            remote = ray.remote(Receiver).options(num_cpus=0, resources={"remote_node": 1})
            pool = [remote.remote() for _ in range(max(workers))]
            ray.get([r.get.remote([ray.put(b"warm")]) for r in pool])
            for model in models:
                for kind, value in (("png", png_bytes[model]), ("weights", payloads[model])):
                    nbytes = len(value) if kind == "png" else sum(a.nbytes for a in value.values())
                    for n in workers:
                        times = []
                        for _ in range(repeats):
                            start = time.perf_counter()
                            ref = ray.put(value)  # a new object: it crosses to the other node
                            got = ray.get([r.get.remote([ref]) for r in pool[:n]])
                            times.append(time.perf_counter() - start)
                            assert got == [nbytes] * n
                            del ref
                        results.append(
                            {"model": model, "what": kind, "workers": n, "bytes": nbytes,
                             "time_s": statistics.median(times)}
                        )  # fmt: skip
        finally:
            ray.shutdown()
    return results


# ---- d: end to end ------------------------------------------------------------------------
def bench_end_to_end(steps: int, out_dir: Path, workers: int = 2) -> dict:
    from learner.driver.cli import compose_config
    from learner.driver.train import train

    figures = {"workers": workers}
    for staleness in (0, 1):
        cfg = compose_config(
            f"steps={steps}",
            "eval.every=0",
            f"rollout.num_workers={workers}",
            f"algo.max_staleness={staleness}",
            "logging.progress=false",
            f"logging.checkpoint_every={steps}",
            f"logging.tracking_uri=sqlite:///{out_dir}/mlflow.db",
            f"logging.artifact_location={out_dir}/mlartifacts",
            run_dir=str(out_dir / f"e2e_{workers}w_staleness_{staleness}"),
        )
        summary = train(cfg)
        figures[staleness] = {
            "steps_per_s": steps / summary["loop_wall_s"],
            "loop_wall_s": summary["loop_wall_s"],
            "reward_last5": summary["reward_last5"],
            "mean_phase_s": summary["mean_phase_s"],
        }
    figures["overlap_speedup"] = figures[1]["steps_per_s"] / figures[0]["steps_per_s"]
    return figures


# ---- e: rollouts with and without the image ------------------------------------------------
def bench_rollouts(model: str, size: int, prompts: int, group: int, tokens: int) -> dict:
    from hydra.utils import get_class

    from learner.driver.cli import compose_config
    from learner.models import resolve_model_path
    from shared.artifact import png_to_pil
    from shared.images import seed_image
    from shared.messages import RolloutRequest, SamplingConfig
    from shared.prompts import render_prompt

    # The worker class from its import path, as the driver creates it (learner/ never
    # imports rollout_worker/); its engine is the HF engine the embedded default runs.
    worker_cls = get_class(compose_config().rollout.worker_cls)
    engine = worker_cls("hf", resolve_model_path(model)).engine
    image = png_to_pil(_png(seed_image("noise", size, size)))
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
    import numpy as np

    from learner.driver.cli import compose_config
    from learner.driver.cluster import create_workers, start_ray
    from learner.learner import Learner
    from learner.models import resolve_model_path
    from shared.messages import RolloutRequest, SamplingConfig
    from shared.prompts import render_prompt

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
        learner = Learner(path, model, size, size, init="noise")
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


def bench_replicas(model: str, size: int, prompts: int, group: int, tokens: int, repeats: int):
    """The update of 1 and of 2 learner replicas (Ray actors, gloo) on the same batch: the
    machine's cores split between the replicas (Ray sets each actor's threads to its CPUs)."""
    import ray

    from learner.driver.learners import LearnerGroup
    from learner.learner import Learner
    from learner.models import resolve_model_path

    path = resolve_model_path(model)
    groups = synthetic_groups(
        Learner(path, model, size, size, init="noise"), prompts, group, tokens
    )
    cores = os.cpu_count() or 2
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        for n in (1, 2):
            actor = ray.remote(Learner).options(num_cpus=max(cores // n, 1))
            replicas = [
                actor.remote(path, model, size, size, init="noise", rank=r, world_size=n)
                for r in range(n)
            ]
            learners = LearnerGroup(ray, replicas)
            runs, version = [], 0
            for _ in range(repeats + 1):  # the first one warms up
                fresh = [  # sampled with the learner's current image: no stale pass
                    dataclasses.replace(
                        g,
                        completions=tuple(
                            dataclasses.replace(c, image_version=version) for c in g.completions
                        ),
                    )
                    for g in groups
                ]
                start = time.perf_counter()
                metrics, update = learners.update(fresh)
                runs.append((time.perf_counter() - start, metrics))
                version = update.version
            runs = runs[1:]
            rows.append(
                {
                    "model": model,
                    "replicas": n,
                    "sequences": prompts * group,
                    "update_s": statistics.median(t for t, _ in runs),
                    "learner_time_s": statistics.median(m["learner_time_s"] for _, m in runs),
                    "allreduce_s": statistics.median(
                        m.get("learner_allreduce_s", 0.0) for _, m in runs
                    ),
                }
            )
            for replica in replicas:
                ray.kill(replica)
    finally:
        ray.shutdown()
    return rows


def _png(pixels) -> bytes:
    from shared.artifact import encode_png

    return encode_png(pixels)


# ---- the table ----------------------------------------------------------------------------
def format_report(report: dict) -> str:
    lines = []
    if report.get("learner"):
        lines += ["", "a, b. learner update (same batch, CPU, float32)"]
        lines.append(
            f"{'model':<22}{'batch':<22}{'ours s':>9}{'naive s':>9}{'speedup':>9}"
            f"{'ours MiB':>10}{'naive MiB':>10}{'fwd s':>8}{'fwd+bwd s':>10}{'ratio':>7}"
        )
    for r in report.get("learner", []):
        lines.append(
            f"{r['model']:<22}{r['batch']:<22}{r['optimized']['time_s']:>9.2f}"
            f"{r['naive']['time_s']:>9.2f}{r['speedup']:>8.2f}x{r['optimized']['peak_mib']:>10.0f}"
            f"{r['naive']['peak_mib']:>10.0f}{r['forward']['time_s']:>8.2f}"
            f"{r['forward_backward']['time_s']:>10.2f}{r['fwd_bwd_over_fwd']:>6.2f}x"
        )
    if report.get("sync"):
        lines += ["", "c. broadcast to workers on another Ray node (ray.put + every worker's get)"]
        lines.append(
            f"{'model':<22}{'workers':>8}{'PNG bytes':>12}{'PNG s':>9}{'weights bytes':>15}{'weights s':>10}{'bytes x':>10}{'time x':>8}"
        )
        rows = report["sync"]
        for model in dict.fromkeys(r["model"] for r in rows):
            for n in dict.fromkeys(r["workers"] for r in rows):
                png = next(
                    r
                    for r in rows
                    if r["model"] == model and r["workers"] == n and r["what"] == "png"
                )
                w = next(
                    r
                    for r in rows
                    if r["model"] == model and r["workers"] == n and r["what"] == "weights"
                )
                lines.append(
                    f"{model:<22}{n:>8}{png['bytes']:>12,}{png['time_s']:>9.4f}{w['bytes']:>15,}"
                    f"{w['time_s']:>10.3f}{w['bytes'] / png['bytes']:>9.0f}x{w['time_s'] / png['time_s']:>7.0f}x"
                )
    for e in [report.get("end_to_end"), report.get("end_to_end_1_worker")]:
        if not e:
            continue
        lines += [
            "",
            f"d. end to end, embedded default, {e['workers']} rollout worker(s), same seed",
        ]
        for key, name in ((0, "synchronous"), (1, "overlapped")):
            phases = "  ".join(
                f"{k.removeprefix('time_').removesuffix('_s')} {v:.3f}"
                for k, v in e[key]["mean_phase_s"].items()
            )
            lines.append(
                f"{name:<13}{e[key]['steps_per_s']:>7.3f} steps/s ({e[key]['loop_wall_s']:.1f} s)"
                f"   mean s per step: {phases}"
            )
        lines.append(f"ratio        {e['overlap_speedup']:>7.2f}x")
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
    if report.get("allreduce"):
        from learner.bench.allreduce import format_table

        lines += ["", "f. " + format_table(report["allreduce"]).lstrip()]
    if report.get("replicas"):
        lines += ["", "f. learner update, 1 vs 2 data-parallel replicas, same batch (CPU)"]
        rows = report["replicas"]
        for r in rows:
            one = next(o for o in rows if o["model"] == r["model"] and o["replicas"] == 1)
            lines.append(
                f"{r['model']:<22}{r['replicas']} replica(s)  {r['sequences']} sequences  "
                f"update {r['update_s']:.3f} s  in the learner {r['learner_time_s']:.3f} s  "
                f"all-reduce + wait {r['allreduce_s']:.4f} s  speedup "
                f"{one['update_s'] / r['update_s']:.2f}x"
            )
    lines += ["", "targets"]
    for name, (value, target, ok) in report["targets"].items():
        lines.append(f"{name:<24}{value:>9.2f}   target {target:g}   {'met' if ok else 'NOT met'}")
    return "\n".join(lines)


def check_targets(report: dict) -> dict:
    out = {}
    real = [r for r in report.get("learner", []) if r["model"] != "tiny"]
    if real:
        out["learner_speedup_0_8b"] = (
            real[0]["speedup"],
            TARGETS["learner_speedup_0_8b"],
            real[0]["speedup"] >= 1.5,
        )
        ratio = real[0]["fwd_bwd_over_fwd"]
        out["fwd_bwd_over_fwd"] = (ratio, TARGETS["fwd_bwd_over_fwd"], ratio <= 2.2)
    if report.get("sync"):
        model = report["sync"][-1]["model"]  # the largest model measured
        rows = [r for r in report["sync"] if r["workers"] == 1 and r["model"] == model]
        png = next(r["bytes"] for r in rows if r["what"] == "png")
        weights = next(r["bytes"] for r in rows if r["what"] == "weights")
        out["sync_bytes_ratio"] = (
            weights / png,
            TARGETS["sync_bytes_ratio"],
            weights / png >= 1000,
        )
    if report.get("end_to_end"):
        s = report["end_to_end"]["overlap_speedup"]
        out["overlap_speedup"] = (s, TARGETS["overlap_speedup"], s >= 1.3)
    return out


@exits_on_storage_errors("art-bench", f"{ATOMIC_NOTE}; give --out a folder with room")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ART performance figures, side by side.")
    parser.add_argument("--out", default="outputs/bench", help="folder for bench.json and runs")
    parser.add_argument("--quick", action="store_true", help="tiny model only, fewer repeats")
    parser.add_argument("--skip", default="", help="comma list of sections to skip: a,c,d,e,f")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("transformers", "httpx", "urllib3", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    out_dir = Path(args.out).resolve()
    skip = set(args.skip.split(",")) - {""}
    if skip - set("acdef"):
        print(
            f"art-bench: error: --skip {args.skip}: sections are a, c, d, e and f "
            "(comma-separated, e.g. --skip c,d)",
            file=sys.stderr,
        )
        return 2
    from learner.driver.tracking import ensure_writable
    from shared.errors import UserError

    try:
        ensure_writable(out_dir, "--out")
    except UserError as err:
        print(f"art-bench: error: {err}", file=sys.stderr)
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    models = ["tiny"] if args.quick else ["tiny", "qwen3_5_0_8b_random"]
    report: dict = {"host": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}

    if "a" not in skip:
        report["learner"] = []
        logger.info("a, b. learner: tiny")
        report["learner"].append(bench_learner("tiny", 64, 2, 4, 32, repeats=3))
        if not args.quick:
            logger.info("a, b. learner: qwen3_5_0_8b_random (a few minutes)")
            report["learner"].append(bench_learner("qwen3_5_0_8b_random", 256, 1, 2, 32, repeats=1))
    if "c" not in skip:
        logger.info("c. broadcast on a two-node cluster")
        from shared.images import seed_image

        # Noise: the largest PNG of that size (trained images grow towards it; the seed icon
        # compresses to a few KB), so the ratio is a conservative one.
        pngs = {
            m: _png(seed_image("noise", *((64, 64) if m == "tiny" else (256, 256)))) for m in models
        }
        report["sync"] = bench_sync(models, pngs, (1, 2, 4, 8), repeats=1 if args.quick else 3)
    if "d" not in skip:
        logger.info("d. end to end: synchronous vs overlapped")
        steps = 8 if args.quick else 20
        report["end_to_end"] = bench_end_to_end(steps, out_dir, workers=2)
        # One worker: the learner and the rollouts each have a core of their own, which is
        # what overlap needs (2 workers + the learner share this machine's 2 cores).
        report["end_to_end_1_worker"] = bench_end_to_end(steps, out_dir, workers=1)
    if "e" not in skip:
        report["rollouts"] = [bench_rollouts("tiny", 64, 8, 4, 16)]
        if not args.quick:
            report["rollouts"].append(bench_rollouts("qwen3_5_0_8b_random", 256, 2, 2, 16))
        from learner.driver.cluster import VLLM_VENV_PYTHON

        if os.environ.get("ART_VLLM_PYTHON") or VLLM_VENV_PYTHON.exists():
            logger.info("e. vLLM's CPU build (an engine start per model: about a minute)")
            report["vllm_rollouts"] = [bench_vllm_rollouts("tiny", 64, 8, 4, 16)]
            if not args.quick:
                report["vllm_rollouts"].append(
                    bench_vllm_rollouts("qwen3_5_0_8b_random", 256, 2, 2, 16)
                )
        else:
            logger.info("e. no .venv-vllm (make install-vllm): the vLLM figures are left out")
    if "f" not in skip:
        from learner.bench.allreduce import bench_allreduce

        logger.info("f. gradient all-reduce (the 0.8B full gradient: 3.4 GB per process)")
        scaled = models if not args.quick else ["tiny"]
        report["allreduce"] = bench_allreduce(scaled, (256, 256), repeats=1 if args.quick else 3)
        logger.info("f. learner update with 1 and 2 replicas")
        report["replicas"] = bench_replicas("tiny", 64, 8, 8, 48, repeats=2 if args.quick else 5)
    report["targets"] = check_targets(report)
    text = format_report(report)
    print(text)
    write_text_atomic(out_dir / "bench.json", json.dumps(report, indent=2, default=str))
    print(f"\nwrote {out_dir / 'bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
