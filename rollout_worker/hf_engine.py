"""Hugging Face `generate` engine: the CPU engine, used by the embedded default and tests.

Same prompts, same uint8 image through the model's own processor. The sampling distribution
is defined in one place, `ArtLogitsProcessor`, exactly as vLLM defines it: vision tokens masked
(-inf), the presence penalty subtracted from every token already generated (evaluation only),
then the temperature. `generate` gets a fresh `GenerationConfig` and the model's own is replaced by a neutral one
(transformers 5 fills unset fields from it: the checkpoint's `generation_config.json` could add
penalties or truncation), and the
reported log-probs are the log-softmax of exactly the scores that were sampled from.
"""

from __future__ import annotations

import warnings

import torch
from PIL import Image

from rollout_worker.images import pick_image
from shared.messages import Completion, RolloutRequest, SamplingConfig
from shared.prompts import suppressed_token_ids
from shared.sampling import seed_of


def presence_penalty(
    logits_BV: torch.Tensor, generated_BT: torch.Tensor, penalty: float
) -> torch.Tensor:
    """vLLM's presence penalty: `logits - penalty * [token occurs in the output so far]`
    (generated tokens only, not the prompt; once per token whatever its count)."""
    if penalty == 0 or generated_BT.shape[1] == 0:
        return logits_BV
    seen_BV = torch.zeros_like(logits_BV, dtype=torch.bool)
    seen_BV.scatter_(1, generated_BT, True)
    return logits_BV - penalty * seen_BV.to(logits_BV.dtype)


class ArtLogitsProcessor:
    """Mask the vision tokens, apply the presence penalty, then the temperature (vLLM's order:
    penalties before temperature)."""

    def __init__(
        self, suppress_ids: list[int], prompt_len: int, penalty: float, temperature: float
    ):
        self.suppress_ids, self.prompt_len = suppress_ids, prompt_len
        self.penalty, self.temperature = penalty, temperature

    def __call__(self, input_ids_BL: torch.Tensor, scores_BV: torch.Tensor) -> torch.Tensor:
        scores_BV = scores_BV.float()
        scores_BV[:, self.suppress_ids] = float("-inf")
        scores_BV = presence_penalty(scores_BV, input_ids_BL[:, self.prompt_len :], self.penalty)
        return scores_BV / self.temperature


class HFEngine:
    # Engines built in this process (a worker builds one and never reloads it).
    builds = 0

    def __init__(self, model_path: str, dtype: str = "float32", device: str = "cpu", **_):
        # start-up time: a heavy library, loaded when this runs
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.model = AutoModelForImageTextToText.from_pretrained(
            model_path, dtype=getattr(torch, dtype)
        )
        self.model.to(device).eval()
        self.device = device
        self.processor = AutoProcessor.from_pretrained(model_path)
        self.tokenizer = self.processor.tokenizer
        self.suppress_ids = suppressed_token_ids(self.tokenizer)
        # Stop where vLLM stops: <|im_end|>, the tokenizer's eos and every eos id of the
        # checkpoint's generation_config.json.
        own = self.model.generation_config.eos_token_id
        own = [] if own is None else [own] if isinstance(own, int) else list(own)
        self.eos_ids = sorted(
            {self.tokenizer.convert_tokens_to_ids("<|im_end|>"), self.tokenizer.eos_token_id}
            | set(own)
        )
        # transformers 5 fills every field a generate() config leaves unset from
        # model.generation_config: a checkpoint's repetition_penalty, min_p, top_k, ... would
        # silently reshape the sampling distribution, which the learner never applies. A
        # neutral config instead; the distribution is ArtLogitsProcessor's alone.
        from transformers import GenerationConfig

        self.model.generation_config = GenerationConfig(
            eos_token_id=self.eos_ids, pad_token_id=self.tokenizer.pad_token_id
        )
        self.pad_id = self.tokenizer.pad_token_id
        self.peft_model, self.peft_config = None, None
        HFEngine.builds += 1

    def set_adapter(self, version: int, config: dict, weights: bytes) -> None:
        """Apply a LoRA adapter with PEFT: injected into the model once, its weights replaced
        on every later version."""

        # start-up time: a heavy library, loaded when this runs
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

        # start-up time: a heavy library, loaded when this runs
        from safetensors.torch import load

        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        warnings.filterwarnings("ignore", message=".*base_model_name_or_path.*")

        if self.peft_model is not None and config != self.peft_config:
            self.model = self.peft_model.unload()  # another shape: back to the bare base model
            self.peft_model = None
        if self.peft_model is None:
            self.peft_model = get_peft_model(self.model, LoraConfig.from_peft_type(**config))
            self.peft_model.eval()
            self.peft_config = dict(config)
        self.peft_model.base_model.enable_adapter_layers()
        result = set_peft_model_state_dict(self.peft_model, load(weights))
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"adapter weights that fit no module: {result.unexpected_keys[:3]}")

    def generation_config(self, sampling: SamplingConfig, n: int):
        # start-up time: a heavy library, loaded when this runs
        from transformers import GenerationConfig

        return GenerationConfig(
            do_sample=not sampling.greedy,
            temperature=1.0,  # applied by ArtLogitsProcessor, after the penalty
            top_k=None if sampling.greedy else 0,
            top_p=1.0,
            max_new_tokens=sampling.max_new_tokens,
            num_return_sequences=n,
            output_scores=True,
            return_dict_in_generate=True,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids,
        )

    def clear_adapter(self) -> None:
        if self.peft_model is not None:
            self.peft_model.base_model.disable_adapter_layers()

    @torch.no_grad()
    def generate(
        self,
        requests: list[RolloutRequest],
        image: Image.Image,
        image_version: int,
        sampling: SamplingConfig,
        images: dict | None = None,
    ) -> list[list[Completion]]:
        """`images`: {image_key: (image, version)} of a multi-task batch (each request names its
        own); `image` and `image_version` serve requests of key "" (one task)."""
        # start-up time: a heavy library, loaded when this runs
        from transformers import LogitsProcessorList

        temperature = 1.0 if sampling.greedy else sampling.temperature
        results = []
        for request in requests:
            seed = seed_of(request, sampling)
            if seed is not None:
                torch.manual_seed(seed)
            own, version = pick_image(request, image, image_version, images)
            attached = [own] if request.with_image else None
            inputs = self.processor(text=[request.prompt], images=attached, return_tensors="pt")
            inputs = inputs.to(self.device)
            prompt_ids = tuple(inputs["input_ids"][0].tolist())
            prompt_len = len(prompt_ids)
            processor = ArtLogitsProcessor(
                self.suppress_ids, prompt_len, sampling.presence_penalty, temperature
            )
            out = self.model.generate(
                **inputs,
                generation_config=self.generation_config(sampling, request.n),
                logits_processor=LogitsProcessorList([processor]),
            )
            new_BT = out.sequences[:, prompt_len:]
            scores_BTV = torch.stack(out.scores, dim=1).float()
            logprobs_BT = (
                torch.log_softmax(scores_BTV, -1).gather(-1, new_BT.unsqueeze(-1)).squeeze(-1)
            )
            group = []
            for i in range(request.n):
                tokens = new_BT[i].tolist()
                length, finish = len(tokens), "length"
                for t, tok in enumerate(tokens):
                    if tok in self.eos_ids:
                        length, finish = t + 1, "stop"
                        break
                token_ids = tuple(tokens[:length])
                group.append(
                    Completion(
                        request_id=request.request_id,
                        token_ids=token_ids,
                        logprobs=tuple(logprobs_BT[i, :length].tolist()),
                        finish_reason=finish,
                        text=self.tokenizer.decode(token_ids, skip_special_tokens=True),
                        image_version=version,
                        prompt_token_ids=prompt_ids,
                    )
                )
            results.append(group)
        return results
