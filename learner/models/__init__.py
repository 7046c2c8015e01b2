"""Model builders: models the project builds offline, and the resolution of `model.name`.

- `tiny`: the embedded default, a tiny Qwen3.5 VL "reader" (`learner/models/tiny.py`).
Anything else is a Hugging Face hub id or a local directory, passed through.
"""

from __future__ import annotations


def resolve_model_path(name: str) -> str:
    """'tiny' -> the cached embedded model (built once); anything else is passed through."""
    if name == "tiny":
        from learner.models.tiny import ensure_tiny_model

        return str(ensure_tiny_model())
    return name
