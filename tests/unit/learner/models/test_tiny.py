import json
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoTokenizer

from learner.models.tiny import SPECIAL_TOKENS, build_config, build_tokenizer
from shared.prompts import render_prompt


def test_tokenizer_has_the_real_qwen_special_tokens_and_template():
    tok = build_tokenizer()
    vocab = tok.get_vocab()
    for token in SPECIAL_TOKENS:
        assert token in vocab, token
        assert tok(token, add_special_tokens=False)["input_ids"] == [vocab[token]]
    text = tok.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert text == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert tok.decode(tok("Answer: 42, ok?")["input_ids"]) == "Answer: 42, ok?"


def test_random_init_is_deterministic():
    from transformers import Qwen3_5ForConditionalGeneration

    config = build_config(build_tokenizer())
    torch.manual_seed(0)
    a = Qwen3_5ForConditionalGeneration(config).state_dict()
    torch.manual_seed(0)
    b = Qwen3_5ForConditionalGeneration(config).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    n = sum(v.numel() for k, v in a.items())
    assert 100_000 <= n <= 5_000_000


def test_cached_model_loads_through_from_pretrained(tiny_model_path, tiny_processor):
    info = json.loads((Path(tiny_model_path) / "art_model.json").read_text())
    assert info["reader_accuracy"] >= 0.75
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_path)
    assert type(model).__name__ == "Qwen3_5ForConditionalGeneration"
    assert AutoTokenizer.from_pretrained(tiny_model_path).convert_tokens_to_ids("<|im_end|>") > 255
    prompt = render_prompt(tiny_processor, "What letter is it?")
    assert prompt.startswith("<|im_start|>user\n<|vision_start|><|image_pad|>")
