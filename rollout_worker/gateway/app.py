"""The OpenAI-compatible gateway: `model=<task>` becomes the task's PNG in the user turn.

Routes:

- `GET /v1/models`: the served model, then every task that can be served (`owned_by: "art"`,
  `parent`: the model, `art`: the PNG's SHA-256, training step and size).
- `POST /v1/chat/completions`: with `model=<task>`, the task's image goes in as the first
  content part of the first user turn, before its text: where training put it (one user turn,
  image first, then the question; a longer conversation keeps the image at its start, so
  every turn shares the image's cached prefix). Thinking is off unless the request sets
  `chat_template_kwargs.enable_thinking` (training's default). `model` is rewritten to the
  served model on the way in and back to the task on the way out, streamed chunks included;
  everything else passes through unchanged. `model=<the served model>` passes through as is.
- `POST /v1/completions`: passes through for the served model; a task is refused (a raw
  completion prompt has no user turn to put the image in: use chat completions).
- `GET /health`: 200 with the task count (the only route open without a key).
- `GET /metrics`: Prometheus' text format, per task (rollout_worker/gateway/metrics.py).

Keys (rollout_worker/gateway/keys.py): with `--api-key` or `--api-keys-file`, every route but
`/health` wants `Authorization: Bearer <key>` (401 without it); a key sees and uses only its
tasks (another task is 404, as if it did not exist; the served model itself is for keys of
every task). Request bodies are bounded (`max_body_bytes`, 413 beyond) and checked field by
field: a malformed body is a 4xx, never a 500. A stream the engine breaks off (an error, a
timeout, an end without `[DONE]`) ends with an SSE event holding OpenAI's error object; a
non-streamed answer the engine cut is a 502, never a partial body.

Errors are OpenAI's JSON (`{"error": {"message", "type", "param", "code"}}`): an unknown task
404 (`model_not_found`), a task whose PNG was trained for another model or size 409
(`task_image_mismatch`, the message says which), a request that already carries an image 400,
no backend reachable 503, a backend timeout 504, a backend's own error passes through with its
status, no or a wrong key 401, a body over the limit 413.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from rollout_worker.gateway.backends import BackendPool, BackendUnavailable
from rollout_worker.gateway.keys import Access, KeyRing
from rollout_worker.gateway.metrics import GatewayMetrics
from rollout_worker.gateway.registry import Task, TaskRegistry
from shared.errors import UserError

logger = logging.getLogger("art-serve")
EVERYTHING = Access(True)  # no keys: every request may use everything


@dataclass(frozen=True)
class GatewayConfig:
    """What one gateway process (or Ray Serve replica) needs; plain data, picklable."""

    # Folder of trained runs (<run>/art.png) or a .json/.yaml file {task: png path}.
    tasks: str
    # OpenAI-compatible servers of the model (vLLM), e.g. ["http://127.0.0.1:8000"].
    backends: tuple[str, ...]
    # The model the PNGs must be trained for, forwarded as `model`; None: the first backend's.
    model: str | None = None
    # (height, width) every PNG must have; None: any size its metadata and pixels agree on.
    image_size: tuple[int, int] | None = None
    # The PNG a run folder serves (art.png: the last image; best.png: the best validated).
    png_name: str = "art.png"
    # Seconds between rescans of the task source (an unknown name rescans at once).
    rescan_interval_s: float = 2.0
    # Seconds a backend may stay silent (before its headers, or between two chunks) before 504.
    request_timeout_s: float = 600.0
    # Extra headers for every backend request (e.g. Authorization for `vllm --api-key`).
    backend_headers: dict[str, str] = field(default_factory=dict)
    # Client keys that may use every task (`--api-key`); none and no keys file: no key needed.
    api_keys: tuple[str, ...] = ()
    # A JSON/YAML file {key: [tasks] or "*"} (`--api-keys-file`), read again when it changes.
    api_keys_file: str | None = None
    # The largest request body accepted, in bytes (413 beyond): a long chat fits in 16 MiB.
    max_body_bytes: int = 16 * 2**20
    # One log line per request: task, status, tokens, seconds (never the key).
    access_log: bool = False


def error(status: int, message: str, type_: str, code: str | int | None = None, param=None):
    """An OpenAI-style error response."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code or status}}
    return JSONResponse(body, status_code=status)


class ImageInRequest(ValueError):
    """A task request that carries its own image (or another non-text part)."""


def insert_image(body: dict, task: Task, model: str) -> dict:
    """The request to forward: `model` set to the served model, the task's image first in the
    first user turn, thinking off unless asked for. Raises ValueError on a malformed body."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("`messages` must be a non-empty list")
    out, placed = [], False
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"messages[{i}] must be an object")
        if not isinstance(message.get("role"), str):
            raise ValueError(f"messages[{i}].role must be a string")
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise ImageInRequest(
                        f"messages[{i}] has a {kind!r} part: an ART task's request is text "
                        f"only (the gateway adds task {task.name!r}'s image); send text, or "
                        f"model={model!r} to send your own image to the model"
                    )
                if not isinstance(part.get("text"), str):
                    raise ValueError(f"messages[{i}]: a text part's `text` must be a string")
        elif content is not None and not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be a string or a list of text parts")
        if message["role"] == "user" and not placed:
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
            message = {**message, "content": [task.image_part, *(parts or [])]}
            placed = True
        out.append(message)
    if not placed:
        raise ValueError(
            "an ART task's request needs a user message (the task's image goes first in it)"
        )
    forwarded = {**body, "model": model, "messages": out}
    kwargs = dict(forwarded.get("chat_template_kwargs") or {})
    kwargs.setdefault("enable_thinking", False)
    forwarded["chat_template_kwargs"] = kwargs
    return forwarded


def check_fields(body: dict) -> None:
    """The fields the gateway reads itself, by type (the engine checks the rest)."""
    for key, kinds, what in (
        ("model", (str,), "a string"),
        ("stream", (bool, type(None)), "true or false"),
        ("stream_options", (dict, type(None)), "an object"),
        ("chat_template_kwargs", (dict, type(None)), "an object"),
    ):
        if key in body and not isinstance(body[key], kinds):
            raise ValueError(f"`{key}` must be {what}")


def _json_name(name: str) -> bytes:
    return json.dumps(name, ensure_ascii=False).encode()


def rename_model(data: bytes, served: bytes, task: bytes) -> bytes:
    """Replace the served model's name by the task's in a JSON body or SSE event (vLLM writes
    compact JSON: `"model":"<name>"`, once per object)."""
    return data.replace(b'"model":' + served, b'"model":' + task, 1)


async def renamed_events(chunks, served: bytes, task: bytes):
    """SSE passthrough with each event's `model` renamed; events are cut at blank lines, so a
    name split across two network chunks is still found."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        *events, pending = pending.split(b"\n\n")
        if events:
            yield b"".join(rename_model(e, served, task) + b"\n\n" for e in events)
    if pending:
        yield rename_model(pending, served, task)


class Gateway:
    """The state of one gateway process: the registry, the backends, the HTTP client."""

    def __init__(self, config: GatewayConfig, transport: httpx.AsyncBaseTransport | None = None):
        self.config = config
        self.transport = transport  # tests plug an in-process backend in here
        self.model: str | None = config.model
        self.registry: TaskRegistry | None = None
        self.pool: BackendPool | None = None
        self.client: httpx.AsyncClient | None = None
        self.keys = KeyRing(config.api_keys, config.api_keys_file)
        self.metrics = GatewayMetrics()

    async def start(self) -> None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
        timeout = httpx.Timeout(self.config.request_timeout_s, connect=5.0)
        self.client = httpx.AsyncClient(
            transport=self.transport,
            limits=limits,
            timeout=timeout,
            headers=self.config.backend_headers,
        )
        self.pool = BackendPool(list(self.config.backends), self.client)
        if self.model is None:
            self.model = await self.served_model()
        self.registry = TaskRegistry(
            self.config.tasks,
            self.model,
            self.config.image_size,
            self.config.png_name,
            self.config.rescan_interval_s,
        )
        tasks = self.registry.tasks()
        for task in tasks:
            if not task.servable:
                logger.warning("art-serve: %s", task.error)
        logger.info(
            "art-serve: model %s, %d task(s) servable of %d in %s, backends %s",
            self.model,
            sum(t.servable for t in tasks),
            len(tasks),
            self.config.tasks,
            ", ".join(self.pool.urls),
        )

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    async def served_model(self) -> str:
        """The first backend's (only) model, asked once at start when --model is not given."""

        try:
            async with self.pool.request("GET", "/v1/models") as (url, response):
                await response.aread()
                models = [m["id"] for m in response.json()["data"]]
        except (BackendUnavailable, httpx.HTTPError, KeyError, ValueError) as e:
            raise UserError(
                f"cannot ask {self.config.backends[0]}/v1/models for the served model ({e}): "
                "start the backend first, or give --model"
            ) from e
        if not models:
            raise UserError(f"{url} serves no model; give --model")
        return models[0]

    # -- routes ----------------------------------------------------------------------------

    def models(self, access: Access = EVERYTHING) -> dict:
        data = []
        if access.everything:
            data.append({"id": self.model, "object": "model", "created": 0, "owned_by": "vllm"})
        for task in self.registry.tasks():
            if not task.servable or not access.allows(task.name):
                continue
            data.append(
                {
                    "id": task.name,
                    "object": "model",
                    "created": int(task.stamp[0] / 1e9),
                    "owned_by": "art",
                    "root": self.model,
                    "parent": self.model,
                    "art": {
                        "image_sha256": task.sha256,
                        "step": task.step,
                        "height": task.height,
                        "width": task.width,
                    },
                }
            )
        return {"object": "list", "data": data}

    def lookup(self, name, access: Access = EVERYTHING) -> Task | JSONResponse:
        allowed = isinstance(name, str) and access.allows(name)
        task = self.registry.get(name) if allowed else None
        if task is None:  # unknown, or not this key's: the same answer
            known = [t.name for t in self.registry.tasks() if t.servable and access.allows(t.name)]
            known = known[:10]
            return error(
                404,
                f"The model `{name}` does not exist: art-serve serves the tasks in "
                f"{self.config.tasks} ({', '.join(known) or 'none yet'})"
                f"{f' and {self.model}' if access.everything else ''}; GET /v1/models lists them",
                "invalid_request_error",
                "model_not_found",
                "model",
            )
        if not task.servable:
            return error(409, task.error, "invalid_request_error", "task_image_mismatch", "model")
        return task

    async def forward(self, path: str, body: dict, task: Task | None, start: float) -> Response:
        """Send `body` to a backend; stream the answer back when the request streams. Every
        answer is recorded (metrics, access log) under its task."""
        name = task.name if task else self.model
        streams = bool(body.get("stream"))
        if streams:  # the engine's token counts come in a last chunk, asked for here
            asked = dict(body.get("stream_options") or {})
            body = {**body, "stream_options": {**asked, "include_usage": True}}
            strip_usage = not asked.get("include_usage")
        stack = AsyncExitStack()
        try:
            url, response = await stack.enter_async_context(
                self.pool.request("POST", path, json=body)
            )
        except BackendUnavailable as e:
            await stack.aclose()
            return self.failed(name, start, 503, f"{e}: start the vLLM server or check --backend")
        except httpx.TimeoutException as e:
            await stack.aclose()
            return self.failed(name, start, 504, f"the backend did not answer in time ({e!r})")
        except httpx.HTTPError as e:
            await stack.aclose()
            return self.failed(name, start, 502, f"the backend failed ({type(e).__name__}: {e})")
        served, renamed = _json_name(self.model), _json_name(task.name if task else "")
        headers = {"content-type": response.headers.get("content-type", "application/json")}
        if streams and response.status_code == 200:
            events = self.relay(response, stack, task, url, start, served, renamed, strip_usage)
            return StreamingResponse(events, status_code=200, headers=headers)
        try:
            content = await response.aread()
        except httpx.TimeoutException as e:
            return self.failed(name, start, 504, f"the backend did not answer in time ({e!r})", url)
        except httpx.HTTPError as e:
            return self.failed(name, start, 502, f"the backend failed mid-answer ({e!r})", url)
        finally:
            await stack.aclose()
        usage = None
        if response.status_code == 200:
            try:  # a cut or garbled answer is the engine's failure, not a 200
                usage = (json.loads(content) or {}).get("usage")
            except (ValueError, AttributeError):
                return self.failed(name, start, 502, "the backend's answer is not complete JSON",
                                   url)  # fmt: skip
            if task is not None:
                content = rename_model(content, served, renamed)
        self.record(name, response.status_code, start, url, usage)
        return Response(content, status_code=response.status_code, headers=headers)

    async def relay(self, response, stack, task, url, start, served, renamed, strip_usage):
        """The engine's SSE events to the client, each renamed to the task; the usage chunk
        asked for is dropped unless the client asked too. A stream the engine breaks off (an
        error, a timeout, an end without `[DONE]`) gets a last event with OpenAI's error
        object, and ends."""
        name = task.name if task else self.model
        done, usage, first, status = False, None, None, 200
        try:
            async for event in sse_events(response.aiter_raw()):
                if task is not None:
                    event = rename_model(event, served, renamed)
                payload = event.strip()
                if payload == b"data: [DONE]":
                    done = True
                elif payload.startswith(b"data: {"):
                    found = _event_json(payload)
                    if found.get("usage"):
                        usage = found["usage"]
                        if strip_usage and not found.get("choices"):
                            continue
                    if first is None and found.get("choices"):
                        first = time.perf_counter() - start
                yield event
            if not done:
                raise BrokenStream("the backend ended the stream without [DONE]")
        except (httpx.HTTPError, BrokenStream) as e:
            status = 504 if isinstance(e, httpx.TimeoutException) else 502
            logger.warning(
                "art-serve: task %s: the stream from %s broke off (%s: %s)",
                name, url, type(e).__name__, e,
            )  # fmt: skip
            message = f"the engine's stream broke off ({type(e).__name__}: {e}); retry"
            yield error_event(message, status)
        finally:  # recorded first: a client that hung up cancels what follows
            self.record(name, status, start, url, usage, first)
            await stack.aclose()

    def failed(self, name: str, start: float, status: int, message: str, url: str = ""):
        self.record(name, status, start, url)
        return error(status, message, "server_error")

    def record(self, name, status, start, url="", usage=None, ttft=None) -> None:
        seconds = time.perf_counter() - start
        self.metrics.record(name, status, seconds, url, usage, ttft)
        if self.config.access_log:
            usage = usage or {}
            logger.info(
                "art-serve: task=%s status=%d prompt_tokens=%s completion_tokens=%s "
                "seconds=%.3f backend=%s", name, status, usage.get("prompt_tokens", "-"),
                usage.get("completion_tokens", "-"), seconds, url or "-",
            )  # fmt: skip

    async def completion(self, request: Request, path: str, access: Access) -> Response:
        start = time.perf_counter()
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > self.config.max_body_bytes:
                return too_large(self.config.max_body_bytes)
        try:
            body = json.loads(bytes(raw))
        except (ValueError, RecursionError):
            return error(400, "the request body is not JSON", "invalid_request_error")
        if not isinstance(body, dict):
            return error(400, "the request body must be a JSON object", "invalid_request_error")
        try:
            check_fields(body)
        except ValueError as e:
            return error(400, str(e), "invalid_request_error")
        name = body.get("model")
        if name == self.model and access.everything:  # the model itself: pass through
            return await self.forward(path, body, None, start)
        task = self.lookup(name, access)
        if isinstance(task, Response):
            return task
        if path == "/v1/completions":
            return error(
                400,
                f"task {task.name!r} is served by /v1/chat/completions only: its image goes in "
                "the chat template's user turn, which a raw completion prompt does not have",
                "invalid_request_error",
                "unsupported_endpoint",
                "model",
            )
        try:
            forwarded = insert_image(body, task, self.model)
        except ValueError as e:
            return error(400, str(e), "invalid_request_error", param="messages")
        return await self.forward(path, forwarded, task, start)


class BrokenStream(RuntimeError):
    """The engine's stream ended without its end marker."""


async def sse_events(chunks):
    """SSE events one by one, each whole (with its blank line), from network chunks."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        *events, pending = pending.split(b"\n\n")
        for event in events:
            yield event + b"\n\n"
    if pending.strip():
        yield pending


def _event_json(payload: bytes) -> dict:
    try:
        found = json.loads(payload[len(b"data: ") :])
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def error_event(message: str, status: int) -> bytes:
    """OpenAI's error object as the stream's last SSE event."""
    body = {"error": {"message": message, "type": "server_error", "param": None, "code": status}}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def too_large(limit: int) -> JSONResponse:
    return error(
        413,
        f"the request body is over {limit:,} bytes (art-serve --max-body-mb)",
        "invalid_request_error",
        "request_too_large",
    )


UNAUTHORIZED = (
    "Incorrect API key provided: art-serve was started with keys; send one as "
    "`Authorization: Bearer <key>`"
)


def create_app(config: GatewayConfig, transport: httpx.AsyncBaseTransport | None = None):
    """The FastAPI app, for uvicorn (`art-serve`) and Ray Serve (`serve.ingress`) alike."""
    gateway = Gateway(config, transport)

    @asynccontextmanager
    async def lifespan(app):
        await gateway.start()
        yield
        await gateway.stop()

    app = FastAPI(title="art-serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gateway = gateway

    @app.middleware("http")
    async def guard(request: Request, call_next):
        """The key (every route but /health), the body's declared size, and no bare 500."""
        access = EVERYTHING
        if request.url.path != "/health" and gateway.keys.enabled:
            access = gateway.keys.check(request.headers.get("authorization"))
            if access is None:
                return error(401, UNAUTHORIZED, "invalid_request_error", "invalid_api_key")
        request.state.access = access
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > config.max_body_bytes:
            return too_large(config.max_body_bytes)
        try:
            return await call_next(request)
        except Exception as e:  # a bug of ours: logged with its traceback, OpenAI's JSON out
            logger.exception("art-serve: %s %s failed", request.method, request.url.path)
            return error(500, f"art-serve failed ({type(e).__name__}); see its log", "server_error")

    @app.get("/health")
    async def health():
        return {"status": "ok", "tasks": sum(t.servable for t in gateway.registry.tasks())}

    @app.get("/metrics")
    async def metrics(request: Request):
        if not request.state.access.everything:  # it names every task: keys of every task only
            return error(403, "/metrics needs a key of every task (\"*\")",
                         "invalid_request_error", "forbidden")  # fmt: skip
        return Response(gateway.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request):
        return gateway.models(request.state.access)

    @app.get("/v1/models/{name:path}")
    async def model(name: str, request: Request):
        access = request.state.access
        if name == gateway.model and access.everything:
            return gateway.models(access)["data"][0]
        found = gateway.lookup(name, access)
        if isinstance(found, Response):  # 404, or 409 with why the task cannot be served
            return found
        return next(e for e in gateway.models(access)["data"] if e["id"] == name)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await gateway.completion(request, "/v1/chat/completions", request.state.access)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await gateway.completion(request, "/v1/completions", request.state.access)

    return app
