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
Prompts are left-padded to one length (a padded position's input is zeroed before every
linear-attention layer, as transformers does, so the recurrent state stays exactly zero
through it and the last `kernel - 1` inputs are the prompt's own); completions are
right-padded (nothing after a token changes it). The states are gathered from prompts to
completions by index, so backward sums the G completions' gradients into their prompt's
state, once, and from there into the prompt's tokens and the image features (the pixels).

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
        self.spatial_merge_size = int(self.model.config.vision_config.spatial_merge_size)

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
        ids_BC, hidden_BCD = self.completion_pass(prefix, owner_B, completions)

        # completion token k of row b is predicted by the hidden state before it: the prompt's
        # last one for k = 0, the completion's own at k - 1 after that
        before_BCD = torch.cat([prefix.last_UD[owner_B].unsqueeze(1), hidden_BCD[:, :-1]], dim=1)
        lengths = [len(c) for c in completions]
        rows = torch.tensor([i for i, n in enumerate(lengths) for _ in range(n)], device=device)
        steps = torch.tensor([k for n in lengths for k in range(n)], device=device)
        logprobs_N = policy.token_logprobs(before_BCD[rows, steps], ids_BC[rows, steps])
        batch, width = len(completions), max(lengths)
        logprobs_BT = torch.zeros(batch, width, device=device, dtype=logprobs_N.dtype)
        logprobs_BT = logprobs_BT.index_put((rows, steps), logprobs_N)
        mask_BT = torch.zeros(batch, width, device=device)
        mask_BT[rows, steps] = 1.0
        return logprobs_BT, mask_BT

    # ---- the prompts ---------------------------------------------------------------------
    def prefix_pass(self, image, prompts: list[tuple[int, ...]]) -> PrefixStates:
        """Each distinct prompt once (left-padded to the longest), with the image's features
        in place of its image tokens: every layer's state, the last hidden state, and where
        the completions' positions start."""
        policy, device = self.policy, self.policy.device
        count, length = len(prompts), max(len(p) for p in prompts)
        ids_UP = torch.full((count, length), policy.pad_token_id, dtype=torch.long)
        valid_UP = torch.zeros((count, length), dtype=torch.bool)
        for u, p in enumerate(prompts):
            ids_UP[u, length - len(p) :] = torch.tensor(p)
            valid_UP[u, length - len(p) :] = True
        ids_UP, valid_UP = ids_UP.to(device), valid_UP.to(device)
        embed = self.model.model.get_input_embeddings()
        hidden_UPD = embed(ids_UP)
        if image is not None:
            # in the model's dtype (ART's gradient leaf is float32 in a bfloat16 model); one
            # copy per prompt, placed in order, as the model's own forward places them per row
            features_ND = image.features_ND.to(hidden_UPD.dtype)
            is_image_UP1 = (ids_UP == policy.image_token_id).unsqueeze(-1)
            hidden_UPD = hidden_UPD.masked_scatter(is_image_UP1, features_ND.repeat(count, 1))
        positions_3UP, next_U = self.prompt_positions(image, prompts, length)
        cos, sin = self.language_model.rotary_emb(hidden_UPD, positions_3UP)
        mask = self.attention_mask(valid_UP, None, hidden_UPD.dtype)
        states = []
        for layer in self.layers:
            if layer.block_type == "linear_attention":
                fn = self._prompt_linear_layer
                args = (layer, hidden_UPD, valid_UP)
            else:
                fn = self._prompt_attention_layer
                args = (layer, hidden_UPD, cos, sin, mask)
            hidden_UPD, *state = self._call(fn, *args)
            states.append(tuple(state))
        last_UD = self.language_model.norm(hidden_UPD[:, -1])  # left padding: the last is real
        return PrefixStates(states, valid_UP, last_UD, next_U)

    def prompt_positions(self, image, prompts, length: int):
        """Rotary position ids (3, U, P) of the left-padded prompts, from the model's own
        `get_rope_index` where there is an image (text: 0, 1, 2, ...), and the position of each
        prompt's first completion token: its largest position + 1 (completion tokens are text,
        numbered on from there in all three sections)."""
        device = self.policy.device
        positions_3UP = torch.zeros((3, len(prompts), length), dtype=torch.long, device=device)
        next_U = torch.zeros(len(prompts), dtype=torch.long, device=device)
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
            positions_3UP[:, u, length - len(p) :] = own_3L
            next_U[u] = own_3L.max() + 1
        return positions_3UP, next_U

    def _prompt_linear_layer(self, layer, hidden_UPD, valid_UP):
        mixed, state = self._linear_attention(
            layer, layer.input_layernorm(hidden_UPD), valid_UP, None, None, final_state=True
        )
        out_UPD, conv_tail_UCk = mixed
        return (self._mlp(layer, hidden_UPD + out_UPD), conv_tail_UCk, state)

    def _prompt_attention_layer(self, layer, hidden_UPD, cos, sin, mask):
        out_UPD, keys, values = self._attention(
            layer.self_attn, layer.input_layernorm(hidden_UPD), cos, sin, mask, None, None
        )
        return (self._mlp(layer, hidden_UPD + out_UPD), keys, values)

    # ---- the completions -------------------------------------------------------------------
    def completion_pass(self, prefix: PrefixStates, owner_B: torch.Tensor, completions):
        """Every completion (right-padded) from its prompt's state: (ids (B, C), final hidden
        states (B, C, D) after the norm)."""
        policy, device = self.policy, self.policy.device
        batch, length = len(completions), max(len(c) for c in completions)
        ids_BC = torch.full((batch, length), policy.pad_token_id, dtype=torch.long)
        valid_BC = torch.zeros((batch, length), dtype=torch.bool)
        for b, c in enumerate(completions):
            ids_BC[b, : len(c)] = torch.tensor(c)
            valid_BC[b, : len(c)] = True
        ids_BC, valid_BC = ids_BC.to(device), valid_BC.to(device)
        hidden_BCD = self.model.model.get_input_embeddings()(ids_BC)
        steps_C = torch.arange(length, device=device)
        positions_BC = prefix.next_position_U[owner_B].unsqueeze(1) + steps_C
        positions_3BC = positions_BC.unsqueeze(0).expand(3, -1, -1)
        cos, sin = self.language_model.rotary_emb(hidden_BCD, positions_3BC)
        mask = self.attention_mask(prefix.valid_UP[owner_B], length, hidden_BCD.dtype)
        for layer, state in zip(self.layers, prefix.layers, strict=True):
            if layer.block_type == "linear_attention":
                fn = self._completion_linear_layer
                args = (layer, hidden_BCD, valid_BC, owner_B, *state)
            else:
                fn = self._completion_attention_layer
                args = (layer, hidden_BCD, cos, sin, mask, owner_B, *state)
            (hidden_BCD,) = self._call(fn, *args)
        return ids_BC, self.language_model.norm(hidden_BCD)

    def _completion_linear_layer(self, layer, hidden_BCD, valid_BC, owner_B, conv_UCk, state):
        (out_BCD, _), _ = self._linear_attention(
            layer,
            layer.input_layernorm(hidden_BCD),
            valid_BC,
            conv_UCk[owner_B],  # the prompt's last inputs, once per completion
            state[owner_B],  # the prompt's recurrent state, once per completion
            final_state=False,
        )
        return (self._mlp(layer, hidden_BCD + out_BCD),)

    def _completion_attention_layer(self, layer, hidden_BCD, cos, sin, mask, owner_B, keys, values):
        out_BCD, _, _ = self._attention(
            layer.self_attn,
            layer.input_layernorm(hidden_BCD),
            cos,
            sin,
            mask,
            keys[owner_B],
            values[owner_B],
        )
        return (self._mlp(layer, hidden_BCD + out_BCD),)

    # ---- the pieces of a decoder layer ---------------------------------------------------
    def _call(self, fn, *args):
        """`fn(*args)`, checkpointed (non-reentrant) under activation checkpointing."""
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    @staticmethod
    def _mlp(layer, hidden_BLD):
        return hidden_BLD + layer.mlp(layer.post_attention_layernorm(hidden_BLD))

    def attention_mask(self, valid_BP: torch.Tensor, length: int | None, dtype):
        """The full-attention mask (B, 1, Q, K) in the form the attention implementation takes.
        `length` None: the prompts themselves (Q = K = P): causal over real tokens, each query
        also sees itself (a padded query must see something). Else completions of `length`
        tokens after their prompts (K = P + length): every real prompt token, then causal."""
        if length is None:
            count, size = valid_BP.shape
            causal_PP = torch.ones(size, size, dtype=torch.bool, device=valid_BP.device).tril()
            allowed = causal_PP & valid_BP[:, None, :]
            allowed = allowed | torch.eye(size, dtype=torch.bool, device=valid_BP.device)
        else:
            count, size = valid_BP.shape
            causal_CC = torch.ones(length, length, dtype=torch.bool, device=valid_BP.device).tril()
            allowed = torch.cat(
                [valid_BP[:, None, :].expand(-1, length, -1), causal_CC.expand(count, -1, -1)],
                dim=-1,
            )
        allowed = allowed.unsqueeze(1)
        if self.attention_implementation == "eager":  # added to the scores
            zero = torch.zeros((), dtype=dtype, device=valid_BP.device)
            return torch.where(allowed, zero, torch.finfo(dtype).min)
        return allowed  # sdpa: True = attend

    def _attention(self, attn, x_BLD, cos, sin, mask, prefix_keys, prefix_values):
        """Qwen3.5's gated full attention (`Qwen3_5Attention.forward`), with the prompt's keys
        and values (B, kv heads, P, head dim) before the sequence's own; returns the output
        and the sequence's own keys and values."""
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        input_shape = x_BLD.shape[:-1]
        hidden_shape = (*input_shape, -1, attn.head_dim)
        query, gate = torch.chunk(
            attn.q_proj(x_BLD).view(*input_shape, -1, attn.head_dim * 2), 2, dim=-1
        )
        gate = gate.reshape(*input_shape, -1)
        query = attn.q_norm(query.view(hidden_shape)).transpose(1, 2)
        keys = attn.k_norm(attn.k_proj(x_BLD).view(hidden_shape)).transpose(1, 2)
        values = attn.v_proj(x_BLD).view(hidden_shape).transpose(1, 2)
        query, keys = self.modeling.apply_rotary_pos_emb(query, keys, cos, sin)
        all_keys, all_values = keys, values
        if prefix_keys is not None:
            all_keys = torch.cat([prefix_keys, keys], dim=2)
            all_values = torch.cat([prefix_values, values], dim=2)
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.attention_implementation, self.modeling.eager_attention_forward
        )
        out, _ = interface(
            attn, query, all_keys, all_values, mask, dropout=0.0, scaling=attn.scaling
        )
        out = out.reshape(*input_shape, -1).contiguous() * torch.sigmoid(gate)
        return attn.o_proj(out), keys, values

    def _linear_attention(self, layer, x_BLD, valid_BL, conv_initial, state_initial, final_state):
        """Qwen3.5's GatedDeltaNet (`Qwen3_5GatedDeltaNet.forward`) continuing a state:
        `conv_initial` (B, C, kernel - 1) the inputs before the sequence, `state_initial`
        (B, H, Dk, Dv) the recurrent state (None, None: from the start). Returns ((output,
        the sequence's last kernel - 1 inputs), the final recurrent state or None)."""
        net = layer.linear_attn
        x_BLD = (x_BLD * valid_BL[:, :, None]).to(x_BLD.dtype)  # padding in: zeros
        batch, length, _ = x_BLD.shape
        mixed_BCL = net.in_proj_qkv(x_BLD).transpose(1, 2)
        width = net.conv_kernel_size - 1
        tail_BCk = mixed_BCL[:, :, -width:]
        if tail_BCk.shape[-1] < width:  # a prompt shorter than the kernel: zeros before it
            tail_BCk = torch.nn.functional.pad(tail_BCk, (width - tail_BCk.shape[-1], 0))
        z = net.in_proj_z(x_BLD).reshape(batch, length, -1, net.head_v_dim)
        b = net.in_proj_b(x_BLD)
        a = net.in_proj_a(x_BLD)
        mixed_BCL = self.kernels.conv(
            mixed_BCL, net.conv1d.weight.squeeze(1), net.conv1d.bias, net.activation, conv_initial
        )
        mixed_BLC = mixed_BCL.transpose(1, 2)
        query, key, value = torch.split(mixed_BLC, [net.key_dim, net.key_dim, net.value_dim], -1)
        query = query.reshape(batch, length, -1, net.head_k_dim)
        key = key.reshape(batch, length, -1, net.head_k_dim)
        value = value.reshape(batch, length, -1, net.head_v_dim)
        beta = b.sigmoid()
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
        core = core.reshape(-1, net.head_v_dim)
        core = net.norm(core, z.reshape(-1, net.head_v_dim)).reshape(batch, length, -1)
        return (net.out_proj(core), tail_BCk), state
