"""art-bench section g: the shared-prefix learner forward against the padded one, side by side
in one run, at the published Qwen3.5-0.8B architecture (random weights, float32, CPU, the
preset's activation checkpointing, a 256 x 256 image: 64 image tokens), for two workloads:
- GSM8K-like: prompts of about 120 text + 64 image tokens, completions of about 256, G = 8;
- ToolMind-like: prompts of about 1,500 tokens (tool schemas), completions of about 128, G = 8.
Per workload and path: the update's time (one minibatch of fresh completions: one forward and
backward into the pixels, then Adam) and the old-log-prob pass's time (no gradient), each with
its peak memory above what the process held before. Every figure comes from a fresh process
(peak RSS is per process; a freed block the allocator keeps would hide the next one's peak),
after a short warm-up pass. Completion lengths vary by +-25 % around the workload's (the same
ones on both paths). On 2 CPU cores one group (G completions of one prompt) per measurement;
`--prompts N` measures N groups.

    python -m learner.bench.shared_prefix                   # both workloads, 0.8B architecture
    python -m learner.bench.shared_prefix --model tiny      # the same on the embedded model
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

from learner.bench.common import BenchContext, sized_groups
from learner.bench.memory import reset_peak_rss, status_kib
from learner.learner import Batch, Learner, LearnerSettings
from learner.models import resolve_model_path

LETTER = "g"
TITLE = "shared-prefix vs padded learner forward (0.8B architecture)"
logger = logging.getLogger("art.bench")
REPORT_KEY = "learner_shared_prefix_vs_padded"
WORKLOADS = {  # prompt tokens (the image's 64 included), completion tokens, G
    "gsm8k_like": (184, 256, 8),
    "toolmind_like": (1500, 128, 8),
}
PATHS = ("padded", "shared_prefix")
PHASES = ("update", "old_logprobs")
TARGETS = {  # update throughput, shared-prefix over padded: at least
    "shared_prefix_update_speedup_gsm8k_like": 1.4,
    "shared_prefix_update_speedup_toolmind_like": 3.0,
}


def completion_lengths(mean: int, group: int) -> list[int]:
    """`group` lengths spread evenly over mean +- 25 %."""
    if group == 1:
        return [mean]
    low, high = round(mean * 0.75), round(mean * 1.25)
    return [round(low + (high - low) * i / (group - 1)) for i in range(group)]


def measure_one(model: str, workload: str, path: str, phase: str, prompts: int) -> dict:
    """One figure in this process: build the learner, warm up, then time `phase` on `path`
    and read the peak RSS above the RSS before it."""

    # start-up time: a heavy library, loaded when this runs
    import torch

    prompt, completion, group = WORKLOADS[workload]
    size = 64 if model == "tiny" else 256
    learner = Learner(LearnerSettings(
        resolve_model_path(model), model, size, size, init="noise",
        activation_checkpointing=model != "tiny", shared_prefix=path == "shared_prefix",
        micro_batch_size=prompts * group, num_minibatches=1,
    ))  # fmt: skip
    if path == "shared_prefix" and learner.policy.shared_prefix is None:
        raise RuntimeError(f"{model}: the shared-prefix forward does not run on this model")
    lengths = completion_lengths(completion, group)
    groups = sized_groups(learner, [prompt + p for p in range(prompts)], group, lengths)
    warm = sized_groups(learner, [prompt], 2, [8])

    def run(batch_groups):
        if phase == "update":
            learner.update(batch_groups)
        else:
            learner.old_logprobs(Batch.from_groups(batch_groups), skip=set())

    run(warm)  # first-call allocations, lazy initialisation
    if phase == "update":  # a fresh learner version: completions sampled with it
        groups = sized_groups(learner, [prompt + p for p in range(prompts)], group, lengths)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before_kib = reset_peak_rss()
    start = time.perf_counter()
    run(groups)
    elapsed = time.perf_counter() - start
    peak_mib = (status_kib("VmHWM") - before_kib) / 1024
    batch = Batch.from_groups(groups)
    return {
        "model": model,
        "workload": workload,
        "path": path,
        "phase": phase,
        "time_s": elapsed,
        "peak_mib": peak_mib,
        "prompts": prompts,
        "group": group,
        "prompt_tokens": prompt,
        "completion_tokens": lengths,
        "padded_layout_tokens": sum(
            len(p) + n for p, n in zip(batch.prompt_ids, batch.lengths, strict=True)
        ),
        "shared_layout_tokens": sum(len(p) for p in set(batch.prompt_ids)) + sum(batch.lengths),
        "threads": torch.get_num_threads(),
    }


def measure_in_process(model: str, workload: str, path: str, phase: str, prompts: int) -> dict:
    cmd = [sys.executable, "-m", "learner.bench.shared_prefix", "--one"]
    cmd += [model, workload, path, phase, "--prompts", str(prompts)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:])} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_shared_prefix(model: str, prompts: int = 1) -> dict:
    rows = []
    for workload in WORKLOADS:
        for phase in PHASES:
            for path in PATHS:
                logger.info("g. %s %s %s %s", model, workload, phase, path)
                rows.append(measure_in_process(model, workload, path, phase, prompts))
                logger.info("g.   %.1f s, peak %.0f MiB", rows[-1]["time_s"], rows[-1]["peak_mib"])
    summary = {}
    for workload in WORKLOADS:
        for phase in PHASES:
            padded, shared = (
                next(
                    r
                    for r in rows
                    if r["workload"] == workload and r["phase"] == phase and r["path"] == path
                )
                for path in PATHS
            )
            summary[f"{workload}/{phase}"] = {
                "speedup": padded["time_s"] / shared["time_s"],
                "memory_ratio": padded["peak_mib"] / max(shared["peak_mib"], 1e-9),
                "tokens_ratio": padded["padded_layout_tokens"] / shared["shared_layout_tokens"],
            }
    return {"model": model, "prompts_per_measurement": prompts, "rows": rows, "summary": summary}


def run(ctx: BenchContext) -> dict:
    model = "tiny" if ctx.quick else "qwen3_5_0_8b_random"
    logger.info(
        "g. shared-prefix vs padded learner, %s (8 fresh processes; long on 2 cores)", model
    )
    return {REPORT_KEY: bench_shared_prefix(model)}


def format_lines(report: dict) -> list[str]:
    result = report.get(REPORT_KEY)
    if not result:
        return []
    first = result["rows"][0]
    lines = [
        "",
        f"g. shared-prefix vs padded learner forward ({result['model']}, float32, CPU, "
        f"{first['threads']} threads, {result['prompts_per_measurement']} group(s) of "
        f"G={first['group']} per measurement, a fresh process each)",
        f"{'workload':<15}{'prompt':>7}{'compl.':>8}{'tokens padded/shared':>22}"
        f"{'phase':>14}{'padded s':>10}{'shared s':>10}{'speedup':>9}"
        f"{'padded MiB':>12}{'shared MiB':>12}",
    ]
    for workload in dict.fromkeys(r["workload"] for r in result["rows"]):
        for phase in PHASES:
            padded, shared = (
                next(
                    r
                    for r in result["rows"]
                    if r["workload"] == workload and r["phase"] == phase and r["path"] == path
                )
                for path in PATHS
            )
            lengths = padded["completion_tokens"]
            tokens = f"{padded['padded_layout_tokens']:,}/{padded['shared_layout_tokens']:,}"
            lines.append(
                f"{workload:<15}{padded['prompt_tokens']:>7}{sum(lengths) / len(lengths):>8.0f}"
                f"{tokens:>22}{phase:>14}{padded['time_s']:>10.1f}{shared['time_s']:>10.1f}"
                f"{padded['time_s'] / shared['time_s']:>8.2f}x{padded['peak_mib']:>12.0f}"
                f"{shared['peak_mib']:>12.0f}"
            )
    return lines


def targets(report: dict) -> dict:
    result = report.get(REPORT_KEY)
    if not result or result["model"] == "tiny":
        return {}
    out = {}
    for workload in WORKLOADS:
        figures = result["summary"][f"{workload}/update"]
        name = f"shared_prefix_update_speedup_{workload}"
        out[name] = (figures["speedup"], TARGETS[name], figures["speedup"] >= TARGETS[name])
        ratio = figures["memory_ratio"]  # padded over shared: above 1 = less memory
        out[f"shared_prefix_memory_ratio_{workload}"] = (ratio, 1.0, ratio > 1.0)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="qwen3_5_0_8b_random")
    parser.add_argument("--prompts", type=int, default=1, help="groups per measurement")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--one", nargs=4, metavar=("MODEL", "WORKLOAD", "PATH", "PHASE"))
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(*args.one, prompts=args.prompts)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    result = bench_shared_prefix(args.model, args.prompts)
    print("\n".join(format_lines({REPORT_KEY: result})))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
