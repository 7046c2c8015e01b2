"""The embedded models, shipped with the repository as files and loaded as they are.

`tiny` (the default reader, `learner/models/tiny.py`) and `tiny_hint` (the reader that also
reads a text hint, `learner/models/tiny_hint.py`) are built by a seeded pretraining on the CPU.
What that pretraining produces depends on the CPU and on the library versions (float
summation order, kernels), so two machines would build two different models, and a test or a
figure that holds for one need not hold for the other. They are therefore built once, by
`make embedded-models`, and committed: `learner/models/shipped/<name>/` holds the weights
(`model.safetensors`), the config, the tokenizer, the processor, the chat template, and
`art_model.json` (the builder version, the sha256 of the weights, the reader's accuracy, and
the machine and library versions that built it). Nothing is built on a user's machine.

Rebuild them when the architecture, the tokenizer or the reader's task changes: bump the
builder's `BUILDER_VERSION`, run `make embedded-models`, commit the folder. Loading a shipped
model whose recorded version differs from the code's is refused in one line that says so.

    python -m learner.models.embedded [--only tiny] [--check]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import platform
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared.errors import DataAccessError, UserError

SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
WEIGHTS_FILE = "model.safetensors"
INFO_FILE = "art_model.json"


@dataclass(frozen=True)
class EmbeddedModel:
    """One shipped model: its name (`model.name`), the builder version the code expects, and
    the builder (`build(out_dir) -> info`, imported only when rebuilding: it needs torch)."""

    name: str
    builder_version: int
    builder: str  # "module:function"

    @property
    def folder(self) -> Path:
        return SHIPPED_DIR / self.name

    def build(self) -> Callable[[Path], dict]:
        module, _, function = self.builder.partition(":")
        return getattr(__import__(module, fromlist=[function]), function)


def _registry() -> dict[str, EmbeddedModel]:
    # The builder versions live beside their builders; these imports need torch, as every
    # caller of this module (the driver, the learner, the tests) already does.
    from learner.models import tiny, tiny_hint

    return {
        "tiny": EmbeddedModel("tiny", tiny.BUILDER_VERSION, "learner.models.tiny:build_tiny_model"),
        "tiny_hint": EmbeddedModel(
            "tiny_hint", tiny_hint.BUILDER_VERSION, "learner.models.tiny_hint:build_tiny_hint_model"
        ),
    }


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_info(name: str) -> dict:
    """The shipped model's `art_model.json`; a one-line error if it is missing or not ours."""
    folder = SHIPPED_DIR / name
    try:
        return json.loads((folder / INFO_FILE).read_text())
    except FileNotFoundError as err:
        raise DataAccessError(
            f"the embedded model {name!r} is missing from {folder} (an incomplete checkout?); "
            "restore it with `git checkout -- learner/models/shipped` or rebuild it with "
            "`make embedded-models`"
        ) from err


def embedded_model_path(name: str) -> Path:
    """The folder of the shipped model `name`, checked against the code's builder version and
    the recorded sha256 of its weights (a Git LFS pointer or a damaged copy is refused)."""
    model = _registry()[name]
    info = read_info(name)
    if info.get("builder_version") != model.builder_version:
        raise UserError(
            f"the embedded model {name!r} in {model.folder} was built by builder version "
            f"{info.get('builder_version')}, the code expects {model.builder_version}; run "
            "`make embedded-models` (and commit learner/models/shipped)"
        )
    weights = model.folder / WEIGHTS_FILE
    if not weights.is_file() or weights.stat().st_size != info.get("weights_bytes"):
        raise DataAccessError(
            f"the embedded model's weights {weights} are missing or not the shipped file "
            f"({info.get('weights_bytes')} bytes expected; a Git LFS pointer?); restore them "
            "with `git checkout -- learner/models/shipped` or run `make embedded-models`"
        )
    return model.folder


def verify(name: str) -> dict:
    """Full check of a shipped model (the sha256 of its weights too): its info, or an error."""
    info = read_info(name)
    path = embedded_model_path(name)
    got = sha256_of(path / WEIGHTS_FILE)
    if got != info["weights_sha256"]:
        raise DataAccessError(
            f"{path / WEIGHTS_FILE}: sha256 {got[:12]}... is not the recorded "
            f"{info['weights_sha256'][:12]}...; restore it or run `make embedded-models`"
        )
    return info


def rebuild(name: str) -> dict:
    """Build `name` into a temporary folder, record what built it, and replace the shipped
    folder (renamed into place: an interrupted build leaves the old model)."""
    # start-up time: a heavy library, loaded when this runs
    import torch

    # start-up time: a heavy library, loaded when this runs
    import transformers

    model = _registry()[name]
    SHIPPED_DIR.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=SHIPPED_DIR, prefix=f".building-{name}-"))
    try:
        info = model.build()(tmp)
        # The tokenizer's and processor's own copies are enough; no cache key remains.
        weights = tmp / WEIGHTS_FILE
        info |= {
            "weights_sha256": sha256_of(weights),
            "weights_bytes": weights.stat().st_size,
            "built_with": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "python": platform.python_version(),
                "machine": platform.machine(),
                "cpu": _cpu_name(),
                "threads": torch.get_num_threads(),
            },
        }
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        tmp.chmod(0o755)  # mkdtemp's 0700 and safetensors' 0600 are not what a checkout has
        for path in tmp.iterdir():
            path.chmod(0o644)
        old = SHIPPED_DIR / f".old-{name}"
        shutil.rmtree(old, ignore_errors=True)
        if model.folder.exists():
            model.folder.rename(old)
        tmp.rename(model.folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m learner.models.embedded",
        description="Rebuild the shipped embedded models (make embedded-models), or check them.",
    )
    parser.add_argument("--only", choices=sorted(_registry()), help="rebuild one model only")
    parser.add_argument("--check", action="store_true", help="verify, do not rebuild")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    names = [args.only] if args.only else sorted(_registry())
    for name in names:
        try:
            info = verify(name) if args.check else rebuild(name)
        except UserError as err:
            print(f"{name}: {err}", file=sys.stderr)
            return 1
        print(f"{name}: {json.dumps(info)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
