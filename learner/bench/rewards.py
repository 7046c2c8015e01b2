"""What scoring costs per step: the task's own reward in the driver against the same reward as
a user function by import path, in the driver (`task.reward_processes=0`) and in the reward
processes (the default, with a per-call timeout), side by side in one process.

    python -m learner.bench.rewards [--steps 50] [--processes 2]

One step is the embedded default's: 4 prompts x 8 completions of a few characters. Also
prints what starting a reward process costs (once per run, and again after a timeout).
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from shared.tasks import load_task
from shared.tasks.reward_pool import RewardProcess
from shared.tasks.scoring import Scorer, build_scorer

USER_REWARD = '''
def letter(completions, answer, **kwargs):
    """The synthetic task's reward, as a user would write it (TRL's shape)."""
    return [1.0 if c.strip().rstrip(".") == a else 0.0 for c, a in zip(completions, answer)]
'''


def task_config(path: Path, processes: int) -> SimpleNamespace:
    return SimpleNamespace(
        rewards=[f"{path}:letter"],
        reward_weights=None,
        reward_range=[0.0, 1.0],
        reward_ranges={},
        score=None,
        reward_fallback=None,
        reward_timeout_s=30.0,
        reward_processes=processes,
    )


def per_step_ms(scorer, batches) -> list[float]:
    times = []
    for examples, texts, ids in batches:
        start = time.perf_counter()
        scorer.score(examples, texts, ids, group_size=8)
        times.append((time.perf_counter() - start) * 1000)
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)

    task = load_task("synthetic")
    examples = task.examples("train")
    rng = random.Random(0)
    batches = []
    for _ in range(args.steps):
        prompts = rng.sample(examples, 4)
        flat = [ex for ex in prompts for _ in range(8)]
        texts = [rng.choice("ABCDEFGH") for _ in flat]
        batches.append((flat, texts, [[rng.randrange(300)] for _ in flat]))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "user_reward.py"
        path.write_text(USER_REWARD)
        start = time.perf_counter()
        RewardProcess([f"{path}:letter"]).kill()
        start_ms = (time.perf_counter() - start) * 1000
        scorers = {
            "task's own reward, in the driver": Scorer(task, []),
            "user function, in the driver (reward_processes=0)": build_scorer(
                task_config(path, 0), task
            ),
            f"user function, {args.processes} reward processes (default)": build_scorer(
                task_config(path, args.processes), task
            ),
        }
        pooled = list(scorers.values())[2]
        pooled.score(*batches[0][:2])  # the processes start once per run
        results = {}
        reference = None
        for name, scorer in scorers.items():
            times = per_step_ms(scorer, batches)
            out = scorer.score(*batches[0][:2], group_size=8)
            reference = reference or out.rewards
            assert out.rewards == reference, name  # the same rewards every way
            results[name] = statistics.median(times)
        pooled.close()
    base = results["task's own reward, in the driver"]
    print(f"scoring one step (4 prompts x 8 completions), median of {args.steps} steps:")
    for name, ms in results.items():
        print(f"  {name:<58} {ms:8.3f} ms  ({ms / base:6.1f}x)")
    print(f"  starting one reward process (per run, and after a timeout)  {start_ms:8.1f} ms")
    return {"per_step_ms": results, "process_start_ms": start_ms}


if __name__ == "__main__":
    main()
