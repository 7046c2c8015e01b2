import pytest

from rollout_worker.hf_engine import HFEngine
from rollout_worker.worker import RolloutWorker
from shared.artifact import encode_png, png_to_pil
from shared.messages import RolloutRequest, SamplingConfig, WorkerSettings
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
    worker = RolloutWorker(WorkerSettings("hf", tiny_model_path, worker_index=0))
    prompt = render_prompt(tiny_processor, "What letter is it?")
    with pytest.raises(RuntimeError, match="no image yet"):
        worker.generate([RolloutRequest(0, prompt, 2)], SamplingConfig())
    assert worker.set_image(3, _png(10)) == 3
    groups = worker.generate([RolloutRequest(0, prompt, 2)], SamplingConfig(seed=0))
    assert {c.image_version for c in groups[0]} == {3}
    with pytest.raises(ValueError, match="went back"):
        worker.set_image(2, _png(20))


def test_presence_penalty_is_vllms_definition_on_hand_computed_logits():
    import torch

    from rollout_worker.hf_engine import ArtLogitsProcessor, presence_penalty

    logits_BV = torch.tensor([[2.0, 1.5, 1.0, 0.5], [0.0, 3.0, 1.0, 1.0]])
    # Row 0 generated token 0 twice, row 1 tokens 1 and 3: each seen token pays the penalty
    # once (presence, not frequency); unseen tokens and the prompt are untouched.
    generated_BT = torch.tensor([[0, 0], [1, 3]])
    out = presence_penalty(logits_BV, generated_BT, 1.0)
    assert torch.equal(out, torch.tensor([[1.0, 1.5, 1.0, 0.5], [0.0, 2.0, 1.0, 0.0]]))
    assert out[0].argmax() == 1  # greedy now picks token 1 instead of repeating token 0
    # In the engine's processor: vision tokens masked, penalty, then temperature (vLLM's order).
    prompt_and_output_BL = torch.cat([torch.tensor([[3, 3], [0, 0]]), generated_BT], dim=1)
    processed = ArtLogitsProcessor([2], prompt_len=2, penalty=1.0, temperature=0.5)(
        prompt_and_output_BL, logits_BV.clone()
    )
    expected = torch.tensor([[2.0, 3.0, float("-inf"), 1.0], [0.0, 4.0, float("-inf"), 0.0]])
    assert torch.equal(processed, expected)


def test_generate_samples_through_the_presence_penalty(engine, tiny_processor):
    # The reader answers one letter then <|im_end|>. A negative penalty (vLLM allows them)
    # rewards the letter it already said, so greedy decoding repeats it to the limit: the
    # penalty reaches generate, and the reported log-probs are those of the penalized scores.
    prompt = render_prompt(tiny_processor, "Which letter does the picture show?")
    request = [RolloutRequest(0, prompt, 1)]
    image = png_to_pil(_png(200))
    plain = engine.generate(request, image, 0, SamplingConfig(max_new_tokens=6, greedy=True))[0][0]
    pushed = engine.generate(
        request, image, 0, SamplingConfig(max_new_tokens=6, greedy=True, presence_penalty=-50.0)
    )[0][0]
    assert plain.finish_reason == "stop" and len(plain.token_ids) == 2
    assert pushed.token_ids == (plain.token_ids[0],) * 6 and pushed.finish_reason == "length"
    assert pushed.logprobs[1] > -1e-3  # after the penalty the repeat is all but certain


def test_a_checkpoints_generation_config_never_reshapes_the_sampling(
    tiny_model_path, tiny_processor, tmp_path
):
    """transformers 5 fills a generate() config's unset fields from the model's
    generation_config.json; a checkpoint that asks for repetition_penalty=1.3, min_p=0.1 and
    top_k=3 must not change what the engine samples from: its log-probs stay the learner's."""
    import json
    import shutil

    import numpy as np

    from learner.learner import Learner, LearnerSettings

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_path, folder)
    config = json.loads((folder / "generation_config.json").read_text())
    config.update(repetition_penalty=1.3, min_p=0.1, top_k=3, temperature=0.3, do_sample=True)
    (folder / "generation_config.json").write_text(json.dumps(config))
    engine = HFEngine(str(folder))
    learner = Learner(LearnerSettings(str(folder), "tiny", 64, 64, init="noise"))
    update = learner.image_update()
    prompt = render_prompt(tiny_processor, "What letter is it?")
    groups = engine.generate(
        [RolloutRequest(0, prompt, 8)], png_to_pil(update.png), 0, SamplingConfig(seed=2)
    )
    recomputed = learner.compute_logprobs(groups[0])
    diffs = np.concatenate(
        [np.abs(np.subtract(c.logprobs, lp)) for c, lp in zip(groups[0], recomputed, strict=True)]
    )
    assert diffs.max() < 1e-5, diffs.max()
