"""Seeds of requests, children and rounds (`shared.sampling`), against numbers worked out by
hand. That vLLM gives child j of a request the seed `completion_seeds` names is checked on
the real engine: tests/vllm_cpu/test_vllm_engine.py::test_seeds_reproduce_and_each_child_..."""

import pytest

from shared.sampling import completion_seeds, request_seed, round_seed


def test_seeds_worked_out_by_hand():
    # request r of n samples starts at base + r * n; its children follow one by one
    assert request_seed(100, 5, 8) == 140
    assert completion_seeds(1000, 3, 4) == [1012, 1013, 1014, 1015]
    assert completion_seeds(1000, 4, 4) == [1016, 1017, 1018, 1019]  # no overlap with r=3
    # round base: ((run * 1_000_003 + step) * 64 + round) * 2**24, modulo 2**63
    assert round_seed(0, step=3, round_index=0) == 192 * 2**24 == 3_221_225_472
    assert round_seed(1, step=0, round_index=2) == 64_000_194 * 2**24 == 1_073_745_078_779_904
    assert request_seed(2**63 - 1, 1, 1) == 0  # wraps inside vLLM's seed range


def test_every_completion_of_a_step_gets_its_own_seed():
    base = round_seed(0, step=3, round_index=0)
    seeds = [s for r in range(4) for s in completion_seeds(base, r, 8)]
    assert seeds == list(range(base, base + 32))
    # The old formula (seed + request id) collided: 4 prompts x 8 samples gave 11 seeds.
    assert len({base + r + j for r in range(4) for j in range(8)}) == 11


def test_rounds_steps_and_runs_never_share_a_seed():
    seeds = [
        s
        for run in (0, 1)
        for step in range(20)
        for rnd in range(3)
        for r in range(16)
        for s in completion_seeds(round_seed(run, step, rnd), r, 16)
    ]
    assert len(seeds) == len(set(seeds)) == 2 * 20 * 3 * 256
    assert all(0 <= s < 2**63 for s in seeds)


def test_a_round_outside_the_range_is_refused():
    with pytest.raises(ValueError, match="round 64 outside"):
        round_seed(0, 0, 64)
