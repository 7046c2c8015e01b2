"""What every art-bench section uses: timing with the peak memory, synthetic batches, and the
run's settings (`BenchContext`)."""

from __future__ import annotations

import dataclasses
import gc
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from learner.bench.memory import reset_peak_rss, status_kib
from shared.artifact import encode_png
from shared.messages import Completion, ScoredGroup
from shared.prompts import render_prompt


@dataclass(frozen=True)
class BenchContext:
    """The command line's settings, as every section gets them."""

    out_dir: Path  # bench.json and the sections' runs
    quick: bool  # the tiny model only, fewer repeats
    models: tuple[str, ...]  # ("tiny",) with --quick, else also "qwen3_5_0_8b_random"


def measure(fn, repeats: int = 1) -> dict:
    """Median wall time and the peak RSS above the RSS before, of `fn()` (Linux)."""

    times, peaks = [], []
    for _ in range(repeats):
        gc.collect()
        before = reset_peak_rss()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        peaks.append((status_kib("VmHWM") - before) / 1024)
    return {"time_s": statistics.median(times), "peak_mib": max(peaks)}


def synthetic_groups(learner, prompts: int, group: int, tokens: int, seed: int = 0):
    """Scored groups of random completions, with the prompt ids an engine would send."""
    # start-up time: a heavy library, loaded when this runs
    import torch

    gen = torch.Generator().manual_seed(seed)
    n_image = learner.policy.spec.num_image_tokens(*learner.image.size)
    groups = []
    for r in range(prompts):
        prompt = render_prompt(learner.processor, f"Question {r}: what is {r} + {r + 1}?")
        expanded = prompt.replace("<|image_pad|>", "<|image_pad|>" * n_image, 1)
        ids = tuple(learner.processor.tokenizer(expanded, add_special_tokens=False)["input_ids"])
        comps = tuple(
            Completion(
                r,
                tuple(torch.randint(0, 250, (tokens,), generator=gen).tolist()),
                (0.0,) * tokens,
                "length",
                "",
                learner.version,
                ids,
            )
            for _ in range(group)
        )
        groups.append(ScoredGroup(prompt, comps, tuple(float(i % 2) for i in range(group))))
    return groups


def png(pixels) -> bytes:

    return encode_png(pixels)


def sized_groups(learner, prompt_lengths, group: int, completion_lengths, seed: int = 0):
    """One scored group per prompt length: the rendered chat prompt (with the image's tokens)
    with random text tokens inserted before the assistant turn up to that length, and `group`
    completions of random tokens, their lengths taken in turn from `completion_lengths`;
    rewards alternate 0, 1 (every group has signal)."""

    # start-up time: a heavy library, loaded when this runs
    import torch

    gen = torch.Generator().manual_seed(seed)
    (template,) = synthetic_groups(learner, 1, 1, 1, seed=seed)
    base = list(template.completions[0].prompt_token_ids)
    head, tail = base[:-8], base[-8:]  # tail: the assistant turn's opening
    groups = []
    for g, length in enumerate(prompt_lengths):
        if length < len(base):
            raise ValueError(f"prompt length {length} < the rendered prompt's {len(base)}")
        filler = torch.randint(40, 120, (length - len(base),), generator=gen).tolist()
        prompt = tuple(head + filler + tail)
        completions = []
        for i in range(group):
            n = completion_lengths[(g * group + i) % len(completion_lengths)]
            completions.append(
                dataclasses.replace(
                    template.completions[0],
                    request_id=g,
                    token_ids=tuple(torch.randint(0, 250, (n,), generator=gen).tolist()),
                    logprobs=tuple((-torch.rand(n, generator=gen) * 3).tolist()),
                    prompt_token_ids=prompt,
                )
            )
        rewards = tuple(float((i + g) % 2) for i in range(group))
        groups.append(ScoredGroup(template.prompt, tuple(completions), rewards))
    return groups
