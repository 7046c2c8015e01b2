"""Option values the gateway's entry points share (`art-serve`, the Ray Serve app builder)."""

from __future__ import annotations

from shared.errors import UserError


def parse_image_size(text: str) -> tuple[int, int]:
    """ "256" or "256x192" (height x width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise UserError(f"--image-size {text!r}: give N or HxW, e.g. 256 or 256x256")
    return parts[0], parts[1]
