"""The shared-prefix forward: each distinct prompt of a pass computed once, its state forked to
all of its completions.

Every completion of a group starts with the same prompt (system prompt, the image's tokens,
the question), and every prompt of a step with the same image. The padded forward
(`FrozenPolicy.padded_logprobs`) computes prompt + completion per sequence, so a group of G
processes its prompt G times; this one computes each distinct prompt once and hands its state
to every completion that continues it, layer by layer:
- full-attention layers: the completion's queries attend to the prompt's keys and values (after
  their norm and rotary embedding) and to the completion's own, causally;
- linear-attention (GatedDeltaNet) layers: the completion starts from the prompt's recurrent
  state (`initial_state` of the chunked gated delta rule) and its short convolution sees the
  prompt's last `kernel - 1` inputs (`learner/linear_attention.py`: the fast kernels'
  initial-state arguments on a GPU, the torch reference's prepended inputs elsewhere);
- positions: a completion's rotary position ids continue its prompt's, which with an image are
  not the prompt's length (the image's tokens take 3D positions spanning its grid's larger
  side: `get_rope_index`); the first completion token is predicted by the prompt's last hidden
  state.
Each pass (the prompts, then the completions) keeps its real tokens packed, (N, D): the
per-token work (norms, projections, MLPs, the logits) is done for real tokens only, and only the
sequence mixers (the convolution, the chunked delta rule, attention) see a padded grid
(`Layout`). Prompts are left-padded there: a padded position's inputs are zeros, as
transformers' masking of padding makes them, so the recurrent state stays exactly zero through
it and the last `kernel - 1` inputs are the prompt's own. Completions are right-padded
(nothing after a token changes it). The states are gathered from prompts to completions by
index, so backward sums the G completions' gradients into their prompt's state, once, and from
there into the prompt's tokens and the image features (the pixels).

The layers are called piece by piece (their own projections, norms, rotary function, attention
interface and MLP) rather than through transformers' cache: the hybrid cache copies states
in place into static buffers (no gradient through them), and a decoder layer under activation
checkpointing drops its cache. With `activation_checkpointing` each layer's prompt and
completion passes are checkpointed here the same way (non-reentrant). Exactness against the
padded forward is tested (tests/unit/learner/test_shared_prefix.py).

Supported: Qwen3.5 (`model_type` "qwen3_5") with the sdpa or eager attention implementation;
`unsupported_reason` says why anything else falls back to the padded forward.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from learner.linear_attention import LinearAttentionKernels

SUPPORTED_MODEL_TYPES = ("qwen3_5",)
SUPPORTED_ATTENTION = ("sdpa", "eager")


def unsupported_reason(model) -> str | None:
    """Why the shared-prefix forward cannot run `model` (None: it can)."""
    config = model.config
    model_type = getattr(config, "model_type", "?")
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model_type {model_type!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
    attention = getattr(config, "_attn_implementation", None) or "sdpa"
    if attention not in SUPPORTED_ATTENTION:
        return f"attention implementation {attention!r} (supported: sdpa, eager)"
    text = getattr(config, "text_config", config)
    other = set(text.layer_types) - {"linear_attention", "full_attention"}
    if other:
        return f"layer types {sorted(other)}"
    return None


class Layout:
    """Where a pass's N real tokens sit in its padded (B, L) grid: row-major, each row's tokens
    contiguous and in order. `grid` places per-token values into the grid (zeros elsewhere),
    `tokens` takes them back out; both pass gradients through."""

    def __init__(self, starts: Sequence[int], lengths: Sequence[int], width: int, device):
        self.batch, self.width = len(lengths), width
        self.rows_N = torch.tensor(
            [b for b, n in enumerate(lengths) for _ in range(n)], device=device
        )
        self.cols_N = torch.tensor(
            [s + k for s, n in zip(starts, lengths, strict=True) for k in range(n)], device=device
        )
        self.valid_BL = torch.zeros(self.batch, width, dtype=torch.bool, device=device)
        self.valid_BL[self.rows_N, self.cols_N] = True

    def grid(self, x_N: torch.Tensor) -> torch.Tensor:
        x_BL = x_N.new_zeros((self.batch, self.width, *x_N.shape[1:]))
        return x_BL.index_put((self.rows_N, self.cols_N), x_N)

    def tokens(self, x_BL: torch.Tensor) -> torch.Tensor:
        return x_BL[self.rows_N, self.cols_N]


@dataclass
class PrefixStates:
    """What the completions of U distinct prompts (left-padded to P tokens) continue from."""

    layers: list[tuple[torch.Tensor, ...]]  # per layer: (conv_UCk, state_UHKV) | (keys, values)
    valid_UP: torch.Tensor  # bool: a real prompt token (not left padding)
    last_UD: torch.Tensor  # the final hidden state (after the norm) at each prompt's last token
    next_position_U: torch.Tensor  # the rotary position id of each prompt's first completion token


class SharedPrefixForward:
    """Log-probs of completions with each distinct prompt computed once (module docstring)."""

    def __init__(self, policy, kernels: str = "auto"):
        self.policy = policy
        self.model = policy.model
        self.language_model = policy.model.model.language_model
        self.layers = list(self.language_model.layers)
        self.kernels = LinearAttentionKernels.for_model(self.model, kernels)
        self.modeling = sys.modules[type(self.layers[0]).__module__]
        self.attention_implementation = self.model.config._attn_implementation or "sdpa"

    @property
    def checkpointing(self) -> bool:
        return bool(getattr(self.layers[0], "gradient_checkpointing", False))

    # ---- the log-probs ---------------------------------------------------------------------
    def sequence_logprobs(
        self,
        image,
        prompt_ids: Sequence[Sequence[int]],
        completions: Sequence[Sequence[int]],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logprobs (B, T), mask (B, T)) over the completion tokens, as
        `FrozenPolicy.padded_logprobs` returns them."""
        policy, device = self.policy, self.policy.device
        policy._check_prompts(image, prompt_ids)
        prompts = list(dict.fromkeys(tuple(p) for p in prompt_ids))  # distinct, in order
        index = {p: u for u, p in enumerate(prompts)}
        owner_B = torch.tensor([index[tuple(p)] for p in prompt_ids], device=device)
        prefix = self.prefix_pass(image, prompts)
        lengths = [len(c) for c in completions]
        layout = Layout([0] * len(lengths), lengths, max(lengths), device)
        ids_N = torch.tensor([t for c in completions for t in c], device=device)
        hidden_ND = self.completion_pass(prefix, owner_B, layout, ids_N)

        # completion token k of row b is predicted by the hidden state before it: the prompt's
        # last one for k = 0, the completion's own token k - 1 (the packed token before) after
        first_N1 = (layout.cols_N == 0).unsqueeze(1)
        previous_N = (torch.arange(len(ids_N), device=device) - 1).clamp(min=0)
        before_ND = torch.where(
            first_N1, prefix.last_UD[owner_B[layout.rows_N]], hidden_ND[previous_N]
        )
        logprobs_N = policy.token_logprobs(before_ND, ids_N)
        logprobs_BT = layout.grid(logprobs_N)
        return logprobs_BT, layout.valid_BL.to(logprobs_BT.dtype)

    # ---- the prompts ---------------------------------------------------------------------
    def prefix_pass(self, image, prompts: list[tuple[int, ...]]) -> PrefixStates:
        """Each distinct prompt once (left-padded to the longest where the sequence mixers need a
        grid), with the image's features in place of its image tokens: every layer's state,
        the last hidden state, and where the completions' positions start."""
        policy, device = self.policy, self.policy.device
        lengths = [len(p) for p in prompts]
        width = max(lengths)
        layout = Layout([width - n for n in lengths], lengths, width, device)
        ids_N = torch.tensor([t for p in prompts for t in p], device=device)
        hidden_ND = self.model.model.get_input_embeddings()(ids_N)
        if image is not None:
            # in the model's dtype (ART's gradient leaf is float32 in a bfloat16 model); one
            # copy per prompt, placed in order, as the model's own forward places them per row
            features_ND = image.features_ND.to(hidden_ND.dtype)
            is_image_N1 = (ids_N == policy.image_token_id).unsqueeze(-1)
            hidden_ND = hidden_ND.masked_scatter(is_image_N1, features_ND.repeat(len(prompts), 1))
        positions_3N, next_U = self.prompt_positions(image, prompts)
        cos, sin = self.rotary(hidden_ND, positions_3N)
        mask = self.attention_mask(layout.valid_BL, None, hidden_ND.dtype)
        states = []
        for layer in self.layers:
            if layer.block_type == "linear_attention":
                fn = self._prompt_linear_layer
                args = (layer, hidden_ND, layout)
            else:
                fn = self._prompt_attention_layer
                args = (layer, hidden_ND, cos, sin, layout, mask)
            hidden_ND, *state = self._call(fn, *args)
            states.append(tuple(state))
        last_N = torch.tensor(lengths, device=device).cumsum(0) - 1  # each prompt's last token
        last_UD = self.language_model.norm(hidden_ND[last_N])
        return PrefixStates(states, layout.valid_BL, last_UD, next_U)

    def prompt_positions(self, image, prompts):
        """Rotary position ids (3, N) of the prompts' tokens, from the model's own
        `get_rope_index` where there is an image (text: 0, 1, 2, ...), and the position of each
        prompt's first completion token: its largest position + 1 (completion tokens are text,
        numbered on from there in all three sections)."""
        device = self.policy.device
        positions, next_U = [], torch.zeros(len(prompts), dtype=torch.long, device=device)
        for u, p in enumerate(prompts):
            ids_1L = torch.tensor([p], device=device)
            if image is not None:
                own_31L, _ = self.model.model.get_rope_index(
                    ids_1L,
                    mm_token_type_ids=(ids_1L == self.policy.image_token_id).int(),
                    image_grid_thw=image.grid_thw,
                )
                own_3L = own_31L[:, 0]
            else:
                own_3L = torch.arange(len(p), device=device).expand(3, -1)
            positions.append(own_3L)
            next_U[u] = own_3L.max() + 1
        return torch.cat(positions, dim=1), next_U

    def rotary(self, hidden_ND, positions_3N):
        """The rotary embedding's (cos, sin) per token, (N, rotary dims)."""
        cos, sin = self.language_model.rotary_emb(hidden_ND, positions_3N.unsqueeze(1))
        return cos[0], sin[0]

    def _prompt_linear_layer(self, layer, hidden_ND, layout):
        out_ND, conv_tail_UCk, state = self._linear_attention(
            layer.linear_attn, layer.input_layernorm(hidden_ND), layout, None, None, True
        )
        return (self._mlp(layer, hidden_ND + out_ND), conv_tail_UCk, state)

    def _prompt_attention_layer(self, layer, hidden_ND, cos, sin, layout, mask):
        out_ND, keys, values = self._attention(
            layer.self_attn, layer.input_layernorm(hidden_ND), cos, sin, layout, mask, None, None
        )
        return (self._mlp(layer, hidden_ND + out_ND), keys, values)

    # ---- the completions -------------------------------------------------------------------
    def completion_pass(self, prefix: PrefixStates, owner_B, layout: Layout, ids_N):
        """Every completion token (packed) from its prompt's state: the final hidden states
        (N, D) after the norm."""
        hidden_ND = self.model.model.get_input_embeddings()(ids_N)
        positions_N = prefix.next_position_U[owner_B[layout.rows_N]] + layout.cols_N
        cos, sin = self.rotary(hidden_ND, positions_N.unsqueeze(0).expand(3, -1))
        mask = self.attention_mask(prefix.valid_UP[owner_B], layout.width, hidden_ND.dtype)
        for layer, state in zip(self.layers, prefix.layers, strict=True):
            if layer.block_type == "linear_attention":
                fn = self._completion_linear_layer
                args = (layer, hidden_ND, layout, owner_B, *state)
            else:
                fn = self._completion_attention_layer
                args = (layer, hidden_ND, cos, sin, layout, mask, owner_B, *state)
            (hidden_ND,) = self._call(fn, *args)
        return self.language_model.norm(hidden_ND)

    def _completion_linear_layer(self, layer, hidden_ND, layout, owner_B, conv_UCk, state):
        out_ND, _, _ = self._linear_attention(
            layer.linear_attn,
            layer.input_layernorm(hidden_ND),
            layout,
            conv_UCk[owner_B],  # the prompt's last inputs, once per completion
            state[owner_B],  # the prompt's recurrent state, once per completion
            False,
        )
        return (self._mlp(layer, hidden_ND + out_ND),)

    def _completion_attention_layer(
        self, layer, hidden_ND, cos, sin, layout, mask, owner_B, keys, values
    ):
        out_ND, _, _ = self._attention(
            layer.self_attn,
            layer.input_layernorm(hidden_ND),
            cos,
            sin,
            layout,
            mask,
            keys[owner_B],  # the prompt's keys and values, once per completion
            values[owner_B],
        )
        return (self._mlp(layer, hidden_ND + out_ND),)

    # ---- the pieces of a decoder layer ---------------------------------------------------
    def _call(self, fn, *args):
        """`fn(*args)`, checkpointed (non-reentrant) under activation checkpointing."""
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    @staticmethod
    def _mlp(layer, hidden_ND):
        return hidden_ND + layer.mlp(layer.post_attention_layernorm(hidden_ND))

    def attention_mask(self, valid_BP: torch.Tensor, length: int | None, dtype):
        """The full-attention mask (B, 1, Q, K) in the form the attention implementation takes.
        `length` None: the prompts themselves (Q = K = P): causal over real tokens, each query
        also sees itself (a padded query must see something). Else completions of `length`
        tokens after their prompts (K = P + length): every real prompt token, then causal."""
        count, size = valid_BP.shape
        device = valid_BP.device
        if length is None:
            causal_PP = torch.ones(size, size, dtype=torch.bool, device=device).tril()
            allowed = causal_PP & valid_BP[:, None, :]
            allowed = allowed | torch.eye(size, dtype=torch.bool, device=device)
        else:
            causal_CC = torch.ones(length, length, dtype=torch.bool, device=device).tril()
            allowed = torch.cat(
                [valid_BP[:, None, :].expand(-1, length, -1), causal_CC.expand(count, -1, -1)],
                dim=-1,
            )
        allowed = allowed.unsqueeze(1)
        if self.attention_implementation == "eager":  # added to the scores
            zero = torch.zeros((), dtype=dtype, device=device)
            return torch.where(allowed, zero, torch.finfo(dtype).min)
        return allowed  # sdpa: True = attend

    def _attention(self, attn, x_ND, cos, sin, layout, mask, prefix_keys, prefix_values):
        """Qwen3.5's gated full attention (`Qwen3_5Attention.forward`) on a pass's packed
        tokens, with the prompt's keys and values (B, kv heads, P, head dim) before each
        sequence's own; returns the output (N, D) and the pass's keys and values (grid)."""
        # start-up time: a heavy library, loaded when this runs
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        tokens = x_ND.shape[0]
        query, gate = torch.chunk(attn.q_proj(x_ND).view(tokens, -1, attn.head_dim * 2), 2, dim=-1)
        gate = gate.reshape(tokens, -1)
        query = attn.q_norm(query)  # (N, heads, head dim)
        keys = attn.k_norm(attn.k_proj(x_ND).view(tokens, -1, attn.head_dim))
        values = attn.v_proj(x_ND).view(tokens, -1, attn.head_dim)
        query, keys = self.modeling.apply_rotary_pos_emb(query, keys, cos, sin)
        query_BHLd, keys_BHLd, values_BHLd = (
            layout.grid(t).transpose(1, 2) for t in (query, keys, values)
        )
        all_keys, all_values = keys_BHLd, values_BHLd
        if prefix_keys is not None:
            all_keys = torch.cat([prefix_keys, keys_BHLd], dim=2)
            all_values = torch.cat([prefix_values, values_BHLd], dim=2)
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.attention_implementation, self.modeling.eager_attention_forward
        )
        out_BLHd, _ = interface(
            attn, query_BHLd, all_keys, all_values, mask, dropout=0.0, scaling=attn.scaling
        )
        out_ND = layout.tokens(out_BLHd).reshape(tokens, -1) * torch.sigmoid(gate)
        return attn.o_proj(out_ND), keys_BHLd, values_BHLd

    def _linear_attention(self, net, x_ND, layout, conv_initial, state_initial, final_state):
        """Qwen3.5's GatedDeltaNet (`Qwen3_5GatedDeltaNet.forward`) on a pass's packed tokens,
        continuing a state: `conv_initial` (B, C, kernel - 1) the inputs before each sequence,
        `state_initial` (B, H, Dk, Dv) its recurrent state (None, None: from the start).
        Returns the output (N, D), each sequence's last kernel - 1 inputs and its final
        recurrent state (or None)."""
        tokens = x_ND.shape[0]
        # the projections of real tokens, zeros at padding (what a zeroed input projects to:
        # the projections have no bias)
        mixed_BCL = layout.grid(net.in_proj_qkv(x_ND)).transpose(1, 2)
        width = net.conv_kernel_size - 1
        tail_BCk = mixed_BCL[:, :, -width:]
        if tail_BCk.shape[-1] < width:  # a prompt shorter than the kernel: zeros before it
            tail_BCk = torch.nn.functional.pad(tail_BCk, (width - tail_BCk.shape[-1], 0))
        mixed_BCL = self.kernels.conv(
            mixed_BCL, net.conv1d.weight.squeeze(1), net.conv1d.bias, net.activation, conv_initial
        )
        mixed_BLC = mixed_BCL.transpose(1, 2)
        batch, length = mixed_BLC.shape[:2]
        query, key, value = torch.split(mixed_BLC, [net.key_dim, net.key_dim, net.value_dim], -1)
        query = query.reshape(batch, length, -1, net.head_k_dim)
        key = key.reshape(batch, length, -1, net.head_k_dim)
        value = value.reshape(batch, length, -1, net.head_v_dim)
        beta = layout.grid(net.in_proj_b(x_ND)).sigmoid()
        a = layout.grid(net.in_proj_a(x_ND))
        g = -net.A_log.float().exp() * torch.nn.functional.softplus(a.float() + net.dt_bias)
        core, state = self.kernels.chunk_rule(
            query,
            key,
            value,
            g=g,
            beta=beta,
            initial_state=state_initial,
            output_final_state=final_state,
            use_qk_l2norm_in_kernel=True,
        )
        core_N = layout.tokens(core).reshape(-1, net.head_v_dim)
        z_N = net.in_proj_z(x_ND).reshape(-1, net.head_v_dim)
        out_ND = net.norm(core_N, z_N).reshape(tokens, -1)
        return net.out_proj(out_ND), tail_BCk, state
