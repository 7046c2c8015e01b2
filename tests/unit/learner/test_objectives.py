"""The policy-gradient objectives (learner/objectives/) against numbers computed by hand: a
2-group, up-to-3-token batch whose ratios hit every clip case (the DAPO test's), one test per
objective for its loss, its gradient and what sets it apart from the others."""

import math

import pytest
import torch

from learner.dapo import dapo_loss, group_advantages
from learner.objectives import POLICY_LOSSES, LossSettings, aggregate, get_policy_loss
from shared.errors import UserError

# 2 groups x 2 completions, up to 3 tokens; old log-probs 0, so log-probs are log-ratios.
RATIOS = [
    [1.0, 1.5, 0.5],  # A=+1
    [0.5, 1.5, 99.0],  # A=-1, 2 tokens
    [1.2, 1.3, 0.9],  # A=+2
    [0.7, 99.0, 99.0],  # A=-2, 1 token
]
MASK = [[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]]
LENGTHS = [3, 2, 3, 1]
ADV = [1.0, -1.0, 2.0, -2.0]


def _inputs():
    logp = torch.log(torch.tensor(RATIOS)).requires_grad_(True)
    return logp, torch.zeros(4, 3), torch.tensor(ADV), torch.tensor(MASK, dtype=torch.float32)


def _loss(name, **settings):
    spec = get_policy_loss(name)
    settings.setdefault("loss_agg_mode", spec.loss_agg_mode)
    logp, old, adv, mask = _inputs()
    loss, metrics = spec.fn(logp, old, adv, mask, LossSettings(**settings), None)
    loss.backward()
    return loss.item(), logp.grad, metrics


def test_every_built_in_is_registered_with_its_papers_defaults():
    registered = {n: (s.loss_agg_mode, s.norm_adv_by_std) for n, s in POLICY_LOSSES.items()}
    assert (
        registered.items()
        >= {
            "dapo": ("token-mean", True),
            "grpo": ("seq-mean-token-mean", True),
            "dr_grpo": ("seq-mean-token-sum-norm", False),
            "gspo": ("seq-mean-token-mean", True),
            "cispo": ("token-mean", True),
        }.items()
    )


def test_dapo_through_the_registry_is_dapo_loss():
    loss, grad, metrics = _loss("dapo", eps_low=0.2, eps_high=0.28, clip_ratio_c=3.0)
    logp, old, adv, mask = _inputs()
    reference, ref_metrics = dapo_loss(logp, old, adv, mask, 0.2, 0.28, clip_ratio_c=3.0)
    reference.backward()
    assert loss == reference.item() == pytest.approx(-5.64 / 9)  # test_dapo.py's hand sum
    assert torch.equal(grad, logp.grad) and metrics == ref_metrics


def test_grpo_averages_each_completions_token_mean():
    # symmetric clip 0.2: per token min(rho A, clip(rho, 0.8, 1.2) A)
    # seq0: 1.0 + 1.2 + 0.5 = 2.7 / 3; seq1: -0.8 - 1.5 = -2.3 / 2;
    # seq2: 2.4 + 2.4 + 1.8 = 6.6 / 3; seq3: -1.6 / 1
    per_sequence = [2.7 / 3, -2.3 / 2, 6.6 / 3, -1.6]
    loss, grad, metrics = _loss("grpo", eps_low=0.2, eps_high=0.2)
    assert loss == pytest.approx(-sum(per_sequence) / 4, abs=1e-6)
    # an active token's gradient is -A rho / (completions x its completion's length); (2, 0)
    # sits on the clip boundary (rho = 1.2), where both branches tie
    for b, t in [(0, 0), (0, 2), (1, 1), (2, 2)]:
        expected = -ADV[b] * RATIOS[b][t] / (4 * LENGTHS[b])
        assert grad[b, t].item() == pytest.approx(expected, rel=1e-5)
    for b, t in [(0, 1), (1, 0), (2, 1), (3, 0)]:  # clipped
        assert grad[b, t] == 0
    assert metrics["clip_frac_high"] == pytest.approx(2 / 9)  # still a fraction of tokens


def test_dr_grpo_divides_token_sums_by_a_constant_horizon():
    # the same per-token terms as GRPO's, summed: 2.7 - 2.3 + 6.6 - 1.6 = 5.4, / (4 x 5)
    loss, grad, _ = _loss("dr_grpo", eps_low=0.2, eps_high=0.2, num_sequences=4, horizon=5)
    assert loss == pytest.approx(-5.4 / 20, abs=1e-6)
    # no length normalization: every active token weighs -A rho / (4 x 5), whatever its length
    for b, t in [(0, 0), (1, 1), (2, 2)]:
        assert grad[b, t].item() == pytest.approx(-ADV[b] * RATIOS[b][t] / 20, rel=1e-5)
    with pytest.raises(ValueError, match="horizon"):
        _loss("dr_grpo")


def test_dr_grpo_advantages_are_not_divided_by_the_std():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.2, 0.2, 0.6, 0.2]])
    plain = group_advantages(rewards, norm_by_std=False)
    assert torch.allclose(plain, torch.tensor([[0.5, -0.5, -0.5, 0.5], [-0.1, -0.1, 0.3, -0.1]]))
    scaled = group_advantages(rewards)  # GRPO/DAPO: divided by the unbiased std
    assert torch.allclose(scaled[0], plain[0] / math.sqrt(1.0 / 3.0), atol=1e-5)


def test_gspo_clips_one_geometric_mean_ratio_per_completion():
    s = [math.prod(r[:n]) ** (1 / n) for r, n in zip(RATIOS, LENGTHS, strict=True)]
    # s = 0.9086, 0.8660, 1.1198, 0.7: only seq3's leaves [0.8, 1.28] (A < 0: clipped low)
    clipped = [min(x * a, min(max(x, 0.8), 1.28) * a) for x, a in zip(s, ADV, strict=True)]
    loss, grad, metrics = _loss("gspo", eps_low=0.2, eps_high=0.28)
    assert loss == pytest.approx(-sum(clipped) / 4, abs=1e-6)
    assert clipped[3] == pytest.approx(-1.6)
    # gradient: s_i A_i / |y_i| on every token of an unclipped completion (GSPO's
    # s_i A_i mean_t grad log pi_t), the same for all its tokens; none for the clipped one
    for b in range(3):
        for t in range(LENGTHS[b]):
            expected = -s[b] * ADV[b] / LENGTHS[b] / 4
            assert grad[b, t].item() == pytest.approx(expected, rel=1e-5)
    assert grad[3, 0] == 0
    assert metrics["clip_frac_low"] == pytest.approx(1 / 9)  # seq3's one token
    assert metrics["clip_frac_high"] == 0.0  # token ratios 1.5 and 1.3 would have been clipped


def test_cispo_caps_and_detaches_the_weight_and_keeps_every_tokens_gradient():
    # weight w = min(rho, 1.28), detached; objective w A log(rho); token-mean over 9 tokens
    weights = [[min(r, 1.28) for r in row] for row in RATIOS]
    objective = sum(
        weights[b][t] * ADV[b] * math.log(RATIOS[b][t]) for b in range(4) for t in range(LENGTHS[b])
    )
    loss, grad, metrics = _loss("cispo", eps_high=0.28)
    assert loss == pytest.approx(-objective / 9, abs=1e-6)
    for b in range(4):
        for t in range(LENGTHS[b]):  # -w A / 9: the capped tokens (1.5, 1.3) keep a gradient
            assert grad[b, t].item() == pytest.approx(-weights[b][t] * ADV[b] / 9, rel=1e-5)
    assert grad[0, 1] != 0  # DAPO gives this clipped token none
    assert metrics["clip_frac_high"] == pytest.approx(3 / 9)  # 1.5, 1.5 and 1.3 capped


def test_rollout_correction_weights_multiply_each_tokens_term_in_every_objective():
    logp, old, adv, mask = _inputs()
    weights = torch.full((4, 3), 0.5)
    for name in ("dapo", "grpo", "gspo", "cispo"):
        spec = get_policy_loss(name)
        settings = LossSettings(loss_agg_mode=spec.loss_agg_mode)
        plain, _ = spec.fn(logp, old, adv, mask, settings, None)
        halved, _ = spec.fn(logp, old, adv, mask, settings, weights)
        assert halved.item() == pytest.approx(plain.item() / 2, rel=1e-6), name


def test_dual_clip_bounds_stale_negative_ratios_in_the_clipped_objectives():
    logp = torch.log(torch.tensor([[5.0, 1.0]]))
    old, mask, adv = torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([-1.0])
    for name in ("grpo", "gspo"):
        spec = get_policy_loss(name)
        off, _ = spec.fn(logp, old, adv, mask, LossSettings(loss_agg_mode="token-mean"), None)
        on, metrics = spec.fn(
            logp, old, adv, mask, LossSettings(clip_ratio_c=1.5, loss_agg_mode="token-mean"), None
        )
        assert on.item() < off.item() and metrics["clip_frac_dual"] > 0, name


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_micro_batches_sum_to_the_whole_minibatchs_loss(mode):
    objective = torch.tensor(RATIOS) * torch.tensor(ADV).unsqueeze(1)
    mask = torch.tensor(MASK, dtype=torch.float32)
    counts = {"num_tokens": 9, "num_sequences": 4, "horizon": 3}
    whole = aggregate(objective, mask, mode, **counts)
    parts = aggregate(objective[:1], mask[:1], mode, **counts)
    parts = parts + aggregate(objective[1:], mask[1:], mode, **counts)
    assert parts.item() == pytest.approx(whole.item(), rel=1e-6)


def test_a_users_loss_is_loaded_from_its_import_path_and_checked():
    spec = get_policy_loss("learner.objectives.policy_gradient:clipped_token_loss")
    assert spec.fn.__name__ == "clipped_token_loss" and spec.loss_agg_mode == "token-mean"
    own = get_policy_loss("learner.objectives.policy_gradient:dr_grpo")  # keeps its defaults
    assert (own.loss_agg_mode, own.norm_adv_by_std) == ("seq-mean-token-sum-norm", False)
    with pytest.raises(UserError, match="must take"):
        get_policy_loss("learner.dapo:overlong_penalty")  # not a policy loss
    with pytest.raises(UserError, match="cannot load"):
        get_policy_loss("no_such_module:loss")
    with pytest.raises(UserError, match="no such loss; use one of cispo, dapo"):
        get_policy_loss("ppo")
