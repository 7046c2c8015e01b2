"""`model=tiny_hint`: the embedded reader that can also read a text hint, for context
distillation on the embedded default (`algo=distill`).

The same architecture, tokenizer and processor as the embedded `tiny` model
(`learner/models/tiny.py`, whose weights and cache key this module leaves untouched), and a
pretraining mix of two halves per step:
1. the reader's (image + question -> the picture's colour letter, soft targets), exactly as
   `tiny`'s pretraining draws them;
2. text only (no image): a hint naming a letter (`HINT_TEMPLATES` of the synthetic task, in
   the system turn or before the question) + a question -> that letter.
So the frozen model given the hint and no image (the teacher) answers the hinted letter, and
the frozen model given an image and no hint (the student) reads the letter off the picture:
the image can be trained to stand in for the text.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from learner.models.tiny import (
    IMAGE_SIZE,
    _answer_loss,
    _reader_inputs,
    build_config,
    build_processor,
    build_tokenizer,
)
from shared.tasks.synthetic import ANSWER_LETTERS, HINT_TEMPLATES, READER_QUESTIONS

logger = logging.getLogger(__name__)

TINY_HINT_MODEL_NAME = "tiny-qwen3.5-hint"
# Bump when anything below changes what is built (`make embedded-models` then rebuilds the
# shipped copy; loading checks that the two agree).
BUILDER_VERSION = 2


def _hint_texts(processor, gen: torch.Generator, batch_size: int):
    """Text-only prompts with a hint naming a random letter, and that letter (B,)."""
    labels_B = torch.randint(len(ANSWER_LETTERS), (batch_size,), generator=gen)
    texts = []
    for label in labels_B.tolist():
        letter = ANSWER_LETTERS[label]
        hint = HINT_TEMPLATES[int(torch.randint(len(HINT_TEMPLATES), (1,), generator=gen))]
        question = READER_QUESTIONS[int(torch.randint(len(READER_QUESTIONS), (1,), generator=gen))]
        hint = hint.format(letter=letter)
        if torch.rand(1, generator=gen).item() < 0.5:  # the hint as the system turn
            messages = [
                {"role": "system", "content": hint},
                {"role": "user", "content": [{"type": "text", "text": question}]},
            ]
        else:  # the hint before the question in the user turn
            text = f"{hint}\n\n{question}"
            messages = [{"role": "user", "content": [{"type": "text", "text": text}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        texts.append(prompt + letter + "<|im_end|>")
    return texts, labels_B


def pretrain_hint_reader(
    model, processor, steps: int = 200, batch_size: int = 32, seed: int = 0
) -> tuple[float, float]:
    """Teach the random model both skills; returns the final (reader, hint) top-1 accuracy."""
    gen = torch.Generator().manual_seed(seed)
    tokenizer = processor.tokenizer
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    letter_ids_K = torch.tensor(tokenizer.convert_tokens_to_ids(list(ANSWER_LETTERS)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    reader_acc = hint_acc = 0.0
    for step in range(steps):
        inputs, target_BK = _reader_inputs(processor, gen, batch_size)
        reader_loss, reader_acc = _answer_loss(model, inputs, target_BK, letter_ids_K, im_end)

        hint_texts, hint_labels_B = _hint_texts(processor, gen, batch_size)
        hint_inputs = processor(text=hint_texts, return_tensors="pt", padding=True)
        hint_target_BK = torch.nn.functional.one_hot(hint_labels_B, len(ANSWER_LETTERS)).float()
        hint_loss, hint_acc = _answer_loss(model, hint_inputs, hint_target_BK, letter_ids_K, im_end)

        optimizer.zero_grad()
        (reader_loss + hint_loss).backward()
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            logger.info(
                "hint-reader pretraining step %d loss %.3f + %.3f acc %.2f / %.2f",
                step,
                reader_loss.item(),
                hint_loss.item(),
                reader_acc,
                hint_acc,
            )
    model.eval()
    return reader_acc, hint_acc


def build_tiny_hint_model(out_dir: Path, pretrain_steps: int = 200, seed: int = 0) -> dict:
    """Build, pretrain and save the hint-reading tiny model and processor into `out_dir`."""
    # start-up time: a heavy library, loaded when this runs
    from transformers import Qwen3_5ForConditionalGeneration

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    config = build_config(tokenizer)
    model = Qwen3_5ForConditionalGeneration(config).float()
    start = time.perf_counter()
    with torch.random.fork_rng():
        reader_acc, hint_acc = pretrain_hint_reader(
            model, processor, steps=pretrain_steps, seed=seed
        )
    info = {
        "name": TINY_HINT_MODEL_NAME,
        "builder_version": BUILDER_VERSION,
        "parameters": sum(p.numel() for p in model.parameters()),
        "reader_accuracy": reader_acc,
        "hint_accuracy": hint_acc,
        "pretrain_seconds": round(time.perf_counter() - start, 1),
        "image_size": IMAGE_SIZE,
    }
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return info
