# ART: two commands for a new user — `make train` and `make test` (both install first).
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
PYTEST_ARGS ?=

VLLM_VENV ?= .venv-vllm

.PHONY: install install-vllm embedded-models lock lock-check test-reference install-cuda-kernels train eval bench compare cluster-train ray-up-local ray-down test test-all test-vllm test-gpu lint format mlflow-ui clean dashboard-shot serve serve-bench

install: $(VENV)/.installed

# Exactly the lock (deploy/learner/lock.txt: every package, version and sha256; `make lock`
# writes it from pyproject.toml's ranges). lock-tasks.txt is the same plus the `tasks` extra
# (reasoning-gym, which builds pycosat from source: a C compiler and the Python headers); where
# that build fails, nothing of it is installed and lock.txt is, with a warning. Idempotent:
# reinstalls only when pyproject.toml or a lock file changes.
LOCK := deploy/learner/lock.txt
LOCK_TASKS := deploy/learner/lock-tasks.txt
$(VENV)/.installed: pyproject.toml $(LOCK) $(LOCK_TASKS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --require-hashes -r $(LOCK_TASKS) || { echo "make install: \
	warning: the tasks extra (reasoning-gym) did not install: it compiles pycosat, which needs a \
	C compiler and the Python headers (apt-get install build-essential python3-dev); installing \
	$(LOCK) instead: everything but task=reasoning_gym works without it" >&2; \
	$(PY) -m pip install --quiet --require-hashes -r $(LOCK); }
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

# Rewrite the lock files from pyproject.toml (pip-tools; about 10 minutes, mostly hashing the
# CUDA wheels), and the README's tested versions; commit them. lock-check: do they agree?
lock: install
	$(PY) deploy/learner/lock.py write

lock-check: install
	$(PY) deploy/learner/lock.py check

# vLLM's CPU build in its own environment (its torch/transformers pins differ from the
# learner's): rollout workers run there (rollout=vllm, rollout.python=auto finds it). About 7 min
# and 6.5 GB once; idempotent; never touches $(VENV).
install-vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: deploy/vllm/install-cpu.sh deploy/vllm/requirements-cpu.txt \
		deploy/vllm/constraints-cpu.txt deploy/vllm/cpu-lock.txt
	bash deploy/vllm/install-cpu.sh $(CURDIR)/$(VLLM_VENV)
	touch $@

# On a CUDA machine: flash-linear-attention and causal-conv1d in $(VENV), the fast kernels of
# Qwen3.5's linear attention (transformers runs float32 torch references without them).
install-cuda-kernels: install
	bash deploy/learner/install-cuda-kernels.sh $(PY)

train: install
	$(VENV)/bin/art-train $(ARGS)

# Rebuild the embedded models shipped in learner/models/shipped/ (tiny, tiny_hint: a few minutes
# of reader pretraining each on 2 cores), after a change to their builder (bump its
# BUILDER_VERSION); commit the result. ONLY=tiny rebuilds one. Nothing else ever builds them.
ONLY ?=
embedded-models: install
	$(PY) -m learner.models.embedded $(if $(ONLY),--only $(ONLY))

# Submit to a running Ray cluster (RAY_ADDRESS, default the local head's dashboard).
# Outputs and the MLflow store default to this checkout, which is right when the head node is
# this machine; on a real cluster set OUTPUT_DIR to a shared path and MLFLOW_URI to a server.
RAY_ADDRESS ?= http://127.0.0.1:8265
CLUSTER ?= multi_gpu
OUTPUT_DIR ?= $(CURDIR)/outputs
MLFLOW_URI ?= sqlite:///$(CURDIR)/mlflow.db
cluster-train: install
	$(VENV)/bin/art-submit --address $(RAY_ADDRESS) -- cluster=$(CLUSTER) \
		output_dir=$(OUTPUT_DIR) logging.tracking_uri=$(MLFLOW_URI) \
		logging.artifact_location=$(OUTPUT_DIR)/mlartifacts $(ARGS)

# A local head node with the dashboard on 127.0.0.1:8265 (jobs run with this venv's python).
ray-up-local: install
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/ray start --head --dashboard-host 127.0.0.1 \
		--dashboard-port 8265 --include-dashboard true --disable-usage-stats
	@echo "dashboard: http://127.0.0.1:8265   submit: make cluster-train CLUSTER=existing"

ray-down:
	$(VENV)/bin/ray stop

# Screenshots of the Ray dashboard during a short run (headless chromium: apt-get install
# chromium) into docs/images/; docs/monitoring.md shows them.
dashboard-shot: install
	$(PY) deploy/monitoring/dashboard_shot.py

# Evaluates the text-only baseline, the seed image and the most recently written
# outputs/*/art.png (if any; by time, whatever the folders' names).
LATEST_ART := $(shell ls -td outputs/*/art.png 2>/dev/null | head -1)
eval: install
	$(VENV)/bin/art-eval 'eval.conditions=[none,seed$(if $(LATEST_ART),$(comma)$(LATEST_ART))]' $(ARGS)

comma := ,

# ART vs the LoRA baseline: same task, seed, steps and rollouts; compare.json/.md/.png.
compare: install
	$(VENV)/bin/art-compare $(ARGS)

# Performance figures side by side (learner vs naive, broadcast PNG vs weights on a second Ray
# node, synchronous vs overlapped, image vs text-only): prints a table, writes bench.json.
bench: install
	$(VENV)/bin/art-bench $(ARGS)

# art-serve: every run under $(TASKS) (<run>/art.png) served by name (model=<run>) on
# 127.0.0.1:8080, in front of a stock vLLM server (.venv-vllm) of the embedded model. Another
# model: .venv/bin/art-serve --tasks outputs --launch Qwen/Qwen3.5-0.8B (docs/serving.md).
TASKS ?= outputs
serve: install install-vllm
	$(VENV)/bin/art-serve --tasks $(TASKS) --model tiny --launch $(CURDIR)/learner/models/shipped/tiny $(ARGS)

# K tasks on one vLLM engine: ART images through art-serve vs LoRA adapters vs text-only
# (docs/performance.md, "Serving many tasks"); writes outputs/serve-bench/.
serve-bench: install install-vllm
	$(VENV)/bin/art-serve-bench $(ARGS)

# The fast CPU tests (a few minutes on 2 cores).
test: install
	$(VENV)/bin/pytest -m "not slow and not gpu and not vllm" $(PYTEST_ARGS)

# Every CPU test: adds the slow ones (full training runs, the two-node cluster) and real vLLM on
# the CPU (installs .venv-vllm first). CI runs this.
test-all: install install-vllm
	$(VENV)/bin/pytest -m "not gpu" --durations=25 $(PYTEST_ARGS)

# Real vLLM (the CPU build) only: engine, agreement with the learner, LoRA, restarts, training,
# evaluation and a stock OpenAI-compatible server.
test-vllm: install install-vllm
	$(VENV)/bin/pytest -m vllm $(PYTEST_ARGS)

# On a GPU machine: the CUDA tests and the real-vLLM tests on the GPU, with vLLM's GPU build in
# its own environment (ART_VLLM_PYTHON, default .venv-vllm: deploy/vllm/requirements-gpu.txt).
test-gpu: install
	ART_VLLM_TEST_GPUS=1 $(VENV)/bin/pytest -m "gpu or vllm" $(PYTEST_ARGS)

# ruff, the lock, and the import rules of the house (tests/unit/test_imports.py: shared imports
# neither side, the sides never import each other, the learner's core never imports the
# driver, no import circles, function-level imports say why).
lint: install lock-check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/unit/test_imports.py

# The objectives against verl's and TRL's own code (tests/unit/learner/test_objectives_reference.py):
# their pinned wheels downloaded into a cache and unpacked beside the project, never installed
# (neither is a dependency); nothing skips here. CI runs it.
REFERENCE_WHEELS := verl==0.9.1 tensordict==0.15.3 pyvers==0.2.3 codetiming==1.4.0 \
	orjson==3.13.0 trl==1.16.0
REFERENCE_DIR ?= $(HOME)/.cache/art/reference
REFERENCE_SITE := $(REFERENCE_DIR)/$(shell echo "$(REFERENCE_WHEELS)" | sha256sum | cut -c1-12)
test-reference: install
	test -f $(REFERENCE_SITE)/.unpacked || { \
	$(PY) -m pip download --quiet --no-deps $(REFERENCE_WHEELS) -d $(REFERENCE_SITE)/wheels && \
	for f in $(REFERENCE_SITE)/wheels/*.whl; do $(PY) -m zipfile -e $$f $(REFERENCE_SITE)/site; done && \
	touch $(REFERENCE_SITE)/.unpacked; }
	PYTHONPATH=$(CURDIR):$(REFERENCE_SITE)/site ART_REFERENCE_REQUIRED=1 \
		$(VENV)/bin/pytest -q -p no:cacheprovider tests/unit/learner/test_objectives_reference.py

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

mlflow-ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf outputs mlruns mlartifacts mlflow.db .pytest_cache  # (.venv and .venv-vllm stay)
