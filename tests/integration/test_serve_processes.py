"""No engine outlives the art-serve that launched it: art-serve --launch with a FAKE vLLM server
(a real process with a child, as vLLM's server and engine core), then each way art-serve can
end: SIGTERM (a service manager, `kill`), SIGINT (Ctrl-C), SIGHUP (its terminal closed) and
SIGKILL (no handler runs: the kernel's parent-death signal stops the engine)."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from rollout_worker.gateway.launch import free_port

REPO = Path(__file__).resolve().parents[2]
FAKE = REPO / "tests" / "fixtures" / "extensions" / "fake_vllm_server.py"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL],
                         ids=lambda s: s.name)  # fmt: skip
def test_the_launched_engine_stops_with_art_serve(tmp_path, sig):
    wrapper = tmp_path / "python"
    wrapper.write_text(
        f'#!/bin/sh\nif [ "$1" = "-m" ]; then shift 2; exec {sys.executable} {FAKE} "$@"; fi\n'
        f'exec {sys.executable} "$@"\n'
    )
    wrapper.chmod(0o755)
    (tmp_path / "runs").mkdir()
    pids_file, port = tmp_path / "pids.json", free_port()
    env = {**os.environ, "ART_VLLM_PYTHON": str(wrapper), "FAKE_VLLM_PIDS": str(pids_file)}
    cmd = [str(Path(sys.executable).parent / "art-serve"), "--tasks", str(tmp_path / "runs"),
           "--launch", "fake-model", "--port", str(port)]  # fmt: skip
    with open(tmp_path / "serve.log", "w") as log:
        serve = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)

    def up() -> bool:
        try:
            return (
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).status == 200
            )
        except OSError:
            return False

    try:
        assert _wait(up, 60), (tmp_path / "serve.log").read_text()
        engine = json.loads(pids_file.read_text())
        assert all(_alive(p) for p in engine)
        serve.send_signal(sig)
        serve.wait(timeout=60)
        assert _wait(lambda: not any(_alive(p) for p in engine), 30), (
            f"{sig.name}: the engine {engine} outlived art-serve: "
            + (tmp_path / "serve.log").read_text()[-2000:]
        )
        if sig != signal.SIGKILL:
            assert serve.returncode in (0, 128 + sig, -sig, 1), serve.returncode
    finally:
        if serve.poll() is None:
            serve.kill()
        if pids_file.exists():
            for pid in json.loads(pids_file.read_text()):
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
