"""The vLLM engine for real (vLLM's CPU build, bfloat16) in a rollout worker actor that runs in
the vLLM environment, against the learner in this one (float32).

One worker serves the whole module (an engine starts in 30-50 s here); the last test kills it.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from shared.artifact import encode_png, png_to_pil
from shared.messages import RolloutRequest, SamplingConfig, ScoredGroup
from shared.prompts import render_prompt, suppressed_token_ids
from shared.sampling import completion_seeds

pytestmark = pytest.mark.vllm
GPUS = int(os.environ.get("ART_VLLM_TEST_GPUS", "0"))
DTYPE = os.environ.get("ART_VLLM_TEST_DTYPE", "bfloat16")

QUESTION = "What letter is it?"
LORA = {"rank": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


@pytest.fixture(scope="module")
def cfg(vllm_python, tmp_path_factory):
    from learner.driver.cli import compose_config

    tmp = tmp_path_factory.mktemp("vllm-engine")
    return compose_config(
        f"logging.tracking_uri=sqlite:///{tmp}/mlflow.db",
        "rollout=vllm", f"rollout.python={vllm_python}", f"rollout.num_gpus_per_worker={GPUS}",
        f"rollout.dtype={DTYPE}",
        "rollout.max_model_len=512", "rollout.num_workers=1", "rollout.max_restarts=1",
        f"method.lora.rank={LORA['rank']}",
        run_dir=str(tmp / "run"),
    )  # fmt: skip


@pytest.fixture(scope="module")
def pool(ray_local, cfg, tiny_model_path):
    """A WorkerPool of one vLLM worker (LoRA enabled), the driver's own code path."""
    from learner.driver.cluster import create_actors
    from learner.driver.rollouts import WorkerPool

    start = time.perf_counter()
    _, workers = create_actors(cfg, ray_local, tiny_model_path, with_learner=False, lora_rank=8)
    print(f"\nvLLM worker started in {time.perf_counter() - start:.1f}s")
    pool = WorkerPool(ray_local, workers, max_attempts=2)
    yield pool
    for worker in workers:
        ray_local.kill(worker)


@pytest.fixture(scope="module")
def learner(tiny_model_path):
    from learner.learner import Learner, LearnerSettings

    return Learner(LearnerSettings(tiny_model_path, "tiny", 64, 64, init="noise", seed=0))


@pytest.fixture(scope="module")
def prompt(tiny_processor):
    return render_prompt(tiny_processor, QUESTION)


def solid_png(rgb, version=0) -> bytes:
    from shared.artifact import art_metadata

    pixels = np.empty((64, 64, 3), dtype=np.uint8)
    pixels[:] = rgb
    return encode_png(pixels, art_metadata("tiny", 64, 64, version))


def worker_call(pool, method, *args):
    return pool.ray.get(getattr(pool.workers[0], method).remote(*args))


def abs_diffs(completions, recomputed) -> np.ndarray:
    return np.concatenate(
        [np.abs(np.subtract(c.logprobs, lp)) for c, lp in zip(completions, recomputed, strict=True)]
    )


def test_groups_with_the_png_log_probs_finish_reasons_and_prompt_ids(
    pool, learner, prompt, tiny_processor
):
    update = learner.image_update()
    pool.broadcast(update)
    requests = [RolloutRequest(0, prompt, 4), RolloutRequest(1, prompt, 4)]
    groups = pool.generate(requests, SamplingConfig(max_new_tokens=6, seed=11))
    assert [len(g) for g in groups] == [4, 4]
    expected_ids = tiny_processor(
        text=[prompt], images=[png_to_pil(update.png)], return_tensors="pt"
    )["input_ids"][0].tolist()
    image_token = tiny_processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    for group in groups:
        for c in group:
            assert len(c.logprobs) == len(c.token_ids) >= 1
            assert all(np.isfinite(c.logprobs)) and max(c.logprobs) <= 0
            assert c.finish_reason in ("stop", "length") and c.image_version == 0
            # the prompt as vLLM expanded it: the HF processor's ids, 4 image tokens (64x64)
            assert list(c.prompt_token_ids) == expected_ids, (c.prompt_token_ids, expected_ids)
            assert c.prompt_token_ids.count(image_token) == 4
    cut = pool.generate(requests[:1], SamplingConfig(max_new_tokens=1, seed=11))[0]
    assert {c.finish_reason for c in cut} == {"length"} and {len(c.token_ids) for c in cut} == {1}
    assert [c.token_ids[0] for c in cut] == [c.token_ids[0] for c in groups[0]]  # same seeds
    reasons = {c.finish_reason for g in groups for c in g}
    print(f"finish reasons {reasons}, tokens {[c.token_ids for c in groups[0]]}")


def test_an_engine_error_reaches_the_driver_as_a_readable_error(pool, prompt):
    """vLLM's own exception types do not exist in the driver's environment; the worker hands
    them over as a RuntimeError naming the original (here: vLLM refuses temperature > 2)."""
    with pytest.raises(RuntimeError, match="VLLMValidationError.*temperature"):
        pool.generate([RolloutRequest(0, prompt, 2)], SamplingConfig(temperature=3.0))


def test_log_probs_agree_with_the_learner(pool, tiny_model_path, prompt):
    """vLLM (bfloat16 weights and activations) against the learner (float32) on the same
    completions and image, at temperature 0.7 (processed log-probs: after the temperature).

    Bound: mean |delta| <= 1e-2 nats. bfloat16 keeps 8 significant bits (relative rounding
    2**-9 ~ 2e-3); rounding the weights and every activation of the two layers perturbs each
    logit by a few 1e-3 relative, so a few 1e-3 nats per token is what bf16 costs (measured
    here: about 4e-3 mean, 2e-2 max). The control shows the bound is tight enough to matter:
    the same completions scored under another image differ by far more."""
    import torch

    from learner.learner import Learner, LearnerSettings

    learner = Learner(
        LearnerSettings(tiny_model_path, "tiny", 64, 64, init="noise", temperature=0.7)
    )
    pool.broadcast(learner.image_update())
    sampling = SamplingConfig(temperature=0.7, max_new_tokens=6, seed=5)
    groups = pool.generate([RolloutRequest(i, prompt, 8) for i in range(4)], sampling)
    completions = [c for g in groups for c in g]
    diffs = abs_diffs(completions, learner.compute_logprobs(completions))
    with torch.no_grad():
        learner.image.theta_CHW.fill_(4.0)  # a near-white image instead
    control = abs_diffs(completions, learner.compute_logprobs(completions))
    figure = (
        f"vLLM bf16 vs learner fp32 on {diffs.size} tokens: mean |delta| {diffs.mean():.2e}, "
        f"max {diffs.max():.2e}; under another image: mean {control.mean():.2e}"
    )
    print(figure)
    assert diffs.mean() <= 1e-2, figure
    assert control.mean() > 5 * diffs.mean(), figure


def test_a_new_image_changes_the_samples_without_reloading_the_engine(pool, prompt):
    before = worker_call(pool, "info")
    sampling = SamplingConfig(max_new_tokens=4, seed=3)
    request = [RolloutRequest(0, prompt, 16)]
    seen = {}
    for version, rgb in enumerate([(20, 20, 20), (250, 20, 250), (20, 250, 20)], start=1):
        pool.broadcast(_image_update(version, rgb))
        group = pool.generate(request, sampling)[0]
        assert {c.image_version for c in group} == {version}
        seen[rgb] = [c.text for c in group]
    answers = {rgb: max(set(t), key=t.count) for rgb, t in seen.items()}
    print(f"most frequent answer per image: {answers}")
    assert len({tuple(t) for t in seen.values()}) == 3, seen  # each image its own samples
    stats, after = worker_call(pool, "stats"), worker_call(pool, "info")
    assert stats["engine_builds"] == 1 and after["pid"] == before["pid"], (stats, after)


def _image_update(version, rgb):
    from shared.messages import ImageUpdate

    return ImageUpdate(version=version, png=solid_png(rgb, version))


def test_seeds_reproduce_and_each_child_has_its_own_seed(pool, prompt):
    """A request of n samples with seed s gives child j the seed that
    `shared.sampling.completion_seeds` names: sampling each child alone (n=1) with that seed
    gives the same tokens. And the same seeds give the same completions again."""
    pool.broadcast(_image_update(10, (128, 128, 128)))  # mid-gray: the reader is unsure
    base, request_id, n = 1000, 3, 4
    group = pool.generate([RolloutRequest(request_id, prompt, n)], SamplingConfig(seed=base))[0]
    again = pool.generate([RolloutRequest(request_id, prompt, n)], SamplingConfig(seed=base))[0]
    assert [c.token_ids for c in group] == [c.token_ids for c in again]
    alone = [
        pool.generate([RolloutRequest(0, prompt, 1)], SamplingConfig(seed=seed))[0][0]
        for seed in completion_seeds(base, request_id, n)
    ]
    print(f"children {[c.token_ids for c in group]}, alone {[c.token_ids for c in alone]}")
    assert [c.token_ids for c in alone] == [c.token_ids for c in group]
    other = pool.generate([RolloutRequest(request_id, prompt, n)], SamplingConfig(seed=base + 7))
    assert [c.token_ids for c in other[0]] != [c.token_ids for c in group]


def test_vision_tokens_are_never_sampled(pool, tiny_model_path, prompt, tiny_processor):
    """At temperature 2 (vLLM's maximum) the reader's distribution is flat enough that,
    unmasked, some of the sampled tokens would be vision tokens: the learner's model gives the
    expected count without the mask; the engine's samples hold none."""
    import torch

    from learner.learner import Learner, LearnerSettings

    banned = sorted(suppressed_token_ids(tiny_processor.tokenizer))
    learner = Learner(
        LearnerSettings(tiny_model_path, "tiny", 64, 64, init="gray", temperature=2.0)
    )
    pool.broadcast(_image_update(11, (128, 128, 128)))
    sampling = SamplingConfig(temperature=2.0, max_new_tokens=32, seed=21)
    groups = pool.generate([RolloutRequest(i, prompt, 16) for i in range(32)], sampling)
    completions = [c for g in groups for c in g]
    tokens = [t for c in completions for t in c.token_ids]
    policy, masses = learner.policy, []
    score = policy._chunk_logprobs

    def spy(hidden_CD, targets_C):  # the unmasked probability of the vision tokens
        logits_CV = policy.model.lm_head(hidden_CD).float() / policy.temperature
        masses.append(torch.softmax(logits_CV, -1)[:, banned].sum(-1))
        return score(hidden_CD, targets_C)

    policy._chunk_logprobs = spy
    learner.compute_logprobs(completions)
    expected = float(torch.cat(masses).sum())
    figure = (
        f"{len(tokens)} tokens sampled at T=2, {len(set(tokens))} distinct; unmasked, "
        f"{expected:.1f} of them would be vision tokens; sampled: "
        f"{sum(t in banned for t in tokens)}"
    )
    print(figure)
    assert expected >= 3, figure  # else the absence below would prove little
    assert not set(banned) & set(tokens), figure


def test_a_lora_adapter_applied_replaced_by_its_next_version_and_cleared(
    pool, prompt, tiny_model_path, tiny_processor
):
    from learner.learner import Learner, LearnerSettings

    learner = Learner(
        LearnerSettings(tiny_model_path, "tiny", 64, 64, method="lora", lora=LORA, with_image=False)
    )
    text = render_prompt(tiny_processor, QUESTION, with_image=False)
    request = [RolloutRequest(0, text, 8, with_image=False)]
    sampling = SamplingConfig(max_new_tokens=6, seed=9)
    pool.broadcast(learner.policy_update())  # version 0: B = 0, the base model
    base = pool.generate(request, sampling)[0]
    assert {c.image_version for c in base} == {0}
    group, groups = base, []
    for _ in range(2):  # two updates: adapter versions 1 and 2
        rewards = tuple(float(c.text.strip() == "F") + 0.1 * i for i, c in enumerate(group))
        learner.update([ScoredGroup(text, tuple(group), rewards)])
        update = learner.policy_update()
        pool.broadcast(update)
        group = pool.generate(request, sampling)[0]
        diffs = abs_diffs(group, learner.compute_logprobs(group))
        print(f"adapter v{update.version}: vLLM vs learner mean |delta| {diffs.mean():.2e}")
        assert {c.image_version for c in group} == {update.version}
        assert diffs.mean() <= 1e-2, diffs.mean()
        groups.append(group)
    mean_lp = [[np.mean(c.logprobs) for c in g] for g in (base, *groups)]
    assert not np.allclose(mean_lp[0], mean_lp[1], atol=1e-3), "the adapter changed nothing"
    assert not np.allclose(mean_lp[1], mean_lp[2], atol=1e-4), "version 2 did not replace 1"
    pool.clear_adapter()
    cleared = pool.generate(request, sampling)[0]
    assert [c.token_ids for c in cleared] == [c.token_ids for c in base]
    np.testing.assert_allclose(
        np.concatenate([c.logprobs for c in cleared]),
        np.concatenate([c.logprobs for c in base]),
        atol=1e-6,
    )
    assert worker_call(pool, "stats")["engine_builds"] == 1


def test_a_killed_worker_is_restarted_its_chunk_resampled_and_its_engine_gone(pool, prompt):
    """Kill -9 the worker's process while it samples: the pool waits for Ray's restart, gives
    the new process the current image, samples the chunk again with the same seeds (the same
    completions as before the kill), and vLLM's engine processes of the dead one are gone."""
    import psutil

    pool.broadcast(_image_update(20, (200, 60, 200)))
    requests = [RolloutRequest(i, prompt, 4) for i in range(2)]
    sampling = SamplingConfig(max_new_tokens=4, seed=77)
    reference = pool.generate(requests, sampling)
    info = worker_call(pool, "info")
    assert info["child_pids"], "vLLM's engine runs in child processes of the worker"
    restarts = pool.restarts
    pending = pool.launch(requests, sampling)
    os.kill(info["pid"], signal.SIGKILL)
    start = time.perf_counter()
    groups = pool.collect(pending)
    print(f"restart and re-sampling took {time.perf_counter() - start:.1f}s")
    assert pool.restarts == restarts + 1
    assert [[c.token_ids for c in g] for g in groups] == [
        [c.token_ids for c in g] for g in reference
    ]
    assert {c.image_version for g in groups for c in g} == {20}
    new = worker_call(pool, "info")
    assert new["pid"] != info["pid"] and worker_call(pool, "stats")["engine_builds"] == 1
    deadline = time.monotonic() + 30
    alive = info["child_pids"]
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if psutil.pid_exists(p) and _not_zombie(p)]
        time.sleep(0.5)
    assert not alive, f"engine processes of the killed worker still alive: {alive}"


def _not_zombie(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
