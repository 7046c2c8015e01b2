"""Client side of serving a trained PNG with a stock OpenAI-compatible server (`vllm serve`).

The server needs no change: the PNG is an ordinary image input, attached to every request in
the position used in training (first in the user turn, then the text).
"""

from __future__ import annotations

import base64
from pathlib import Path

from shared.artifact import check_metadata, decode_png
from shared.prompts import PROMPT_LAYOUT


def png_data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def art_messages(
    png_path: str | Path,
    user_text: str,
    system: str | None = None,
    expected_model: str | None = None,
) -> list[dict]:
    """OpenAI chat `messages`: [system], user = [image_url (the PNG as a data URL), text].

    With `expected_model`, the PNG's metadata must say it was trained for that model and
    ART's prompt layout, else ArtifactMismatchError.
    """
    png = Path(png_path).read_bytes()
    if expected_model is not None:
        _, metadata = decode_png(png)
        check_metadata(metadata, expected_model, prompt_layout=PROMPT_LAYOUT, source=str(png_path))
    messages: list[dict] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append(
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": png_data_url(png)}},
                {"type": "text", "text": user_text},
            ],
        }
    )
    return messages
