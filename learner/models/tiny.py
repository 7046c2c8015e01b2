"""The embedded default model: a tiny Qwen3.5 vision-language model built on the fly.

Nothing can be downloaded on a fresh offline machine, so `make train` and the tests run on a
model this module builds deterministically:

1. A byte-level BPE tokenizer (256 byte symbols, no merges) plus the real Qwen chat and vision
   special tokens, with a Qwen-style chat template (image parts, `enable_thinking`).
2. A `Qwen3_5ForConditionalGeneration` with a few hundred thousand random weights (one linear-
   attention and one full-attention layer, a one-block vision tower).
3. A short "reader" pretraining (seeded, CPU, a few minutes): the model learns to answer the
   colour class of the picture as one letter, A..H, the three bits being whether the mean red,
   green and blue are above `READER_THRESHOLD`. A random model barely reacts to its image, so
   this is what makes the image able to steer the frozen model, as it steers a real VLM. The
   threshold sits above mid-gray on purpose: the gray seed image reads as A (no bit set) by a
   clear margin, so the synthetic task's target F is not the seed's answer by chance of the
   build. After this step the weights never change again.

What the pretraining produces depends on the CPU and the library versions (float summation
order), so the built model is not rebuilt on a user's machine: it is shipped with the
repository (`learner/models/shipped/tiny/`, see `learner/models/embedded.py`) and loaded
through the same `from_pretrained` path a hub model uses. `make embedded-models` rebuilds it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from learner.models.common import (
    CHAT_TEMPLATE,
    QWEN_SPECIAL_TOKENS,
    build_byte_tokenizer,
)
from shared.tasks.synthetic import ANSWER_LETTERS, READER_QUESTIONS

logger = logging.getLogger(__name__)

TINY_MODEL_NAME = "tiny-qwen3.5"
# Bump when anything below changes what is built; the shipped model records the version it was
# built by, and loading it checks that the two agree (`make embedded-models` rebuilds).
BUILDER_VERSION = 8

# The real Qwen chat, vision and tool special tokens (ids follow the 256 byte symbols).
SPECIAL_TOKENS = QWEN_SPECIAL_TOKENS[:16] + QWEN_SPECIAL_TOKENS[-2:]

IMAGE_SIZE = 64
PATCH_SIZE = 16
MERGE_SIZE = 2


READER_TEMPERATURE = 0.08
# A channel's bit is set when its mean is above this. Mid-gray (the seed, 128/255) is 0.6
# temperatures below it: the gray seed reads as A with probability ~0.27, the target F ~0.08.
READER_THRESHOLD = 0.55


def colour_class_probs(
    pixels_BCHW: torch.Tensor, temperature: float = READER_TEMPERATURE
) -> torch.Tensor:
    """The reader's target distribution over the 8 letters, shape (B, 8).

    Bit c is "mean of channel c above READER_THRESHOLD", held with probability
    sigmoid((mean - READER_THRESHOLD) / T): a mid-gray picture leans to A (no bit set), a
    saturated corner colour gives one letter ~0.98.
    """
    mean_BC = pixels_BCHW.mean(dim=(2, 3))
    p1_BC = torch.sigmoid((mean_BC - READER_THRESHOLD) / temperature)
    classes_K3 = torch.tensor([[(k >> 2) & 1, (k >> 1) & 1, k & 1] for k in range(8)])
    probs_BK3 = torch.where(classes_K3.bool(), p1_BC[:, None, :], 1 - p1_BC[:, None, :])
    return probs_BK3.prod(-1)


def build_tokenizer():
    return build_byte_tokenizer(SPECIAL_TOKENS)


def build_processor(tokenizer):
    # start-up time: a heavy library, loaded when this runs
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor

    # start-up time: a heavy library, loaded when this runs
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(
        patch_size=PATCH_SIZE,
        temporal_patch_size=2,
        merge_size=MERGE_SIZE,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        size={"shortest_edge": 32 * 32, "longest_edge": 512 * 512},
    )
    video_processor = Qwen3VLVideoProcessor(patch_size=PATCH_SIZE, merge_size=MERGE_SIZE)
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def build_config(tokenizer):
    # start-up time: a heavy library, loaded when this runs
    from transformers import Qwen3_5Config

    vocab_size = 64 * ((len(tokenizer) + 63) // 64)
    text_config = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "layer_types": ["linear_attention", "full_attention"],
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        # Head sizes vLLM's CPU kernels accept (attention head dim >= 32; the linear-attention
        # kernel takes key/value head dims 64 or 128), so both engines serve this one model.
        "head_dim": 32,
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": 64,
        "linear_value_head_dim": 64,
        "linear_num_key_heads": 2,
        "linear_num_value_heads": 4,
        "max_position_embeddings": 4096,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.5,
            # sum == head_dim * partial_rotary_factor / 2 (vLLM checks it)
            "mrope_section": [4, 2, 2],
            "mrope_interleaved": True,
        },
        "tie_word_embeddings": False,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
    }
    vision_config = {
        "depth": 1,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 4,
        "patch_size": PATCH_SIZE,
        "spatial_merge_size": MERGE_SIZE,
        "temporal_patch_size": 2,
        "out_hidden_size": 64,
        "num_position_embeddings": 64,
        "rope_parameters": {"rope_type": "axial"},
    }
    ids = tokenizer.convert_tokens_to_ids
    return Qwen3_5Config(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )


def _reader_batch(processor, gen: torch.Generator, batch_size: int):
    """Random pictures, a question each, and the letter the reader must answer."""
    # Half the pictures near mid-gray, where the reader must learn to be unsure.
    uniform_B3 = torch.rand(batch_size, 3, generator=gen)
    near_gray_B3 = 0.5 + 0.12 * torch.randn(batch_size, 3, generator=gen)
    pick_B1 = torch.rand(batch_size, 1, generator=gen) < 0.5
    base_B3 = torch.where(pick_B1, near_gray_B3, uniform_B3).clamp(0, 1)
    texture_BCHW = torch.rand(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen) - 0.5
    amplitude_B = torch.rand(batch_size, 1, 1, 1, generator=gen) * 0.5
    pixels_BCHW = (base_B3[:, :, None, None] + amplitude_B * texture_BCHW).clamp(0, 1)
    pixels_BCHW = (pixels_BCHW * 255).round() / 255
    target_BK = colour_class_probs(pixels_BCHW)
    labels_B = torch.multinomial(target_BK, 1, generator=gen).squeeze(1)
    questions = [
        READER_QUESTIONS[int(i)]
        for i in torch.randint(len(READER_QUESTIONS), (batch_size,), generator=gen)
    ]
    return pixels_BCHW, questions, labels_B, target_BK


def _reader_inputs(processor, gen: torch.Generator, batch_size: int):
    """A reader batch as the model's inputs (image, question, the sampled letter, <|im_end|>)
    and its soft letter targets (B, 8)."""
    pixels_BCHW, questions, labels_B, target_BK = _reader_batch(processor, gen, batch_size)
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
            add_generation_prompt=True,
            tokenize=False,
        )
        + ANSWER_LETTERS[int(label)]
        + "<|im_end|>"
        for q, label in zip(questions, labels_B, strict=True)
    ]
    images = [(p * 255).round().to(torch.uint8) for p in pixels_BCHW]
    return processor(text=texts, images=images, return_tensors="pt", padding=True), target_BK


def _answer_loss(model, inputs, target_BK, letter_ids_K, im_end: int):
    """Loss on the answer only: soft cross-entropy on the letter (the reader is as unsure as
    the picture is ambiguous; targets (B, 8)), hard cross-entropy on the <|im_end|> that
    follows it; returns (loss, top-1 accuracy)."""
    lengths_B = inputs["attention_mask"].sum(-1)
    rows = torch.arange(len(lengths_B))
    logits = model(**inputs).logits
    letter_logp_BV = torch.log_softmax(logits[rows, lengths_B - 3], -1)
    end_logp_BV = torch.log_softmax(logits[rows, lengths_B - 2], -1)
    loss = -(target_BK * letter_logp_BV[:, letter_ids_K]).sum(-1).mean()
    loss = loss - end_logp_BV[:, im_end].mean()
    with torch.no_grad():
        accuracy = (letter_logp_BV.argmax(-1) == letter_ids_K[target_BK.argmax(-1)]).float().mean()
    return loss, accuracy.item()


def pretrain_reader(
    model, processor, steps: int = 200, batch_size: int = 32, seed: int = 0
) -> float:
    """Teach the random model to answer the picture's colour class; returns final top-1 accuracy."""
    gen = torch.Generator().manual_seed(seed)
    tokenizer = processor.tokenizer
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    letter_ids_K = torch.tensor(tokenizer.convert_tokens_to_ids(list(ANSWER_LETTERS)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    accuracy = 0.0
    for step in range(steps):
        inputs, target_BK = _reader_inputs(processor, gen, batch_size)
        loss, accuracy = _answer_loss(model, inputs, target_BK, letter_ids_K, im_end)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            logger.info(
                "reader pretraining step %d loss %.3f acc %.2f", step, loss.item(), accuracy
            )
    model.eval()
    return accuracy


def build_tiny_model(out_dir: Path, pretrain_steps: int = 200, seed: int = 0) -> dict:
    """Build, pretrain and save the tiny model and processor into `out_dir`."""
    # start-up time: a heavy library, loaded when this runs
    from transformers import Qwen3_5ForConditionalGeneration

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    config = build_config(tokenizer)
    model = Qwen3_5ForConditionalGeneration(config).float()
    start = time.perf_counter()
    with torch.random.fork_rng():
        accuracy = pretrain_reader(model, processor, steps=pretrain_steps, seed=seed)
    info = {
        "name": TINY_MODEL_NAME,
        "builder_version": BUILDER_VERSION,
        "parameters": sum(p.numel() for p in model.parameters()),
        "reader_accuracy": accuracy,
        "pretrain_seconds": round(time.perf_counter() - start, 1),
        "image_size": IMAGE_SIZE,
    }
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return info
