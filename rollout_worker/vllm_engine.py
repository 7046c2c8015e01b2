"""vLLM engine: the production rollout engine (GPU).

`LLM` is created once per worker and never reloaded. A new image is just a new PIL image in
`multi_modal_data`; vLLM caches encoder outputs by content hash, so the G samples of a prompt
and all prompts of a step share one encoding. Log-probs of the sampled tokens come back with
`logprobs=0` in "processed" mode (after temperature and the vision-token mask), which is the
distribution the learner recomputes.
"""

from __future__ import annotations

from PIL import Image

from shared.messages import Completion, RolloutRequest, SamplingConfig
from shared.prompts import suppressed_token_ids


class VLLMEngine:
    def __init__(
        self,
        model_path: str,
        dtype: str = "bfloat16",
        gpu_memory_utilization: float = 0.85,
        max_model_len: int = 4096,
        seed: int = 0,
        **_,
    ):
        from vllm import LLM

        self.llm = LLM(
            model=model_path,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            limit_mm_per_prompt={"image": 1, "video": 0},
            logprobs_mode="processed_logprobs",
            seed=seed,
        )
        self.tokenizer = self.llm.get_tokenizer()
        suppress = set(suppressed_token_ids(self.tokenizer))
        vocab_size = self.llm.llm_engine.model_config.get_vocab_size()
        self.allowed_token_ids = [i for i in range(vocab_size) if i not in suppress]

    def generate(
        self,
        requests: list[RolloutRequest],
        image: Image.Image,
        image_version: int,
        sampling: SamplingConfig,
    ) -> list[list[Completion]]:
        from vllm import SamplingParams

        prompts, params = [], []
        for request in requests:
            prompt = {"prompt": request.prompt}
            if request.with_image:
                prompt["multi_modal_data"] = {"image": image}
            prompts.append(prompt)
            params.append(
                SamplingParams(
                    n=request.n,
                    temperature=0.0 if sampling.greedy else sampling.temperature,
                    top_p=1.0 if sampling.greedy else sampling.top_p,
                    top_k=-1,
                    max_tokens=sampling.max_new_tokens,
                    logprobs=0,
                    allowed_token_ids=self.allowed_token_ids,
                    seed=None
                    if sampling.seed is None
                    else sampling.seed * 1_000_003 + request.request_id,
                    skip_special_tokens=True,
                )
            )
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        results = []
        for request, output in zip(requests, outputs, strict=True):
            group = []
            for sample in output.outputs:
                token_ids = tuple(sample.token_ids)
                logprobs = tuple(
                    step[token].logprob
                    for step, token in zip(sample.logprobs, token_ids, strict=True)
                )
                group.append(
                    Completion(
                        request_id=request.request_id,
                        token_ids=token_ids,
                        logprobs=logprobs,
                        finish_reason="stop" if sample.finish_reason == "stop" else "length",
                        text=sample.text,
                        image_version=image_version,
                    )
                )
            results.append(group)
        return results
