"""The frozen model as a differentiable function of the pixels.

`FrozenPolicy` holds the Hugging Face copy of the model with every weight frozen
(`requires_grad=False`: backward computes activation gradients only) and recomputes the
per-token log-probs of sampled completions given the prompt token ids the engine sampled from
and the image. It is lean where the model is large:
- the image is encoded once and its features are shared by every sequence;
- logits are computed only at completion positions, never for prompt or image tokens, and
  past one chunk (2**25 logits) the log-softmax runs chunk by chunk, each recomputed in
  backward (checkpointed), so at most one chunk x vocabulary tensor is alive at a time;
- optionally (`activation_checkpointing`), the decoder layers keep only their inputs for
  backward and recompute the rest; gradients still reach the pixels through the image
  features with every weight frozen;
- where sequences share a prompt (a group's G completions), each distinct prompt is computed
  once and its state forked to its completions (`learner/shared_prefix.py`, on by default
  where the model supports it: `shared_prefix`); `padded_logprobs` is the forward of prompt +
  completion per sequence, which runs otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch.utils.checkpoint import checkpoint
from transformers.modeling_outputs import BaseModelOutputWithPooling

from learner.preprocess import VisionSpec, preprocess
from learner.shared_prefix import SharedPrefixForward, unsupported_reason
from shared.prompts import suppressed_token_ids

logger = logging.getLogger(__name__)

# Elements of one chunk of logits (positions x vocabulary): 2**25 float32 = 128 MiB.
LOGITS_CHUNK_ELEMENTS = 2**25


def load_model_and_processor(path: str, dtype: str = "float32", device: str = "cpu"):
    # start-up time: a heavy library, loaded when this runs
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


@dataclass
class CompletionStates:
    """The final hidden states that predict the completion tokens of a batch (N positions,
    sequence by sequence), the tokens, and where each sits in a (B, T) layout."""

    hidden_ND: torch.Tensor
    targets_N: torch.Tensor
    rows_N: torch.Tensor
    steps_N: torch.Tensor
    batch: int
    width: int  # the longest completion

    def scatter(self, values_N: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-position values as (B, T) (zero after each completion's end) and the mask."""
        device = values_N.device
        values_BT = torch.zeros(self.batch, self.width, device=device, dtype=values_N.dtype)
        values_BT = values_BT.index_put((self.rows_N, self.steps_N), values_N)
        mask_BT = torch.zeros(self.batch, self.width, device=device)
        mask_BT[self.rows_N, self.steps_N] = 1.0
        return values_BT, mask_BT


class FrozenPolicy:
    def __init__(
        self,
        model,
        processor,
        temperature: float = 1.0,
        activation_checkpointing: bool = False,
        logits_chunk_elements: int = LOGITS_CHUNK_ELEMENTS,
        shared_prefix: bool = True,
    ):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.temperature = temperature
        self.spec = VisionSpec.from_image_processor(processor.image_processor)
        self.image_token_id = int(model.config.image_token_id)
        self.pad_token_id = int(self.tokenizer.pad_token_id)
        self.device = next(model.parameters()).device
        self.vocab_size = int(model.config.text_config.vocab_size)
        self.suppress_ids = torch.tensor(
            suppressed_token_ids(self.tokenizer), dtype=torch.long, device=self.device
        )
        self.chunk_tokens = max(1, logits_chunk_elements // self.vocab_size)
        if activation_checkpointing:
            enable_activation_checkpointing(model)
        self.shared_prefix = None  # the shared-prefix forward, where it runs
        if shared_prefix:
            reason = unsupported_reason(model)
            if reason is None:
                self.shared_prefix = SharedPrefixForward(self)
            else:
                logger.info(
                    "shared-prefix forward unsupported for %s (%s): the padded forward runs",
                    type(model).__name__,
                    reason,
                )

    def encode_image(self, pixels_CHW: torch.Tensor) -> EncodedImage:
        patches_NP, grid_thw = preprocess(pixels_CHW, self.spec)
        dtype = self.model.model.visual.dtype
        out = self.model.model.get_image_features(
            patches_NP.to(self.device, dtype), grid_thw.to(self.device), return_dict=True
        )
        return EncodedImage(features_ND=out.pooler_output[0], grid_thw=grid_thw.to(self.device))

    def token_logprobs(self, hidden_ND: torch.Tensor, targets_N: torch.Tensor) -> torch.Tensor:
        """Log-probs (N,) of `targets_N` under the sampling distribution (temperature, vision
        tokens masked) from final hidden states, one chunk of positions at a time."""
        if hidden_ND.shape[0] <= self.chunk_tokens:  # one chunk: nothing to save by recomputing
            return self._chunk_logprobs(hidden_ND, targets_N)
        chunks = []
        for start in range(0, hidden_ND.shape[0], self.chunk_tokens):
            h_CD = hidden_ND[start : start + self.chunk_tokens]
            t_C = targets_N[start : start + self.chunk_tokens]
            if torch.is_grad_enabled() and h_CD.requires_grad:
                chunks.append(checkpoint(self._chunk_logprobs, h_CD, t_C, use_reentrant=False))
            else:
                chunks.append(self._chunk_logprobs(h_CD, t_C))
        return torch.cat(chunks)

    def logits(self, hidden_CD: torch.Tensor) -> torch.Tensor:
        """The sampling distribution's logits (C, V) at final hidden states: float32, divided
        by the temperature, vision tokens -inf."""
        logits_CV = self.model.lm_head(hidden_CD).float() / self.temperature
        logits_CV[:, self.suppress_ids] = float("-inf")
        return logits_CV

    def _chunk_logprobs(self, hidden_CD: torch.Tensor, targets_C: torch.Tensor) -> torch.Tensor:
        logits_CV = self.logits(hidden_CD)
        target_C = logits_CV.gather(-1, targets_C.unsqueeze(-1)).squeeze(-1)
        return target_C - torch.logsumexp(logits_CV, dim=-1)

    def sequence_logprobs(
        self,
        image: EncodedImage | None,
        prompt_ids: Sequence[Sequence[int]],
        completions: Sequence[Sequence[int]],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logprobs (B, T), mask (B, T)) over the completion tokens. `prompt_ids` are the ids
        the engine sampled from, image placeholder already expanded to the image's tokens.
        Sequences that share a prompt go through the shared-prefix forward where it runs (the
        same log-probs, each prompt computed once), the others through the padded one."""
        shares = len({tuple(p) for p in prompt_ids}) < len(prompt_ids)
        if self.shared_prefix is not None and shares:
            return self.shared_prefix.sequence_logprobs(image, prompt_ids, completions)
        return self.padded_logprobs(image, prompt_ids, completions)

    def padded_logprobs(
        self,
        image: EncodedImage | None,
        prompt_ids: Sequence[Sequence[int]],
        completions: Sequence[Sequence[int]],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One padded forward over prompt + completion token ids per sequence (right padding):
        what `sequence_logprobs` returns, each sequence computing its own prompt."""
        states = self.completion_states(image, prompt_ids, completions)
        logprobs_N = self.token_logprobs(states.hidden_ND, states.targets_N)
        return states.scatter(logprobs_N)

    def completion_states(
        self,
        image: EncodedImage | None,
        prompt_ids: Sequence[Sequence[int]],
        completions: Sequence[Sequence[int]],
    ) -> CompletionStates:
        """One padded forward over prompt + completion token ids: the final hidden state that
        predicts each completion token, and that token (N positions, sequence by sequence)."""
        self._check_prompts(image, prompt_ids)
        seqs = [list(p) + list(c) for p, c in zip(prompt_ids, completions, strict=True)]
        batch, max_len = len(seqs), max(len(s) for s in seqs)
        input_ids_BL = torch.full((batch, max_len), self.pad_token_id, dtype=torch.long)
        attention_BL = torch.zeros((batch, max_len), dtype=torch.long)
        for i, seq in enumerate(seqs):  # right padding: real tokens first
            input_ids_BL[i, : len(seq)] = torch.tensor(seq)
            attention_BL[i, : len(seq)] = 1
        input_ids_BL = input_ids_BL.to(self.device)
        attention_BL = attention_BL.to(self.device)
        inputs = {"input_ids": input_ids_BL, "attention_mask": attention_BL, "use_cache": False}
        if image is not None:
            # in the model's dtype (ART's gradient leaf is float32 in a bfloat16 model)
            features_ND = image.features_ND.to(self.model.get_input_embeddings().weight.dtype)
            encoder_out = BaseModelOutputWithPooling(pooler_output=(features_ND,) * batch)
            inputs.update(
                image_grid_thw=image.grid_thw.expand(batch, -1),
                mm_token_type_ids=(input_ids_BL == self.image_token_id).int(),
                mm_encoder_outputs={"image": encoder_out},
            )
        hidden_BLD = self.model.model(**inputs).last_hidden_state

        # Completion token k of sequence i sits at len(prompt_i) + k and is predicted by the
        # hidden state one position earlier.
        lengths = [len(c) for c in completions]
        rows = torch.tensor(
            [i for i, n in enumerate(lengths) for _ in range(n)], device=self.device
        )
        steps = torch.tensor([k for n in lengths for k in range(n)], device=self.device)
        starts = torch.tensor([len(p) for p in prompt_ids], device=self.device)
        positions = starts[rows] + steps
        return CompletionStates(
            hidden_BLD[rows, positions - 1],
            input_ids_BL[rows, positions],
            rows,
            steps,
            batch,
            max(lengths),
        )

    def _check_prompts(self, image: EncodedImage | None, prompt_ids) -> None:
        expected = image.num_tokens if image is not None else 0
        for ids in prompt_ids:
            found = sum(1 for t in ids if t == self.image_token_id)
            if found != expected:
                raise ValueError(
                    f"a prompt holds {found} image tokens but the image has {expected}: the "
                    "rollout engine and the learner disagree on the image size or processor"
                )


def enable_activation_checkpointing(model) -> None:
    """Keep only each decoder layer's input for backward and recompute the layer there.

    Uses the `GradientCheckpointingLayer` contract of transformers (a layer checkpoints when
    its `gradient_checkpointing` flag is set and it is in training mode); only the language
    model's decoder layers are switched to training mode, which changes nothing else in them
    (attention dropout is 0 in Qwen3.5). Non-reentrant checkpointing, so gradients reach the
    image features even though no weight requires a gradient.
    """
    # start-up time: a heavy library, loaded when this runs
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [
        m for m in model.model.language_model.modules() if isinstance(m, GradientCheckpointingLayer)
    ]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no checkpointable decoder layers")
    for layer in layers:
        layer.gradient_checkpointing = True
        layer._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)
        layer.train()
