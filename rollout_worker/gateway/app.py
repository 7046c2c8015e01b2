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
- `GET /health`: 200 with the task count.

Errors are OpenAI's JSON (`{"error": {"message", "type", "param", "code"}}`): an unknown task
404 (`model_not_found`), a task whose PNG was trained for another model or size 409
(`task_image_mismatch`, the message says which), a request that already carries an image 400,
no backend reachable 503, a backend timeout 504, a backend's own error passes through with its
status.
"""

from __future__ import annotations

import json
import logging
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from rollout_worker.gateway.backends import BackendPool, BackendUnavailable
from rollout_worker.gateway.registry import Task, TaskRegistry
from shared.errors import UserError

logger = logging.getLogger("art-serve")


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
        if message.get("role") == "user" and not placed:
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

    def models(self) -> dict:
        data = [{"id": self.model, "object": "model", "created": 0, "owned_by": "vllm"}]
        for task in self.registry.tasks():
            if not task.servable:
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

    def lookup(self, name) -> Task | JSONResponse:
        task = self.registry.get(name) if isinstance(name, str) else None
        if task is None:
            known = [t.name for t in self.registry.tasks() if t.servable][:10]
            return error(
                404,
                f"The model `{name}` does not exist: art-serve serves the tasks in "
                f"{self.config.tasks} ({', '.join(known) or 'none yet'}) and {self.model}; "
                "GET /v1/models lists them",
                "invalid_request_error",
                "model_not_found",
                "model",
            )
        if not task.servable:
            return error(409, task.error, "invalid_request_error", "task_image_mismatch", "model")
        return task

    async def forward(self, path: str, body: dict, task: Task | None) -> Response:
        """Send `body` to a backend; stream the answer back when the request streams."""
        stack = AsyncExitStack()
        try:
            _, response = await stack.enter_async_context(
                self.pool.request("POST", path, json=body)
            )
        except BackendUnavailable as e:
            await stack.aclose()
            return error(503, f"{e}: start the vLLM server or check --backend", "server_error")
        except httpx.TimeoutException as e:
            await stack.aclose()
            return error(504, f"the backend did not answer in time ({e!r})", "server_error")
        except httpx.HTTPError as e:
            await stack.aclose()
            return error(502, f"the backend failed ({type(e).__name__}: {e})", "server_error")
        served, name = _json_name(self.model), _json_name(task.name if task else "")
        headers = {"content-type": response.headers.get("content-type", "application/json")}
        if body.get("stream") and response.status_code == 200:

            async def relay():
                try:
                    chunks = response.aiter_raw()
                    if task is None:
                        async for chunk in chunks:
                            yield chunk
                    else:
                        async for chunk in renamed_events(chunks, served, name):
                            yield chunk
                except httpx.HTTPError as e:  # headers are out: all we can do is stop
                    logger.warning("art-serve: stream from the backend broke: %r", e)
                finally:
                    await stack.aclose()

            return StreamingResponse(relay(), status_code=200, headers=headers)
        try:
            content = await response.aread()
        except httpx.TimeoutException as e:
            return error(504, f"the backend did not answer in time ({e!r})", "server_error")
        except httpx.HTTPError as e:
            return error(502, f"the backend failed mid-answer ({e!r})", "server_error")
        finally:
            await stack.aclose()
        if task is not None and response.status_code == 200:
            content = rename_model(content, served, name)
        return Response(content, status_code=response.status_code, headers=headers)

    async def completion(self, request: Request, path: str) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return error(400, "the request body is not JSON", "invalid_request_error")
        if not isinstance(body, dict):
            return error(400, "the request body must be a JSON object", "invalid_request_error")
        name = body.get("model")
        if name == self.model:  # the model itself: pass through
            return await self.forward(path, body, None)
        task = self.lookup(name)
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
        return await self.forward(path, forwarded, task)


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

    @app.get("/health")
    async def health():
        return {"status": "ok", "tasks": sum(t.servable for t in gateway.registry.tasks())}

    @app.get("/v1/models")
    async def models():
        return gateway.models()

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        found = None if name == gateway.model else gateway.lookup(name)
        if isinstance(found, Response):  # 404, or 409 with why the task cannot be served
            return found
        entries = [e for e in gateway.models()["data"] if e["id"] == name]
        return entries[0] if entries else gateway.lookup(name)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await gateway.completion(request, "/v1/chat/completions")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await gateway.completion(request, "/v1/completions")

    return app
