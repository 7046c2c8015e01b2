"""art-compare: each method keeps its own learning rate; per-method overrides."""

import pytest

from learner.driver.cli import compose_config
from learner.driver.compare import split_method_overrides
from shared.errors import UserError


def test_each_method_trains_with_its_own_learning_rate():
    assert compose_config("method=art").learner.lr == 0.05
    assert compose_config("method=lora").learner.lr == 0.002


def test_per_method_overrides_and_a_shared_learning_rate_refused():
    common, per = split_method_overrides(["steps=5", "lora:learner.lr=1e-3", "art:seed=2"])
    assert common == ["steps=5"] and per == {"art": ["seed=2"], "lora": ["learner.lr=1e-3"]}
    with pytest.raises(UserError, match="give art:learner.lr=... and/or lora:learner.lr="):
        split_method_overrides(["learner.lr=0.01"])
