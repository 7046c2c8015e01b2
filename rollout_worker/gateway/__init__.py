"""`art-serve`: ART tasks addressed by name, like LoRA adapters, in front of a stock vLLM server.

A client names a task (`model="<task>"`) and sends text; the gateway puts the task's PNG first
in the user turn, where training put it, and forwards the request to an unmodified
OpenAI-compatible server. It keeps no state between requests, so it runs as one process
beside one engine (`art-serve`) or as a Ray Serve deployment with replicas in front of several
engines (`art-serve --ray`).

- `registry.py`: the tasks (name -> PNG) from a folder of trained runs or a mapping file,
  each PNG checked against the served model; rescanned cheaply while serving.
- `app.py`: the FastAPI app (the OpenAI routes, the image insertion, the error JSON).
- `backends.py`: the vLLM servers behind it (least outstanding requests, failover).
- `ray_serve.py`: the same app as a Ray Serve deployment.
- `launch.py`: starting a stock vLLM server (`art-serve --launch`, the benchmark).
- `cli.py`: `art-serve`; `bench.py`: `art-serve-bench` (ART vs LoRA vs text-only).
"""
