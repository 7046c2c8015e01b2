"""art-serve's registry and app against a FAKE OpenAI backend (an in-process FastAPI app that
records what it receives; no vLLM). The real engine is in tests/vllm_cpu/test_gateway.py.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.testclient import TestClient

from rollout_worker.gateway.app import GatewayConfig, create_app, renamed_events
from rollout_worker.gateway.backends import BackendPool
from rollout_worker.gateway.cli import launch_args, main
from rollout_worker.gateway.launch import free_port
from rollout_worker.gateway.options import parse_image_size
from rollout_worker.gateway.registry import TaskRegistry
from shared.artifact import art_metadata, encode_png
from shared.errors import UserError
from shared.serving import png_data_url

MODEL = "tiny"


def write_png(path, colour=(200, 30, 30), model=MODEL, size=(64, 64), metadata_size=None):
    pixels = np.zeros((*size, 3), np.uint8)
    pixels[:] = colour
    h, w = metadata_size or size
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(pixels, art_metadata(model, h, w, 7)))
    return path


# -- the FAKE backend -------------------------------------------------------------------------


def fake_backend(received: list, fail_with: int | None = None) -> FastAPI:
    """A FAKE OpenAI-compatible server: records (host, path, body); answers like vLLM."""
    app = FastAPI()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": MODEL, "object": "model"}]}

    @app.post("/v1/{endpoint:path}")
    async def answer(endpoint: str, request: Request):
        body = await request.json()
        received.append((request.headers["host"], "/v1/" + endpoint, body))
        if fail_with:
            error = {
                "message": "fake backend error",
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            }
            return JSONResponse({"error": error}, status_code=fail_with)
        if body.get("stream"):
            events = [
                {"id": "c1", "model": body["model"], "choices": [{"delta": {"content": t}}]}
                for t in ("A", "B")
            ]
            raw = "".join(f"data: {json.dumps(e, separators=(',', ':'))}\n\n" for e in events)
            return StreamingResponse(
                iter([raw.encode(), b"data: [DONE]\n\n"]), media_type="text/event-stream"
            )
        message = {"role": "assistant", "content": "A"}
        reply = {"id": "c1", "model": body["model"], "choices": [{"index": 0, "message": message}]}
        return JSONResponse(reply)

    return app


class Router(httpx.AsyncBaseTransport):
    """Routes by host to FAKE backends; hosts in `dead` refuse the connection, hosts in
    `silent` time out (an in-process transport has no clock of its own)."""

    def __init__(self, apps: dict[str, FastAPI], dead=frozenset(), silent=frozenset()):
        self.transports = {h: httpx.ASGITransport(app) for h, app in apps.items()}
        self.dead, self.silent = set(dead), set(silent)

    async def handle_async_request(self, request):
        if request.url.host in self.dead:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.host in self.silent:
            raise httpx.ReadTimeout("timed out", request=request)
        return await self.transports[request.url.host].handle_async_request(request)


@pytest.fixture
def tasks_dir(tmp_path):
    folder = tmp_path / "runs"
    write_png(folder / "red" / "art.png", (230, 20, 20))
    write_png(folder / "blue.png", (20, 20, 230))
    return folder


def gateway(tasks, backends=("http://b0",), transport=None, **kwargs) -> TestClient:
    config = GatewayConfig(tasks=str(tasks), backends=tuple(backends), **kwargs)
    return TestClient(create_app(config, transport))


def chat(client, model, content="Which letter?", **extra):
    body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    return client.post("/v1/chat/completions", json=body)


# -- registry ---------------------------------------------------------------------------------


def test_registry_reads_run_folders_loose_pngs_and_mapping_files(tasks_dir, tmp_path):
    registry = TaskRegistry(tasks_dir, MODEL)
    tasks = {t.name: t for t in registry.tasks()}
    assert sorted(tasks) == ["blue", "red"]
    assert all(t.servable for t in tasks.values())
    red_png = (tasks_dir / "red" / "art.png").read_bytes()
    assert tasks["red"].image_part == {
        "type": "image_url",
        "image_url": {"url": png_data_url(red_png)},
    }
    assert (tasks["red"].step, tasks["red"].height, tasks["red"].width) == ("7", 64, 64)
    mappings = {".json": '{"math": "runs/red/art.png"}', ".yaml": "math: runs/red/art.png\n"}
    for suffix, text in mappings.items():
        mapping = tmp_path / f"tasks{suffix}"
        mapping.write_text(text)
        (task,) = TaskRegistry(mapping, MODEL).tasks()
        assert (task.name, task.path, task.servable) == (
            "math",
            tmp_path / "runs/red/art.png",
            True,
        )


def test_registry_refuses_pngs_for_another_model_size_or_resized_with_the_reason(tmp_path):
    folder = tmp_path / "runs"
    write_png(folder / "other-model.png", model="Qwen/Qwen3.5-9B")
    write_png(folder / "small.png", size=(32, 32))
    write_png(folder / "resized.png", size=(64, 64), metadata_size=(128, 128))
    (folder / "garbage.png").write_bytes(b"\x89PNG not really")
    write_png(folder / f"{MODEL}.png")  # a task may not take the model's own name
    write_png(folder / "ok.png")
    tasks = {t.name: t for t in TaskRegistry(folder, MODEL, image_size=(64, 64)).tasks()}
    assert [n for n, t in tasks.items() if t.servable] == ["ok"]
    assert "trained for model 'Qwen/Qwen3.5-9B', not 'tiny'" in tasks["other-model"].error
    assert "is 32x32, the config asks for 64x64" in tasks["small"].error
    assert "pixels are 64x64, its metadata says 128x128" in tasks["resized"].error
    assert "not a readable PNG" in tasks["garbage"].error
    assert "the served model's own name" in tasks[MODEL].error
    with pytest.raises(UserError, match="does not exist"):
        TaskRegistry(tmp_path / "nowhere", MODEL)


def test_rescans_read_only_new_or_changed_pngs(tasks_dir):
    now = [0.0]
    registry = TaskRegistry(tasks_dir, MODEL, rescan_interval_s=2.0, clock=lambda: now[0])
    assert registry.reads == 2
    now[0] = 5.0
    registry.tasks()  # interval passed: rescans, reads nothing unchanged
    assert (registry.scans, registry.reads) == (2, 2)
    write_png(tasks_dir / "green" / "art.png", (20, 230, 20))
    assert registry.get("green") is None  # rescanned 0 s ago: unknown names wait 0.25 s
    now[0] = 5.3
    assert registry.get("green").servable  # an unknown name rescans before the interval
    assert registry.reads == 3
    red = tasks_dir / "red" / "art.png"
    write_png(red, (240, 240, 20))
    now[0] = 10.0
    registry.tasks()
    assert registry.reads == 4  # only the changed one
    (tasks_dir / "blue.png").unlink()
    now[0] = 15.0
    assert sorted(t.name for t in registry.tasks()) == ["green", "red"]


# -- the app ----------------------------------------------------------------------------------


def test_models_lists_the_model_then_every_servable_task(tasks_dir):
    write_png(tasks_dir / "bad.png", model="other")
    received = []
    with gateway(tasks_dir, transport=Router({"b0": fake_backend(received)})) as client:
        models = client.get("/v1/models").json()["data"]
        assert [m["id"] for m in models] == [MODEL, "blue", "red"]
        assert models[2]["owned_by"] == "art" and models[2]["parent"] == MODEL
        assert models[2]["art"]["step"] == "7"
        assert client.get("/v1/models/red").json()["id"] == "red"
        assert client.get("/health").json()["tasks"] == 2
    assert received == []  # the model came from GET /v1/models, nothing was posted


def test_a_task_request_gets_its_image_first_in_the_first_user_turn(tasks_dir):
    received = []
    with gateway(tasks_dir, transport=Router({"b0": fake_backend(received)})) as client:
        messages = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Which letter?"},
            {"role": "assistant", "content": "A"},
            {"role": "user", "content": [{"type": "text", "text": "Sure?"}]},
        ]
        body = {"model": "red", "messages": messages, "temperature": 0, "max_tokens": 4}
        reply = client.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200, reply.text
        assert reply.json()["model"] == "red"  # named as the client named it
        chat(client, "blue", chat_template_kwargs={"enable_thinking": True})
    (_, path, sent), (_, _, sent_blue) = received
    red_png = (tasks_dir / "red" / "art.png").read_bytes()
    image = {"type": "image_url", "image_url": {"url": png_data_url(red_png)}}
    assert path == "/v1/chat/completions"
    assert sent["model"] == MODEL and sent["temperature"] == 0 and sent["max_tokens"] == 4
    assert sent["messages"] == [
        messages[0],
        {"role": "user", "content": [image, {"type": "text", "text": "Which letter?"}]},
        messages[2],
        messages[3],  # later turns as sent: the image stays at the start of the conversation
    ]
    assert sent["chat_template_kwargs"] == {"enable_thinking": False}  # training's default
    assert sent_blue["chat_template_kwargs"] == {"enable_thinking": True}  # the client's choice


def test_the_model_itself_passes_through_untouched(tasks_dir):
    received = []
    with gateway(tasks_dir, transport=Router({"b0": fake_backend(received)})) as client:
        image = [
            {"type": "image_url", "image_url": {"url": "data:x"}},
            {"type": "text", "text": "q"},
        ]
        assert chat(client, MODEL, image).status_code == 200
        body = {"model": MODEL, "prompt": "hello", "max_tokens": 2}
        assert client.post("/v1/completions", json=body).status_code == 200
    assert received[0][2]["messages"][0]["content"] == image
    assert received[1][1:] == ("/v1/completions", body)


def error_of(reply, status):
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_bad_requests_get_openai_errors_with_the_right_status(tasks_dir):
    write_png(tasks_dir / "other" / "art.png", model="Qwen/Qwen3.5-0.8B")
    write_png(tasks_dir / "small.png", size=(32, 32))
    received = []
    transport = Router({"b0": fake_backend(received)})
    with gateway(tasks_dir, transport=transport, image_size=(64, 64)) as client:
        e = error_of(chat(client, "nope"), 404)
        assert e["code"] == "model_not_found" and "blue, red" in e["message"]
        e = error_of(chat(client, "other"), 409)
        assert e["code"] == "task_image_mismatch" and "Qwen/Qwen3.5-0.8B" in e["message"]
        assert "32x32" in error_of(chat(client, "small"), 409)["message"]
        own_image = [{"type": "image_url", "image_url": {"url": "data:x"}}]
        assert "text only" in error_of(chat(client, "red", own_image), 400)["message"]
        no_user = {"model": "red", "messages": [{"role": "system", "content": "hi"}]}
        reply = client.post("/v1/chat/completions", json=no_user)
        assert "user message" in error_of(reply, 400)["message"]
        completion = client.post("/v1/completions", json={"model": "red", "prompt": "x"})
        assert error_of(completion, 400)["code"] == "unsupported_endpoint"
        headers = {"content-type": "application/json"}
        not_json = client.post("/v1/chat/completions", content=b"{", headers=headers)
        error_of(not_json, 400)
    assert received == []  # nothing bad reached the backend


def test_backend_errors_pass_through_and_a_dead_backend_is_503(tasks_dir):
    failing = Router({"b0": fake_backend([], fail_with=400)})
    with gateway(tasks_dir, transport=failing) as client:
        assert error_of(chat(client, "red"), 400)["message"] == "fake backend error"
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with gateway(tasks_dir, backends=[dead], model=MODEL) as client:
        e = error_of(chat(client, "red"), 503)
        assert dead in e["message"] and "start the vLLM server" in e["message"]
        assert error_of(chat(client, "red", stream=True), 503)
    with gateway(tasks_dir, transport=Router({}, silent={"b0"}), model=MODEL) as client:
        error_of(chat(client, "red"), 504)


def test_streaming_passes_the_events_through_renamed_to_the_task(tasks_dir):
    body = {"model": "red", "stream": True, "messages": [{"role": "user", "content": "q"}]}
    with (
        gateway(tasks_dir, transport=Router({"b0": fake_backend([])})) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as reply,
    ):
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        raw = b"".join(reply.iter_raw())
    events = [e for e in raw.decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert [c["model"] for c in chunks] == ["red", "red"]
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == ["A", "B"]


def test_renaming_survives_events_split_anywhere_across_chunks():
    stream = b'data: {"id":"x","model":"tiny","n":1}\n\ndata: {"model":"tiny"}\n\ndata: [DONE]\n\n'
    expected = stream.replace(b'"model":"tiny"', b'"model":"red"')

    async def collect(chunks):
        async def source():
            for c in chunks:
                yield c

        return b"".join([c async for c in renamed_events(source(), b'"tiny"', b'"red"')])

    for cut in range(1, len(stream)):
        assert asyncio.run(collect([stream[:cut], stream[cut:]])) == expected
    assert asyncio.run(collect([bytes([b]) for b in stream])) == expected


def test_a_task_added_while_serving_is_served_at_once(tasks_dir):
    transport = Router({"b0": fake_backend([])})
    with gateway(tasks_dir, transport=transport, rescan_interval_s=3600) as client:
        error_of(chat(client, "green"), 404)
        time.sleep(0.3)  # unknown names rescan at most every 0.25 s
        write_png(tasks_dir / "green" / "art.png", (20, 230, 20))
        assert chat(client, "green").status_code == 200
        assert "green" in [m["id"] for m in client.get("/v1/models").json()["data"]]


def test_requests_spread_over_backends_and_skip_a_dead_one(tasks_dir):
    received = []
    apps = {h: fake_backend(received) for h in ("b0", "b1", "b2")}
    transport = Router(apps, dead={"b1"})
    urls = ["http://b0", "http://b1", "http://b2"]
    with gateway(tasks_dir, backends=urls, transport=transport, model=MODEL) as client:
        for _ in range(6):
            assert chat(client, "red").status_code == 200
        transport.dead = {"b0", "b1", "b2"}
        assert error_of(chat(client, "red"), 503)
    hosts = [host for host, _, _ in received]
    assert hosts.count("b0") == hosts.count("b2") == 3  # round robin over the live ones


def test_the_pool_prefers_the_backend_with_fewest_requests_in_flight():
    pool = BackendPool(["http://a", "http://b", "http://c"], client=None)
    pool.in_flight = [2, 0, 1]
    assert pool.order() == [1, 2, 0]
    pool.in_flight = [0, 0, 0]
    pool._next = 2
    assert pool.order() == [2, 0, 1]  # ties: round robin from the next one


# -- the command ------------------------------------------------------------------------------


def test_cli_parses_sizes_keeps_user_vllm_flags_and_fails_in_one_line(tmp_path, capsys):
    assert parse_image_size("256") == (256, 256) and parse_image_size("64x32") == (64, 32)
    with pytest.raises(UserError, match="give N or HxW"):
        parse_image_size("big")
    args = launch_args("/nonexistent/python", ["--limit-mm-per-prompt", '{"image": 2}'])
    assert args == ["--limit-mm-per-prompt", '{"image": 2}']  # the user's value, once
    assert launch_args("/nonexistent/python", [])[:1] == ["--limit-mm-per-prompt"]
    code = main(["--tasks", str(tmp_path / "none"), "--backend", "http://x", "--model", MODEL])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "does not exist" in err


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Serve's own pydantic fields
def test_the_ray_serve_application_reads_serve_run_arguments(tmp_path):
    from rollout_worker.gateway.ray_serve import app_builder

    app = app_builder({"tasks": str(tmp_path), "backends": "http://a:8000,http://b:8000",
                       "image_size": "64x32", "replicas": "2"})  # fmt: skip
    deployment = app._bound_deployment
    (config,) = deployment.init_args
    assert (deployment.name, deployment.num_replicas) == ("art-serve", 2)
    assert config.backends == ("http://a:8000", "http://b:8000")
    assert (config.tasks, config.image_size, config.model) == (str(tmp_path), (64, 32), None)
