"""Elastic rollout workers: a running run changes its worker count at a step boundary.

The driver of each run holds a small named Ray actor, `art-scale-<run name>` in the Ray
namespace `art`: the run's desired worker count, and what the driver last reported (step,
serving and starting workers). `art-scale --workers N` sets the count from anywhere that can
reach the cluster; at the next step boundary the driver starts workers (they serve from the
step after their process is up, with the current image and adapter) or stops the newest ones
(no chunk is out at a boundary, so nothing they sampled is lost). Because every request carries
its own seed (shared/sampling.py), the count does not change what a run samples.

    art-scale --address http://head:8265 --workers 4            # the one running ART run
    art-scale --address http://head:8265 --run <run name> --workers 2 --wait
    art-scale --address http://head:8265                          # what each run reports
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import time

from shared.errors import UserError

logger = logging.getLogger("art.scale")
NAMESPACE = "art"
PREFIX = "art-scale-"


class ScaleControl:
    """The Ray actor between `art-scale` and a run's driver (plain values only, so that a
    client with nothing but Ray can talk to it)."""

    def __init__(self, run: str, workers: int, max_workers: int, serving: int, starting: int):
        self.run, self.max_workers = run, max_workers
        self.desired = workers
        self.report_ = {"step": 0, "serving": serving, "starting": starting, "done": False}

    def __repr__(self) -> str:
        return f"art-scale control of run {self.run} (up to {self.max_workers} workers)"

    def request(self, workers: int) -> dict:
        """Ask for `workers`; refused (`error`) outside [1, rollout.max_workers]."""
        if not 1 <= int(workers) <= self.max_workers:
            return {
                **self.status(),
                "error": f"--workers {workers} is outside [1, {self.max_workers}] "
                f"(rollout.max_workers={self.max_workers} of run {self.run})",
            }
        self.desired = int(workers)
        return self.status()

    def wanted(self) -> int:
        return self.desired

    def report(self, step: int, serving: int, starting: int, done: bool = False) -> None:
        self.report_ = {"step": step, "serving": serving, "starting": starting, "done": done}

    def status(self) -> dict:
        return {
            "run": self.run,
            "desired": self.desired,
            "max_workers": self.max_workers,
            **self.report_,
        }


def control_name(run_name: str) -> str:
    return f"{PREFIX}{run_name}"


class Elastic:
    """The driver's side: the control actor, and the pool resized at each step boundary."""

    def __init__(self, ray, pool, run_name: str, workers: int, max_workers: int):
        # start-up time: a heavy library, loaded when this runs
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.ray, self.pool = ray, pool
        self.wanted = workers  # as last read from the control (checkpoints keep it)
        name = control_name(run_name)
        try:
            self.control = (
                ray.remote(ScaleControl)
                .options(
                    name=name,
                    namespace=NAMESPACE,
                    num_cpus=0,
                    # beside the driver: a node the autoscaler removes must not take it along
                    scheduling_strategy=NodeAffinitySchedulingStrategy(
                        ray.get_runtime_context().get_node_id(), soft=True
                    ),
                )
                .remote(run_name, workers, max_workers, len(pool), len(pool.pending))
            )
        except ValueError as err:  # the name is taken: that run is still up
            raise UserError(
                f"a run named {run_name} is still running on this cluster (its scale control "
                f"{name} exists); stop it (`ray job stop`) or wait until it ended"
            ) from err

    def at_boundary(self, step: int, done: bool = False) -> None:
        """Between steps (no chunk out): resize to the wanted count, admit the workers that
        are up, tell `art-scale` where the run is. A problem here never stops training: the
        pool stays as it is and the next boundary tries again."""
        try:
            if not done:
                wanted = self.ray.get(self.control.wanted.remote(), timeout=30)
                self.wanted = wanted
                self.pool.resize(wanted)
                self.pool.admit()
            self.control.report.remote(step, len(self.pool), len(self.pool.pending), done)
        except Exception as err:  # the control actor lost, a placement group refused, ...
            logger.warning("step %d: the worker count stays %d (%r)", step, len(self.pool), err)

    def actor(self):
        return self.control


# What `art-scale` runs where it can reach the cluster: Ray only (no project code), so the same
# text runs as a one-line Ray job on the head node (a dashboard address) or right here (a GCS
# address). argv: run name or "", workers or -1 (just report), seconds to wait for the count.
CLIENT = r"""
import json, sys, time, ray
run, workers, wait_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ray.init(log_to_driver=False)
def controls():
    names = ray.util.list_named_actors(all_namespaces=True)
    return sorted(n["name"] for n in names
                  if n["namespace"] == "art" and n["name"].startswith("art-scale-"))
deadline = time.time() + max(wait_s, 30.0)
while True:
    found = controls()
    chosen = [n for n in found if not run or n == "art-scale-" + run]
    if len(chosen) == 1 or (not run and len(found) > 1) or time.time() > deadline:
        break
    time.sleep(1)
if workers < 0 and (chosen or not run):
    out = [ray.get(ray.get_actor(n, namespace="art").status.remote()) for n in chosen]
    print("ART-SCALE " + json.dumps({"runs": out}))
    sys.exit(0)
if len(chosen) != 1 or workers < 0:
    runs = [n[len("art-scale-"):] for n in found]
    why = ("no running ART run found" if not runs else
           f"several runs are running ({runs}): pick one with --run" if not run else
           f"no run {run!r} is running (running: {runs})")
    print("ART-SCALE " + json.dumps({"error": why}))
    sys.exit(0)
control = ray.get_actor(chosen[0], namespace="art")
status = ray.get(control.request.remote(workers))
end = time.time() + wait_s
while "error" not in status and wait_s > 0 and status["serving"] != workers:
    if status["done"] or time.time() > end:
        status["error"] = ("the run ended" if status["done"] else
                           f"{status['serving']} workers serve after {wait_s:g}s")
        break
    time.sleep(1)
    try:
        status = ray.get(control.status.remote())
    except Exception as err:
        status["error"] = f"the run ended ({type(err).__name__})"
        break
print("ART-SCALE " + json.dumps(status))
"""


def run_client(address: str, python: str, run: str, workers: int, wait_s: float) -> dict:
    """CLIENT on the cluster: as a Ray job for a dashboard address (http://...), else here."""
    # start-up time: loaded when this runs, not at import
    from learner.driver.submit import TERMINAL, submit_with_retry, use_token_if_available

    use_token_if_available()  # Ray 2.60 heads ask for the token, jobs and GCS alike
    argv = [run, str(workers), str(wait_s)]
    if "://" in address and not address.startswith("ray://"):
        # start-up time: a heavy library, loaded when this runs
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(address)
        job = submit_with_retry(
            client,
            entrypoint=shlex.join([python, "-c", CLIENT, *argv]),
            metadata={"project": "art", "kind": "art-scale"},
        )
        deadline = time.monotonic() + wait_s + 180
        while getattr(status := client.get_job_status(job), "value", status) not in TERMINAL:
            if time.monotonic() > deadline:
                client.stop_job(job)
                return {"error": f"art-scale's job {job} did not finish"}
            time.sleep(1)
        logs = client.get_job_logs(job)
    else:
        env = {**os.environ, "RAY_ADDRESS": address}
        done = subprocess.run(
            [sys.executable, "-c", CLIENT, *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=wait_s + 180,
        )
        logs = done.stdout + done.stderr
    lines = [ln for ln in logs.splitlines() if ln.startswith("ART-SCALE ")]
    if not lines:
        return {"error": f"no answer from the cluster at {address}: {logs.strip()[-600:]}"}
    return json.loads(lines[-1].removeprefix("ART-SCALE "))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="art-scale",
        description="Change the number of rollout workers of a running ART run (at its next "
        "step boundary), or show what each run reports.",
    )
    parser.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS", "http://127.0.0.1:8265"),
        help="the cluster: its dashboard/job address as for art-submit, or a GCS host:port",
    )
    parser.add_argument("--workers", type=int, default=None, help="rollout workers to run")
    parser.add_argument("--run", default="", help="the run's name (its run folder's name)")
    parser.add_argument(
        "--wait",
        nargs="?",
        type=float,
        const=600.0,
        default=0.0,
        metavar="SECONDS",
        help="wait until that many workers serve (default 600 s)",
    )
    parser.add_argument("--python", default="python", help="Python on the head node (job)")
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        print(f"art-scale: error: --workers {args.workers}: set >= 1", file=sys.stderr)
        return 2
    # start-up time: loaded when this runs, not at import
    from learner.driver.submit import dashboard_problem

    if "://" in args.address and not args.address.startswith("ray://"):
        problem = dashboard_problem(args.address)
        if problem:
            print(f"art-scale: error: {problem}", file=sys.stderr)
            return 2
    workers = -1 if args.workers is None else args.workers
    status = run_client(args.address, args.python, args.run, workers, args.wait)
    if "error" in status:
        print(f"art-scale: error: {status['error']}", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
