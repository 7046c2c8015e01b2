"""art-bench section d: end-to-end steps per second on the embedded default, synchronous
(`algo.max_staleness=0`) vs overlapped (1), same seed, with 2 rollout workers and with 1."""

from __future__ import annotations

import logging
from pathlib import Path

from learner.bench.common import BenchContext
from learner.driver.cli import compose_config
from learner.driver.train import train

LETTER = "d"
TITLE = "end to end: synchronous vs overlapped training"
logger = logging.getLogger("art.bench")
TARGETS = {"overlap_speedup": 1.3}  # at least


def bench_end_to_end(steps: int, out_dir: Path, workers: int = 2) -> dict:

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


def run(ctx: BenchContext) -> dict:
    logger.info("d. end to end: synchronous vs overlapped")
    steps = 8 if ctx.quick else 20
    return {
        "end_to_end": bench_end_to_end(steps, ctx.out_dir, workers=2),
        # One worker: the learner and the rollouts each have a core of their own, which is
        # what overlap needs (2 workers + the learner share this machine's 2 cores).
        "end_to_end_1_worker": bench_end_to_end(steps, ctx.out_dir, workers=1),
    }


def format_lines(report: dict) -> list[str]:
    lines = []
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
    return lines


def targets(report: dict) -> dict:
    if not report.get("end_to_end"):
        return {}
    s = report["end_to_end"]["overlap_speedup"]
    return {"overlap_speedup": (s, TARGETS["overlap_speedup"], s >= TARGETS["overlap_speedup"])}
