"""`art-serve` over real vLLM servers (the CPU build) on loopback: tasks by name, the bad cases
refused, a task added while serving, and the Ray Serve deployment over two engines.

The embedded model reads a letter off the picture's mean colour, so three saturated colours
are three tasks with three different answers, no training needed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

from rollout_worker.gateway.launch import free_port
from shared.artifact import art_metadata, encode_png

pytestmark = pytest.mark.vllm

REPO = Path(__file__).resolve().parents[2]
QUESTION = "Which letter does the picture show?"
# colour (mean R, G, B) -> the reader's letter: bit 2 red, bit 1 green, bit 0 blue.
TASKS = {"red": ((230, 25, 25), "E"), "blue": ((25, 25, 230), "B"), "green": ((25, 230, 25), "C")}


def write_png(path: Path, colour, model="tiny", size=64) -> Path:
    pixels = np.zeros((size, size, 3), np.uint8)
    pixels[:] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(pixels, art_metadata(model, size, size, 1)))
    return path


def body(model: str, stream: bool = False, **extra) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": QUESTION}],
        "temperature": 0,
        "max_tokens": 4,
        "stream": stream,
        **extra,
    }


def wait_up(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"art-serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"art-serve not up in {timeout_s:.0f}s:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


@contextmanager
def art_serve(*args: str, log: Path):
    """`art-serve ...` as a user starts it (the module entry point of the console script)."""
    port = free_port()
    cmd = [sys.executable, "-m", "rollout_worker.gateway.cli", "--port", str(port), *args]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        wait_up(f"http://127.0.0.1:{port}", proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("runs")
    write_png(folder / "red" / "art.png", TASKS["red"][0])
    write_png(folder / "blue" / "art.png", TASKS["blue"][0])
    write_png(folder / "for-another-model" / "art.png", (230, 25, 25), model="Qwen/Qwen3.5-0.8B")
    write_png(folder / "another-size.png", (230, 25, 25), size=32)
    return folder


@pytest.fixture(scope="module")
def gateway(stock_server, tasks_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("art-serve") / "art-serve.log"
    args = ["--tasks", str(tasks_dir), "--backend", stock_server.url, "--image-size", "64"]
    with art_serve(*args, log=log) as url:
        yield url, log


def direct_answer(server_url: str, png: Path) -> str:
    """The same request sent straight to vLLM with the image (the serving recipe's client)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("art_client", REPO / "deploy/serve/client.py")
    client = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client)
    return client.ask(server_url + "/v1", "tiny", png, QUESTION, max_tokens=4, presence_penalty=0)


def test_art_serve_serves_tasks_by_name_over_a_real_vllm_server(gateway, stock_server, tasks_dir):
    url, log = gateway
    models = httpx.get(url + "/v1/models").json()["data"]
    assert [m["id"] for m in models] == ["tiny", "blue", "red"]  # the refused ones not listed
    answers = {}
    for name in ("red", "blue", "red", "blue"):  # alternated on one engine
        reply = httpx.post(url + "/v1/chat/completions", json=body(name), timeout=120)
        assert reply.status_code == 200, reply.text
        assert reply.json()["model"] == name
        answers.setdefault(name, set()).add(reply.json()["choices"][0]["message"]["content"])
    print(f"\nart-serve answers {answers}")
    assert answers == {name: {TASKS[name][1]} for name in ("red", "blue")}
    for name in ("red", "blue"):  # what the client would get sending the PNG itself
        assert direct_answer(stock_server.url, tasks_dir / name / "art.png") == TASKS[name][1]
    with httpx.stream(
        "POST", url + "/v1/chat/completions", json=body("blue", stream=True), timeout=120
    ) as reply:
        events = [line for line in reply.iter_lines() if line.startswith("data: {")]
    chunks = [json.loads(e.removeprefix("data: ")) for e in events]
    assert {c["model"] for c in chunks} == {"blue"}
    streamed = "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
    )
    assert streamed == TASKS["blue"][1]
    text_only = httpx.post(url + "/v1/chat/completions", json=body("tiny"), timeout=120)
    assert text_only.status_code == 200 and text_only.json()["model"] == "tiny"


def test_art_serve_refuses_the_bad_cases_with_openai_errors(gateway, tasks_dir, tmp_path):
    url, log = gateway

    def status_and_error(model, path="/v1/chat/completions"):
        reply = httpx.post(url + path, json=body(model) | {"prompt": "x"}, timeout=60)
        return reply.status_code, reply.json()["error"]

    status, error = status_and_error("no-such-task")
    assert (status, error["code"]) == (404, "model_not_found")
    status, error = status_and_error("for-another-model")
    assert (status, error["code"]) == (409, "task_image_mismatch")
    assert "Qwen/Qwen3.5-0.8B" in error["message"]
    status, error = status_and_error("another-size")
    assert status == 409 and "32x32" in error["message"]
    assert status_and_error("red", "/v1/completions")[0] == 400
    assert "for-another-model" in log.read_text()  # said at start, one line per refused task
    dead = f"http://127.0.0.1:{free_port()}"
    args = ["--tasks", str(tasks_dir), "--backend", dead, "--model", "tiny"]
    with art_serve(*args, log=tmp_path / "dead.log") as dead_url:
        reply = httpx.post(dead_url + "/v1/chat/completions", json=body("red"), timeout=60)
        assert reply.status_code == 503 and dead in reply.json()["error"]["message"]


def test_a_task_added_while_serving_is_served_by_its_next_request(gateway, tasks_dir):
    url, _ = gateway
    write_png(tasks_dir / "green" / "art.png", TASKS["green"][0])
    start = time.perf_counter()
    reply = httpx.post(url + "/v1/chat/completions", json=body("green"), timeout=120)
    print(f"\na new task's first answer in {time.perf_counter() - start:.2f}s")
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == TASKS["green"][1]


def request_counts(server) -> float:
    found = re.findall(r"^vllm:request_success_total\{[^}]*\} ([0-9.e+]+)$", server.metrics(), re.M)
    return sum(float(v) for v in found)


@pytest.mark.slow
def test_ray_serve_replicas_spread_requests_over_two_real_vllm_servers(
    stock_server, tasks_dir, vllm_python, tiny_model_path, tmp_path
):
    """The same app as a Ray Serve deployment (2 replicas) on a two-node loopback cluster, in
    front of two vLLM servers: every answer right, and both engines take requests."""
    from learner.bench.local_cluster import two_node_cluster
    from rollout_worker.gateway.launch import MM_LIMITS, VllmServer, cpu_server_args

    second = VllmServer(
        tiny_model_path, "tiny", extra_args=[*MM_LIMITS, *cpu_server_args()],
        log_path=tmp_path / "second.log", python=vllm_python,
    )  # fmt: skip
    with second.spawn(), two_node_cluster({}, {}, dashboard=False) as cluster:
        second.wait(timeout_s=300)  # loaded while the cluster came up
        port = free_port()
        cmd = [
            sys.executable, "-m", "rollout_worker.gateway.cli", "--ray", "--replicas", "2",
            "--ray-address", cluster["gcs"], "--proxy-location", "HeadOnly", "--port", str(port),
            "--tasks", str(tasks_dir), "--backend", stock_server.url, "--backend", second.url,
            "--model", "tiny",
        ]  # fmt: skip
        out = subprocess.run(
            cmd, env=cluster["env"], cwd=REPO, capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
        url = f"http://127.0.0.1:{port}"
        wait_up(url, None, tmp_path / "second.log")
        before = [request_counts(s) for s in (stock_server, second)]
        names = ["red", "blue"] * 4
        with httpx.Client(timeout=120) as client:
            replies = [client.post(url + "/v1/chat/completions", json=body(n)) for n in names]
        deadline = time.monotonic() + 10  # the engines count a request just after answering
        while True:
            served = [
                request_counts(s) - b for s, b in zip((stock_server, second), before, strict=True)
            ]
            if sum(served) >= len(names) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        print(f"\nrequests per engine through Ray Serve: {served}")
        assert sum(served) == len(names) and min(served) >= 2
        assert [r.status_code for r in replies] == [200] * len(names)
        answers = [r.json()["choices"][0]["message"]["content"] for r in replies]
        assert answers == [TASKS[n][1] for n in names]


@pytest.mark.slow
def test_the_serving_benchmark_runs_on_a_real_engine_and_checks_every_answer(
    vllm_python, tiny_model_path, tmp_path
):
    """`art-serve-bench` at its smallest (K = 1, 2; 8 requests a cell): every method served,
    every answer its task's single-request answer, the figures written."""
    cmd = [
        sys.executable, "-m", "rollout_worker.gateway.bench", "--model", tiny_model_path,
        "--served-name", "tiny", "--ks", "1,2", "--loads", "uniform", "--requests", "8",
        "--repeats", "1", "--new-tasks", "1", "--no-stock-engine", "--out", str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "ART_VLLM_PYTHON": vllm_python}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "serve-bench.json").read_text())
    cells = {(c["method"], c["k"]): c for c in report["cells"]}
    methods = {(m, k) for m in ("art", "art-direct", "lora") for k in (1, 2)}
    assert set(cells) == {("text", 0), *methods}
    assert all(c["requests"] == 8 and not c["mismatches"] for c in cells.values())
    assert cells[("art", 2)]["mm_cache_hit_rate"] == 1.0  # each task's image processed once
    assert report["add_a_task"]["mismatches"] == [] and report["add_a_task"]["png_first_s"]
    assert (tmp_path / "serve-bench.png").stat().st_size > 10_000


def test_a_stream_cut_by_a_dying_engine_ends_with_an_error_event(
    vllm_python, tiny_model_path, tasks_dir, tmp_path
):
    """A real engine killed (SIGKILL to its process group) in the middle of a streamed answer:
    the client's stream ends with OpenAI's error object, not a quiet end that looks whole."""
    import signal

    from rollout_worker.gateway.launch import MM_LIMITS, VllmServer, cpu_server_args

    extra = [*MM_LIMITS, *cpu_server_args()]
    server = VllmServer(tiny_model_path, "tiny", extra_args=extra, log_path=tmp_path / "v.log",
                        python=vllm_python)  # fmt: skip
    with server.start(timeout_s=300):
        args = ["--tasks", str(tasks_dir), "--backend", server.url, "--timeout-s", "20"]
        with art_serve(*args, log=tmp_path / "art-serve.log") as url:
            request = body("red", stream=True, max_tokens=480, temperature=1.0, ignore_eos=True)
            events = []
            with httpx.stream("POST", url + "/v1/chat/completions", json=request, timeout=60) as r:
                for line in r.iter_lines():
                    if not line:
                        continue
                    events.append(line)
                    if len(events) == 2:
                        os.killpg(server.proc.pid, signal.SIGKILL)  # the engine dies mid-answer
            log = (tmp_path / "art-serve.log").read_text()
    assert len(events) < 480 and events[-1] != "data: [DONE]", events[-3:]
    last = json.loads(events[-1][len("data: ") :])
    assert last["error"]["code"] in (502, 504), last
    assert "task red: the stream from" in log and "broke off" in log
