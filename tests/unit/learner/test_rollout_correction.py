"""Rollout correction (truncated importance sampling) on numbers worked out by hand, and in the
learner with an injected rollout/learner mismatch."""

import math

import pytest
import torch

from learner.dapo import dapo_loss
from learner.rollout_correction import correction_metrics, correction_weights

# two completions: 2 tokens and 1 token (the second row's second slot is padding)
OLD = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]])
ROLLOUT = torch.tensor([[-1.5, -1.0], [-0.5, 0.0]])
MASK = torch.tensor([[1.0, 1.0], [1.0, 0.0]])


def test_token_and_sequence_weights_by_hand():
    # log ratios old - rollout: [0.5, -1.0], [0.0]
    token = correction_weights(OLD, ROLLOUT, MASK, "token", cap=2.0)
    assert token.flatten().tolist() == pytest.approx([math.exp(0.5), math.exp(-1.0), 1.0, 0.0])
    capped = correction_weights(OLD, ROLLOUT, MASK, "token", cap=1.5)
    assert capped.flatten().tolist() == pytest.approx([1.5, math.exp(-1.0), 1.0, 0.0])
    seq = correction_weights(OLD, ROLLOUT, MASK, "sequence", cap=2.0)  # exp(0.5 - 1.0)
    assert seq.flatten().tolist() == pytest.approx([math.exp(-0.5)] * 2 + [1.0, 0.0])
    assert correction_weights(OLD, ROLLOUT, MASK, "off") is None
    with pytest.raises(ValueError, match="use one of"):
        correction_weights(OLD, ROLLOUT, MASK, "tis")


def test_the_diagnostics_by_hand():
    m = correction_metrics(OLD, ROLLOUT, MASK, cap=1.5)
    r = [math.exp(0.5), math.exp(-1.0), 1.0]
    assert m["kl"] == pytest.approx((-0.5 + 1.0 + 0.0) / 3)
    assert m["k3_kl"] == pytest.approx(sum(x - 1 - math.log(x) for x in r) / 3)
    # mean log-probs per completion: old -1.5 and -0.5, rollout -1.25 and -0.5
    assert m["ppl_ratio"] == pytest.approx((math.exp(-1.25 + 1.5) + 1.0) / 2)
    assert m["log_ppl_abs_diff"] == pytest.approx((0.25 + 0.0) / 2)
    assert m["chi2_token"] == pytest.approx(sum(x * x for x in r) / 3 - 1)
    assert m["chi2_seq"] == pytest.approx((math.exp(-0.5) ** 2 + 1.0) / 2 - 1)
    assert m["ess"] == pytest.approx(sum(r) ** 2 / (3 * sum(x * x for x in r)))
    assert m["capped_frac"] == pytest.approx(1 / 3)
    same = correction_metrics(OLD, OLD, MASK)
    assert same["kl"] == same["chi2_token"] == same["capped_frac"] == 0 and same["ess"] == 1


def test_the_weights_scale_each_tokens_term_of_the_loss():
    logprobs = OLD.clone().requires_grad_(True)
    adv = torch.tensor([1.0, -1.0])
    weights = correction_weights(OLD, ROLLOUT, MASK, "token", cap=2.0)
    plain, _ = dapo_loss(logprobs, OLD, adv, MASK)
    weighted, _ = dapo_loss(logprobs, OLD, adv, MASK, weights_BT=weights)
    # at ratio 1 every token contributes -A / 3: the weights multiply those terms
    assert plain.item() == pytest.approx(-(1 + 1 - 1) / 3)
    assert weighted.item() == pytest.approx(-(math.exp(0.5) + math.exp(-1.0) - 1) / 3)


def test_an_injected_mismatch_is_measured_and_corrected_in_the_learner(tiny_model_path):
    import dataclasses

    from learner.bench.cli import synthetic_groups
    from learner.bench.naive import optimized_gradient
    from learner.learner import Learner, LearnerSettings

    def learner(mode):
        return Learner(
            LearnerSettings(tiny_model_path, "tiny", 64, 64, init="noise", rollout_correction=mode)
        )

    off, token = learner("off"), learner("token")
    groups = synthetic_groups(off, prompts=2, group=4, tokens=6, seed=3)
    honest = off.compute_logprobs([c for g in groups for c in g.completions])
    it = iter(honest)
    # the engine is off by -1 nat on every other token (as if its kernels disagreed)
    groups = [
        dataclasses.replace(
            g,
            completions=tuple(
                dataclasses.replace(c, logprobs=tuple(x - (t % 2) for t, x in enumerate(next(it))))
                for c in g.completions
            ),
        )
        for g in groups
    ]
    grad_off, grad_token = optimized_gradient(off, groups), optimized_gradient(token, groups)
    rel = ((grad_token - grad_off).norm() / grad_off.norm()).item()
    assert rel > 0.1  # the weights acted: tokens with ratio e^1 capped at 2, others at 1
    metrics, _ = token.update(groups)
    assert metrics["rollout_corr/capped_frac"] == pytest.approx(0.5, abs=0.1)
    assert metrics["rollout_corr/kl"] == pytest.approx(-0.5, abs=0.05)
