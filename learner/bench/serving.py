"""`art-serve-bench`: the serving benchmark (`rollout_worker/gateway/bench.py`: K tasks on one
vLLM engine as ART images through art-serve, as LoRA adapters, and text-only) on the embedded
model unless `--model` is given.

The benchmark is rollout-side code (it drives vLLM and the gateway); this entry point only
finds the embedded model, which the learner side builds, and then becomes the benchmark's
module (`exec`: the two packages never import each other).
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not any(a == "--model" or a.startswith("--model=") for a in argv):
        # start-up time: loaded when this runs, not at import
        from learner.models.embedded import SHIPPED_DIR

        argv = ["--model", str(SHIPPED_DIR / "tiny"), "--served-name", "tiny", *argv]
    # this process becomes the benchmark (it holds no model: the engine runs in its own)
    os.execv(sys.executable, [sys.executable, "-m", "rollout_worker.gateway.bench", *argv])


if __name__ == "__main__":
    sys.exit(main())
