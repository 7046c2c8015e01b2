"""The lean log-prob computation against the naive one, on the same batch."""

import pytest
import torch

from learner.bench.naive import full_logits_logprobs
from learner.pixels import PixelImage
from learner.policy import FrozenPolicy, load_model_and_processor


@pytest.fixture(scope="module")
def model_and_processor(tiny_model_path):
    return load_model_and_processor(tiny_model_path)


def _relative(a, b):
    return ((a - b).norm() / b.norm()).item()


def _batch(policy, processor, num_image_tokens):
    image_part = "<|vision_start|>" + "<|image_pad|>" * num_image_tokens + "<|vision_end|>"
    texts = ["Which letter?", "Read the picture and answer with one letter please."]
    prompt_ids = [
        processor.tokenizer(
            f"<|im_start|>user\n{image_part}{t}<|im_end|>\n<|im_start|>assistant\n"
        )["input_ids"]
        for t in texts
    ]
    gen = torch.Generator().manual_seed(0)
    completions = [torch.randint(0, 250, (n,), generator=gen).tolist() for n in (5, 9)]
    return prompt_ids, completions


def _logprobs_and_grad(policy, processor, fn, temperature=0.7):
    policy.temperature = temperature
    image = PixelImage.noise(64, 64, seed=1)
    encoded = policy.encode_image(image())
    prompt_ids, completions = _batch(policy, processor, encoded.num_tokens)
    logprobs_BT, mask_BT = fn(encoded, prompt_ids, completions)
    (logprobs_BT * mask_BT).sum().backward()
    return logprobs_BT.detach(), mask_BT, image.theta_CHW.grad


def test_lean_logprobs_and_gradient_equal_the_full_logits_ones(model_and_processor):
    model, processor = model_and_processor
    # A chunk of 3 positions: the chunked, checkpointed log-softmax path is exercised.
    policy = FrozenPolicy(model, processor, logits_chunk_elements=3 * 320)
    assert policy.chunk_tokens == 3
    lean, mask, grad_lean = _logprobs_and_grad(policy, processor, policy.sequence_logprobs)
    naive, mask_naive, grad_naive = _logprobs_and_grad(
        policy, processor, lambda *a: full_logits_logprobs(policy, *a)
    )
    assert torch.equal(mask, mask_naive)
    assert torch.allclose(lean * mask, naive * mask, atol=1e-5)
    assert (lean[mask.bool()] < 0).all()
    assert grad_lean.abs().sum() > 0
    assert _relative(grad_lean, grad_naive) <= 1e-5


def test_activation_checkpointing_gives_the_same_gradient(tiny_model_path):
    plain = FrozenPolicy(*load_model_and_processor(tiny_model_path))
    ckpt = FrozenPolicy(*load_model_and_processor(tiny_model_path), activation_checkpointing=True)
    layers = ckpt.model.model.language_model.layers
    assert all(layer.gradient_checkpointing for layer in layers)
    assert all(not p.requires_grad for p in ckpt.model.parameters())
    lp_a, _, grad_a = _logprobs_and_grad(plain, plain.processor, plain.sequence_logprobs)
    lp_b, _, grad_b = _logprobs_and_grad(ckpt, ckpt.processor, ckpt.sequence_logprobs)
    assert torch.allclose(lp_a, lp_b, atol=1e-6)
    assert grad_a.abs().sum() > 0
    assert _relative(grad_a, grad_b) <= 1e-5


def test_a_prompt_whose_image_tokens_disagree_with_the_image_is_refused(model_and_processor):
    model, processor = model_and_processor
    policy = FrozenPolicy(model, processor)
    encoded = policy.encode_image(PixelImage.gray(64, 64)())
    prompt_ids, completions = _batch(policy, processor, encoded.num_tokens + 1)
    with pytest.raises(ValueError, match="5 image tokens but the image has 4"):
        policy.sequence_logprobs(encoded, prompt_ids, completions)
