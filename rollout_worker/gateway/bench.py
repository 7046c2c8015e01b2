"""`art-serve-bench`: K tasks on one unmodified vLLM engine, as ART images or as LoRA adapters.

Side by side in one run, on loopback, on one engine (`--enable-lora`, so that every method
meets the same engine; then, with `--stock-engine`, ART again on an engine without LoRA, as
ART is deployed):

1. K tasks, K in `--ks` (1, 4, 16), each served (i) as an ART image through `art-serve`
   (`model=<task>`), (ii) as the same requests with the image sent directly (the gateway's
   overhead), (iii) as K LoRA adapters of the project's baseline rank (`shared.config.
   LoraSettings`: rank 16, alpha 32, attention and MLP projections; random weights, loaded at
   start with `--lora-modules`, `--max-loras` = the largest K so none is swapped out), and
   (iv) text-only, the floor: no adaptation at all.
2. A fixed concurrent load (`--concurrency`, `--requests` per cell) over the K tasks, uniform
   or skewed (Zipf: task i gets weight 1 / (i + 1)), greedy, `--max-tokens` new tokens each
   (`ignore_eos`, so every method decodes the same count). Per cell: output tokens/s, time to
   first token and latency (p50, p95), the engine's peak memory (RSS of its process tree),
   and the prefix-cache and multi-modal-cache hit rates from its `/metrics`.
3. Correct under load: every answer (text and per-token log-probs) is compared with the
   single-request greedy answer of its task; a different text, or a log-prob more than
   `--logprob-tol` away, is a mismatch and fails the run (exit status 1). The check can only
   tell tasks apart whose answers differ, so the run reports how many pairs it cannot (the
   task PNGs are colours the embedded model reads as different letters at two confidences,
   so all 16 ART tasks differ).
4. The cost of adding a task to the running engine: a new PNG in the task folder (its first
   request), a new adapter (`POST /v1/load_lora_adapter`, then its first request), a restart.

The targets it reports against: ART's throughput at the largest K >= 0.9x its own at K = 1,
and >= LoRA's at the largest K on the same engine. Writes `serve-bench.json` and
`serve-bench.png` (throughput and time to first token against K) under `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from shared.artifact import art_metadata, encode_png
from shared.config import LoraSettings
from shared.errors import UserError
from shared.serving import png_data_url

QUESTION = "Which letter does the picture show?"
LOADS = ("uniform", "skewed")


# -- what is served ---------------------------------------------------------------------------


def task_colours(n: int) -> list[tuple[float, float, float]]:
    """n distinct mean colours: the 8 corners of the RGB cube (8 letters for the embedded
    reader) at a confident (0.9/0.1) and a less confident (0.62/0.38) level, then others."""
    levels = [(0.9, 0.1), (0.62, 0.38), (0.78, 0.22), (0.7, 0.3)]
    colours = []
    for hi, lo in levels:
        for k in range(8):
            colours.append(tuple(hi if (k >> bit) & 1 else lo for bit in (2, 1, 0)))
    if n > len(colours):
        raise UserError(f"at most {len(colours)} distinct task images; use a smaller K")
    return colours[:n]


def write_task_pngs(folder: Path, names: list[str], colours, model: str, size: int) -> None:
    for name, colour in zip(names, colours, strict=True):
        pixels_HWC = np.empty((size, size, 3), np.uint8)
        pixels_HWC[:] = np.round(np.array(colour) * 255).astype(np.uint8)
        (folder / f"{name}.png").write_bytes(
            encode_png(pixels_HWC, art_metadata(model, size, size, 0))
        )


def write_random_adapters(model: str, folder: Path, names: list[str], scale: float = 0.05):
    """Random LoRA adapters of the baseline's shape, as PEFT folders vLLM loads. The shapes
    come from PEFT on the model built on the meta device (no weights are loaded); B is random
    too (PEFT starts it at zero, which would make every adapter the base model)."""
    # start-up time: a heavy library, loaded when this runs
    import torch

    # start-up time: a heavy library, loaded when this runs
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    # start-up time: a heavy library, loaded when this runs
    from safetensors.torch import save_file

    # start-up time: a heavy library, loaded when this runs
    from transformers import AutoConfig, AutoModelForImageTextToText

    lora = LoraSettings()
    with torch.device("meta"):
        base = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(model))
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # PEFT asks
    config = LoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, target_modules=list(lora.target_modules)
    )
    peft_model = get_peft_model(base, config)
    shapes = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(peft_model).items()}
    raw = peft_model.peft_config["default"].to_dict()
    adapter_config = json.loads(
        json.dumps(raw, default=lambda v: sorted(v) if isinstance(v, set) else str(v))
    )
    adapter_config["base_model_name_or_path"] = model
    for i, name in enumerate(names):
        generator = torch.Generator().manual_seed(1000 + i)
        weights = {k: torch.randn(s, generator=generator) * scale for k, s in shapes.items()}
        (folder / name).mkdir(parents=True, exist_ok=True)
        save_file(weights, str(folder / name / "adapter_model.safetensors"))
        (folder / name / "adapter_config.json").write_text(json.dumps(adapter_config))
    return lora


# -- one request, one cell --------------------------------------------------------------------


@dataclass
class Answer:
    text: str = ""
    logprobs: list[float] = field(default_factory=list)
    ttft_s: float = float("nan")
    latency_s: float = float("nan")
    tokens: int = 0
    error: str | None = None


def request_body(model: str, max_tokens: int, png: bytes | None = None) -> dict:
    content: list[dict] = [{"type": "text", "text": QUESTION}]
    if png is not None:  # ART's layout: the image first in the user turn
        content.insert(0, {"type": "image_url", "image_url": {"url": png_data_url(png)}})
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "logprobs": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        "chat_template_kwargs": {"enable_thinking": False},
    }


async def ask(client, url: str, body: dict) -> Answer:
    """One streamed chat completion: text, per-token log-probs, time to first token."""
    answer, start = Answer(), time.perf_counter()
    parts = []
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                answer.error = f"HTTP {response.status_code}: {(await response.aread())[:300]!r}"
                return answer
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                for choice in chunk.get("choices") or []:
                    tokens = (choice.get("logprobs") or {}).get("content") or []
                    if tokens and answer.ttft_s != answer.ttft_s:  # first token (nan != nan)
                        answer.ttft_s = time.perf_counter() - start
                    answer.logprobs += [t["logprob"] for t in tokens]
                    parts.append((choice.get("delta") or {}).get("content") or "")
                if chunk.get("usage"):
                    answer.tokens = chunk["usage"]["completion_tokens"]
    except Exception as e:  # a failed request is reported, and fails the check
        answer.error = f"{type(e).__name__}: {e}"
    answer.latency_s = time.perf_counter() - start
    answer.text = "".join(parts)
    return answer


def mismatch(answer: Answer, reference: Answer, tol: float) -> str | None:
    """Why `answer` is not its task's single-request answer, or None."""
    if answer.error:
        return answer.error
    if answer.text != reference.text:
        return f"text {answer.text!r} != {reference.text!r}"
    if len(answer.logprobs) != len(reference.logprobs):
        return f"{len(answer.logprobs)} tokens != {len(reference.logprobs)}"
    delta = max_logprob_delta(answer, reference)
    if delta > tol:
        return f"log-prob differs by {delta:.4f} > {tol}"
    return None


def max_logprob_delta(answer: Answer, reference: Answer) -> float:
    pairs = zip(answer.logprobs, reference.logprobs, strict=False)
    return max((abs(a - b) for a, b in pairs), default=0.0)


def indistinguishable_pairs(references: list[Answer], tol: float) -> int:
    """Pairs of tasks whose answers the check cannot tell apart (same text, log-probs within
    2 x tol): a request answered with the other's task would pass unnoticed."""
    count = 0
    for i, a in enumerate(references):
        for b in references[i + 1 :]:
            same_length = len(a.logprobs) == len(b.logprobs)
            if a.text == b.text and same_length and max_logprob_delta(a, b) <= 2 * tol:
                count += 1
    return count


def picks(k: int, load: str, n: int, seed: int) -> list[int]:
    """The task index of each of n requests: uniform, or skewed (Zipf, weight 1 / (i + 1))."""
    rng = random.Random(f"{seed}-{k}-{load}")
    weights = [1.0] * k if load == "uniform" else [1.0 / (i + 1) for i in range(k)]
    return rng.choices(range(k), weights=weights, k=n)


def plan(ks: list[int], loads: list[str], methods: list[str], repeat: int) -> list[tuple]:
    """The (K, load, method) cells of one repeat, in the order they run. All methods of one K
    and load run back to back, so that slow drift of the machine moves them alike; the method
    order rotates by one each repeat and the (K, load) groups run backwards in odd repeats,
    so that no method (and no K) always runs first or last: over len(methods) repeats each
    method takes every place once. The text-only floor, which has no tasks, runs once per load
    (in the first K's group)."""
    shift = repeat % len(methods)
    order = methods[shift:] + methods[:shift]
    groups = [(k, load) for k in ks for load in loads]
    if repeat % 2:
        groups.reverse()
    return [
        (k, load, method)
        for k, load in groups
        for method in order
        if method != "text" or k == ks[0]
    ]


def percentile(values: list[float], q: float) -> float:
    values = [v for v in values if v == v]
    return float(np.percentile(values, q)) if values else float("nan")


def engine_counters(metrics_text: str) -> dict[str, float]:
    """The cache counters of vLLM's /metrics, summed over engines."""
    out = {}
    for name in ("prefix_cache_queries", "prefix_cache_hits", "mm_cache_queries", "mm_cache_hits"):
        found = re.findall(rf"^vllm:{name}_total(?:{{[^}}]*}})? ([0-9.e+]+)$", metrics_text, re.M)
        out[name] = sum(float(v) for v in found)
    return out


def rate(hits: float, queries: float) -> float | None:
    return hits / queries if queries else None


class PeakMemory:
    """Samples the engine's process-tree RSS twice a second while in a `with` block."""

    def __init__(self, server):
        self.server, self.peak, self._stop = server, 0, threading.Event()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.server.rss_bytes())
            self._stop.wait(0.5)

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@dataclass
class Cell:
    engine: str  # "lora-enabled" or "stock"
    method: str  # "art", "art-direct", "lora", "text"
    k: int
    load: str
    requests: int = 0
    wall_s: float = 0.0
    output_tokens_per_s: float = 0.0
    requests_per_s: float = 0.0
    ttft_p50_ms: float = 0.0
    ttft_p95_ms: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p95_ms: float = 0.0
    engine_rss_peak_mib: float = 0.0
    prefix_cache_hit_rate: float | None = None
    mm_cache_hit_rate: float | None = None
    mismatches: list[str] = field(default_factory=list)
    max_logprob_delta: float = 0.0
    # CPU milliseconds per request of the engine (all its processes) and of art-serve.
    engine_cpu_ms: float = 0.0
    gateway_cpu_ms: float = 0.0
    # Share of the machine's CPU that processes outside the benchmark used during the cell.
    other_cpu: float = 0.0
    repeat: int = 0
    # Over the repeats (a summary cell): the lowest and highest output tokens/s.
    tokens_per_s_min: float = 0.0
    tokens_per_s_max: float = 0.0


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by the engine's process tree, the gateway, this process (the
    load generator) and the whole machine."""
    # start-up time: loaded when this runs, not at import
    from rollout_worker.gateway.launch import cpu_s, machine_busy_cpu_s

    out = {"machine": machine_busy_cpu_s(), "client": cpu_s(os.getpid(), children=False)}
    out |= {name: cpu_s(pid) for name, pid in pids.items()}
    return out


async def run_cell(
    cell: Cell,
    url: str,
    bodies: list[dict],
    references: list[Answer],
    task_of: list[int],
    server,
    args,
    pids=None,
) -> Cell:
    """Send `bodies` (one per request, task_of[i] its task) at `args.concurrency`, stopping
    new requests after `args.max_seconds`; fill in the cell's figures. `pids`: {"engine":
    pid, "gateway": pid} for the CPU each used per request, and what the rest of the machine
    used meanwhile (`other_cpu`, the noise the cell was measured under)."""
    # start-up time: a heavy library, loaded when this runs
    import httpx

    before, cpu_before = engine_counters(server.metrics()), cpu_snapshot(pids or {})
    answers: list[tuple[int, Answer]] = []
    todo = iter(range(len(bodies)))
    limits = httpx.Limits(max_connections=args.concurrency + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        start = time.perf_counter()

        async def user():
            for i in todo:
                if time.perf_counter() - start > args.max_seconds:
                    return
                answers.append((i, await ask(client, url, bodies[i])))

        with PeakMemory(server) as memory:
            await asyncio.gather(*(user() for _ in range(args.concurrency)))
        cell.wall_s = time.perf_counter() - start
    used = {k: v - cpu_before[k] for k, v in cpu_snapshot(pids or {}).items()}
    ours = sum(v for k, v in used.items() if k != "machine")
    cell.other_cpu = max(0.0, used["machine"] - ours) / (cell.wall_s * (os.cpu_count() or 1))
    after = engine_counters(server.metrics())
    done = [a for _, a in answers]
    cell.requests = len(done)
    cell.output_tokens_per_s = sum(a.tokens for a in done) / cell.wall_s
    cell.requests_per_s = len(done) / cell.wall_s
    cell.ttft_p50_ms = percentile([a.ttft_s for a in done], 50) * 1e3
    cell.ttft_p95_ms = percentile([a.ttft_s for a in done], 95) * 1e3
    cell.latency_p50_ms = percentile([a.latency_s for a in done], 50) * 1e3
    cell.latency_p95_ms = percentile([a.latency_s for a in done], 95) * 1e3
    cell.engine_rss_peak_mib = memory.peak / 2**20
    per_request = 1e3 / max(len(done), 1)
    cell.engine_cpu_ms = used.get("engine", 0.0) * per_request
    cell.gateway_cpu_ms = used.get("gateway", 0.0) * per_request
    delta = {k: after[k] - before[k] for k in after}
    cell.prefix_cache_hit_rate = rate(delta["prefix_cache_hits"], delta["prefix_cache_queries"])
    cell.mm_cache_hit_rate = rate(delta["mm_cache_hits"], delta["mm_cache_queries"])
    for i, answer in answers:
        reference = references[task_of[i]]
        problem = mismatch(answer, reference, args.logprob_tol)
        if problem:
            cell.mismatches.append(f"request {i} (task {task_of[i]}): {problem}")
        elif answer.logprobs:
            cell.max_logprob_delta = max(
                cell.max_logprob_delta, max_logprob_delta(answer, reference)
            )
    return cell


# -- the run ----------------------------------------------------------------------------------


# The embedded model's folder, shipped with the repository (a file path: the rollout side
# imports nothing of the learner's).
EMBEDDED_MODEL = Path(__file__).resolve().parents[2] / "learner" / "models" / "shipped" / "tiny"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="art-serve-bench", description=__doc__.splitlines()[0])
    p.add_argument(
        "--model", default=str(EMBEDDED_MODEL), help="the model: hub id or folder (default: "
        "the embedded tiny model)",
    )  # fmt: skip
    p.add_argument("--served-name", help="its name on the server and in the PNGs' metadata")
    p.add_argument("--ks", default="1,4,16", help="task counts K to serve")
    p.add_argument("--loads", default="uniform,skewed", help="request mixes over the K tasks")
    p.add_argument("--requests", type=int, default=96, help="requests per cell")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    p.add_argument("--max-tokens", type=int, default=16, help="new tokens per request")
    p.add_argument("--max-seconds", type=float, default=60, help="per cell: no new requests after")
    p.add_argument("--repeats", type=int, default=3, help="times to run every cell (median)")
    p.add_argument("--image-size", type=int, default=64, help="the task PNGs' size")
    p.add_argument("--logprob-tol", type=float, default=0.05, help="nats a log-prob may move")
    p.add_argument("--new-tasks", type=int, default=3, help="tasks added at run time, each kind")
    p.add_argument(
        "--stock-engine",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="then restart without --enable-lora and serve ART and text-only again",
    )
    p.add_argument("--vllm-arg", action="append", default=[], help="extra vLLM server argument")
    p.add_argument("--out", default="outputs/serve-bench", help="folder for JSON, plot, logs")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


class Run:
    """The state of one benchmark run: assets, the engine, the gateway, the figures."""

    def __init__(self, args):
        self.args = args
        self.ks = sorted({int(k) for k in args.ks.split(",")})
        self.loads = [x for x in args.loads.split(",") if x]
        if not set(self.loads) <= set(LOADS) or min(self.ks) < 1:
            raise UserError(f"--loads takes {','.join(LOADS)}; --ks positive integers")
        self.k_max = max(self.ks)
        default = args.model == str(EMBEDDED_MODEL)  # served as "tiny", as art-serve names it
        self.served = args.served_name or ("tiny" if default else args.model)
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.cells: list[Cell] = []
        self.warm_up_mismatches: list[str] = []
        self.report: dict = {"args": vars(args)}
        n_new = args.new_tasks
        self.task_names = [f"task-{i:02d}" for i in range(self.k_max)]
        self.new_task_names = [f"new-task-{j}" for j in range(n_new)]
        self.adapter_names = [f"lora-{i:02d}" for i in range(self.k_max)]
        self.new_adapter_names = [f"new-lora-{j}" for j in range(n_new)]

    def log(self, text: str) -> None:
        print(text, flush=True)

    # assets
    def build_assets(self) -> None:
        a = self.args
        self.tasks_dir = self.out / "tasks"
        self.tasks_dir.mkdir(exist_ok=True)
        for old in self.tasks_dir.glob("*.png"):
            old.unlink()
        colours = task_colours(self.k_max + a.new_tasks)
        write_task_pngs(
            self.tasks_dir, self.task_names, colours[: self.k_max], self.served, a.image_size
        )
        self.new_colours = colours[self.k_max :]
        self.pngs = [(self.tasks_dir / f"{n}.png").read_bytes() for n in self.task_names]
        self.adapters_dir = self.out / "adapters"
        start = time.perf_counter()
        self.lora = write_random_adapters(
            a.model, self.adapters_dir, self.adapter_names + self.new_adapter_names
        )
        self.log(
            f"assets: {self.k_max} task PNGs, {self.k_max + a.new_tasks} random LoRA adapters "
            f"(rank {self.lora.rank}, alpha {self.lora.alpha:g}, "
            f"{','.join(self.lora.target_modules)}) in {time.perf_counter() - start:.0f}s"
        )

    # processes
    def engine(self, lora: bool):
        # start-up time: loaded when this runs, not at import
        from rollout_worker.gateway.launch import (
            MM_LIMITS,
            VllmServer,
            cpu_server_args,
            is_cpu_build,
            vllm_python,
        )

        python = vllm_python()
        args = [
            *MM_LIMITS,
            *(cpu_server_args() if is_cpu_build(python) else []),
            *self.args.vllm_arg,
        ]
        env = {}
        if lora:
            modules = [f"{n}={self.adapters_dir / n}" for n in self.adapter_names]
            args += [
                "--enable-lora",
                "--max-lora-rank",
                str(self.lora.rank),
                "--max-loras",
                str(self.k_max),
                "--lora-modules",
                *modules,
            ]
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        name = "lora-enabled" if lora else "stock"
        self.log(f"starting the {name} vLLM engine ({python})")
        server = VllmServer(
            self.args.model,
            self.served,
            extra_args=args,
            env=env,
            log_path=self.out / f"vllm-{name}.log",
            python=python,
        )
        try:
            server.start()
        except BaseException:  # Ctrl-C while it loads: its own session would outlive us
            server.stop()
            raise
        time.sleep(2)
        self.log(f"  up in {server.start_s:.1f}s, {server.rss_bytes() / 2**20:.0f} MiB resident")
        return name, server

    def gateway(self, server):
        # start-up time: loaded when this runs, not at import
        from rollout_worker.gateway.launch import free_port

        port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "rollout_worker.gateway.cli",
            "--tasks",
            str(self.tasks_dir),
            "--backend",
            server.url,
            "--model",
            self.served,
            "--port",
            str(port),
        ]
        log = open(self.out / "art-serve.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        url = f"http://127.0.0.1:{port}"

        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=2)
                return proc, url
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    text = (self.out / "art-serve.log").read_text()[-2000:]
                    raise UserError(f"art-serve did not come up:\n{text}") from None
                time.sleep(0.3)

    # figures
    def references(self, url_of, bodies_of) -> dict[str, list[Answer]]:
        """The single-request greedy answer of every task of every method (one at a time)."""
        # start-up time: a heavy library, loaded when this runs
        import httpx

        async def go():
            out = {}
            async with httpx.AsyncClient(timeout=300) as client:
                for method, bodies in bodies_of.items():
                    out[method] = [await ask(client, url_of[method], b) for b in bodies]
            return out

        refs = asyncio.run(go())
        for method, answers in refs.items():
            errors = [a.error for a in answers if a.error]
            if errors:
                raise RuntimeError(f"{method}: a single request failed: {errors[0]}")
        return refs

    def warm_up(self, server, url_of, bodies_of, refs, methods) -> None:
        """Two rounds of `--concurrency` requests per method over all its tasks, answers
        checked, figures dropped: the engine's first batches of that size (and the gateway's
        and the client's first connections) are not charged to whichever cell runs first."""
        a = self.args
        for method in methods:
            bodies = bodies_of[method]
            task_of = [i % len(bodies) for i in range(2 * a.concurrency)]
            cell = Cell("warm-up", method, len(bodies), "uniform")
            cell = asyncio.run(
                run_cell(cell, url_of[method], [bodies[t] for t in task_of], refs[method], task_of,
                         server, a)
            )  # fmt: skip
            self.warm_up_mismatches += [f"warm-up {method}: {m}" for m in cell.mismatches]
        self.log(f"warm-up: {2 * a.concurrency} requests per method, not recorded")

    def cells_for(self, engine_name, server, url_of, bodies_of, refs, methods, pids):
        """Every (K, load, method) cell, the whole plan `--repeats` times, each repeat in its
        own order (`plan`), after an unrecorded warm-up of every method under load."""
        a = self.args
        self.warm_up(server, url_of, bodies_of, refs, methods)
        for rep in range(a.repeats):
            for k, load, method in plan(self.ks, self.loads, methods, rep):
                task_of = picks(k if method != "text" else 1, load, a.requests, a.seed + rep)
                bodies = [bodies_of[method][t] for t in task_of]
                cell = Cell(engine_name, method, k if method != "text" else 0, load, repeat=rep)
                ref = refs[method]
                cell = asyncio.run(
                    run_cell(cell, url_of[method], bodies, ref, task_of, server, a, pids)
                )
                self.cells.append(cell)
                self.log(format_row(cell) + (f"   [repeat {rep + 1}]" if a.repeats > 1 else ""))

    def add_a_task(self, server, gateway_url) -> dict:
        """The cost of a new task on the running engine: a PNG vs an adapter (and each one's
        first answer checked against a single request with the image / the adapter)."""
        # start-up time: a heavy library, loaded when this runs
        import httpx

        a, out = self.args, {"png_first_s": [], "lora_load_s": [], "lora_first_s": []}
        mismatches = []

        async def go():
            async with httpx.AsyncClient(timeout=300) as client:
                warm = {"art": [], "lora": []}
                for _ in range(5):
                    r = await ask(
                        client, gateway_url, request_body(self.task_names[0], a.max_tokens)
                    )
                    warm["art"].append(r.latency_s)
                    r = await ask(
                        client, server.url, request_body(self.adapter_names[0], a.max_tokens)
                    )
                    warm["lora"].append(r.latency_s)
                out["art_warm_s"] = statistics.median(warm["art"])
                out["lora_warm_s"] = statistics.median(warm["lora"])
                for j, name in enumerate(self.new_task_names):
                    await asyncio.sleep(0.3)  # the gateway rescans for an unknown name every 0.25 s
                    write_task_pngs(
                        self.tasks_dir, [name], [self.new_colours[j]], self.served, a.image_size
                    )
                    first = await ask(client, gateway_url, request_body(name, a.max_tokens))
                    out["png_first_s"].append(first.latency_s)
                    png = (self.tasks_dir / f"{name}.png").read_bytes()
                    direct = await ask(
                        client, server.url, request_body(self.served, a.max_tokens, png)
                    )
                    if problem := mismatch(first, direct, a.logprob_tol):
                        mismatches.append(f"new task {name}: {problem}")
                for name in self.new_adapter_names:
                    start = time.perf_counter()
                    r = await client.post(
                        server.url + "/v1/load_lora_adapter",
                        json={"lora_name": name, "lora_path": str(self.adapters_dir / name)},
                    )
                    out["lora_load_s"].append(time.perf_counter() - start)
                    if r.status_code != 200:
                        raise RuntimeError(f"load_lora_adapter {name}: {r.status_code} {r.text}")
                    first = await ask(client, server.url, request_body(name, a.max_tokens))
                    out["lora_first_s"].append(first.latency_s)
                    again = await ask(client, server.url, request_body(name, a.max_tokens))
                    if problem := mismatch(first, again, a.logprob_tol):
                        mismatches.append(f"new adapter {name}: {problem}")

        asyncio.run(go())
        for name in self.new_task_names:  # the next engine's run starts with the K tasks
            (self.tasks_dir / f"{name}.png").unlink(missing_ok=True)
        out["mismatches"] = mismatches
        return out


LABELS = {
    "art": "ART via art-serve",
    "art-direct": "ART, image direct",
    "lora": "LoRA adapters",
    "text": "text-only floor",
}


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.0%}"


# (header, width, value): the table's columns, printed and written as markdown.
COLUMNS = [
    ("engine", 12, lambda c: c.engine),
    ("method", 18, lambda c: LABELS[c.method]),
    ("K", 3, lambda c: "-" if c.method == "text" else str(c.k)),
    ("load", 7, lambda c: c.load),
    ("out tok/s", 9, lambda c: f"{c.output_tokens_per_s:.1f}"),
    (
        "min-max",
        9,
        lambda c: (
            f"{c.tokens_per_s_min:.0f}-{c.tokens_per_s_max:.0f}" if c.tokens_per_s_max else "-"
        ),
    ),
    ("TTFT p50 ms", 11, lambda c: f"{c.ttft_p50_ms:.0f}"),
    ("TTFT p95 ms", 11, lambda c: f"{c.ttft_p95_ms:.0f}"),
    ("lat p50 ms", 10, lambda c: f"{c.latency_p50_ms:.0f}"),
    ("lat p95 ms", 10, lambda c: f"{c.latency_p95_ms:.0f}"),
    ("RSS MiB", 7, lambda c: f"{c.engine_rss_peak_mib:.0f}"),
    ("prefix hit", 10, lambda c: _pct(c.prefix_cache_hit_rate)),
    ("mm hit", 6, lambda c: _pct(c.mm_cache_hit_rate)),
    ("engine CPU ms/req", 17, lambda c: f"{c.engine_cpu_ms:.0f}"),
    ("gateway CPU ms/req", 18, lambda c: f"{c.gateway_cpu_ms:.1f}" if c.method == "art" else "-"),
    ("other CPU", 9, lambda c: f"{c.other_cpu:.0%}"),
    ("mismatches", 10, lambda c: f"{len(c.mismatches)}/{c.requests}"),
]
HEADER = " ".join(f"{h:<{w}}" if i < 4 else f"{h:>{w}}" for i, (h, w, _) in enumerate(COLUMNS))


def format_row(c: Cell) -> str:
    return " ".join(
        f"{f(c):<{w}}" if i < 4 else f"{f(c):>{w}}" for i, (_, w, f) in enumerate(COLUMNS)
    )


def markdown_table(cells: list[Cell]) -> str:
    lines = ["| " + " | ".join(h for h, _, _ in COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(f(c) for _, _, f in COLUMNS) + " |" for c in cells]
    return "\n".join(lines) + "\n"


def fmt_ratios(values) -> str:
    return "[" + ", ".join(f"{v:.2f}x" for v in values) + "]"


MEDIAN_FIELDS = (
    "wall_s",
    "output_tokens_per_s",
    "requests_per_s",
    "ttft_p50_ms",
    "ttft_p95_ms",
    "latency_p50_ms",
    "latency_p95_ms",
    "engine_rss_peak_mib",
    "engine_cpu_ms",
    "gateway_cpu_ms",
    "other_cpu",
)


def median_cells(cells: list[Cell]) -> list[Cell]:
    """One cell per (engine, method, K, load): the median of each figure over repeats."""
    groups: dict[tuple, list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.engine, c.method, c.k, c.load), []).append(c)
    out = []
    for (engine, method, k, load), group in groups.items():
        m = Cell(engine, method, k, load)
        for name in MEDIAN_FIELDS:
            setattr(m, name, statistics.median(getattr(c, name) for c in group))
        for name in ("prefix_cache_hit_rate", "mm_cache_hit_rate"):
            values = [getattr(c, name) for c in group if getattr(c, name) is not None]
            setattr(m, name, statistics.median(values) if values else None)
        m.requests = sum(c.requests for c in group)
        m.mismatches = [x for c in group for x in c.mismatches]
        m.max_logprob_delta = max(c.max_logprob_delta for c in group)
        m.tokens_per_s_min = min(c.output_tokens_per_s for c in group)
        m.tokens_per_s_max = max(c.output_tokens_per_s for c in group)
        out.append(m)
    return out


def throughput(cells, engine, method, k, load="uniform", repeat=None) -> float:
    for c in cells:
        if (c.engine, c.method, c.k, c.load) == (engine, method, k, load) and (
            repeat is None or c.repeat == repeat
        ):
            return c.output_tokens_per_s
    return float("nan")


def ratios_per_repeat(all_cells, engine, a: tuple[str, int], b: tuple[str, int]) -> list[float]:
    """throughput(a) / throughput(b), uniform load, in each repeat (both measured minutes
    apart at most): how far the noise of this machine moves the ratio."""
    repeats = sorted({c.repeat for c in all_cells})
    return [
        throughput(all_cells, engine, *a, repeat=r) / throughput(all_cells, engine, *b, repeat=r)
        for r in repeats
    ]


def plot(cells: list[Cell], ks: list[int], path: Path) -> None:
    # start-up time: a heavy library, loaded when this runs
    import matplotlib

    matplotlib.use("Agg")
    # start-up time: a heavy library, loaded when this runs
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    styles = {"uniform": "-", "skewed": "--"}
    series = [
        ("lora-enabled", "art", "ART (art-serve)", "C0"),
        ("lora-enabled", "lora", "LoRA", "C1"),
        ("stock", "art", "ART, engine without LoRA", "C2"),
    ]
    for ax, figure, ylabel in (
        (axes[0], "output_tokens_per_s", "output tokens/s"),
        (axes[1], "ttft_p50_ms", "time to first token p50 (ms)"),
    ):
        for n, (engine, method, label, colour) in enumerate(series):
            for load, style in styles.items():
                group = sorted(
                    (c for c in cells if (c.engine, c.method, c.load) == (engine, method, load)),
                    key=lambda c: c.k,
                )
                if not group:
                    continue
                x = [c.k * 1.04 ** (n - 1) for c in group]  # side by side at each K
                y = [getattr(c, figure) for c in group]
                spread = None
                if figure == "output_tokens_per_s":  # the repeats' lowest and highest
                    spread = [[v - c.tokens_per_s_min for v, c in zip(y, group, strict=True)],
                              [c.tokens_per_s_max - v for v, c in zip(y, group, strict=True)]]  # fmt: skip
                ax.errorbar(x, y, yerr=spread, fmt=style, marker="o", color=colour, capsize=3,
                            label=f"{label}, {load}")  # fmt: skip
        for c in cells:
            if c.method == "text" and c.engine == "lora-enabled":
                ax.axhline(
                    getattr(c, figure),
                    color="gray",
                    linestyle=styles[c.load],
                    label=f"text-only floor, {c.load}",
                )
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("tasks K on one engine")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(
        "K tasks on one vLLM engine: ART images vs LoRA adapters (median of repeats; bars: "
        "lowest and highest)"
    )
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return bench(args)
    except UserError as e:
        print(f"art-serve-bench: error: {e}", file=sys.stderr)
        return 2


def bench(args) -> int:
    run = Run(args)
    run.build_assets()
    a, ks = args, run.ks
    t_start = time.perf_counter()
    report = run.report
    all_bodies = {  # one request per task of each method (the cells draw from these)
        "text": [request_body(run.served, a.max_tokens)],
        "art": [request_body(n, a.max_tokens) for n in run.task_names],
        "art-direct": [request_body(run.served, a.max_tokens, p) for p in run.pngs],
        "lora": [request_body(n, a.max_tokens) for n in run.adapter_names],
    }
    engines = [True] + ([False] if a.stock_engine else [])
    restarts = {}
    for lora in engines:
        engine_name, server = run.engine(lora)
        restarts[engine_name] = server.start_s
        gateway_proc = None
        try:
            gateway_proc, gateway_url = run.gateway(server)
            url_of = {
                "text": server.url,
                "art": gateway_url,
                "art-direct": server.url,
                "lora": server.url,
            }
            # the stock engine: ART as deployed, beside its floor (the gateway's overhead and
            # LoRA were measured on the first engine)
            methods = ["text", "art", "art-direct", "lora"] if lora else ["text", "art"]
            bodies_of = {m: b for m, b in all_bodies.items() if m in methods + ["art-direct"]}
            refs = run.references(url_of, bodies_of)
            gateway_vs_direct = [
                mismatch(x, y, 0.0) for x, y in zip(refs["art"], refs["art-direct"], strict=True)
            ]
            if any(gateway_vs_direct):
                raise RuntimeError(
                    "art-serve's answer differs from the same request with the image sent "
                    f"directly: {[p for p in gateway_vs_direct if p][:3]}"
                )
            report.setdefault("references", {})[engine_name] = {
                m: [asdict(r) for r in rs] for m, rs in refs.items()
            }
            report.setdefault("indistinguishable_pairs", {})[engine_name] = {
                m: indistinguishable_pairs(rs, a.logprob_tol)
                for m, rs in refs.items()
                if m != "text"
            }
            run.log(
                f"\n{engine_name} engine, K in {ks}, {a.requests} requests per cell at "
                f"concurrency {a.concurrency}, {a.max_tokens} new tokens each"
            )
            run.log(HEADER)
            pids = {"engine": server.proc.pid, "gateway": gateway_proc.pid}
            run.cells_for(engine_name, server, url_of, bodies_of, refs, methods, pids)
            if lora:
                report["add_a_task"] = run.add_a_task(server, gateway_url)
        finally:
            if gateway_proc is not None:
                gateway_proc.terminate()
            server.stop()
    report["engine_start_s"] = restarts
    report["wall_s"] = time.perf_counter() - t_start
    cells = median_cells(run.cells)
    report["cells"] = [asdict(c) for c in cells]
    report["cells_per_repeat"] = [asdict(c) for c in run.cells]
    print_summary(run, cells, report)
    (run.out / "serve-bench.json").write_text(json.dumps(report, indent=1, default=str))
    plot(cells, ks, run.out / "serve-bench.png")
    print(f"\nwrote {run.out / 'serve-bench.json'} and {run.out / 'serve-bench.png'}")
    bad = [m for c in cells for m in c.mismatches] + report.get("add_a_task", {}).get(
        "mismatches", []
    )
    bad += run.warm_up_mismatches
    if bad:
        print(f"FAILED: {len(bad)} answer(s) differ from their task's single-request answer:")
        for line in bad[:10]:
            print("  " + line)
        return 1
    return 0


def print_summary(run: Run, cells: list[Cell], report: dict) -> None:
    a, k1, kmax = run.args, run.ks[0], run.k_max
    print(f"\nsummary (median of {a.repeats} repeat(s) per cell)")
    print(HEADER)
    order = {"text": 0, "art": 1, "art-direct": 2, "lora": 3}
    rows = sorted(cells, key=lambda c: (c.engine != "lora-enabled", order[c.method], c.k, c.load))
    for c in rows:
        print(format_row(c))
    (run.out / "serve-bench.md").write_text(markdown_table(rows))
    for engine in ("lora-enabled", "stock"):
        art_k1 = throughput(cells, engine, "art", k1)
        if art_k1 != art_k1:  # nan: not run
            continue
        ratios = [throughput(cells, engine, "art", k) / art_k1 for k in run.ks]
        print(
            f"{engine} engine, uniform load, K = {run.ks}: ART throughput / its own at "
            f"K={k1}: {fmt_ratios(ratios)}"
        )
        if engine == "lora-enabled":
            overhead = [
                throughput(cells, engine, "art", k) / throughput(cells, engine, "art-direct", k)
                for k in run.ks
            ]
            lora = [
                throughput(cells, engine, "art", k) / throughput(cells, engine, "lora", k)
                for k in run.ks
            ]
            print(
                f"  through art-serve / the image sent directly: {fmt_ratios(overhead)}; "
                f"ART / LoRA: {fmt_ratios(lora)}"
            )
    engine = "lora-enabled"
    targets = {
        f"ART K={kmax} / ART K={k1}": (("art", kmax), ("art", k1), 0.9),
        f"ART K={kmax} / LoRA K={kmax}": (("art", kmax), ("lora", kmax), 1.0),
    }
    report["targets"] = {}
    print("targets (same engine, uniform load; the ratio of the medians, then each repeat's)")
    for name, (x, y, target) in targets.items():
        value = throughput(cells, engine, *x) / throughput(cells, engine, *y)
        each = ratios_per_repeat(run.cells, engine, x, y)
        verdict = "met" if value >= target else "NOT met"
        if min(each) < target <= max(each):
            verdict += " (not in every repeat)"
        report["targets"][name] = {"value": value, "per_repeat": each, "target": target,
                                   "met": value >= target}  # fmt: skip
        print(f"  {name:<24} {value:5.2f}  {fmt_ratios(each):<24} target >= {target}  {verdict}")
    add = report.get("add_a_task")
    if add:
        print(
            f"adding a task to the running engine (median of {a.new_tasks}): new PNG, first "
            f"answer {statistics.median(add['png_first_s']) * 1e3:.0f} ms (a warm one "
            f"{add['art_warm_s'] * 1e3:.0f} ms); new adapter, load "
            f"{statistics.median(add['lora_load_s']) * 1e3:.0f} ms + first answer "
            f"{statistics.median(add['lora_first_s']) * 1e3:.0f} ms (a warm one "
            f"{add['lora_warm_s'] * 1e3:.0f} ms); restart: "
            + ", ".join(f"{e} engine {s:.1f} s" for e, s in report["engine_start_s"].items())
        )
    pairs = report.get("indistinguishable_pairs", {})
    deltas = max((c.max_logprob_delta for c in cells), default=0.0)
    print(
        f"correctness: {sum(len(c.mismatches) for c in cells)} mismatches in "
        f"{sum(c.requests for c in cells)} answers (largest log-prob move under load "
        f"{deltas:.2g} nats, tolerance {a.logprob_tol}); task pairs the check cannot tell "
        f"apart: {pairs}"
    )


if __name__ == "__main__":
    sys.exit(main())
