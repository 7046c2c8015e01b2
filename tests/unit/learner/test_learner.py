import numpy as np
import pytest
import torch

from learner.learner import Learner, LearnerSettings
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
    learner = Learner(
        LearnerSettings(tiny_model_path, "tiny", 64, 64, init="noise", lr=0.1, num_minibatches=2)
    )
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


def test_state_round_trip_continues_identically(tiny_model_path, tiny_processor, engine):
    learner = Learner(
        LearnerSettings(tiny_model_path, "tiny", 64, 64, init="noise", lr=0.1, num_minibatches=2)
    )
    learner.update(_groups(learner, engine, tiny_processor))
    state = learner.state_dict()
    other = Learner(
        LearnerSettings(tiny_model_path, "tiny", 64, 64, init="gray", lr=0.1, num_minibatches=2)
    )
    assert other.load_state_dict(state) == 1
    assert torch.equal(other.image.theta_CHW, learner.image.theta_CHW)
    np.testing.assert_array_equal(other.seed_uint8, learner.seed_uint8)
    # Adam's state came along: from the same RNG state (one process per learner in a run; the
    # state restores it there) the next step is the same.
    groups = _groups(learner, engine, tiny_processor, seed=5)
    rng = torch.get_rng_state()
    learner.update(groups)
    torch.set_rng_state(rng)
    other.update(groups)
    # The same step within float rounding: the full suite once gave a 1-ulp difference here
    # that no rerun reproduced. Without Adam's state the step differs by ~lr = 0.1 per pixel.
    torch.testing.assert_close(other.image.theta_CHW, learner.image.theta_CHW, rtol=1e-5, atol=1e-6)


def test_a_non_finite_loss_skips_the_step_and_never_reaches_the_pixels(
    tiny_model_path, tiny_processor, engine
):
    learner = Learner(
        LearnerSettings(tiny_model_path, "tiny", 64, 64, init="noise", lr=0.1, num_minibatches=2)
    )
    groups = _groups(learner, engine, tiny_processor)
    theta, png = learner.image.theta_CHW.detach().clone(), learner.image_update().png
    with torch.no_grad():
        learner.model.lm_head.weight[0, 0] = float("nan")  # a poisoned weight: NaN log-probs
    metrics, update = learner.update(groups)
    assert metrics["skipped_updates"] == 2 and metrics["consecutive_skips"] == 2
    assert torch.equal(learner.image.theta_CHW, theta)
    assert update.version == 0 and update.png == png
    assert learner.optimizer.state_dict()["state"] == {}  # Adam never stepped
    assert learner.image.theta_CHW.grad is None
    metrics, _ = learner.update(groups)
    assert metrics["consecutive_skips"] == 4


def test_bad_image_size_is_refused_at_start(tiny_model_path):
    with pytest.raises(ValueError, match="multiple of 32"):
        Learner(LearnerSettings(tiny_model_path, "tiny", 60, 64))


def test_the_state_sent_to_the_driver_is_a_cpu_snapshot(tiny_model_path, tiny_processor, engine):
    """The driver (possibly on a head node without the learner's device) receives the learner's
    state after every step: every tensor in it is on the CPU and shares no memory with the
    learner's own (a snapshot: later steps do not change it). Shown here with the optimizer's
    state moved to the meta device, as a GPU's would be off the CPU: state_dict must copy it
    out, so it raises rather than hand over a meta tensor."""
    import torch

    from learner.learner import to_cpu

    learner = Learner(
        LearnerSettings(tiny_model_path, "tiny", 64, 64, init="noise", max_staleness=1)
    )
    learner.update(_groups(learner, engine, tiny_processor))
    state = learner.state_dict()
    tensors = []

    def collect(obj):
        if isinstance(obj, torch.Tensor):
            tensors.append(obj)
        elif isinstance(obj, dict):
            [collect(v) for v in obj.values()]
        elif isinstance(obj, list | tuple):
            [collect(v) for v in obj]

    collect(state)
    own = {p.data_ptr() for p in learner.trainable()}
    own |= {t.data_ptr() for s in learner.optimizer.state.values() for t in s.values()}
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    assert not own & {t.data_ptr() for t in tensors}
    meta = {"state": {0: {"exp_avg": torch.zeros(3, device="meta")}}, "param_groups": [{}]}
    with pytest.raises(NotImplementedError, match="meta"):
        to_cpu(meta)  # copied out, never passed through as a device tensor
