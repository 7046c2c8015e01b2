import base64

import numpy as np
import pytest

from shared.artifact import ArtifactMismatchError, encode_png
from shared.prompts import PROMPT_LAYOUT
from shared.serving import art_messages


def _png(tmp_path, model="Qwen/Qwen3.5-0.8B"):
    path = tmp_path / "art.png"
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    path.write_bytes(
        encode_png(
            pixels, {"model": model, "height": 32, "width": 32, "prompt_layout": PROMPT_LAYOUT}
        )
    )
    return path


def test_art_messages_is_an_openai_user_message_image_first(tmp_path):
    path = _png(tmp_path)
    messages = art_messages(path, "What is 2 + 2?")
    assert len(messages) == 1 and messages[0]["role"] == "user"
    image_part, text_part = messages[0]["content"]
    assert image_part["type"] == "image_url"
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == path.read_bytes()
    assert text_part == {"type": "text", "text": "What is 2 + 2?"}


def test_system_prompt_goes_first(tmp_path):
    messages = art_messages(_png(tmp_path), "q", system="Be brief.")
    assert [m["role"] for m in messages] == ["system", "user"]


def test_png_of_another_model_is_refused(tmp_path):
    path = _png(tmp_path, model="Qwen/Qwen3.5-9B")
    with pytest.raises(ArtifactMismatchError, match="Qwen3.5-9B"):
        art_messages(path, "q", expected_model="Qwen/Qwen3.5-0.8B")
    assert art_messages(path, "q", expected_model="Qwen/Qwen3.5-9B")
