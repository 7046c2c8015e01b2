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


def test_vllm_applies_a_broadcast_lora_adapter_like_the_learner(tiny_model_path, tiny_processor):
    """The vLLM LoRA path: a new LoRARequest per version, the base model never reloaded."""
    from learner.learner import Learner
    from rollout_worker.vllm_engine import VLLMEngine
    from shared.messages import ScoredGroup

    lora = {"rank": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    learner = Learner(
        tiny_model_path, "tiny", 64, 64, method="lora", lora=lora, with_image=False, device="cuda"
    )
    engine = VLLMEngine(
        tiny_model_path,
        dtype="float32",
        gpu_memory_utilization=0.3,
        max_model_len=512,
        enable_lora=True,
        max_lora_rank=8,
    )
    prompt = render_prompt(tiny_processor, "What letter is it?", with_image=False)
    request = [RolloutRequest(0, prompt, 8, with_image=False)]
    groups = engine.generate(request, None, 0, SamplingConfig(max_new_tokens=6, seed=0))
    learner.update([ScoredGroup(prompt, tuple(groups[0]), tuple(float(i % 2) for i in range(8)))])
    update = learner.policy_update()
    llm = engine.llm
    engine.set_adapter(update.version, update.config, update.weights)
    assert engine.lora_request.lora_int_id == update.version + 1
    groups = engine.generate(
        request, None, update.version, SamplingConfig(max_new_tokens=6, seed=1)
    )
    recomputed = learner.compute_logprobs(groups[0])
    diffs = [
        abs(a - b)
        for c, lp in zip(groups[0], recomputed, strict=True)
        for a, b in zip(c.logprobs, lp, strict=True)
    ]
    assert np.mean(diffs) < 1e-3
    assert engine.llm is llm


def test_one_gpu_mode_trains_with_the_engine_asleep_during_the_update(tmp_path):
    """cluster=single_gpu for real: the learner and one vLLM worker on one GPU, vLLM's share
    from the memory plan, the engine put to sleep for every update and woken for sampling."""
    from learner.driver.cli import compose_config
    from learner.driver.train import train

    cfg = compose_config(
        "cluster=single_gpu", "rollout.python=self", "rollout.sleep_mode=true", "steps=3",
        "eval.every=0", "model.dtype=float32", "rollout.max_model_len=512",
        f"logging.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        run_dir=str(tmp_path / "run"),
    )  # fmt: skip
    summary = train(cfg)
    assert len(summary["rewards"]) == 3 and summary["worker_restarts"] == 0
    assert len(set(summary["placement"].values())) == 1  # one node, one GPU
    assert 0 < cfg.rollout.gpu_memory_utilization < 0.95
