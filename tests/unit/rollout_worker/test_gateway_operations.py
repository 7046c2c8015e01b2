"""art-serve as an operator deploys it, against FAKE backends (the real engine is in
tests/vllm_cpu/): client keys and per-key tasks, bounded and checked request bodies (a
property-based test throws generated bodies at it), streams the engine breaks off, per-task
metrics, and a keys file rotated while serving."""

from __future__ import annotations

import json
import logging
import os
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollout_worker.gateway.app import GatewayConfig, create_app
from shared.artifact import art_metadata, encode_png

MODEL = "tiny"
KEY, TEAM_KEY = "sk-admin-0123456789", "sk-team-red-987"
USAGE = {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}


def _png(path, colour):
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[:] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(pixels, art_metadata(MODEL, 64, 64, 3)))


@pytest.fixture
def tasks_dir(tmp_path):
    _png(tmp_path / "runs" / "red" / "art.png", (230, 20, 20))
    _png(tmp_path / "runs" / "blue" / "art.png", (20, 20, 230))
    return tmp_path / "runs"


class FakeEngine(httpx.AsyncBaseTransport):
    """An OpenAI-compatible FAKE engine: records each request's headers; answers like vLLM
    (usage included), or breaks its stream off after its first event (`break_stream`: an
    error, or `"end"`: a clean end without [DONE]), or cuts a JSON answer (`cut_json`)."""

    def __init__(self, break_stream: str | None = None, cut_json: bool = False):
        self.seen: list[httpx.Request] = []
        self.break_stream, self.cut_json = break_stream, cut_json

    async def handle_async_request(self, request):
        self.seen.append(request)
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": MODEL}]})
        body = json.loads(request.content)
        if body.get("stream"):
            return httpx.Response(200, headers={"content-type": "text/event-stream"},
                                  stream=self.events(body))  # fmt: skip
        answer = {"id": "c1", "model": body["model"], "usage": USAGE,
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "F"}}]}  # fmt: skip
        raw = json.dumps(answer, separators=(",", ":")).encode()
        return httpx.Response(200, content=raw[:25] if self.cut_json else raw,
                              headers={"content-type": "application/json"})  # fmt: skip

    def events(self, body):
        engine = self

        class Events(httpx.AsyncByteStream):
            async def __aiter__(self):
                chunk = {"id": "c1", "model": body["model"], "choices": [{"delta": {"content": "F"}}]}  # fmt: skip
                yield b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
                if engine.break_stream == "error":
                    raise httpx.ReadError("connection reset by peer")
                if engine.break_stream == "timeout":
                    raise httpx.ReadTimeout("no chunk in time")
                if engine.break_stream == "end":
                    return
                if body.get("stream_options", {}).get("include_usage"):
                    last = {"id": "c1", "model": body["model"], "choices": [], "usage": USAGE}
                    yield b"data: " + json.dumps(last, separators=(",", ":")).encode() + b"\n\n"
                yield b"data: [DONE]\n\n"

        return Events()


def client(tasks_dir, engine=None, **config) -> TestClient:
    engine = engine or FakeEngine()
    app = create_app(
        GatewayConfig(tasks=str(tasks_dir), backends=("http://b0",), model=MODEL, **config), engine
    )
    test = TestClient(app)
    test.engine = engine
    return test


def chat(c, model="red", key=None, **extra):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": model, "messages": [{"role": "user", "content": "Letter?"}], **extra}
    return c.post("/v1/chat/completions", json=body, headers=headers)


def test_without_a_key_every_route_but_health_is_401(tasks_dir):
    with client(tasks_dir, api_keys=(KEY,)) as c:
        assert c.get("/health").status_code == 200
        for method, path in [("get", "/v1/models"), ("get", "/v1/models/red"), ("get", "/metrics"),
                             ("post", "/v1/chat/completions"), ("post", "/v1/completions"),
                             ("get", "/no/such/route")]:  # fmt: skip
            reply = getattr(c, method)(path)
            assert reply.status_code == 401, (path, reply.text)
            assert reply.json()["error"]["code"] == "invalid_api_key"
        assert chat(c, key="sk-wrong").status_code == 401
        assert chat(c, key=KEY).status_code == 200
        assert c.get("/v1/models", headers={"Authorization": KEY}).status_code == 401  # no Bearer


def test_a_key_sees_and_uses_only_its_tasks_and_is_never_forwarded_or_logged(
    tasks_dir, tmp_path, caplog
):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({KEY: "*", TEAM_KEY: ["red"]}))
    caplog.set_level(logging.INFO, logger="art-serve")
    with client(tasks_dir, api_keys_file=str(keys), access_log=True) as c:
        team = {"Authorization": f"Bearer {TEAM_KEY}"}
        assert [m["id"] for m in c.get("/v1/models", headers=team).json()["data"]] == ["red"]
        admin = [m["id"] for m in c.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"]]  # fmt: skip
        assert admin == [MODEL, "blue", "red"]
        assert chat(c, "red", TEAM_KEY).status_code == 200
        for other in ("blue", MODEL, "nope"):  # as if it did not exist
            reply = chat(c, other, TEAM_KEY)
            assert reply.status_code == 404 and reply.json()["error"]["code"] == "model_not_found"
            assert "tasks in" in reply.json()["error"]["message"] and "(red)" in reply.text
        assert c.get("/v1/models/blue", headers=team).status_code == 404
        assert chat(c, MODEL, KEY).status_code == 200  # the served model: for keys of every task
        assert c.get("/metrics", headers=team).status_code == 403  # it names every task
        assert c.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        forwarded = [r.headers.get("authorization", "") for r in c.engine.seen]
        assert forwarded and not any(TEAM_KEY in h or KEY in h for h in forwarded)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "task=red status=200 prompt_tokens=11 completion_tokens=2" in logged
    assert TEAM_KEY not in logged and KEY not in logged


def test_a_keys_file_is_read_again_when_it_changes(tasks_dir, tmp_path):
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"{TEAM_KEY}: [red]\n")
    with client(tasks_dir, api_keys_file=str(keys)) as c:
        assert chat(c, "red", TEAM_KEY).status_code == 200
        keys.write_text("sk-rotated: '*'\n")
        os.utime(keys, ns=(time.time_ns(), time.time_ns() + 10**9))
        assert chat(c, "red", TEAM_KEY).status_code == 401  # the old key is gone at once
        assert chat(c, "blue", "sk-rotated").status_code == 200
        keys.write_text("not: [a, mapping")  # a broken file keeps the last good keys
        os.utime(keys, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
        assert chat(c, "blue", "sk-rotated").status_code == 200
        keys.unlink()  # a deleted file revokes its keys
        assert chat(c, "blue", "sk-rotated").status_code == 401


def test_a_body_over_the_limit_is_413_declared_or_streamed(tasks_dir):
    with client(tasks_dir, max_body_bytes=2048) as c:
        big = "x" * 4096
        assert chat(c, "red").status_code == 200
        reply = c.post("/v1/chat/completions", json={"model": "red", "messages": [
            {"role": "user", "content": big}]})  # fmt: skip
        assert reply.status_code == 413 and reply.json()["error"]["code"] == "request_too_large"
        chunked = c.post("/v1/chat/completions", content=iter([b"{" + b" " * 4096, b"}"]))
        assert chunked.status_code == 413


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip
MESSAGE = st.fixed_dictionaries(
    {}, optional={"role": st.sampled_from(["user", "system", "assistant"]) | JSON, "content": JSON}
)
BODY = (
    st.fixed_dictionaries(
        {},
        optional={
            "model": st.sampled_from(["red", "blue", MODEL, "nope"]) | JSON,
            "messages": st.lists(MESSAGE | JSON, max_size=3) | JSON,
            "stream": st.booleans() | JSON,
            "stream_options": JSON,
            "chat_template_kwargs": JSON,
            "max_tokens": JSON,
        },
    )
    | JSON
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=BODY)
def test_no_generated_body_gets_a_5xx(tasks_dir, body):
    with client(tasks_dir) as c:
        for path in ("/v1/chat/completions", "/v1/completions"):
            reply = c.post(path, content=json.dumps(body))
            assert reply.status_code < 500, (body, reply.status_code, reply.text[:300])
            if reply.status_code >= 400:
                assert "message" in reply.json()["error"]


@pytest.mark.parametrize("how", ["error", "timeout", "end"])
def test_a_stream_the_engine_breaks_off_ends_with_an_error_event(tasks_dir, caplog, how):
    with client(tasks_dir, FakeEngine(break_stream=how)) as c:
        reply = chat(c, "red", stream=True)
        events = [e for e in reply.text.split("\n\n") if e]
        assert reply.status_code == 200 and json.loads(events[0][6:])["model"] == "red"
        last = json.loads(events[-1][len("data: ") :])
        assert last["error"]["code"] == (504 if how == "timeout" else 502), events
        assert "data: [DONE]" not in events
        metrics = c.get("/metrics").text
    assert any(
        "task red: the stream from http://b0 broke off" in r.getMessage() for r in caplog.records
    )
    code = 504 if how == "timeout" else 502
    assert f'art_serve_errors_total{{task="red",status="{code}",backend="http://b0"}} 1' in metrics


def test_a_whole_stream_ends_with_done_and_keeps_the_usage_chunk_to_itself(tasks_dir):
    with client(tasks_dir) as c:
        events = [e for e in chat(c, "red", stream=True).text.split("\n\n") if e]
        assert events[-1] == "data: [DONE]" and not any('"usage"' in e for e in events)
        asked = chat(c, "red", stream=True, stream_options={"include_usage": True}).text
        assert '"usage":{"prompt_tokens":11' in asked  # the client asked for it: passed on


def test_a_cut_json_answer_is_502_never_a_partial_200(tasks_dir):
    with client(tasks_dir, FakeEngine(cut_json=True)) as c:
        reply = chat(c, "red")
        assert reply.status_code == 502 and "not complete JSON" in reply.json()["error"]["message"]


def test_metrics_count_requests_tokens_and_latency_per_task(tasks_dir):
    with client(tasks_dir) as c:
        for _ in range(2):
            chat(c, "red")
        chat(c, "blue", stream=True)
        chat(c, "nope")
        text = c.get("/metrics").text
    assert 'art_serve_requests_total{task="red",status="200"} 2' in text
    assert 'art_serve_prompt_tokens_total{task="red"} 22' in text
    assert 'art_serve_completion_tokens_total{task="blue"} 2' in text  # from the stream's usage
    assert 'art_serve_request_seconds_count{task="red"} 2' in text
    assert 'art_serve_time_to_first_token_seconds_count{task="blue"} 1' in text
    assert "# TYPE art_serve_request_seconds histogram" in text
