"""Submit ART training to a running Ray cluster (`art-submit`, what `make cluster-train` runs).

Ships the project as the job's working directory, passes Hydra overrides through, and prints
the job id, the dashboard URL and how to follow and stop the job. With `--wait` it follows the
job to the end and exits non-zero unless it SUCCEEDED.

    art-submit --address http://127.0.0.1:8265 -- cluster=multi_gpu model=Qwen/Qwen3.5-0.8B
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

from learner.driver.cli import (
    check_overrides,
    choose_run_dir,
    compose_config,
    rewrite_model_override,
)
from shared.config import validate
from shared.engines import VLLM_VENV_PYTHON
from shared.errors import UserError
from shared.storage import exits_on_storage_errors
from shared.tasks.scoring import check_task_config

REPO = Path(__file__).resolve().parents[2]
# Never uploaded with the job: environments, outputs, local stores, caches.
EXCLUDES = [
    ".venv/",
    ".venv-vllm/",
    ".git/",
    "outputs/",
    "multirun/",
    "mlruns/",
    "mlartifacts/",
    "mlflow.db",
    "**/__pycache__/",
    ".pytest_cache/",
    ".ruff_cache/",
    "*.egg-info/",
    ".whl/",
    ".hypothesis/",
]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def build_runtime_env(env_vars: dict[str, str], py_modules: list[str] | None = None) -> dict:
    env = {"working_dir": str(REPO), "excludes": EXCLUDES, "env_vars": env_vars}
    if py_modules:  # the user's task folders and modules (learner/driver/shipping.py)
        env["py_modules"] = list(py_modules)
    return env


def use_token_if_available() -> None:
    """Ray 2.60 heads start with token auth; send the token when one is at hand, unless the
    user chose a mode (RAY_AUTH_MODE) explicitly."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if os.environ.get("RAY_AUTH_TOKEN") or token_file.exists():
        os.environ["RAY_AUTH_MODE"] = "token"


def dashboard_problem(address: str, timeout_s: float = 5.0) -> str | None:
    """Why the Ray dashboard (job server) at `address` cannot take a job, or None."""

    parsed = urlparse(address)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 8265), timeout=timeout_s):
            return None
    except (OSError, ValueError) as err:
        return (
            f"no Ray cluster answers at {address} ({err}); start one (`make ray-up-local`, "
            "deploy/README.md) or set RAY_ADDRESS / --address to its dashboard"
        )


def submit_with_retry(client, retry_s: float = 90.0, **job) -> str:
    """A fresh head node's job agent needs a few seconds: retry 'no available agent' only, for
    `retry_s` (`--agent-wait-s`), then one line that says what to do."""
    deadline = time.monotonic() + retry_s
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as err:
            if "No available agent" not in str(err):
                raise
            if time.monotonic() > deadline:
                raise UserError(
                    f"the head node's job agent did not answer in {retry_s:g}s (a loaded or "
                    "freshly started head node); wait and submit again, or give it longer "
                    "with --agent-wait-s"
                ) from err
            time.sleep(3)


def package_place() -> str:

    return f"a file of the job's package under TMPDIR={tempfile.gettempdir()}"


def held_run_folder(cfg) -> str | None:
    """Why the run folder the job would use is in use by a live driver, as far as this machine
    can tell (None: free, or not a folder it sees). The job's driver checks it again where it
    runs (learner/driver/runlock.py); this check answers before the job is queued."""

    # start-up time: loaded when this runs, not at import
    from learner.driver.runlock import busy_message, live_holder

    if cfg.resume_from:
        if not Path(cfg.resume_from).is_absolute():
            return None
    elif not (cfg.run_name or cfg.resume == "auto") or not Path(cfg.output_dir).is_absolute():
        return None  # a new folder, or a relative output_dir: a folder of the job's own copy
    run_dir = choose_run_dir(cfg)
    holder = live_holder(run_dir, cfg.lock_stale_s)
    return busy_message(run_dir, holder, cfg.lock_stale_s) if holder else None


@exits_on_storage_errors(
    "art-submit", "nothing was submitted; free space there or set TMPDIR", package_place
)
def follow(client, job_id: str, timeout: float) -> int:
    """Wait for the job's end (stopping it after `timeout` seconds); print its last logs."""
    deadline = time.monotonic() + timeout
    status = client.get_job_status(job_id)
    while str(status.value if hasattr(status, "value") else status) not in TERMINAL:
        if time.monotonic() > deadline:
            print(f"job {job_id} still {status} after {timeout:g}s; stopping it", file=sys.stderr)
            client.stop_job(job_id)
            return 2
        time.sleep(2)
        status = client.get_job_status(job_id)
    status = str(status.value if hasattr(status, "value") else status)
    print(client.get_job_logs(job_id)[-4000:])
    print(f"job {job_id} {status}")
    return 0 if status == "SUCCEEDED" else 1


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Submit ART training to a Ray cluster.")
    parser.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS", "http://127.0.0.1:8265"),
        help="Ray dashboard/job address (env RAY_ADDRESS)",
    )
    parser.add_argument("--python", default="python", help="Python on the cluster nodes")
    parser.add_argument("--wait", action="store_true", help="follow the job until it ends")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait with --wait")
    parser.add_argument(
        "--agent-wait-s",
        type=float,
        default=90.0,
        help="seconds to wait for a fresh head node's job agent before giving up",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment variable for the job (repeatable)",
    )
    parser.add_argument(
        "--no-ship",
        action="store_true",
        help="do not ship the task's files outside the repository (the cluster sees the same "
        "paths, e.g. shared storage)",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for art-train")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    use_token_if_available()
    # start-up time: a heavy library, loaded when this runs
    from ray.job_submission import JobSubmissionClient

    address = args.address if "://" in args.address else f"http://{args.address}"

    # start-up time: loaded when this runs, not at import
    from learner.driver.shipping import Shipment, plan_shipment

    try:  # the job's config and run folder, checked here before any cluster is contacted
        overrides = rewrite_model_override(list(args.overrides))
        check_overrides(overrides)
        cfg = compose_config(*overrides)
        validate(cfg)
        check_task_config(cfg.task)  # the task class, reward and score functions import
        shipment = Shipment() if args.no_ship else plan_shipment(cfg.task)
        busy = held_run_folder(cfg)
        if busy:
            raise UserError(f"{busy}; nothing was submitted")
    except UserError as err:
        print(f"art-submit: error: {err}", file=sys.stderr)
        return 2
    problem = dashboard_problem(address)
    if problem:
        print(f"art-submit: error: {problem}", file=sys.stderr)
        return 2
    # start-up time: loaded when this runs, not at import
    from learner.driver.cluster import actor_env

    env_vars = {**actor_env(), **shipment.env(), **dict(kv.split("=", 1) for kv in args.env)}
    for module in shipment.py_modules:
        print(f"shipping:      {module} (task files, as Ray py_modules)")
    for key in ("MLFLOW_TRACKING_URI", "HF_TOKEN", "ART_VLLM_PYTHON"):
        if key in os.environ and key not in env_vars:
            env_vars[key] = os.environ[key]
    if "ART_VLLM_PYTHON" not in env_vars and VLLM_VENV_PYTHON.exists():
        # the job runs from an uploaded copy without .venv-vllm: name this one (right when the
        # cluster is this machine, or shares this path; images set ART_VLLM_PYTHON themselves)
        env_vars["ART_VLLM_PYTHON"] = str(VLLM_VENV_PYTHON)
        print(f"rollout workers' vLLM: {VLLM_VENV_PYTHON} (ART_VLLM_PYTHON)")
    job_overrides = shipment.rewrite(args.overrides)  # paths as they land on the cluster
    entrypoint = f"{args.python} -m learner.driver.train {shlex.join(job_overrides)}".strip()
    client = JobSubmissionClient(address)
    try:
        job_id = submit_with_retry(
            client,
            args.agent_wait_s,
            entrypoint=entrypoint,
            runtime_env=build_runtime_env(env_vars, shipment.py_modules),
            metadata={"project": "art", "overrides": " ".join(args.overrides)[:500]},
        )
    except UserError as err:
        print(f"art-submit: error: {err}", file=sys.stderr)
        return 2
    print(f"submitted job: {job_id}")
    print(f"entrypoint:    {entrypoint}")
    print(f"dashboard:     {address}/#/jobs/{job_id}")
    print(f"follow logs:   ray job logs --address {address} --follow {job_id}")
    print(f"stop the job:  ray job stop --address {address} {job_id}")
    sys.stdout.flush()
    if not args.wait:
        return 0
    return follow(client, job_id, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
