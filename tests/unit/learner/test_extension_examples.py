"""The examples of docs/design.md, "Adding an objective, ...", run as written: the policy loss
of the user's module is imported by path, checked, and trains the pixels through the learner."""

import re
from pathlib import Path

import torch

from learner.driver.algorithms import check_config
from learner.driver.cli import compose_config
from learner.learner import Learner, LearnerSettings
from rollout_worker.hf_engine import HFEngine
from shared.artifact import png_to_pil
from shared.messages import RolloutRequest, SamplingConfig, ScoredGroup
from shared.prompts import render_prompt

DOC = Path(__file__).resolve().parents[3] / "docs" / "design.md"


def _block(start: str) -> str:
    text = DOC.read_text()
    return re.search(r"```python\n(" + re.escape(start) + r".*?)```", text, re.S).group(1)


def test_the_docs_policy_loss_runs_as_written(
    tmp_path, monkeypatch, tiny_model_path, tiny_processor
):
    (tmp_path / "my_loss.py").write_text(_block("# my_loss.py"))
    monkeypatch.chdir(tmp_path)
    command = re.search(r"art-train (algo\.loss=my_loss\.py:reinforce.*)", DOC.read_text()).group(1)
    cfg = compose_config(*command.split())
    assert type(check_config(cfg)).__name__ == "PolicyGradient"  # imported and checked
    learner = Learner(LearnerSettings(tiny_model_path, "tiny", 64, 64, init="noise", lr=0.1,
                                      loss=cfg.algo.loss, clip_ratio_c=None))  # fmt: skip
    update = learner.image_update()
    prompt = render_prompt(tiny_processor, "Which letter does the picture show?")
    groups = HFEngine(tiny_model_path).generate(
        [RolloutRequest(0, prompt, 4)], png_to_pil(update.png), 0, SamplingConfig(seed=0)
    )
    before = learner.image.theta_CHW.detach().clone()
    metrics, _ = learner.update([ScoredGroup(prompt, tuple(groups[0]), (1.0, 0.0, 0.0, 1.0))])
    assert not torch.equal(learner.image.theta_CHW, before) and metrics["grad_norm"] > 0
    assert metrics["clip_frac_high"] == 0.0 and 0.5 < metrics["ratio_mean"] < 2.0
