"""art-bench section h: K tasks in one run against K solo runs back to back, side by side.

- Wall time: `art-train` of K synthetic tasks in one run (one Ray start, one model per side,
  every step's rollouts of all tasks in one engine batch) against K solo `art-train` runs of
  the same tasks one after another, the same steps and seeds (K = 1 and 4; 16 without
  --quick), each a fresh process as a user runs it; and each task's reward over its last five
  steps in both, which must agree (a task samples what it samples alone).
- Memory: the learner with K task slots (1 and 16) after one update of each, in a fresh
  process each (peak RSS above the model's), at the tiny size and, without --quick, at the
  0.8B architecture: what grows with K is each task's image, Adam state and samples.

    python -m learner.bench.multitask --quick
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from learner.bench.common import BenchContext, synthetic_groups
from learner.bench.memory import reset_peak_rss, status_kib
from learner.learner import Learner, LearnerSettings
from learner.models import resolve_model_path

LETTER = "h"
TITLE = "K tasks in one run vs K solo runs"
REPORT_KEY = "multi_task"
logger = logging.getLogger("art.bench")
TARGETS = {"memory_ratio_k16_vs_k1": 1.3, "wall_ratio_k4_vs_solo": 0.5}  # at most
LETTERS = "FBDHACEG"


def entries(k: int) -> dict:
    """K synthetic tasks: the 8 targets, then again with other seeds."""
    return {f"t{i}": {"name": "synthetic", "options": {"target": LETTERS[i % 8]}, "seed": i}
            for i in range(k)}  # fmt: skip


def art_train(folder: Path, *overrides: str) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        [str(Path(sys.executable).parent / "art-train"), f"output_dir={folder}", "eval.every=0",
         "logging.progress=false", f"logging.tracking_uri=sqlite:///{folder}/mlflow.db", *overrides],
        capture_output=True, text=True, cwd=folder,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"art-train {' '.join(overrides)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def wall(k: int, steps: int, folder: Path) -> dict:
    tasks = entries(k)
    file = folder / f"tasks{k}.yaml"
    file.write_text(yaml.safe_dump(tasks))
    multi_s = art_train(folder, f"tasks_file={file}", f"steps={steps}", f"run_name=multi{k}")
    multi = json.loads((folder / f"multi{k}" / "summary.json").read_text())["tasks"]
    solo_s, solo = 0.0, {}
    for name, entry in tasks.items():
        run = f"solo{k}_{name}"
        solo_s += art_train(folder, f"task.options.target={entry['options']['target']}",
                            f"seed={entry['seed']}", f"steps={steps}", f"run_name={run}")  # fmt: skip
        solo[name] = json.loads((folder / run / "summary.json").read_text())["reward_last5"]
    return {
        "k": k, "steps": steps, "multi_s": round(multi_s, 1), "solo_s": round(solo_s, 1),
        "ratio": multi_s / solo_s,
        "reward_last5_multi": {n: t["reward_last5"] for n, t in multi.items()},
        "reward_last5_solo": solo,
    }  # fmt: skip


def memory_one(model: str, k: int) -> dict:
    """In this process: the learner, K task slots, one update of each; peak RSS above the
    learner alone."""
    size = 256 if model != "tiny" else 64
    learner = Learner(LearnerSettings(resolve_model_path(model), model, size, size, init="noise"))
    base = reset_peak_rss()
    for i in range(k):
        learner.add_task(f"t{i}", "noise", i)
    for i in range(k):
        learner.activate(f"t{i}")
        learner.update(synthetic_groups(learner, prompts=1, group=4, tokens=16, seed=i))
    return {"model": model, "k": k, "peak_mib": (status_kib("VmHWM") - base) / 1024,
            "learner_mib": base / 1024}  # fmt: skip


def memory(model: str, k: int) -> dict:
    code = f"import json; from learner.bench.multitask import memory_one; print(json.dumps(memory_one({model!r}, {k})))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"memory {model} K={k} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(ctx: BenchContext) -> dict:
    logger.info("h. %s", TITLE)
    folder = Path(tempfile.mkdtemp(prefix="multitask-", dir=ctx.out_dir))
    steps = 6 if ctx.quick else 12
    walls = [wall(k, steps, folder) for k in ((1, 4) if ctx.quick else (1, 4, 16))]
    mem = []
    for model in ctx.models:
        one, many = memory(model, 1), memory(model, 16)
        total = lambda m: m["learner_mib"] + m["peak_mib"]  # noqa: E731
        mem.append({"model": model, "k1_mib": total(one), "k16_mib": total(many),
                    "ratio": total(many) / total(one)})  # fmt: skip
    return {REPORT_KEY: {"wall": walls, "memory": mem}}


def format_lines(report: dict) -> list[str]:
    if REPORT_KEY not in report:
        return []
    lines = ["", f"{LETTER}. {TITLE}",
             f"{'K':>3} {'steps':>6} {'one run s':>10} {'K solo runs s':>14} {'ratio':>7}  "
             "reward last 5: one run / solo (per task)"]  # fmt: skip
    for w in report[REPORT_KEY]["wall"]:
        rewards = ", ".join(f"{n} {w['reward_last5_multi'][n]:.2f}/{w['reward_last5_solo'][n]:.2f}"
                            for n in list(w["reward_last5_solo"])[:4])  # fmt: skip
        lines.append(f"{w['k']:>3} {w['steps']:>6} {w['multi_s']:>10.1f} {w['solo_s']:>14.1f} "
                     f"{w['ratio']:>6.2f}x  {rewards}")  # fmt: skip
    lines.append(f"{'model':<22} {'K=1 MiB':>9} {'K=16 MiB':>9} {'ratio':>7}")
    for m in report[REPORT_KEY]["memory"]:
        lines.append(
            f"{m['model']:<22} {m['k1_mib']:>9.0f} {m['k16_mib']:>9.0f} {m['ratio']:>6.2f}x"
        )
    return lines


def targets(report: dict) -> dict:
    if REPORT_KEY not in report:
        return {}
    found = report[REPORT_KEY]
    k4 = next((w for w in found["wall"] if w["k"] == 4), None)
    ratio = max(m["ratio"] for m in found["memory"])
    out = {"memory_ratio_k16_vs_k1": (ratio, TARGETS["memory_ratio_k16_vs_k1"], ratio <= 1.3)}
    if k4:
        out["wall_ratio_k4_vs_solo"] = (
            k4["ratio"],
            TARGETS["wall_ratio_k4_vs_solo"],
            k4["ratio"] <= 0.5,
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="K = 1 and 4, the tiny model")
    parser.add_argument("--out", default="outputs/bench")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    models = ("tiny",) if args.quick else ("tiny", "qwen3_5_0_8b_random")
    report = run(BenchContext(out_dir=out, quick=args.quick, models=models))
    print("\n".join(format_lines(report)))
    for name, (value, target, ok) in targets(report).items():
        print(f"{name:<26}{value:>8.2f}   target {target:g}   {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
