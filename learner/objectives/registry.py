"""One door for policy-gradient losses: a name -> loss table that the built-ins use too
(verl's `@register_policy_loss`). A user's loss is a function with the built-ins' signature,
given as `algo.loss=package.module:function`; it is imported and its signature checked when the
run starts, not when it is first called mid-run.

    from learner.objectives import LossSettings, register_policy_loss

    @register_policy_loss("my_loss", loss_agg_mode="token-mean", norm_adv_by_std=True)
    def my_loss(logprobs_BT, old_logprobs_BT, advantages_B, mask_BT, settings, weights_BT=None):
        ...
        return loss, {"clip_frac_low": ..., "clip_frac_high": ..., "clip_frac_dual": ...,
                      "ratio_mean": ...}
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch

from shared.config import AGG_MODES
from shared.errors import UserError
from shared.tasks.entrypoints import load_entry

# logprobs_BT, old_logprobs_BT, advantages_B, mask_BT, settings, weights_BT -> (loss, metrics)
PolicyLoss = Callable[..., tuple[torch.Tensor, dict[str, float]]]
PARAMETERS = ("logprobs_BT", "old_logprobs_BT", "advantages_B", "mask_BT", "settings", "weights_BT")
# What every policy loss reports, each a fraction of the minibatch's completion tokens (summed
# over micro-batches by the learner).
METRICS = ("clip_frac_low", "clip_frac_high", "clip_frac_dual", "ratio_mean")


@dataclass(frozen=True)
class LossSettings:
    """A policy loss's settings (`algo.*`) and the minibatch's counts its aggregation divides
    by (the whole minibatch's: every micro-batch and replica)."""

    eps_low: float = 0.2  # algo.eps_low
    eps_high: float = 0.28  # algo.eps_high
    clip_ratio_c: float | None = None  # algo.clip_ratio_c: verl's dual clip (None: off)
    loss_agg_mode: str = "token-mean"  # algo.loss_agg_mode (learner/objectives/aggregation.py)
    num_tokens: int | float | None = None  # completion tokens of the minibatch
    num_sequences: int | float | None = None  # completions of the minibatch
    horizon: int | None = None  # the completion-length limit (seq-mean-token-sum-norm)


@dataclass(frozen=True)
class PolicyLossSpec:
    """A registered loss and the defaults it is published with (filled into `algo.*` where
    the config leaves them null)."""

    name: str
    fn: PolicyLoss
    loss_agg_mode: str = "token-mean"  # its paper's aggregation
    norm_adv_by_std: bool = True  # group advantages divided by the group's std (GRPO)
    dual_clip: bool = True  # verl's dual clip applies (cispo caps its weight itself: False)


POLICY_LOSSES: dict[str, PolicyLossSpec] = {}


def register_policy_loss(
    name: str,
    *,
    loss_agg_mode: str = "token-mean",
    norm_adv_by_std: bool = True,
    dual_clip: bool = True,
) -> Callable[[PolicyLoss], PolicyLoss]:
    """Register `fn` as `algo.loss=<name>` (a later registration of the name replaces it)."""
    if loss_agg_mode not in AGG_MODES:
        raise ValueError(f"loss {name!r}: loss_agg_mode {loss_agg_mode!r} is not in {AGG_MODES}")

    def decorator(fn: PolicyLoss) -> PolicyLoss:
        check_signature(fn, name)
        POLICY_LOSSES[name] = PolicyLossSpec(name, fn, loss_agg_mode, norm_adv_by_std, dual_clip)
        return fn

    return decorator


def check_signature(fn, name: str) -> None:
    try:
        inspect.signature(fn).bind(*PARAMETERS)
    except (TypeError, ValueError) as err:
        raise UserError(
            f"policy loss {name!r} ({getattr(fn, '__qualname__', fn)}) must take "
            f"({', '.join(PARAMETERS)}) like the built-ins in learner/objectives/"
            f"policy_gradient.py: {err}"
        ) from err


def get_policy_loss(name: str) -> PolicyLossSpec:
    """A registered loss, or `package.module:function` / `path/to/file.py:function` (imported,
    checked and registered under that name; a function it registered itself under another
    name is found under this one)."""
    if name in POLICY_LOSSES:
        return POLICY_LOSSES[name]
    if ":" not in name:
        raise UserError(
            f"algo.loss={name!r}: no such loss; use one of {', '.join(sorted(POLICY_LOSSES))}, "
            "sft, distill, opd, or a package.module:function of your own (learner/objectives/"
            "registry.py)"
        )
    try:  # package.module:function or path/to/file.py:function
        fn = load_entry(name, "algo.loss")
    except UserError as err:
        target, _, attribute = name.rpartition(":")
        raise UserError(
            f"algo.loss={name!r}: cannot load {attribute!r} from {target!r} ({err}); give "
            "package.module:function or path/to/file.py:function, importable on every learner "
            "node"
        ) from err
    own = next((s for s in POLICY_LOSSES.values() if s.fn is fn), None)
    if own is not None:  # registered by its module under its own name: keep its defaults
        spec = PolicyLossSpec(name, fn, own.loss_agg_mode, own.norm_adv_by_std, own.dual_clip)
    else:
        check_signature(fn, name)
        spec = PolicyLossSpec(name, fn)
    POLICY_LOSSES[name] = spec
    return spec
