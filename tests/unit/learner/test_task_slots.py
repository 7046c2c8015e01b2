"""Many tasks on one learner (learner/task_slots.py): a task's update from a mixed call is, bit
for bit, the update of a learner of that task alone on the same samples, and another task's
samples contribute nothing."""

import pytest
import torch

from learner.learner import Learner, LearnerSettings
from rollout_worker.hf_engine import HFEngine
from shared.artifact import png_to_pil
from shared.messages import RolloutRequest, SamplingConfig, ScoredGroup
from shared.prompts import render_prompt


@pytest.fixture(scope="module")
def engine(tiny_model_path):
    return HFEngine(tiny_model_path)


def _groups(update, engine, processor, seed):
    prompt = render_prompt(processor, "Which letter does the picture show?")
    requests = [RolloutRequest(i, prompt, 4) for i in range(2)]
    sampled = engine.generate(
        requests, png_to_pil(update.png), update.version, SamplingConfig(seed=seed)
    )
    return [ScoredGroup(prompt, tuple(g), (1.0, 0.0, 0.0, 1.0)) for g in sampled]


def test_each_task_of_a_mixed_update_steps_as_it_would_alone(
    tiny_model_path, tiny_processor, engine
):
    settings = dict(lr=0.1, num_minibatches=2)
    shared = Learner(LearnerSettings(tiny_model_path, "tiny", 64, 64, **settings))
    shared.add_task("a", "noise", 3)
    shared.add_task("b", "gray", 5)
    alone = {
        "a": Learner(LearnerSettings(tiny_model_path, "tiny", 64, 64, init="noise", seed=3, **settings)),
        "b": Learner(LearnerSettings(tiny_model_path, "tiny", 64, 64, init="gray", seed=5, **settings)),
    }  # fmt: skip
    for step in range(2):  # two updates: Adam's state and the minibatch generator carry on
        batches = {k: _groups(one.image_update(), engine, tiny_processor, 10 * step + i)
                   for i, (k, one) in enumerate(alone.items())}  # fmt: skip
        mixed = shared.update_tasks(batches)
        for key, learner in alone.items():
            metrics, update = learner.update(batches[key])
            assert mixed[key][1].png == update.png and mixed[key][1].version == step + 1
            assert mixed[key][0]["loss"] == metrics["loss"]
    for key, learner in alone.items():
        shared.activate(key)
        assert torch.equal(shared.image.theta_CHW, learner.image.theta_CHW), key


def test_another_tasks_samples_leave_a_task_untouched(tiny_model_path, tiny_processor, engine):
    shared = Learner(LearnerSettings(tiny_model_path, "tiny", 64, 64, lr=0.1))
    shared.add_task("a", "noise", 3)
    shared.add_task("b", "gray", 5)
    before = shared.task_call("a", "image_update")
    shared.update_tasks(
        {"b": _groups(shared.task_call("b", "image_update"), engine, tiny_processor, 1)}
    )
    after = shared.task_call("a", "image_update")
    assert after.png == before.png and after.version == 0
    assert shared.task_call("b", "image_update").version == 1
    with pytest.raises(KeyError, match="no task 'c'"):
        shared.activate("c")
