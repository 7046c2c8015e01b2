#!/usr/bin/env bash
# The fast kernels of Qwen3.5's linear-attention layers for the learner's environment on a CUDA
# machine (make install-cuda-kernels; deploy/Dockerfile). Without them transformers runs its
# float32 torch references (a Python loop over 64-token chunks: many times slower on a GPU) and
# the learner says so at start (one warning line, the metric linear_attention_reference).
# - flash-linear-attention 0.6.0: Triton kernels (chunk_gated_delta_rule with initial_state and
#   its gradient); requires torch >= 2.7 and transformers >= 5.6.2, < 6 (the learner: torch 2.14,
#   transformers 5.21-5.x).
# - causal-conv1d 1.7.0 (the version fla 0.6.0's conv1d extra asks for): a CUDA extension built
#   against the torch already installed (hence --no-build-isolation: an isolated build would
#   fetch another torch); its setup takes a prebuilt wheel for torch's CUDA and version when the
#   release has one, else compiles with nvcc of torch's CUDA major version (a -devel image).
# Usage: deploy/learner/install-cuda-kernels.sh [python]   (default .venv/bin/python)
set -euo pipefail
PY="${1:-.venv/bin/python}"
"$PY" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 'a CUDA build of torch is needed')"
here="$(cd "$(dirname "$0")" && pwd)"
# flash-linear-attention and causal-conv1d's build tools, exactly as locked (`make lock`), with
# the learner's own versions of everything else (the same lock).
"$PY" -m pip install --require-hashes -r "$here/lock-cuda-kernels.txt"
"$PY" -m pip install --no-build-isolation "causal-conv1d==1.7.0"
"$PY" - <<'PY'
import importlib

for name in ("fla.ops.gated_delta_rule", "causal_conv1d"):
    importlib.import_module(name)
print("flash-linear-attention and causal-conv1d import; the learner logs the path it runs")
PY
