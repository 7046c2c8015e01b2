"""Hugging Face `generate` engine: the CPU engine, used by the embedded default and tests.

Same prompts, same uint8 image through the model's own processor, sampling with temperature,
vision special tokens suppressed. The sampled tokens' log-probs are computed from the raw
logits with the same temperature and suppression the learner applies.
"""

from __future__ import annotations

import torch
from PIL import Image

from shared.messages import Completion, RolloutRequest, SamplingConfig
from shared.prompts import suppressed_token_ids
from shared.sampling import request_seed


class HFEngine:
    def __init__(self, model_path: str, dtype: str = "float32", device: str = "cpu", **_):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.model = AutoModelForImageTextToText.from_pretrained(
            model_path, dtype=getattr(torch, dtype)
        )
        self.model.to(device).eval()
        self.device = device
        self.processor = AutoProcessor.from_pretrained(model_path)
        self.tokenizer = self.processor.tokenizer
        self.suppress_ids = suppressed_token_ids(self.tokenizer)
        self.eos_ids = {
            self.tokenizer.convert_tokens_to_ids("<|im_end|>"),
            self.tokenizer.eos_token_id,
        }
        self.pad_id = self.tokenizer.pad_token_id
        vocab_size = self.model.config.text_config.vocab_size
        self.suppress_V = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        self.suppress_V[self.suppress_ids] = True

    @torch.no_grad()
    def generate(
        self,
        requests: list[RolloutRequest],
        image: Image.Image,
        image_version: int,
        sampling: SamplingConfig,
    ) -> list[list[Completion]]:
        results = []
        for request in requests:
            if sampling.seed is not None:
                torch.manual_seed(request_seed(sampling.seed, request.request_id, request.n))
            images = [image] if request.with_image else None
            inputs = self.processor(text=[request.prompt], images=images, return_tensors="pt")
            inputs = inputs.to(self.device)
            out = self.model.generate(
                **inputs,
                do_sample=not sampling.greedy,
                temperature=None if sampling.greedy else sampling.temperature,
                top_p=None if sampling.greedy else sampling.top_p,
                top_k=None if sampling.greedy else 0,
                max_new_tokens=sampling.max_new_tokens,
                num_return_sequences=request.n,
                suppress_tokens=self.suppress_ids,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=self.pad_id,
                eos_token_id=sorted(self.eos_ids),
            )
            prompt_ids = tuple(inputs["input_ids"][0].tolist())
            prompt_len = len(prompt_ids)
            new_BT = out.sequences[:, prompt_len:]
            temperature = 1.0 if sampling.greedy else sampling.temperature
            logits_BTV = torch.stack(out.logits, dim=1).float() / temperature
            logits_BTV = logits_BTV.masked_fill(
                self.suppress_V[: logits_BTV.shape[-1]], float("-inf")
            )
            logprobs_BT = (
                torch.log_softmax(logits_BTV, -1).gather(-1, new_BT.unsqueeze(-1)).squeeze(-1)
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
                        image_version=image_version,
                        prompt_token_ids=prompt_ids,
                    )
                )
            results.append(group)
        return results
