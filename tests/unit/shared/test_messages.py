import pytest

from shared.messages import Completion, ImageUpdate, RolloutRequest, SamplingConfig, ScoredGroup


def _completion(request_id=0, tokens=(1, 2), logprobs=(-0.1, -0.2), prompt=(5, 6)):
    return Completion(request_id, tokens, logprobs, "stop", "x", 0, prompt_token_ids=prompt)


def test_completion_invariants():
    _completion()
    with pytest.raises(ValueError, match="len\\(logprobs\\)"):
        _completion(logprobs=(-0.1,))
    with pytest.raises(ValueError, match="at least one token"):
        _completion(tokens=(), logprobs=())
    with pytest.raises(ValueError, match="finish_reason"):
        Completion(0, (1,), (-0.1,), "eos", "x", 0, (5,))
    with pytest.raises(ValueError, match="prompt token ids"):
        _completion(prompt=())


def test_group_invariants():
    ScoredGroup("p", (_completion(), _completion()), (1.0, 0.0))
    with pytest.raises(ValueError, match="len\\(rewards\\)"):
        ScoredGroup("p", (_completion(),), (1.0, 0.0))
    with pytest.raises(ValueError, match="same request"):
        ScoredGroup("p", (_completion(0), _completion(1)), (1.0, 0.0))
    with pytest.raises(ValueError, match="one prompt"):
        ScoredGroup("p", (_completion(prompt=(1,)), _completion(prompt=(2,))), (1.0, 0.0))


def test_other_messages_validate():
    with pytest.raises(ValueError, match="not PNG"):
        ImageUpdate(1, b"nope")
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=0.0)
    with pytest.raises(ValueError, match="group size"):
        RolloutRequest(0, "p", 0)
