"""The ART artifact: one lossless PNG plus metadata in PNG text chunks.

The PNG is the whole adaptation: the base checkpoint stays untouched, and any engine serves the
PNG as an ordinary image input. The metadata records what it was trained for (model, size,
step, prompt layout) so that a mismatched image can be refused instead of silently used.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image, PngImagePlugin

from shared.errors import UserError
from shared.prompts import PROMPT_LAYOUT

# Metadata keys are prefixed so they never collide with other tools' text chunks.
_PREFIX = "art:"


def encode_png(pixels_HWC: np.ndarray, metadata: dict[str, object] | None = None) -> bytes:
    """uint8 (H, W, 3) array -> PNG bytes; metadata values are stored as text chunks."""
    if pixels_HWC.dtype != np.uint8 or pixels_HWC.ndim != 3 or pixels_HWC.shape[2] != 3:
        raise ValueError(
            f"expected a uint8 array of shape (H, W, 3), got {pixels_HWC.dtype} {pixels_HWC.shape}"
        )
    info = PngImagePlugin.PngInfo()
    for key, value in (metadata or {}).items():
        info.add_text(_PREFIX + key, str(value))
    buf = io.BytesIO()
    Image.fromarray(pixels_HWC, mode="RGB").save(buf, format="PNG", pnginfo=info, optimize=False)
    return buf.getvalue()


def decode_png(data: bytes) -> tuple[np.ndarray, dict[str, str]]:
    """PNG bytes -> (uint8 (H, W, 3) array, ART metadata)."""
    with Image.open(io.BytesIO(data)) as img:
        text = dict(getattr(img, "text", {}) or {})
        pixels_HWC = np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    metadata = {k[len(_PREFIX) :]: v for k, v in text.items() if k.startswith(_PREFIX)}
    return pixels_HWC, metadata


def png_to_pil(data: bytes) -> Image.Image:
    """PNG bytes -> RGB PIL image (what engines take as `multi_modal_data`)."""
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def art_metadata(model: str, height: int, width: int, step: int) -> dict[str, object]:
    """The metadata every ART PNG carries, read back by `check_metadata`."""

    return {
        "model": model,
        "height": height,
        "width": width,
        "step": step,
        "prompt_layout": PROMPT_LAYOUT,
    }


class ArtifactMismatchError(UserError):
    """A PNG trained for another model, size or prompt layout than the one it is used with."""


def check_metadata(
    metadata: dict[str, str],
    model: str,
    height: int | None = None,
    width: int | None = None,
    prompt_layout: str | None = None,
    source: str = "image",
    allow_untagged: bool = False,
) -> None:
    """Refuse an ART image used with a model, size or layout other than it was trained for."""
    if not metadata:
        if allow_untagged:
            return
        raise ArtifactMismatchError(
            f"{source} has no ART metadata (model, size, prompt layout), so it cannot be checked "
            "against the model; use an art.png written by training, or allow untagged images"
        )
    problems = []
    if metadata.get("model") != model:
        problems.append(f"it was trained for model {metadata.get('model')!r}, not {model!r}")
    if height is not None and width is not None:
        trained = (metadata.get("height"), metadata.get("width"))
        if trained != (str(height), str(width)):
            problems.append(
                f"it is {trained[0]}x{trained[1]}, the config asks for {height}x{width}"
            )
    if prompt_layout is not None and metadata.get("prompt_layout") != prompt_layout:
        problems.append(
            f"its prompt layout is {metadata.get('prompt_layout')!r}, serving uses {prompt_layout!r}"
        )
    if problems:
        raise ArtifactMismatchError(f"refusing {source}: " + "; ".join(problems))
