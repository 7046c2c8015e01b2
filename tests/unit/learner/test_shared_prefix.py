"""The shared-prefix forward (learner/shared_prefix.py) gives the padded forward's log-probs and
pixel gradient: float32 on the CPU, within 1e-5 relative, with completions of mixed lengths
(1 token to past the 64-token linear-attention chunk), prompts of lengths that are and are not
multiples of 64, a non-square image (its tokens' 3D positions span fewer positions than
tokens), every clip active, token-level rollout correction, G in {2, 8}, micro-batches that
cut groups, and activation checkpointing. The 0.8B architecture's test is slow
(`make test-all`).

The embedded model's linear-attention layer forgets within a token (its decay rates A are 5
to 12: exp(-7) per token) and its padding token embeds to zeros, so neither what the state
carries from a prompt to a completion nor padding leaking into it would show in a comparison;
`sharpen` gives the learners here decay rates that keep the whole prompt (about exp(-0.001)
per token) and a padding embedding of its own (as trained checkpoints have): a state that is
dropped, detached or polluted by padding then changes the figures (each was checked to fail
these tests).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from contextlib import contextmanager

import pytest
import torch

from learner.bench.common import sized_groups as make_groups
from learner.dapo import group_advantages
from learner.learner import Batch, Learner, LearnerSettings

TOLERANCE = 1e-5
CLIPS = {"eps_low": 0.1, "eps_high": 0.5, "clip_ratio_c": 1.5}


@contextmanager
def forward_as(learner, forward=None):
    """The learner with another shared-prefix forward (None: the padded forward)."""
    own, learner.policy.shared_prefix = learner.policy.shared_prefix, forward
    try:
        yield
    finally:
        learner.policy.shared_prefix = own


def sharpen(learner):
    """Slow decay in every linear-attention layer (the recurrent state keeps the prompt) and
    a non-zero embedding of the padding token."""
    with torch.no_grad():
        for module in learner.model.modules():
            if hasattr(module, "A_log") and hasattr(module, "conv1d"):
                module.A_log.fill_(math.log(0.02))
                module.dt_bias.fill_(-3.0)
        embedding = learner.model.get_input_embeddings().weight
        generator = torch.Generator().manual_seed(0)
        embedding[learner.policy.pad_token_id] = torch.randn(
            embedding.shape[1], generator=generator
        )
    return learner


def old_logprobs(learner, batch):
    return learner.old_logprobs(batch, skip=set())


def gradient(learner, batch, old_BT):
    """The trained tensors' DAPO gradient (one minibatch, old log-probs given) and the loss
    statistics."""
    advantages_B = group_advantages(batch.rewards_GN).reshape(-1)
    learner.optimizer.zero_grad(set_to_none=True)
    rows = list(range(len(batch)))
    totals = learner.accumulate_gradient(batch, rows, old_BT.clone(), advantages_B, set())
    grads = torch.cat([p.grad.detach().flatten().clone() for p in learner.trainable()])
    learner.optimizer.zero_grad(set_to_none=True)
    return grads, totals


def relative(a, b) -> float:
    return float((a - b).norm() / b.norm())


def compare(learner, groups, seed=0, reference_forward=None):
    """(log-prob relative difference, gradient relative difference, the clip fractions) of
    the learner's shared-prefix forward against `reference_forward` (None: padded)."""
    batch = Batch.from_groups(groups)
    _, mask_BT = batch.rollout_logprobs_BT(learner.policy.device)
    shared = old_logprobs(learner, batch)
    with forward_as(learner, reference_forward):
        reference = old_logprobs(learner, batch)
    # old log-probs far from the current ones (another policy's): every clip acts
    noise_BT = torch.randn(reference.shape, generator=torch.Generator().manual_seed(seed))
    old_BT = (reference + noise_BT.to(reference.device)) * mask_BT
    grad_shared, totals = gradient(learner, batch, old_BT)
    with forward_as(learner, reference_forward):
        grad_padded, _ = gradient(learner, batch, old_BT)
    clips = {k: totals[k] for k in ("clip_frac_low", "clip_frac_high", "clip_frac_dual")}
    assert grad_padded.abs().sum() > 0
    return (
        relative(shared * mask_BT, reference * mask_BT),
        relative(grad_shared, grad_padded),
        clips,
    )


@pytest.fixture(scope="module")
def learner(tiny_model_path):
    """64 x 128 pixels: 8 image tokens over 4 rotary positions. Micro-batches of 5 sequences
    cut groups of 8 (a prompt computed in two passes)."""
    learner = Learner(LearnerSettings(
        tiny_model_path, "tiny", 64, 128, init="noise", micro_batch_size=5,
        rollout_correction="token", **CLIPS,
    ))  # fmt: skip
    return sharpen(learner)


# completion lengths from 1 token to past one 64-token chunk
MIXED = (1, 17, 70, 3, 64, 33, 2, 65)


@pytest.mark.parametrize("group", [2, 8])
def test_logprobs_and_pixel_gradient_equal_the_padded_forward(learner, group):
    assert learner.policy.shared_prefix is not None
    groups = make_groups(learner, (64, 100, 128), group, MIXED)
    lp, grad, clips = compare(learner, groups)
    print(f"G={group}: log-probs {lp:.1e}, pixel gradient {grad:.1e} relative; clips {clips}")
    assert all(v > 0 for v in clips.values()), clips
    assert lp <= TOLERANCE and grad <= TOLERANCE


def test_with_activation_checkpointing(tiny_model_path):
    learner = Learner(
        LearnerSettings(
            tiny_model_path, "tiny", 64, 128, init="noise", activation_checkpointing=True, **CLIPS
        )
    )
    sharpen(learner)
    groups = make_groups(learner, (64, 77), 4, MIXED)
    lp, grad, _ = compare(learner, groups)
    print(f"checkpointed: log-probs {lp:.1e}, pixel gradient {grad:.1e} relative")
    assert lp <= TOLERANCE and grad <= TOLERANCE


@pytest.mark.parametrize("with_image", [True, False], ids=["image", "text-only"])
def test_the_lora_method(tiny_model_path, with_image):
    learner = Learner(LearnerSettings(
        tiny_model_path, "tiny", 64, 128, init="noise", method="lora", with_image=with_image,
        lora={"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj",
              "in_proj_qkv", "out_proj", "down_proj"]},
        **CLIPS,
    ))  # fmt: skip
    sharpen(learner)

    def text_only(groups):  # the image's tokens left out of the prompts
        image_id = learner.policy.image_token_id
        return [
            dataclasses.replace(
                g,
                completions=tuple(
                    dataclasses.replace(
                        c, prompt_token_ids=tuple(t for t in c.prompt_token_ids if t != image_id)
                    )
                    for c in g.completions
                ),
            )
            for g in groups
        ]

    def batch_groups():
        groups = make_groups(learner, (64, 90), 4, MIXED)
        return groups if with_image else text_only(groups)

    learner.update(batch_groups())  # LoRA's B starts at zero: a step, so all of it moves
    groups = batch_groups()  # sampled with the new version
    lp, grad, _ = compare(learner, groups)
    print(f"LoRA ({'image' if with_image else 'text-only'}): log-probs {lp:.1e}, adapter "
          f"gradient {grad:.1e} relative")  # fmt: skip
    assert lp <= TOLERANCE and grad <= TOLERANCE


def test_completion_positions_continue_the_prompts_as_the_model_numbers_them(learner):
    """The rotary positions the completions get are those of the model's own `get_rope_index`
    on the whole sequence (with the image: not the prompt's length)."""
    forward = learner.policy.shared_prefix
    (group,) = make_groups(learner, (70,), 1, (12,))
    prompt, completion = group.completions[0].prompt_token_ids, group.completions[0].token_ids
    encoded = learner.encode(grad=False)
    prompt_3P, next_U = forward.prompt_positions(encoded, [prompt])
    ids = torch.tensor([list(prompt) + list(completion)])
    full_31L, _ = learner.model.model.get_rope_index(
        ids, mm_token_type_ids=(ids == learner.policy.image_token_id).int(),
        image_grid_thw=encoded.grid_thw,
    )  # fmt: skip
    assert torch.equal(prompt_3P, full_31L[:, 0, : len(prompt)])
    expected_3C = full_31L[:, 0, len(prompt) :]
    ours_C = int(next_U[0]) + torch.arange(len(completion))
    assert int(next_U[0]) != len(prompt)  # the image's tokens share positions
    assert torch.equal(expected_3C, ours_C.expand(3, -1))


def test_a_pass_of_distinct_prompts_takes_the_padded_forward(learner, monkeypatch):
    calls = []
    monkeypatch.setattr(
        learner.policy.shared_prefix, "sequence_logprobs", lambda *a: calls.append(a)
    )
    groups = make_groups(learner, (64, 65), 1, (5,))
    batch = Batch.from_groups(groups)
    old_logprobs(learner, batch)
    assert calls == []


def test_switched_off_or_unsupported_runs_the_padded_forward(tiny_model_path, caplog):
    off = Learner(LearnerSettings(tiny_model_path, "tiny", 64, 64, shared_prefix=False))
    assert off.policy.shared_prefix is None

    from learner.policy import FrozenPolicy, load_model_and_processor

    model, processor = load_model_and_processor(tiny_model_path)
    model.config._attn_implementation = "flash_attention_2"  # an implementation it lacks
    with caplog.at_level(logging.INFO, logger="learner.policy"):
        policy = FrozenPolicy(model, processor)
    assert policy.shared_prefix is None
    lines = [r.getMessage() for r in caplog.records if "shared-prefix" in r.getMessage()]
    assert len(lines) == 1 and "flash_attention_2" in lines[0], lines


def test_the_learner_reports_which_linear_attention_path_runs(tiny_model_path, caplog):
    from learner.linear_attention import kernel_paths, report_kernel_paths

    learner = Learner(LearnerSettings(tiny_model_path, "tiny", 64, 64))
    # no fla and no causal-conv1d here (they need CUDA): transformers runs its references
    assert kernel_paths(learner.model) == {
        "chunk_gated_delta_rule": "torch",
        "causal_conv1d": "torch",
    }
    with caplog.at_level(logging.INFO, logger="learner.linear_attention"):
        on_cpu = report_kernel_paths(learner.model, torch.device("cpu"))
        on_cuda = report_kernel_paths(learner.model, torch.device("cuda"))
    assert on_cpu == {} and on_cuda == {"linear_attention_reference": 1.0}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "torch reference" in warnings[0].getMessage()
    assert "flash-linear-attention and causal-conv1d" in warnings[0].getMessage()


@pytest.mark.slow
def test_the_0_8b_architecture(real_size_learner):
    """The published Qwen3.5-0.8B architecture (random weights, float32, a 256 x 256 image:
    64 image tokens), as its preset runs it (activation checkpointing): two prompts of
    different lengths, four completions each, from one token to 65. Sized for 2 CPU cores:
    the padded reference is what takes the time."""
    group, prompt_lengths, completion_lengths = 4, (128, 97), (1, 65, 9, 23, 40, 3, 17, 12)
    groups = make_groups(real_size_learner, prompt_lengths, group, completion_lengths)
    lp, grad, clips = compare(real_size_learner, groups)
    print(f"0.8B, G={group}: log-probs {lp:.1e}, pixel gradient {grad:.1e} relative; {clips}")
    assert all(v > 0 for v in clips.values()), clips
    assert lp <= TOLERANCE and grad <= TOLERANCE


@pytest.fixture(scope="module")
def real_size_learner():
    from learner.models import resolve_model_path

    return Learner(LearnerSettings(
        resolve_model_path("qwen3_5_0_8b_random"), "qwen3_5_0_8b_random", 256, 256,
        init="noise", activation_checkpointing=True, rollout_correction="token", **CLIPS,
    ))  # fmt: skip


# ---- on a GPU (make test-gpu; skipped elsewhere: they have not run where no GPU was lent) ----
GPU_LOGPROBS, GPU_GRADIENT = 1e-3, 1e-2  # fla's and causal-conv1d's kernels vs float32 torch


@pytest.fixture(scope="module")
def cuda_learner(tiny_model_path):
    learner = Learner(LearnerSettings(
        tiny_model_path, "tiny", 64, 128, init="noise", device="cuda", micro_batch_size=5,
        rollout_correction="token", **CLIPS,
    ))  # fmt: skip
    return sharpen(learner)


@pytest.mark.gpu
def test_on_cuda_the_learner_runs_the_fast_kernels(cuda_learner):
    """What the README's and the Dockerfile's CUDA install bring: flash-linear-attention and
    causal-conv1d, chosen by transformers and used by the shared-prefix forward."""
    from learner.linear_attention import kernel_paths

    assert kernel_paths(cuda_learner.model) == {
        "chunk_gated_delta_rule": "fla",
        "causal_conv1d": "causal-conv1d",
    }
    assert cuda_learner.kernel_metrics == {"linear_attention_reference": 0.0}
    assert cuda_learner.policy.shared_prefix.kernels.names == ("fla", "causal-conv1d")


@pytest.mark.gpu
@pytest.mark.parametrize("group", [2, 8])
def test_on_cuda_the_fast_kernels_with_initial_states_equal_the_torch_reference(
    cuda_learner, group
):
    """The shared-prefix forward with fla's `initial_state` and causal-conv1d's
    `initial_states` against the same forward through the torch references."""
    from learner.shared_prefix import SharedPrefixForward

    reference = SharedPrefixForward(cuda_learner.policy, kernels="torch")
    groups = make_groups(cuda_learner, (64, 100, 128), group, MIXED)
    lp, grad, clips = compare(cuda_learner, groups, reference_forward=reference)
    print(f"cuda G={group}, fast vs torch: log-probs {lp:.1e}, pixel gradient {grad:.1e}")
    assert all(v > 0 for v in clips.values()), clips
    assert lp <= GPU_LOGPROBS and grad <= GPU_GRADIENT


@pytest.mark.gpu
@pytest.mark.parametrize("group", [2, 8])
def test_on_cuda_the_shared_prefix_equals_the_padded_forward(cuda_learner, group):
    """Both through the fast kernels (transformers' layers in the padded forward)."""
    groups = make_groups(cuda_learner, (64, 100, 128), group, MIXED)
    lp, grad, _ = compare(cuda_learner, groups)
    print(f"cuda G={group}, shared-prefix vs padded: log-probs {lp:.1e}, gradient {grad:.1e}")
    assert lp <= GPU_LOGPROBS and grad <= GPU_GRADIENT


@pytest.mark.gpu
def test_on_cuda_the_0_8b_architecture():
    from learner.models import resolve_model_path

    learner = Learner(LearnerSettings(
        resolve_model_path("qwen3_5_0_8b_random"), "qwen3_5_0_8b_random", 256, 256,
        init="noise", device="cuda", activation_checkpointing=True, **CLIPS,
    ))  # fmt: skip
    groups = make_groups(learner, (184, 141), 8, (1, 256, 9, 65, 200, 2, 64, 31))
    lp, grad, _ = compare(learner, groups)
    print(f"cuda 0.8B: shared-prefix vs padded: log-probs {lp:.1e}, gradient {grad:.1e}")
    assert lp <= GPU_LOGPROBS and grad <= GPU_GRADIENT
