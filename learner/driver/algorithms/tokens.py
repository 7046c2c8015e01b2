"""Token ids as the engines make them (`rollout_worker/hf_engine.py`: the model's processor on
the rendered prompt and the image), for prompts nobody sampled from: the targets of sft, the
unsampled side of distillation."""

from __future__ import annotations

from PIL import Image

END_OF_TURN = "<|im_end|>"


class PromptTokens:
    """Prompt and completion token ids; the image placeholder is expanded to exactly the
    engine's number of image tokens for the run's image size (the learner checks it)."""

    def __init__(self, processor, height: int, width: int):
        self.processor, self.tokenizer = processor, processor.tokenizer
        self.blank = Image.new("RGB", (width, height))  # only its size counts
        self.end_of_turn = self.tokenizer.convert_tokens_to_ids(END_OF_TURN)
        if self.end_of_turn is None or self.end_of_turn == self.tokenizer.unk_token_id:
            self.end_of_turn = self.tokenizer.eos_token_id
        self._cache: dict[tuple[str, bool], tuple[int, ...]] = {}

    def prompt(self, text: str, with_image: bool) -> tuple[int, ...]:
        key = (text, with_image)
        if key not in self._cache:
            images = [self.blank] if with_image else None
            ids = self.processor(text=[text], images=images, return_tensors="pt")["input_ids"]
            self._cache[key] = tuple(int(t) for t in ids[0].tolist())
        return self._cache[key]

    def completion(self, text: str) -> tuple[int, ...]:
        """The assistant's turn: the text's tokens, then the end-of-turn token."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return (*(int(t) for t in ids), int(self.end_of_turn))
