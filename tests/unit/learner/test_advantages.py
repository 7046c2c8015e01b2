"""Advantage estimators (learner/objectives/advantages.py) against numbers computed by hand, a
user's estimator by import path, and a bad one refused in one line."""

import math

import pytest
import torch

from learner.objectives import ADV_ESTIMATORS, get_adv_estimator
from shared.errors import UserError

REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.2, 0.2, 0.8, 0.2]])


def test_grpo_divides_by_the_unbiased_group_std():
    grpo = get_adv_estimator("grpo")
    # group 1: mean 0.5, unbiased std sqrt(1/3); group 2: mean 0.35, std sqrt(0.09) = 0.3
    s1, s2 = math.sqrt(1 / 3), 0.3
    expected = [
        [0.5 / s1, -0.5 / s1, -0.5 / s1, 0.5 / s1],
        [-0.15 / s2] * 2 + [0.45 / s2, -0.15 / s2],
    ]
    torch.testing.assert_close(grpo(REWARDS, True), torch.tensor(expected), rtol=1e-5, atol=1e-5)
    plain = [[0.5, -0.5, -0.5, 0.5], [-0.15, -0.15, 0.45, -0.15]]  # Dr. GRPO: no std
    torch.testing.assert_close(grpo(REWARDS, False), torch.tensor(plain), rtol=1e-6, atol=1e-6)


def test_rloo_subtracts_the_mean_of_the_others():
    rloo = get_adv_estimator("rloo")
    # 1.0 - mean(0, 0, 1) = 2/3; 0.0 - mean(1, 0, 1) = -2/3; 0.2 - mean(0.2, 0.8, 0.2) = -0.2
    expected = [[2 / 3, -2 / 3, -2 / 3, 2 / 3], [-0.2, -0.2, 0.6, -0.2]]
    torch.testing.assert_close(rloo(REWARDS, True), torch.tensor(expected), rtol=1e-6, atol=1e-6)
    assert rloo(torch.tensor([[0.7]]), False).item() == pytest.approx(0.7)  # no baseline


def test_a_users_estimator_loads_by_import_path_and_a_bad_one_is_refused():
    path = "tests/fixtures/extensions/median_baseline.py:median_baseline"
    fn = get_adv_estimator(path)
    assert path in ADV_ESTIMATORS
    torch.testing.assert_close(fn(REWARDS, True), REWARDS - torch.tensor([[0.0], [0.2]]))
    with pytest.raises(UserError, match="must take \\(rewards_GN, norm_by_std\\)"):
        get_adv_estimator("tests/fixtures/extensions/median_baseline.py:wrong_shape")
    with pytest.raises(UserError, match="no such estimator; use one of grpo, rloo"):
        get_adv_estimator("ppo_gae")
