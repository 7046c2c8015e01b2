"""Screenshots of the Ray dashboard during a short ART run (`make dashboard-shot`).

Starts a local Ray head (dashboard on, token auth off: loopback only), submits the embedded
default as a Ray job the way `make cluster-train` does, and once its actors are up and a few
steps are done, has headless Chromium (Debian's `chromium`) save the dashboard's job page and
actors page as PNGs under docs/images/. Everything it started is stopped at the end.

    python deploy/monitoring/dashboard_shot.py [--out docs/images] [--chromium chromium]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def screenshot(chromium: str, url: str, out: Path) -> None:
    subprocess.run(
        [
            chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--window-size=1600,1000", "--virtual-time-budget=20000", f"--screenshot={out}", url,
        ],
        check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    print(f"wrote {out} ({out.stat().st_size} bytes) from {url}")


def alive_actors(dashboard: str) -> list[str]:
    url = f"{dashboard}/api/v0/actors?detail=1&limit=100"
    listed = json.loads(urllib.request.urlopen(url, timeout=10).read())
    return [a["name"] for a in listed["data"]["result"]["result"] if a["state"] == "ALIVE"]


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO))
    from learner.bench import local_cluster

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "images"))
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args(argv)
    if not shutil.which(args.chromium):
        print(
            f"dashboard-shot: error: no {args.chromium}; apt-get install chromium", file=sys.stderr
        )
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    Path("/tmp/art-dashboard-shot").mkdir(exist_ok=True)
    with local_cluster.two_node_cluster(
        {"learner_node": 1}, {}, num_cpus=4, start_worker=False
    ) as cluster:
        dashboard, env = cluster["dashboard"], cluster["env"]
        submit = subprocess.run(
            [
                str(BIN / "art-submit"), "--address", dashboard, "--python", sys.executable,
                "--", "cluster=existing", "steps=60", "eval.every=0", "rollout.num_workers=2",
                "rollout.num_cpus_per_worker=0.5", "learner.num_cpus=0.5",
                "output_dir=/tmp/art-dashboard-shot", "logging.tracking_uri=sqlite:////tmp/art-dashboard-shot/mlflow.db",
                "logging.artifact_location=/tmp/art-dashboard-shot/artifacts",
            ],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if submit.returncode != 0:
            print(submit.stdout[-2000:], submit.stderr[-2000:], file=sys.stderr)
            return 1
        job = next(
            ln.split()[-1] for ln in submit.stdout.splitlines() if ln.startswith("submitted")
        )
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            names = alive_actors(dashboard)
            if {"learner", "rollout-worker-0", "rollout-worker-1"} <= set(names):
                break
            time.sleep(2)
        time.sleep(20)  # a few steps in: the job log and the actors' tasks have something
        screenshot(args.chromium, f"{dashboard}/#/jobs/{job}", out / "ray-dashboard-job.png")
        screenshot(args.chromium, f"{dashboard}/#/actors", out / "ray-dashboard-actors.png")
        subprocess.run([str(BIN / "ray"), "job", "stop", "--address", dashboard, job], env=env,
                       capture_output=True, timeout=120)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
