"""art-bench section f: scaling. One all-reduce of the image gradient vs a full-weight and a
rank-16 LoRA gradient of the same model (gloo, two processes; `learner/bench/allreduce.py`),
and the update time of 1 vs 2 data-parallel learner replicas on the same batch (with the
all-reduce time)."""

from __future__ import annotations

import dataclasses
import logging
import os
import statistics
import time

from learner.bench.allreduce import bench_allreduce, format_table
from learner.bench.common import BenchContext, synthetic_groups
from learner.driver.learners import LearnerGroup
from learner.learner import Learner, LearnerSettings
from learner.models import resolve_model_path

LETTER = "f"
TITLE = "scaling: gradient all-reduce sizes, 1 vs 2 learner replicas"
logger = logging.getLogger("art.bench")


def bench_replicas(model: str, size: int, prompts: int, group: int, tokens: int, repeats: int):
    """The update of 1 and of 2 learner replicas (Ray actors, gloo) on the same batch: the
    machine's cores split between the replicas (Ray sets each actor's threads to its CPUs)."""
    # start-up time: a heavy library, loaded when this runs
    import ray

    path = resolve_model_path(model)
    groups = synthetic_groups(
        Learner(LearnerSettings(path, model, size, size, init="noise")), prompts, group, tokens
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


def run(ctx: BenchContext) -> dict:

    logger.info("f. gradient all-reduce (the 0.8B full gradient: 3.4 GB per process)")
    scaled = list(ctx.models) if not ctx.quick else ["tiny"]
    out = {"allreduce": bench_allreduce(scaled, (256, 256), repeats=1 if ctx.quick else 3)}
    logger.info("f. learner update with 1 and 2 replicas")
    out["replicas"] = bench_replicas("tiny", 64, 8, 8, 48, repeats=2 if ctx.quick else 5)
    return out


def format_lines(report: dict) -> list[str]:
    lines = []
    if report.get("allreduce"):
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
    return lines


def targets(report: dict) -> dict:
    return {}
