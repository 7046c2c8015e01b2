"""Model builders: models the project builds offline, and the resolution of `model.name`.

- `tiny`: the embedded default, a tiny Qwen3.5 VL "reader" (`learner/models/tiny.py`);
- `qwen3_5_0_8b_random`: the published Qwen3.5-0.8B architecture with random weights
  (`learner/models/qwen3_5_0_8b_random.py`), for benchmarks and tests at real sizes.
Anything else is a Hugging Face hub id or a local directory, passed through.
"""

from __future__ import annotations

BUILT_MODELS = ("tiny", "qwen3_5_0_8b_random")


def resolve_model_path(name: str) -> str:
    """A built model's cached folder (built once); anything else is passed through."""
    match name:
        case "tiny":
            from learner.models.tiny import ensure_tiny_model

            return str(ensure_tiny_model())
        case "qwen3_5_0_8b_random":
            from learner.models.qwen3_5_0_8b_random import ensure_built

            return str(ensure_built())
        case _:
            return name
