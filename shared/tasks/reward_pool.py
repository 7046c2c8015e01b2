"""User reward functions in processes of their own, each call with a timeout.

A thread cannot be stopped, so a reward function that hangs would hang the driver. The pool
runs the functions in `processes` fresh Python interpreters (spawned, never forked: only
`shared` and the user's modules are imported there, by their import paths), hands each a
share of a batch's calls, and receives every call's result as it finishes. A process whose
current call runs past `timeout_s`, or that dies, is killed and replaced; that call is
reported as failed and the process's other calls go to its replacement. Messages are pickled
over pipes (`multiprocessing.connection`).

    driver (Scorer) --[calls: (id, function index, kwargs)]--> reward process x N
    driver <--[("ok" | "error", id, value or message), one per call]-- reward process
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import weakref
from multiprocessing.connection import Connection, wait

from shared.errors import UserError

logger = logging.getLogger("art.rewards")
# Seconds a new process may take to import the reward modules.
START_TIMEOUT_S = 120.0


class RewardProcess:
    """One interpreter serving the reward functions `specs` (import paths)."""

    def __init__(self, specs: list[str], start_timeout_s: float = START_TIMEOUT_S):
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shared.tasks.reward_worker",
                str(to_child_r),
                str(from_child_w),
            ],
            pass_fds=(to_child_r, from_child_w),
            stdin=subprocess.DEVNULL,
            env=env,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self.to_child = Connection(to_child_w, readable=False)
        self.from_child = Connection(from_child_r, writable=False)
        self.to_child.send(list(specs))
        if not self.from_child.poll(start_timeout_s):
            self.kill()
            raise UserError(
                f"a reward process did not import {', '.join(specs)} within {start_timeout_s:g}s"
            )
        try:
            status, message = self.from_child.recv()
        except EOFError:
            status, message = "error", f"it exited with status {self.proc.wait()}"
        if status != "ready":
            self.kill()
            raise UserError(f"a reward process could not load the reward functions: {message}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for conn in (self.to_child, self.from_child):
            conn.close()


class RewardPool:
    """`run(calls)` -> one (status, value) per call, status "ok", "error" or "timeout"."""

    def __init__(self, specs: list[str], processes: int, timeout_s: float):
        self.specs, self.size, self.timeout_s = list(specs), max(int(processes), 1), timeout_s
        self.procs: list[RewardProcess] = []
        self.restarts = 0  # processes replaced (a call timed out, or the process died)
        # the processes go when the pool does, even if nobody calls close()
        self._finalizer = weakref.finalize(self, _kill_all, self.procs)

    def start(self) -> None:
        self.procs[:] = [p for p in self.procs if p.proc.poll() is None]  # failed restarts
        while len(self.procs) < self.size:
            self.procs.append(RewardProcess(self.specs))

    def run(self, calls: list[tuple[int, dict]]) -> list[tuple[str, object]]:
        """Each call is (function index in `specs`, keyword arguments)."""
        self.start()
        results: list[tuple[str, object] | None] = [None] * len(calls)
        per = -(-len(calls) // len(self.procs)) if calls else 0
        queues = {
            i: list(range(i * per, min((i + 1) * per, len(calls)))) for i in range(len(self.procs))
        }
        deadlines = {}
        for i, queue in queues.items():
            if queue:
                self._send(i, queue, calls)
                deadlines[i] = time.monotonic() + self.timeout_s
        while deadlines:
            conns = {self.procs[i].from_child: i for i in deadlines}
            timeout = max(min(deadlines.values()) - time.monotonic(), 0)
            for conn in wait(list(conns), timeout=timeout):
                i = conns[conn]
                try:
                    status, call_id, value = conn.recv()
                except (EOFError, OSError):  # the process died mid-call
                    code = self.procs[i].proc.wait()
                    self._replace(
                        i,
                        queues[i],
                        calls,
                        results,
                        "error",
                        f"its process died (exit status {code})",
                    )
                else:
                    results[call_id] = (status, value)
                    queues[i].remove(call_id)
                deadlines.pop(i, None)
                if queues[i]:
                    deadlines[i] = time.monotonic() + self.timeout_s
            now = time.monotonic()
            for i in [i for i, d in deadlines.items() if d <= now]:
                self._replace(
                    i,
                    queues[i],
                    calls,
                    results,
                    "timeout",
                    f"no result within {self.timeout_s:g}s (task.reward_timeout_s); its process was killed",
                )
                deadlines.pop(i)
                if queues[i]:
                    deadlines[i] = time.monotonic() + self.timeout_s
        return [r if r is not None else ("error", "no result") for r in results]

    def _send(self, i: int, queue: list[int], calls) -> None:
        self.procs[i].to_child.send([(c, *calls[c]) for c in queue])

    def _replace(self, i: int, queue: list[int], calls, results, status: str, message: str) -> None:
        """The process's current call failed: kill it, start another for the rest."""
        current = queue.pop(0)
        results[current] = (status, message)
        self.procs[i].kill()
        self.restarts += 1
        logger.warning("reward process %d replaced: %s", i, message)
        try:
            self.procs[i] = RewardProcess(self.specs)
        except UserError as err:
            for c in queue:
                results[c] = ("error", f"no reward process could be started ({err})")
            queue.clear()
            return
        if queue:
            self._send(i, queue, calls)

    def close(self) -> None:
        _kill_all(self.procs)


def _kill_all(procs: list[RewardProcess]) -> None:
    for proc in procs:
        proc.kill()
    procs.clear()
