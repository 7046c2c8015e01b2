"""Every policy-gradient objective through the learner's update (old log-probs, minibatches,
rollout correction), on completions the HF engine sampled."""

import pytest
import torch

from learner.learner import Learner, LearnerSettings
from rollout_worker.hf_engine import HFEngine
from shared.artifact import png_to_pil
from shared.messages import RolloutRequest, SamplingConfig, ScoredGroup
from shared.prompts import render_prompt


@pytest.fixture(scope="module")
def groups(tiny_model_path, tiny_processor):
    engine = HFEngine(tiny_model_path)
    learner = Learner(LearnerSettings(tiny_model_path, "tiny", 64, 64, init="noise"))
    update = learner.image_update()
    prompt = render_prompt(tiny_processor, "Which letter does the picture show?")
    sampled = engine.generate(
        [RolloutRequest(i, prompt, 6) for i in range(2)],
        png_to_pil(update.png),
        update.version,
        SamplingConfig(seed=3),
    )
    rewards = [(1.0, 0.0, 0.0, 1.0, 0.5, 0.0), (0.0, 0.2, 1.0, 0.0, 0.0, 1.0)]
    return [ScoredGroup(prompt, tuple(g), r) for g, r in zip(sampled, rewards, strict=True)]


@pytest.mark.parametrize("loss", ["dapo", "grpo", "dr_grpo", "gspo", "cispo"])
def test_each_objective_takes_learner_steps_that_move_the_pixels(tiny_model_path, groups, loss):
    learner = Learner(LearnerSettings(
        tiny_model_path, "tiny", 64, 64, init="noise", lr=0.1, num_minibatches=2, loss=loss,
        loss_scale_factor=8, clip_ratio_c=None if loss == "cispo" else 3.0,
        eps_high=4.0 if loss == "cispo" else 0.28,
    ))  # fmt: skip
    theta = learner.image.theta_CHW.detach().clone()
    metrics, update = learner.update(groups)
    assert update.version == 1 and not torch.equal(learner.image.theta_CHW, theta)
    assert (
        learner.objective.loss_agg_mode
        == {
            "dapo": "token-mean",
            "grpo": "seq-mean-token-mean",
            "dr_grpo": "seq-mean-token-sum-norm",
            "gspo": "seq-mean-token-mean",
            "cispo": "token-mean",
        }[loss]
    )
    for key in ("loss", "clip_frac_low", "clip_frac_high", "ratio_mean", "grad_norm"):
        assert torch.isfinite(torch.tensor(metrics[key])), key
    assert 0.5 < metrics["ratio_mean"] < 2.0  # the second minibatch saw the moved image


def test_dr_grpo_takes_unscaled_advantages_unless_told_otherwise(tiny_model_path, groups):
    def gradient(**kwargs):
        learner = Learner(LearnerSettings(tiny_model_path, "tiny", 64, 64, init="noise", num_minibatches=1,
                          loss_scale_factor=8, **kwargs))  # fmt: skip
        return learner.batch_gradient(groups)[0]

    plain = gradient(loss="dr_grpo")
    scaled = gradient(loss="dr_grpo", norm_adv_by_std=True)
    # the same loss with advantages divided by each group's std: a different gradient
    assert not torch.allclose(plain, scaled, rtol=1e-3)
    # seq-mean-token-sum-norm with the horizon and token-mean agree when every completion is
    # horizon long; here they are shorter, so the two aggregations differ
    token_mean = gradient(loss="dr_grpo", loss_agg_mode="token-mean")
    assert not torch.allclose(plain, token_mean, rtol=1e-3)
