"""The learner with `device: cuda` (run by `make test-gpu` on a GPU machine)."""

import pytest
import torch

from shared.artifact import decode_png, png_to_pil
from shared.messages import RolloutRequest, SamplingConfig, ScoredGroup
from shared.prompts import render_prompt

pytestmark = pytest.mark.gpu


def test_a_learner_step_on_cuda_matches_the_cpu_rollouts(tiny_model_path, tiny_processor):
    from learner.learner import Learner, LearnerSettings
    from rollout_worker.hf_engine import HFEngine

    learner = Learner(LearnerSettings(tiny_model_path, "tiny", 64, 64, init="noise", device="cuda"))
    assert learner.image.theta_CHW.device.type == "cuda"
    engine = HFEngine(tiny_model_path)  # CPU rollouts, CUDA learner
    update = learner.image_update()
    prompt = render_prompt(tiny_processor, "What letter is it?")
    groups = engine.generate(
        [RolloutRequest(0, prompt, 8)], png_to_pil(update.png), 0, SamplingConfig(seed=0)
    )
    group = ScoredGroup(prompt, tuple(groups[0]), tuple(float(i % 2) for i in range(8)))
    metrics, new = learner.update([group])
    assert metrics["grad_norm"] > 0 and metrics["mismatch_abs_mean"] < 1e-3
    pixels, meta = decode_png(new.png)
    assert pixels.shape == (64, 64, 3) and meta["step"] == "1"
    assert torch.isfinite(learner.image.theta_CHW).all()
