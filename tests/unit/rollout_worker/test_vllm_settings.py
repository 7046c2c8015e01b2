"""What the vLLM engine asks of vLLM, checked on CPU without vLLM (pure functions)."""

from rollout_worker.vllm_engine import engine_kwargs, sampling_kwargs
from shared.messages import RolloutRequest, SamplingConfig
from shared.sampling import request_seed

PROMPT = "<|vision_start|><|image_pad|><|vision_end|>q"


def test_engine_settings_for_qwen3_5():
    kwargs = engine_kwargs("m", "bfloat16", 0.5, 2048, seed=3)
    assert kwargs["logprobs_mode"] == "processed_logprobs"
    assert kwargs["additional_config"] == {"gdn_prefill_backend": "triton"}
    assert kwargs["limit_mm_per_prompt"] == {"image": 1, "video": 0}
    assert "enable_lora" not in kwargs
    lora = engine_kwargs("m", "bfloat16", 0.5, 2048, seed=3, enable_lora=True, max_lora_rank=32)
    assert (lora["enable_lora"], lora["max_lora_rank"]) == (True, 32)


def test_vision_tokens_are_masked_per_request_by_their_few_ids_only():
    suppress = {248053: float("-inf"), 248056: float("-inf")}
    request = RolloutRequest(5, PROMPT, 8)
    params = sampling_kwargs(request, SamplingConfig(temperature=0.7, seed=100), suppress)
    assert params["logit_bias"] == suppress
    assert "allowed_token_ids" not in params
    assert params["seed"] == request_seed(100, 5, 8) == 140
    assert (params["n"], params["temperature"], params["top_p"], params["top_k"]) == (
        8,
        0.7,
        1.0,
        -1,
    )
    assert params["presence_penalty"] == 0.0 and params["logprobs"] == 0


def test_greedy_evaluation_with_presence_penalty():
    sampling = SamplingConfig(greedy=True, presence_penalty=1.0, max_new_tokens=512, seed=None)
    params = sampling_kwargs(RolloutRequest(0, PROMPT, 1), sampling, {})
    assert (params["temperature"], params["presence_penalty"], params["seed"]) == (0.0, 1.0, None)
    assert params["max_tokens"] == 512
