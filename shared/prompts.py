"""Prompt rendering, one function for training, evaluation and serving.

ART's layout (as in the paper's evaluation code): one user turn, the image first, then the
question; thinking disabled by default.
"""

from __future__ import annotations

from typing import Any, Protocol

IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
PROMPT_LAYOUT = "user:image-then-text"
# Tokens a sampler must never emit: a completion holding one cannot be fed back to the model,
# which counts image tokens to place image features. Both engines and the learner mask them.
VISION_SPECIAL_TOKENS = (
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


class ChatTemplater(Protocol):
    def apply_chat_template(self, conversation: list[dict], **kwargs: Any) -> str: ...


def suppressed_token_ids(tokenizer) -> list[int]:
    """Ids of the vision special tokens present in `tokenizer`'s vocabulary."""
    vocab = tokenizer.get_vocab()
    return sorted(vocab[t] for t in VISION_SPECIAL_TOKENS if t in vocab)


def chat_messages(question: str, system: str | None = None, with_image: bool = True) -> list[dict]:
    """Chat messages in ART's layout: the image part first, then the question text."""
    messages: list[dict] = []
    if system:
        messages.append({"role": "system", "content": system})
    content: list[dict] = [{"type": "image"}] if with_image else []
    content.append({"type": "text", "text": question})
    messages.append({"role": "user", "content": content})
    return messages


def render_prompt(
    templater: ChatTemplater,
    question: str,
    system: str | None = None,
    enable_thinking: bool = False,
    with_image: bool = True,
) -> str:
    """The generation prompt via the model's chat template, with one image placeholder (or
    none for the text-only baseline). Training, evaluation and serving all render here."""
    text = templater.apply_chat_template(
        chat_messages(question, system, with_image),
        add_generation_prompt=True,
        tokenize=False,
        enable_thinking=enable_thinking,
    )
    expected = 1 if with_image else 0
    if text.count("<|image_pad|>") != expected:
        raise ValueError(
            f"the chat template must render exactly {expected} <|image_pad|> for this prompt; "
            f"got {text.count('<|image_pad|>')} in {text!r}"
        )
    return text
