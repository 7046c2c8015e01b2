import pytest

from rollout_worker.hf_engine import HFEngine
from rollout_worker.worker import RolloutWorker
from shared.artifact import encode_png, png_to_pil
from shared.messages import RolloutRequest, SamplingConfig
from shared.prompts import render_prompt, suppressed_token_ids


@pytest.fixture(scope="module")
def engine(tiny_model_path):
    return HFEngine(tiny_model_path)


def _png(value=128):
    import numpy as np

    return encode_png(np.full((64, 64, 3), value, dtype=np.uint8))


def test_groups_have_n_completions_with_matching_logprobs(engine, tiny_processor):
    prompt = render_prompt(tiny_processor, "What letter is it?")
    requests = [RolloutRequest(7, prompt, 5), RolloutRequest(8, prompt, 3)]
    groups = engine.generate(
        requests, png_to_pil(_png()), 4, SamplingConfig(max_new_tokens=6, seed=1)
    )
    assert [len(g) for g in groups] == [5, 3]
    for request, group in zip(requests, groups, strict=True):
        for c in group:
            assert c.request_id == request.request_id
            assert c.image_version == 4
            assert len(c.logprobs) == len(c.token_ids) <= 6
            assert all(lp <= 0 for lp in c.logprobs)
            if c.finish_reason == "stop":
                assert c.token_ids[-1] == engine.tokenizer.convert_tokens_to_ids("<|im_end|>")
            else:
                assert len(c.token_ids) == 6


def test_vision_special_tokens_are_never_sampled(engine, tiny_processor):
    # A very hot sampler over a long horizon would hit them if they were not masked.
    prompt = render_prompt(tiny_processor, "Which class is the picture in?")
    sampling = SamplingConfig(temperature=50.0, max_new_tokens=32, seed=3)
    groups = engine.generate([RolloutRequest(0, prompt, 16)], png_to_pil(_png()), 0, sampling)
    banned = set(suppressed_token_ids(engine.tokenizer))
    sampled = [t for c in groups[0] for t in c.token_ids]
    assert len(sampled) > 200
    assert not banned & set(sampled)


def test_worker_tracks_image_versions(tiny_model_path, tiny_processor):
    worker = RolloutWorker("hf", tiny_model_path, worker_index=0)
    prompt = render_prompt(tiny_processor, "What letter is it?")
    with pytest.raises(RuntimeError, match="no image yet"):
        worker.generate([RolloutRequest(0, prompt, 2)], SamplingConfig())
    assert worker.set_image(3, _png(10)) == 3
    groups = worker.generate([RolloutRequest(0, prompt, 2)], SamplingConfig(seed=0))
    assert {c.image_version for c in groups[0]} == {3}
    with pytest.raises(ValueError, match="went back"):
        worker.set_image(2, _png(20))
