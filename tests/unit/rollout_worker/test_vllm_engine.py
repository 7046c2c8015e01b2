"""vLLM engine tests: run only on a GPU machine with vLLM installed (`make test-gpu`)."""

import numpy as np
import pytest

from shared.artifact import encode_png, png_to_pil
from shared.messages import RolloutRequest, SamplingConfig
from shared.prompts import render_prompt, suppressed_token_ids

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def engine(tiny_model_path):
    from rollout_worker.vllm_engine import VLLMEngine

    return VLLMEngine(
        tiny_model_path, dtype="float32", gpu_memory_utilization=0.3, max_model_len=512
    )


def test_vllm_samples_groups_and_matches_the_learner(engine, tiny_model_path, tiny_processor):
    from learner.learner import Learner

    learner = Learner(tiny_model_path, "tiny", 64, 64, init="noise", device="cuda")
    update = learner.image_update()
    prompt = render_prompt(tiny_processor, "What letter is it?")
    groups = engine.generate(
        [RolloutRequest(0, prompt, 8)],
        png_to_pil(update.png),
        0,
        SamplingConfig(max_new_tokens=6, seed=0),
    )
    completions = groups[0]
    assert len(completions) == 8
    banned = set(suppressed_token_ids(engine.tokenizer))
    assert not banned & {t for c in completions for t in c.token_ids}
    learner_lp = learner.compute_logprobs(completions)
    diffs = [
        abs(a - b)
        for c, lp in zip(completions, learner_lp, strict=True)
        for a, b in zip(c.logprobs, lp, strict=True)
    ]
    assert np.mean(diffs) < 1e-2


def test_vllm_engine_switches_images_without_reloading(engine, tiny_processor):
    prompt = render_prompt(tiny_processor, "What letter is it?")
    llm = engine.llm
    for version, value in enumerate((0, 255)):
        image = png_to_pil(encode_png(np.full((64, 64, 3), value, dtype=np.uint8)))
        groups = engine.generate(
            [RolloutRequest(0, prompt, 4)], image, version, SamplingConfig(seed=1)
        )
        assert {c.image_version for c in groups[0]} == {version}
    assert engine.llm is llm
