"""art-bench sections a and b: the learner's update time and peak memory against a naive
learner's (a separate old-log-prob pass, one image encode per sequence, logits over every
position, weights with `requires_grad=True`) on the same batch, on the tiny model and on the
published Qwen3.5-0.8B architecture (random weights, CPU, a small batch); and (b) the learner's
forward+backward time over its forward time."""

from __future__ import annotations

import copy
import logging

from learner.bench.common import BenchContext, measure, synthetic_groups
from learner.bench.naive import naive_gradient
from learner.dapo import dapo_loss, group_advantages
from learner.learner import Batch, Learner, LearnerSettings
from learner.models import resolve_model_path

LETTER = "a"
TITLE = "learner vs a naive learner (a), forward+backward over forward (b)"
logger = logging.getLogger("art.bench")
TARGETS = {
    "learner_speedup_0_8b": 1.5,  # at least
    "fwd_bwd_over_fwd": 2.2,  # at most
}


def bench_learner(model: str, size: int, prompts: int, group: int, tokens: int, repeats: int):

    learner = Learner(
        LearnerSettings(
            resolve_model_path(model), model, size, size, init="noise", num_minibatches=1
        )
    )
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
        # start-up time: a heavy library, loaded when this runs
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


def run(ctx: BenchContext) -> dict:
    rows = []
    logger.info("a, b. learner: tiny")
    rows.append(bench_learner("tiny", 64, 2, 4, 32, repeats=3))
    if not ctx.quick:
        logger.info("a, b. learner: qwen3_5_0_8b_random (a few minutes)")
        rows.append(bench_learner("qwen3_5_0_8b_random", 256, 1, 2, 32, repeats=1))
    return {"learner": rows}


def format_lines(report: dict) -> list[str]:
    if not report.get("learner"):
        return []
    lines = ["", "a, b. learner update (same batch, CPU, float32)"]
    lines.append(
        f"{'model':<22}{'batch':<22}{'ours s':>9}{'naive s':>9}{'speedup':>9}"
        f"{'ours MiB':>10}{'naive MiB':>10}{'fwd s':>8}{'fwd+bwd s':>10}{'ratio':>7}"
    )
    for r in report["learner"]:
        lines.append(
            f"{r['model']:<22}{r['batch']:<22}{r['optimized']['time_s']:>9.2f}"
            f"{r['naive']['time_s']:>9.2f}{r['speedup']:>8.2f}x{r['optimized']['peak_mib']:>10.0f}"
            f"{r['naive']['peak_mib']:>10.0f}{r['forward']['time_s']:>8.2f}"
            f"{r['forward_backward']['time_s']:>10.2f}{r['fwd_bwd_over_fwd']:>6.2f}x"
        )
    return lines


def targets(report: dict) -> dict:
    out = {}
    real = [r for r in report.get("learner", []) if r["model"] != "tiny"]
    if real:
        speedup = real[0]["speedup"]
        out["learner_speedup_0_8b"] = (
            speedup,
            TARGETS["learner_speedup_0_8b"],
            speedup >= TARGETS["learner_speedup_0_8b"],
        )
        ratio = real[0]["fwd_bwd_over_fwd"]
        out["fwd_bwd_over_fwd"] = (
            ratio,
            TARGETS["fwd_bwd_over_fwd"],
            ratio <= TARGETS["fwd_bwd_over_fwd"],
        )
    return out
