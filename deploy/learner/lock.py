"""The learner's locked environment: write the lock files (`make lock`) and check them
(`make lock-check`, part of `make lint` and so of CI).

Files (beside this script), each pip's requirements format with exact versions and sha256
hashes, resolved by pip-tools' `pip-compile` for CPython 3.11 on Linux x86_64:
- `lock.txt`: the project's dependencies and its `dev` extra: what `make install` installs
  (`pip install --require-hashes`), on a CPU machine and on a CUDA machine alike (PyPI's torch
  wheel for Linux is the CUDA build, and runs on the CPU);
- `lock-tasks.txt`: the same plus the `tasks` extra (reasoning-gym, which compiles pycosat):
  installed instead of `lock.txt` where a C compiler is present, with the same versions of
  everything `lock.txt` holds;
- `lock-cuda-kernels.txt`: flash-linear-attention for a CUDA learner (`make
  install-cuda-kernels`), constrained by `lock.txt`.

Each file's header records the sha256 of its inputs (pyproject.toml's dependency lists, the
pins below): `check` fails, naming what to run, when pyproject.toml changed since the lock was
written, when a pinned version no longer satisfies pyproject.toml, or when the README's table
of tested versions differs from the lock.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PYPROJECT = ROOT / "pyproject.toml"
README = ROOT / "README.md"
LOCK = HERE / "lock.txt"
LOCK_TASKS = HERE / "lock-tasks.txt"
LOCK_CUDA = HERE / "lock-cuda-kernels.txt"
# Held exactly, beyond pyproject.toml's ranges: the torch pair the learner was tested with
# (pip's cap on the development machines, whose disk has these wheels).
PINS = ["torch==2.14.1", "torchvision==0.29.1"]
# The CUDA learner's kernels (deploy/learner/install-cuda-kernels.sh) and what building
# causal-conv1d needs; causal-conv1d itself is built from source against the installed torch
# (a CUDA toolkit at lock time is not assumed) and pinned by version in that script.
CUDA_KERNELS = ["flash-linear-attention==0.6.0", "ninja", "packaging", "setuptools", "wheel"]
# The versions the README states, from the lock.
README_PACKAGES = ["torch", "transformers", "ray", "peft", "datasets", "mlflow", "hydra-core"]
README_BEGIN = "<!-- tested-versions: written by `make lock` from deploy/learner/lock.txt -->"
README_END = "<!-- /tested-versions -->"
INPUTS_RE = re.compile(r"^# inputs-sha256: ([0-9a-f]{64})$", re.M)


def project() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["project"]


def inputs_digest(extras: list[str], extra_lines: list[str]) -> str:
    """The sha256 of what a lock file is resolved from (order-insensitive; the project's
    dependencies count for every lock: the kernels' lock is constrained by lock.txt)."""
    p = project()
    payload = {
        "requires-python": p.get("requires-python"),
        "dependencies": sorted(p["dependencies"]),
        "extras": {e: sorted(p["optional-dependencies"][e]) for e in extras},
        "more": sorted(extra_lines),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


LOCKS = {  # file -> (extras, extra input lines)
    LOCK: (["dev"], PINS),
    LOCK_TASKS: (["dev", "tasks"], PINS),
    LOCK_CUDA: ([], PINS + CUDA_KERNELS),
}


def pinned(lock: Path) -> dict[str, str]:
    """name -> version of every package a lock file holds."""
    found = {}
    for line in lock.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", line)
        if m:
            found[canonical(m.group(1))] = m.group(2)
    return found


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def compile_lock(out: Path, extras: list[str], more: list[str], constraint: Path | None) -> None:
    tmp = HERE / f".{out.stem}.in"
    tmp.write_text("\n".join(more) + "\n")
    cmd = [
        sys.executable, "-m", "piptools", "compile", "--quiet", "--generate-hashes",
        "--allow-unsafe", "--strip-extras", "--no-emit-find-links", "--no-emit-index-url",
        "--no-emit-trusted-host", "--no-header", "--resolver=backtracking", "--rebuild",
        "-o", str(out),
    ]  # fmt: skip
    for extra in extras:
        cmd += ["--extra", extra]
    held = HERE / f".{out.stem}.constraints"
    if constraint is not None:  # names and versions only (pip takes no hashes in constraints)
        held.write_text("".join(f"{n}=={v}\n" for n, v in pinned(constraint).items()))
        cmd += ["-c", str(held)]
    sources = ([str(PYPROJECT)] if extras else []) + [str(tmp)]
    try:
        subprocess.run(cmd + sources, check=True, cwd=ROOT)
    finally:
        tmp.unlink(missing_ok=True)
        held.unlink(missing_ok=True)
    header = (
        f"# {out.name}: written by `make lock` (deploy/learner/lock.py); do not edit.\n"
        f"# CPython 3.11, Linux x86_64; extras: {', '.join(extras) or 'none'}; "
        f"also: {', '.join(more)}.\n"
        f"# inputs-sha256: {inputs_digest(extras, more)}\n"
    )
    body = out.read_text().replace(f"file://{ROOT}", ".")
    out.write_text(header + body)


def write() -> None:
    compile_lock(LOCK, *LOCKS[LOCK], None)
    compile_lock(LOCK_TASKS, *LOCKS[LOCK_TASKS], LOCK)
    compile_lock(LOCK_CUDA, *LOCKS[LOCK_CUDA], LOCK)
    README.write_text(with_versions_table(README.read_text()))
    print(f"wrote {LOCK.name}, {LOCK_TASKS.name}, {LOCK_CUDA.name} and the README's versions")


def versions_table() -> str:
    versions = pinned(LOCK)
    cells = ", ".join(f"{name} {versions[canonical(name)]}" for name in README_PACKAGES)
    return f"{README_BEGIN}\nTested with Python 3.11 and {cells} (`deploy/learner/lock.txt`).\n{README_END}"


def with_versions_table(text: str) -> str:
    pattern = re.compile(re.escape(README_BEGIN) + r".*?" + re.escape(README_END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no {README_BEGIN!r} ... {README_END!r} block")
    return pattern.sub(lambda _: versions_table(), text)


def check() -> list[str]:
    """What disagrees, one line each (empty: the locks match pyproject.toml and the README)."""
    from packaging.requirements import Requirement

    problems = []
    for lock, (extras, more) in LOCKS.items():
        if not lock.is_file():
            problems.append(f"{lock.relative_to(ROOT)} is missing: run `make lock`")
            continue
        m = INPUTS_RE.search(lock.read_text())
        if not m or m.group(1) != inputs_digest(extras, more):
            problems.append(
                f"{lock.relative_to(ROOT)} was not written from the current pyproject.toml "
                "dependencies: run `make lock` and commit the lock files"
            )
        versions = pinned(lock)
        p = project()
        wanted = [] if lock == LOCK_CUDA else list(p["dependencies"])  # the kernels' own lock
        wanted += [r for e in extras for r in p["optional-dependencies"][e]]
        for text in wanted + more:
            req = Requirement(text)
            got = versions.get(canonical(req.name))
            if got is None:
                problems.append(f"{lock.relative_to(ROOT)} lacks {req.name}: run `make lock`")
            elif not req.specifier.contains(got, prereleases=True):
                problems.append(
                    f"{lock.relative_to(ROOT)} pins {req.name}=={got}, outside pyproject's "
                    f"{text!r}: run `make lock`"
                )
    base, tasks = pinned(LOCK), pinned(LOCK_TASKS) if LOCK_TASKS.is_file() else {}
    for name, version in base.items():
        if tasks and tasks.get(name) != version:
            problems.append(
                f"{LOCK_TASKS.name} has {name} {tasks.get(name)}, {LOCK.name} {version}: "
                "run `make lock`"
            )
    if LOCK.is_file() and versions_table() not in README.read_text():
        problems.append("README.md's tested versions differ from the lock: run `make lock`")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["write", "check"])
    parser.add_argument("--only", choices=[p.name for p in LOCKS], help="write one lock file")
    args = parser.parse_args()
    if args.command == "write" and args.only:
        out = HERE / args.only
        compile_lock(out, *LOCKS[out], None if out == LOCK else LOCK)
        return 0
    if args.command == "write":
        write()
        return 0
    problems = check()
    for line in problems:
        print(f"lock-check: {line}", file=sys.stderr)
    if not problems:
        print("lock-check: the lock files match pyproject.toml and the README")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
