"""The frozen model as a differentiable function of the pixels.

`FrozenPolicy` loads the Hugging Face copy of the model, freezes every weight
(`requires_grad=False`, so backward computes activation gradients only), and recomputes the
per-token log-probs of sampled completions given prompt + image. The image is encoded once per
call and its features are shared by every sequence of the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from learner.preprocess import VisionSpec, preprocess
from shared.prompts import suppressed_token_ids


def load_model_and_processor(path: str, dtype: str = "float32", device: str = "cpu"):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(path, dtype=getattr(torch, dtype))
    model.to(device).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    processor = AutoProcessor.from_pretrained(path)
    return model, processor


@dataclass
class EncodedImage:
    """Image features (num_image_tokens, hidden) and grid (1, 3) for one image."""

    features_ND: torch.Tensor
    grid_thw: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return int(self.features_ND.shape[0])


class FrozenPolicy:
    def __init__(self, model, processor, temperature: float = 1.0):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.temperature = temperature
        self.spec = VisionSpec.from_image_processor(processor.image_processor)
        self.image_token_id = int(model.config.image_token_id)
        self.pad_token_id = int(self.tokenizer.pad_token_id)
        self.device = next(model.parameters()).device
        vocab_size = model.config.text_config.vocab_size
        suppress_V = torch.zeros(vocab_size, dtype=torch.bool)
        suppress_V[suppressed_token_ids(self.tokenizer)] = True
        self.suppress_V = suppress_V.to(self.device)
        self._prompt_cache: dict[tuple[str, int], list[int]] = {}

    def encode_image(self, pixels_CHW: torch.Tensor) -> EncodedImage:
        patches_NP, grid_thw = preprocess(pixels_CHW, self.spec)
        dtype = self.model.model.visual.dtype
        out = self.model.model.get_image_features(
            patches_NP.to(self.device, dtype), grid_thw.to(self.device), return_dict=True
        )
        return EncodedImage(features_ND=out.pooler_output[0], grid_thw=grid_thw.to(self.device))

    def prompt_ids(self, prompt: str, num_image_tokens: int) -> list[int]:
        """Tokenize a rendered prompt, expanding its one `<|image_pad|>` as the processor does."""
        key = (prompt, num_image_tokens)
        if key not in self._prompt_cache:
            expanded = prompt.replace("<|image_pad|>", "<|image_pad|>" * num_image_tokens, 1)
            ids = self.tokenizer(expanded, add_special_tokens=False)["input_ids"]
            self._prompt_cache[key] = list(ids)
        return self._prompt_cache[key]

    def logits_to_logprobs(
        self, logits_TV: torch.Tensor, token_ids_T: torch.Tensor
    ) -> torch.Tensor:
        """Log-probs of `token_ids` under the sampling distribution: temperature, suppression."""
        logits_TV = logits_TV.float() / self.temperature
        logits_TV = logits_TV.masked_fill(self.suppress_V[: logits_TV.shape[-1]], float("-inf"))
        return (
            torch.log_softmax(logits_TV, dim=-1).gather(-1, token_ids_T.unsqueeze(-1)).squeeze(-1)
        )

    def sequence_logprobs(
        self,
        image: EncodedImage,
        prompts: Sequence[str],
        completions: Sequence[Sequence[int]],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One padded forward: (logprobs (B, T), mask (B, T)) over the completion tokens."""
        prompt_ids = [self.prompt_ids(p, image.num_tokens) for p in prompts]
        seqs = [p + list(c) for p, c in zip(prompt_ids, completions, strict=True)]
        batch, max_len = len(seqs), max(len(s) for s in seqs)
        max_completion = max(len(c) for c in completions)
        input_ids_BL = torch.full((batch, max_len), self.pad_token_id, dtype=torch.long)
        attention_BL = torch.zeros((batch, max_len), dtype=torch.long)
        for i, seq in enumerate(seqs):  # right padding: real tokens first
            input_ids_BL[i, : len(seq)] = torch.tensor(seq)
            attention_BL[i, : len(seq)] = 1
        input_ids_BL = input_ids_BL.to(self.device)
        attention_BL = attention_BL.to(self.device)
        mm_types_BL = (input_ids_BL == self.image_token_id).int()
        encoder_out = BaseModelOutputWithPooling(pooler_output=(image.features_ND,) * batch)
        out = self.model(
            input_ids=input_ids_BL,
            attention_mask=attention_BL,
            image_grid_thw=image.grid_thw.expand(batch, -1),
            mm_token_type_ids=mm_types_BL,
            mm_encoder_outputs={"image": encoder_out},
            use_cache=False,
        )
        rows = []
        for i, (p, c) in enumerate(zip(prompt_ids, completions, strict=True)):
            # logits at position k predict token k + 1
            start, n = len(p) - 1, len(c)
            token_ids_T = input_ids_BL[i, len(p) : len(p) + n]
            rows.append(
                (i, n, self.logits_to_logprobs(out.logits[i, start : start + n], token_ids_T))
            )
        logprobs_BT = torch.stack(
            [torch.nn.functional.pad(lp, (0, max_completion - n)) for _, n, lp in rows]
        )
        mask_BT = torch.zeros((batch, max_completion), device=self.device)
        for i, n, _ in rows:
            mask_BT[i, :n] = 1.0
        return logprobs_BT, mask_BT
