"""art-bench (`make bench`): the project's performance figures, side by side in one process.

One module per section (`SECTIONS`, in the order they run and print):
a, b. `learner/bench/learner_update.py`: the learner vs a naive one, forward+backward over
      forward;
c. `learner/bench/broadcast.py`: the PNG vs full weights to workers on another Ray node;
d. `learner/bench/end_to_end.py`: synchronous vs overlapped training;
e. `learner/bench/rollouts.py`: rollout throughput with and without the image;
f. `learner/bench/scaling.py`: gradient all-reduce sizes, 1 vs 2 learner replicas;
g. `learner/bench/shared_prefix.py`: the shared-prefix vs the padded learner forward;
h. `learner/bench/multitask.py`: K tasks in one run vs K solo runs (wall, memory).
Each module has `LETTER`, `TITLE`, `run(ctx) -> dict` (its part of the report), `format_lines
(report) -> list[str]` and `targets(report) -> dict`; a new section is a new module and one
line here. Prints a table (ratios next to figures: these machines are noisy) and writes
`bench.json`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from pathlib import Path

from learner.bench.common import BenchContext, measure, synthetic_groups
from shared.atomic import write_text_atomic
from shared.errors import UserError
from shared.storage import ATOMIC_NOTE, exits_on_storage_errors

__all__ = ["SECTIONS", "main", "measure", "synthetic_groups"]  # tests import the helpers here
logger = logging.getLogger("art.bench")

# letter -> the module of that section
SECTIONS = {
    "a": "learner.bench.learner_update",
    "c": "learner.bench.broadcast",
    "d": "learner.bench.end_to_end",
    "e": "learner.bench.rollouts",
    "f": "learner.bench.scaling",
    "g": "learner.bench.shared_prefix",
    "h": "learner.bench.multitask",
}


def section(letter: str):
    return importlib.import_module(SECTIONS[letter])


def format_report(report: dict) -> str:
    lines = []
    for letter in SECTIONS:
        lines += section(letter).format_lines(report)
    lines += ["", "targets"]
    width = max([24, *(len(name) + 1 for name in report["targets"])])
    for name, (value, target, ok) in report["targets"].items():
        lines.append(
            f"{name:<{width}}{value:>9.2f}   target {target:g}   {'met' if ok else 'NOT met'}"
        )
    return "\n".join(lines)


def check_targets(report: dict) -> dict:
    out = {}
    for letter in SECTIONS:
        out.update(section(letter).targets(report))
    return out


def parse_sections(text: str, flag: str) -> set[str] | None:
    """The letters of a comma list, or None (after one error line) when one is unknown."""
    letters = set(text.split(",")) - {""}
    if letters - set(SECTIONS):
        names = ", ".join(SECTIONS)
        print(
            f"art-bench: error: {flag} {text}: sections are {names} "
            "(comma-separated, e.g. --skip c,d)",
            file=sys.stderr,
        )
        return None
    return letters


@exits_on_storage_errors("art-bench", f"{ATOMIC_NOTE}; give --out a folder with room")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ART performance figures, side by side.")
    parser.add_argument("--out", default="outputs/bench", help="folder for bench.json and runs")
    parser.add_argument("--quick", action="store_true", help="tiny model only, fewer repeats")
    letters = ",".join(SECTIONS)
    parser.add_argument("--skip", default="", help=f"comma list of sections to skip: {letters}")
    parser.add_argument("--only", default="", help="comma list of the sections to run (all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("transformers", "httpx", "urllib3", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    skip, only = parse_sections(args.skip, "--skip"), parse_sections(args.only, "--only")
    if skip is None or only is None:
        return 2
    out_dir = Path(args.out).resolve()
    # start-up time: loaded when this runs, not at import
    from learner.driver.tracking import ensure_writable

    try:
        ensure_writable(out_dir, "--out")
    except UserError as err:
        print(f"art-bench: error: {err}", file=sys.stderr)
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    models = ("tiny",) if args.quick else ("tiny", "qwen3_5_0_8b_random")
    ctx = BenchContext(out_dir=out_dir, quick=args.quick, models=models)
    report: dict = {"host": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    for letter in SECTIONS:
        if letter not in skip and (not only or letter in only):
            report.update(section(letter).run(ctx))
    report["targets"] = check_targets(report)
    text = format_report(report)
    print(text)
    write_text_atomic(out_dir / "bench.json", json.dumps(report, indent=2, default=str))
    print(f"\nwrote {out_dir / 'bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
