"""`art-serve`: ART tasks by name over a stock vLLM server (an OpenAI-compatible gateway).

    art-serve --tasks outputs --launch Qwen/Qwen3.5-0.8B        # starts vLLM, then serves
    art-serve --tasks outputs --backend http://127.0.0.1:8000   # in front of a running server
    art-serve --tasks runs.yaml --backend URL --backend URL2    # several engines
    art-serve --ray --replicas 2 --tasks /shared/runs --backend URL --backend URL2

Then any OpenAI client: `model="<run folder name>"`, text-only messages.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
import urllib.request

from rollout_worker.gateway.options import parse_image_size
from shared.errors import UserError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="art-serve",
        description="Serve ART tasks by name (model=<task>) through a stock OpenAI-compatible "
        "vLLM server: the task's PNG goes first in the user turn, as in training.",
        epilog="Arguments after `--` go to the vLLM server started by --launch.",
    )
    p.add_argument(
        "--tasks",
        required=True,
        help="a folder of trained runs (<run>/art.png is task <run>; <name>.png is task <name>) "
        "or a .json/.yaml file mapping task names to PNG paths; rescanned while serving",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--backend",
        action="append",
        metavar="URL",
        help="a running OpenAI-compatible server (e.g. http://127.0.0.1:8000); repeat for several",
    )
    where.add_argument(
        "--launch",
        metavar="MODEL",
        help="start a stock vLLM server of MODEL (hub id or folder) on loopback and serve it",
    )
    p.add_argument(
        "--model",
        help="the model the PNGs must be trained for, sent to the backend as `model` (default: "
        "the backend's model; with --launch: MODEL, and the server's --served-model-name)",
    )
    p.add_argument("--image-size", help="refuse PNGs of another size (N or HxW)")
    p.add_argument("--png-name", default="art.png", help="the PNG of a run folder (or best.png)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8080, help="port to listen on")
    p.add_argument("--rescan-s", type=float, default=2.0, help="seconds between rescans of --tasks")
    p.add_argument(
        "--timeout-s",
        type=float,
        default=600.0,
        help="seconds a backend may stay silent before the request fails with 504",
    )
    p.add_argument(
        "--access-log",
        action="store_true",
        help="one log line per request: task, status, tokens, seconds (never the key)",
    )
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help="a client key that may use every task (repeatable); with keys, every route but "
        "/health wants `Authorization: Bearer <key>`",
    )
    p.add_argument(
        "--api-keys-file",
        metavar="FILE",
        help='a JSON/YAML file {key: [tasks] or "*"}: each key sees and uses only its tasks; '
        "read again when it changes",
    )
    p.add_argument(
        "--max-body-mb",
        type=float,
        default=16.0,
        help="the largest request body in MiB (413 beyond; default 16, a long chat)",
    )
    p.add_argument(
        "--ray", action="store_true", help="deploy on a Ray cluster as a Ray Serve application"
    )
    p.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (with --ray)")
    p.add_argument(
        "--ray-address",
        default="auto",
        help="the cluster's GCS address, host:port (default: the cluster this machine is in)",
    )
    p.add_argument(
        "--proxy-location",
        default="EveryNode",
        choices=["EveryNode", "HeadOnly"],
        help="where Ray Serve runs its HTTP proxy (HeadOnly: several nodes on one machine)",
    )
    return p


def launch_args(python: str, extra: list[str]) -> list[str]:
    """vLLM's arguments for --launch: one image per prompt, and on the CPU build what it needs
    (each default only where `extra` does not set that flag)."""
    # start-up time: loaded when this runs, not at import
    from rollout_worker.gateway.launch import MM_LIMITS, cpu_server_args, is_cpu_build

    defaults = MM_LIMITS + (cpu_server_args(max_model_len=4096) if is_cpu_build(python) else [])
    args, i = [], 0
    while i < len(defaults):
        flag = defaults[i]
        takes_value = i + 1 < len(defaults) and not defaults[i + 1].startswith("--")
        if not any(e == flag or e.startswith(flag + "=") for e in extra):
            args += defaults[i : i + 1 + takes_value]
        i += 1 + takes_value
    return args + extra


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per forwarded request
    try:
        return serve(args, extra)
    except UserError as e:
        print(f"art-serve: error: {e}", file=sys.stderr)
        return 2


def serve(args: argparse.Namespace, extra: list[str]) -> int:
    # start-up time: loaded when this runs, not at import
    from rollout_worker.gateway.app import GatewayConfig

    if extra and not args.launch:
        raise UserError("arguments after `--` go to the vLLM server of --launch; none is launched")
    if args.ray and args.launch:
        raise UserError(
            "--ray serves engines that already run (--backend URL ...); start them first, or "
            "drop --ray to launch one here"
        )
    if args.replicas < 1:
        raise UserError(f"--replicas {args.replicas}: set >= 1")
    if args.max_body_mb <= 0:
        raise UserError(f"--max-body-mb {args.max_body_mb}: set > 0")
    image_size = parse_image_size(args.image_size) if args.image_size else None

    def config(backends: list[str], model: str | None) -> GatewayConfig:
        return GatewayConfig(
            tasks=args.tasks,
            backends=tuple(backends),
            model=model,
            image_size=image_size,
            png_name=args.png_name,
            rescan_interval_s=args.rescan_s,
            request_timeout_s=args.timeout_s,
            api_keys=tuple(args.api_key),
            api_keys_file=args.api_keys_file,
            max_body_bytes=int(args.max_body_mb * 2**20),
            access_log=args.access_log,
        )

    if args.ray:
        # start-up time: loaded when this runs, not at import
        from rollout_worker.gateway.ray_serve import run

        url = run(config(args.backend, args.model), args.replicas, args.host, args.port,
                  args.ray_address, args.proxy_location)  # fmt: skip
        print(f"art-serve: Ray Serve application 'art-serve' ({args.replicas} replica(s)) at "
              f"{url}/v1; stop it with `serve shutdown` or `ray stop`")  # fmt: skip
        return 0
    if not args.launch:
        return run_uvicorn(config(args.backend, args.model), args)

    # start-up time: loaded when this runs, not at import
    from rollout_worker.gateway.launch import VllmServer, vllm_python

    python = vllm_python()
    model = args.model or args.launch
    server = VllmServer(args.launch, served_model_name=model, extra_args=launch_args(python, extra))
    print(f"art-serve: starting vLLM ({python}) on {server.url}: {' '.join(server.cmd[1:])}")
    exit_on_signals()  # SIGTERM, SIGHUP (and SIGINT) end this process through `finally`
    try:
        server.spawn().wait()
        print(f"art-serve: vLLM up in {server.start_s:.0f}s")
        return run_uvicorn(config([server.url], model), args)
    finally:  # however art-serve ends, the engine it launched ends with it
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # a second one: not now
            signal.signal(sig, signal.SIG_IGN)
        print("art-serve: stopping the vLLM server it launched", file=sys.stderr)
        server.stop(grace_s=15)


def exit_on_signals() -> None:
    """SIGTERM and SIGHUP raise SystemExit(128 + signal), so that `finally` runs (uvicorn
    handles SIGTERM while it serves and raises it again once it stopped, through this)."""

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def ask_model(url: str) -> str:
    """The first model a running server lists."""

    try:
        with urllib.request.urlopen(url.rstrip("/") + "/v1/models", timeout=30) as response:
            return json.load(response)["data"][0]["id"]
    except (OSError, ValueError, KeyError, IndexError) as e:
        raise UserError(
            f"cannot ask {url}/v1/models for the served model ({e}): start the backend first, "
            "or give --model"
        ) from e


def run_uvicorn(config, args: argparse.Namespace) -> int:
    """Check the tasks (one line each), then serve until interrupted."""

    # start-up time: a heavy library, loaded when this runs
    import uvicorn

    # start-up time: loaded when this runs, not at import
    from rollout_worker.gateway.app import create_app

    # start-up time: loaded when this runs, not at import
    from rollout_worker.gateway.registry import TaskRegistry

    if config.model is None:
        config = dataclasses.replace(config, model=ask_model(config.backends[0]))
    tasks = TaskRegistry(config.tasks, config.model, config.image_size, config.png_name).tasks()
    for task in tasks:
        print("art-serve: " + (task.error or f"task {task.name}: {task.path} (step {task.step})"))
    print(
        f"art-serve: {sum(t.servable for t in tasks)} task(s) for {config.model} at "
        f"http://{args.host}:{args.port}/v1 (new ones in {config.tasks} are picked up as they "
        "appear)"
    )
    uvicorn.run(
        create_app(config),
        host=args.host,
        port=args.port,
        log_level="info",
        access_log=False,  # the gateway's own lines (--access-log): task, status, tokens
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
