"""Sampling seeds, one definition for both rollout engines.

vLLM seeds child j of a request with `seed + j` (`n > 1`, V1 `parallel_sampling`). Seeding
request r with `base + r` would then give request r child j the seed of request r + 1 child
j - 1. Here request r gets `base + r * n`, so the n children of every request of a round
cover disjoint seed ranges, and rounds and steps are spaced far enough apart that no
completion of a run shares a seed with another.
"""

from __future__ import annotations

# Completions one round may hold without two of them sharing a seed.
MAX_COMPLETIONS_PER_ROUND = 2**24
MAX_ROUNDS_PER_STEP = 2**6
_SEED_RANGE = 2**63


def round_seed(run_seed: int, step: int, round_index: int) -> int:
    """The base seed of one generation round of one step."""
    if not 0 <= round_index < MAX_ROUNDS_PER_STEP:
        raise ValueError(f"round {round_index} outside [0, {MAX_ROUNDS_PER_STEP})")
    index = (run_seed * 1_000_003 + step) * MAX_ROUNDS_PER_STEP + round_index
    return (index * MAX_COMPLETIONS_PER_ROUND) % _SEED_RANGE


def request_seed(base_seed: int, request_id: int, n: int) -> int:
    """The seed of a request of `n` samples; its children use `request_seed + j`, j < n."""
    return (base_seed + request_id * n) % _SEED_RANGE


def completion_seeds(base_seed: int, request_id: int, n: int) -> list[int]:
    """Every child's seed, as vLLM derives them from `request_seed`."""
    first = request_seed(base_seed, request_id, n)
    return [first + j for j in range(n)]


def seed_of(request, sampling) -> int | None:
    """The seed of a request's first child: its own seed base (a multi-task batch) or the
    batch's, spread by its id; None: unseeded."""
    base = request.seed if getattr(request, "seed", None) is not None else sampling.seed
    return None if base is None else request_seed(base, request.request_id, request.n)
