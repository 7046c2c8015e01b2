from shared.sampling import completion_seeds, request_seed, round_seed


def _vllm_children(base, prompts, n):
    # vLLM seeds child j of a request with SamplingParams.seed + j.
    return [request_seed(base, r, n) + j for r in range(prompts) for j in range(n)]


def test_every_completion_of_a_step_gets_its_own_seed():
    base = round_seed(0, step=3, round_index=0)
    seeds = _vllm_children(base, prompts=4, n=8)
    assert len(set(seeds)) == 32
    assert seeds == [s for r in range(4) for s in completion_seeds(base, r, 8)]
    # The old formula (seed + request id) collided: 4 prompts x 8 samples gave 11 seeds.
    assert len({base + r + j for r in range(4) for j in range(8)}) == 11


def test_rounds_steps_and_runs_never_share_a_seed():
    seeds = [
        s
        for run in (0, 1)
        for step in range(20)
        for rnd in range(3)
        for s in _vllm_children(round_seed(run, step, rnd), prompts=16, n=16)
    ]
    assert len(seeds) == len(set(seeds)) == 2 * 20 * 3 * 256
    assert all(0 <= s < 2**63 for s in seeds)
