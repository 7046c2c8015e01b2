"""The published Qwen3.5-0.8B architecture, checked without building the weights."""

import torch

from learner.models import qwen3_5_0_8b_random as arch
from learner.preprocess import VisionSpec


def test_architecture_has_the_published_sizes():
    from transformers import Qwen3_5ForConditionalGeneration

    config = arch.build_config()
    text, vision = config.text_config, config.vision_config
    assert (text.vocab_size, text.hidden_size, text.intermediate_size) == (248320, 1024, 3584)
    assert (text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads) == (
        24,
        8,
        2,
    )
    assert text.head_dim == 256 and text.layer_types.count("full_attention") == 6
    assert (vision.depth, vision.hidden_size, vision.out_hidden_size) == (12, 768, 1024)
    with torch.device("meta"):
        model = Qwen3_5ForConditionalGeneration(config)
    # 873.4M in the release = these 853.0M + the 20.4M of the multi-token-prediction layer,
    # which transformers does not instantiate.
    assert sum(p.numel() for p in model.parameters()) == 852_985_920
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight


def test_tokenizer_and_processor_use_the_real_ids_and_image_settings():
    tokenizer = arch.build_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    assert ids("<|endoftext|>") == 248044 and ids("<|im_end|>") == 248046
    assert ids("<|image_pad|>") == arch.TOKEN_IDS["image_token_id"] == 248056
    assert ids("<|vision_start|>") == 248053 and ids("<think>") == 248068
    assert tokenizer.decode(tokenizer("Answer: 42")["input_ids"]) == "Answer: 42"
    spec = VisionSpec.from_image_processor(arch.build_processor(tokenizer).image_processor)
    assert spec.num_image_tokens(256, 256) == 64
    assert spec.valid_square_sizes()[0] == 256  # 256x256 is the smallest size it takes as is
