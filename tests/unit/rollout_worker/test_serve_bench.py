"""The serving benchmark's parts: task images that answer differently, the load mixes, the
correctness check (against a FAKE streaming backend in a thread; no vLLM), the engine's
counters, and random adapters shaped as PEFT shapes the baseline's."""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections import Counter
from itertools import groupby

import numpy as np
import pytest
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from rollout_worker.gateway.bench import (
    Answer,
    Cell,
    engine_counters,
    indistinguishable_pairs,
    mismatch,
    picks,
    plan,
    request_body,
    run_cell,
    task_colours,
    write_random_adapters,
    write_task_pngs,
)
from rollout_worker.gateway.launch import free_port
from shared.artifact import decode_png

# What the FAKE backend answers per model: (text, per-token log-probs).
ANSWERS = {
    "task-a": ("E", [-0.1, -0.002]),
    "task-b": ("E", [-0.6, -0.002]),  # the same letter, less sure: another task all the same
    "task-c": ("B", [-0.1, -0.002]),
}


def test_task_images_are_distinct_and_the_reader_answers_them_differently(tmp_path):
    from learner.models.tiny import colour_class_probs

    names = [f"t{i}" for i in range(16)]
    write_task_pngs(tmp_path, names, task_colours(16), "tiny", 64)
    pixels_BCHW = (
        torch.stack(
            [
                torch.from_numpy(decode_png((tmp_path / f"{n}.png").read_bytes())[0]).permute(
                    2, 0, 1
                )
                for n in names
            ]
        ).float()
        / 255
    )
    probs_BK = colour_class_probs(pixels_BCHW)
    letters, confidence = probs_BK.argmax(-1).tolist(), probs_BK.max(-1).values
    assert Counter(letters) == {k: 2 for k in range(8)}  # every letter, at two levels
    for k in range(8):
        strong, weak = (confidence[i] for i in range(16) if letters[i] == k)
        assert strong > 0.9 and weak < 0.75  # the same letter, told apart by its log-prob


def test_loads_are_seeded_uniform_or_skewed():
    uniform, skewed = picks(16, "uniform", 4000, 0), picks(16, "skewed", 4000, 0)
    assert uniform == picks(16, "uniform", 4000, 0) and set(uniform) == set(range(16))
    counts = Counter(skewed)
    assert counts[0] > 3 * counts[15] and max(Counter(uniform).values()) < 2 * 4000 / 16


def test_each_repeat_runs_the_methods_in_another_order():
    """Drift of the machine over a repeat must not always land on the same method or K."""
    methods, ks, loads = ["text", "art", "art-direct", "lora"], [1, 4, 16], ["uniform", "skewed"]
    repeats = [plan(ks, loads, methods, r) for r in range(len(methods))]
    cells = {(k, load, m) for k in ks for load in loads for m in methods if m != "text" or k == 1}
    assert all(sorted(p) == sorted(cells) for p in repeats)  # every cell once a repeat
    place = Counter()
    for p in repeats:
        runs = [key for key, _ in groupby(cell[:2] for cell in p)]
        assert len(runs) == len(ks) * len(loads)  # the methods of a K and load back to back
        for k, load, method in p:
            group = [m for kk, ll, m in p if (kk, ll) == (k, load) and m != "text"]
            if method != "text":
                place[method, group.index(method)] += 1
    # every task-serving method runs first, second, ... in some repeat
    assert all(place[m, i] >= 1 for m in methods[1:] for i in range(3))
    assert repeats[0][0][0] == 1 and repeats[1][0][0] == 16  # odd repeats from the largest K


def answer(model: str) -> Answer:
    text, logprobs = ANSWERS[model]
    return Answer(text=text, logprobs=list(logprobs), tokens=len(logprobs))


def test_the_check_tells_every_task_from_every_other():
    a, b, c = answer("task-a"), answer("task-b"), answer("task-c")
    assert mismatch(answer("task-a"), a, tol=0.05) is None
    assert "log-prob differs by 0.5000" in mismatch(b, a, tol=0.05)  # same letter, other task
    assert "text 'B' != 'E'" in mismatch(c, a, tol=0.05)
    near = Answer(text="E", logprobs=[-0.12, -0.002])
    assert mismatch(near, a, tol=0.05) is None  # numerics, not another task
    assert mismatch(Answer(error="HTTP 500"), a, tol=0.05) == "HTTP 500"
    assert indistinguishable_pairs([a, b, c], tol=0.05) == 0
    assert indistinguishable_pairs([a, b, c], tol=0.3) == 1  # a and b within 2 x tol


def test_engine_counters_read_vllms_metrics():
    text = (
        '# HELP vllm:prefix_cache_queries Prefix cache queries\n'
        'vllm:prefix_cache_queries_total{engine="0",model_name="tiny"} 16284.0\n'
        'vllm:prefix_cache_hits_total{engine="0",model_name="tiny"} 384.0\n'
        'vllm:mm_cache_queries_total{engine="0",model_name="tiny"} 224.0\n'
        'vllm:mm_cache_queries_created{engine="0",model_name="tiny"} 1.79e+09\n'
        'vllm:mm_cache_hits_total{engine="0",model_name="tiny"} 208.0\n'
    )  # fmt: skip
    assert engine_counters(text) == {
        "prefix_cache_queries": 16284.0, "prefix_cache_hits": 384.0,
        "mm_cache_queries": 224.0, "mm_cache_hits": 208.0,
    }  # fmt: skip


# -- run_cell against a FAKE streaming backend ------------------------------------------------


def fake_streaming_backend(mix_every: int) -> FastAPI:
    """A FAKE OpenAI server streaming ANSWERS[model] token by token, like vLLM with logprobs;
    every `mix_every`-th request (0: none) gets task-b's answer instead (a mixed-up task)."""
    app, count = FastAPI(), [0]

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        count[0] += 1
        model = "task-b" if mix_every and count[0] % mix_every == 0 else body["model"]
        text, logprobs = ANSWERS[model]

        async def events():  # 50 ms between two tokens
            for i, lp in enumerate(logprobs):
                await asyncio.sleep(0.05 if i else 0)
                choice = {"delta": {"content": text if i == 0 else ""},
                          "logprobs": {"content": [{"logprob": lp}]}}  # fmt: skip
                yield f"data: {json.dumps({'choices': [choice]})}\n\n"
            usage = {"completion_tokens": len(logprobs)}
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


class FakeEngine:
    """What run_cell asks of the engine besides HTTP: its counters and its memory."""

    def metrics(self) -> str:
        return ""

    def rss_bytes(self) -> int:
        return 1 << 30


@pytest.fixture
def serve_fake():
    servers = []

    def start(app) -> str:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="error"))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.02)
        servers.append(server)
        return f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.should_exit = True


@pytest.mark.parametrize("mix_every", [0, 5])
def test_a_cell_under_load_flags_every_answer_of_another_task(serve_fake, mix_every):
    url = serve_fake(fake_streaming_backend(mix_every))
    models = ["task-a", "task-c"]
    references = [answer(m) for m in models]
    task_of = picks(2, "uniform", 40, 0)
    bodies = [request_body(models[t], 2) for t in task_of]
    args = argparse.Namespace(concurrency=4, max_seconds=60, logprob_tol=0.05)
    cell = Cell("fake", "art", 2, "uniform")
    cell = asyncio.run(run_cell(cell, url, bodies, references, task_of, FakeEngine(), args))
    assert cell.requests == 40 and cell.output_tokens_per_s > 0
    assert cell.latency_p50_ms - cell.ttft_p50_ms >= 40  # the first token, not the last
    assert cell.engine_rss_peak_mib == 1024
    assert len(cell.mismatches) == (0 if mix_every == 0 else 40 // mix_every)


# -- random adapters --------------------------------------------------------------------------


def test_random_adapters_have_the_baselines_keys_and_shapes(tiny_model_path, tmp_path):
    from safetensors.torch import load_file

    from learner.lora import adapter_state, attach_lora
    from shared.config import LoraSettings

    lora = write_random_adapters(tiny_model_path, tmp_path, ["a", "b"])
    settings = LoraSettings()
    assert (lora.rank, lora.alpha) == (settings.rank, settings.alpha)
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_path)
    peft_model = attach_lora(
        model, settings.rank, settings.alpha, 0.0, settings.target_modules, "tiny"
    )
    expected = adapter_state(peft_model)
    a, b = (load_file(str(tmp_path / n / "adapter_model.safetensors")) for n in ("a", "b"))
    shapes = {k: tuple(v.shape) for k, v in expected.items()}
    assert {k: tuple(v.shape) for k, v in a.items()} == shapes
    assert all(v.abs().sum() > 0 for v in a.values())  # B too: not the base model
    assert any(not torch.equal(a[k], b[k]) for k in a)  # two different adapters
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["r"] == settings.rank
    assert sorted(config["target_modules"]) == sorted(settings.target_modules)
    assert np.isclose(config["lora_alpha"], settings.alpha)
