import numpy as np
import pytest
import torch

from learner.learner import Learner
from rollout_worker.hf_engine import HFEngine
from shared.artifact import decode_png, png_to_pil
from shared.messages import RolloutRequest, SamplingConfig, ScoredGroup
from shared.prompts import render_prompt


@pytest.fixture(scope="module")
def engine(tiny_model_path):
    return HFEngine(tiny_model_path)


def _groups(learner, engine, tiny_processor, seed=0):
    update = learner.image_update()
    prompt = render_prompt(tiny_processor, "Which letter does the picture show?")
    requests = [RolloutRequest(i, prompt, 8) for i in range(2)]
    groups = engine.generate(
        requests, png_to_pil(update.png), update.version, SamplingConfig(seed=seed)
    )
    # Alternate rewards so every group is informative regardless of what was sampled.
    return [
        ScoredGroup(prompt, tuple(g), tuple(float(i % 2) for i in range(len(g)))) for g in groups
    ]


def test_one_step_changes_pixels_and_leaves_every_weight_bit_identical(
    tiny_model_path, tiny_processor, engine
):
    learner = Learner(tiny_model_path, "tiny", 64, 64, init="noise", lr=0.1, num_minibatches=2)
    weights_before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    theta_before = learner.image.theta_CHW.detach().clone()
    assert all(not p.requires_grad for p in learner.model.parameters())

    metrics, update = learner.update(_groups(learner, engine, tiny_processor))

    assert not torch.equal(learner.image.theta_CHW.detach(), theta_before)
    for name, value in learner.model.state_dict().items():
        assert torch.equal(value, weights_before[name]), name
    assert all(p.grad is None for p in learner.model.parameters())
    assert update.version == 1
    assert metrics["grad_norm"] > 0
    assert metrics["mismatch_abs_mean"] < 1e-4
    pixels, meta = decode_png(update.png)
    assert pixels.shape == (64, 64, 3)
    assert meta["model"] == "tiny" and meta["step"] == "1" and meta["height"] == "64"


def test_checkpoint_round_trip(tmp_path, tiny_model_path, tiny_processor, engine):
    learner = Learner(tiny_model_path, "tiny", 64, 64, init="noise", lr=0.1)
    learner.update(_groups(learner, engine, tiny_processor))
    path = learner.save_checkpoint(str(tmp_path / "ckpt.pt"))
    other = Learner(tiny_model_path, "tiny", 64, 64, init="gray", lr=0.1)
    assert other.load_checkpoint(path) == 1
    assert torch.equal(other.image.theta_CHW, learner.image.theta_CHW)
    np.testing.assert_array_equal(other.seed_uint8, learner.seed_uint8)
    # The optimizer state came along: the next step is the same on both.
    groups = _groups(learner, engine, tiny_processor, seed=5)
    torch.manual_seed(0)
    learner.update(groups)
    torch.manual_seed(0)
    other.update(groups)
    assert torch.allclose(other.image.theta_CHW, learner.image.theta_CHW, atol=1e-6)


def test_checkpoint_of_another_size_is_refused(tmp_path, tiny_model_path):
    path = Learner(tiny_model_path, "tiny", 64, 64).save_checkpoint(str(tmp_path / "c.pt"))
    with pytest.raises(ValueError, match="shape"):
        Learner(tiny_model_path, "tiny", 96, 96).load_checkpoint(path)


def test_bad_image_size_is_refused_at_start(tiny_model_path):
    with pytest.raises(ValueError, match="multiple of 32"):
        Learner(tiny_model_path, "tiny", 60, 64)
