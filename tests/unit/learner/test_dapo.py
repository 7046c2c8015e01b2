"""DAPO against numbers computed by hand."""

import math

import pytest
import torch

from learner.dapo import dapo_loss, group_advantages, keep_informative_groups, overlong_penalty

# 2 groups x 2 completions, up to 3 tokens; ratios chosen to hit every clip case.
RATIOS = [
    [1.0, 1.5, 0.5],  # A=+1: plain, clipped high (1.28), ratio below 1-eps with A>0 (unclipped)
    [0.5, 1.5, 99.0],  # A=-1: clipped low (0.8), ratio above 1+eps with A<0 (unclipped), pad
    [1.2, 1.3, 0.9],  # A=+2: inside, clipped high, inside
    [0.7, 99.0, 99.0],  # A=-2: clipped low, pad, pad
]
MASK = [[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]]
ADV = [1.0, -1.0, 2.0, -2.0]
# Per-token min(rho*A, clip(rho)*A), by hand:
# seq0: 1.0 + 1.28 + 0.5 = 2.78; seq1: -0.8 - 1.5 = -2.3; seq2: 2.4 + 2.56 + 1.8 = 6.76;
# seq3: -1.6.  Sum 5.64 over 9 tokens.
EXPECTED_LOSS = -5.64 / 9


def _inputs():
    logp = torch.log(torch.tensor(RATIOS)).requires_grad_(True)
    return logp, torch.zeros(4, 3), torch.tensor(ADV), torch.tensor(MASK, dtype=torch.float32)


def test_loss_matches_hand_computation_with_clip_higher():
    logp, old, adv, mask = _inputs()
    loss, metrics = dapo_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.28)
    assert loss.item() == pytest.approx(EXPECTED_LOSS, abs=1e-6)
    assert metrics["clip_frac_high"] == pytest.approx(2 / 9)
    assert metrics["clip_frac_low"] == pytest.approx(2 / 9)


def test_token_level_normalization_not_per_sequence():
    logp, old, adv, mask = _inputs()
    loss, _ = dapo_loss(logp, old, adv, mask)
    per_sequence_mean = -(2.78 / 3 - 2.3 / 2 + 6.76 / 3 - 1.6 / 1) / 4
    assert not math.isclose(loss.item(), per_sequence_mean, abs_tol=1e-3)
    # With micro-batches the normalizer is the whole batch's token count.
    half, _ = dapo_loss(logp[:2], old[:2], adv[:2], mask[:2], num_tokens=9)
    other, _ = dapo_loss(logp[2:], old[2:], adv[2:], mask[2:], num_tokens=9)
    assert (half + other).item() == pytest.approx(EXPECTED_LOSS, abs=1e-6)


def test_clipped_tokens_get_no_gradient():
    logp, old, adv, mask = _inputs()
    loss, _ = dapo_loss(logp, old, adv, mask)
    loss.backward()
    grad = logp.grad
    for b, t in [(0, 1), (1, 0), (2, 1), (3, 0)]:  # the clipped tokens
        assert grad[b, t] == 0
    for b, t in [(0, 0), (0, 2), (1, 1), (2, 0), (2, 2)]:  # the active ones: -A * rho / 9
        assert grad[b, t].item() == pytest.approx(-ADV[b] * RATIOS[b][t] / 9, rel=1e-5)
    assert torch.all(grad[torch.tensor(MASK) == 0] == 0)


def test_eps_high_is_independent_of_eps_low():
    logp, old, adv, mask = _inputs()
    symmetric, _ = dapo_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.2)
    # clip-higher raises the ceiling for positive advantages: 1.28 -> 1.2 and 2.56 -> 2.4
    assert symmetric.item() == pytest.approx(-(5.64 - 0.08 - 0.16) / 9, abs=1e-6)


def test_group_advantages_use_the_unbiased_std():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
    adv = group_advantages(rewards)
    # mean 0.5; unbiased std sqrt((4 * 0.25) / 3) = 0.57735 (the population std would be 0.5)
    expected = 0.5 / math.sqrt(1.0 / 3.0)
    assert torch.allclose(adv[0], torch.tensor([1.0, -1.0, -1.0, 1.0]) * expected, atol=1e-5)
    assert torch.all(adv[1] == 0)


def test_dynamic_sampling_keeps_groups_by_accuracy_by_default():
    accuracies = [[1, 1, 1], [0, 1, 0], [0, 0, 0], [0, 0, 1], [1, 1, 1]]
    assert keep_informative_groups(accuracies) == [1, 3]


def test_shaped_rewards_inside_an_all_wrong_or_all_right_group_are_not_kept():
    # All wrong on GSM8K: formatted-but-wrong 0.1, plus tiny shaping differences.
    all_wrong = ([0.0, 0.0, 0.0, 0.0], [0.1, 0.1, 0.1003, 0.1001])
    # All right, one completion inside the overlong buffer.
    all_right = ([1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.75])
    # With the reward filter they would get full-size advantages:
    assert group_advantages(torch.tensor([all_wrong[1]])).max() > 1.0
    assert group_advantages(torch.tensor([all_right[1]])).min() < -1.0
    accuracies, rewards = zip(all_wrong, all_right, strict=True)
    assert keep_informative_groups(accuracies, rewards) == []
    assert keep_informative_groups(accuracies, rewards, metric="reward") == [0, 1]
    assert keep_informative_groups(accuracies, rewards, "reward", min_reward_std=0.01) == [1]


@pytest.mark.parametrize(
    ("length", "expected"),
    [(10, 0.0), (16, 0.0), (17, -0.25), (18, -0.5), (20, -1.0)],
)
def test_overlong_penalty_at_buffer_edges(length, expected):
    # L_max 20, buffer 4: free up to 16, then -1/4 per token down to -1 at 20.
    assert overlong_penalty(length, max_length=20, buffer=4) == pytest.approx(expected)


def test_overlong_penalty_disabled_without_buffer():
    assert overlong_penalty(20, max_length=20, buffer=0) == 0.0


def test_dual_clip_bounds_negative_advantages_from_below():
    # A = -1 with ratios 5.0 (dual clip active: min(-5, -1.28) = -5 < -3, objective -3),
    # 2.0 (min(-2, -1.28) = -2 >= -3: not active) and 0.5 (clipped low: -0.8).
    # A = +1 with ratio 5.0: clip-higher gives 1.28, the dual clip never touches A > 0.
    logp = torch.log(torch.tensor([[5.0, 2.0, 0.5], [5.0, 1.0, 1.0]])).requires_grad_(True)
    old, mask = torch.zeros(2, 3), torch.ones(2, 3)
    adv = torch.tensor([-1.0, 1.0])
    loss, metrics = dapo_loss(logp, old, adv, mask, clip_ratio_c=3.0)
    expected = -((-3.0 - 2.0 - 0.8) + (1.28 + 1.0 + 1.0)) / 6
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert metrics["clip_frac_dual"] == pytest.approx(1 / 6)
    loss.backward()
    assert logp.grad[0, 0] == 0  # no gradient through the dual-clipped token
    assert logp.grad[0, 1].item() == pytest.approx(2.0 / 6, rel=1e-5)  # -A * rho / 6
    off, off_metrics = dapo_loss(logp.detach(), old, adv, mask, clip_ratio_c=None)
    assert off.item() == pytest.approx(-((-5.0 - 2.0 - 0.8) + 3.28) / 6, abs=1e-6)
    assert off_metrics["clip_frac_dual"] == 0.0
