"""A card for every result: `<run>/README.md`, what the run is, how it did and how to serve it,
rendered from the run folder's own files (config.yaml, summary.json and, once `art-eval` has
evaluated the run's image, eval_results.json), so that it is always what the folder holds.
`art-train` writes it at the end of a run, `art-eval` again after evaluating the run's PNG."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import yaml

from shared.atomic import write_bytes_atomic

EVAL_FILE = "eval_results.json"
SHIPPED = Path(__file__).resolve().parents[1] / "models" / "shipped"
EMBEDDED = {name: SHIPPED / name for name in ("tiny", "tiny_hint")}


def strict(obj):
    """JSON without NaN or inf (null instead): what every JSON parser reads."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict(v) for v in obj]
    return obj


def strict_json(obj, indent: int = 2) -> bytes:
    return json.dumps(strict(obj), indent=indent, allow_nan=False).encode()


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def render(run_dir: Path) -> str:
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    evals = json.loads((run_dir / EVAL_FILE).read_text()) if (run_dir / EVAL_FILE).is_file() else {}
    name, model, task, algo = run_dir.name, cfg["model"]["name"], cfg["task"], cfg["algo"]
    art = cfg["method"]["name"] == "art"
    artifact = "art.png" if art else "adapter/"
    options = ", ".join(f"{k}={v}" for k, v in (task.get("options") or {}).items())
    image = run_dir / "art.png"
    sha = hashlib.sha256(image.read_bytes()).hexdigest()[:16] if image.is_file() else "-"
    lines = [
        f"# {name}",
        "",
        *(["![the trained image](art.png)", ""] if art else []),
        f"An ART run: a {'trained image' if art else 'LoRA adapter (the baseline)'} that makes "
        f"the frozen model `{model}` do the task `{task['name']}`.",
        "",
        "| | |",
        "| --- | --- |",
        f"| model | `{model}` (its weights unchanged) |",
        f"| task | `{task['name']}`{f' ({options})' if options else ''}, split `{task['split']}` |",
        f"| objective | `{algo['loss']}`: {algo['group_size']} completions x "
        f"{algo['prompts_per_step']} prompts a step, learning rate {cfg['learner']['lr']} |",
        f"| method | `{cfg['method']['name']}` ({artifact}, {summary.get('artifact_bytes', '-')} bytes) |",
        f"| image | {cfg['image']['height']}x{cfg['image']['width']}, seed `{cfg['image']['init']}`, "
        f"sha256 {sha}... |",
        f"| steps | {summary.get('steps')} in {_fmt(summary.get('wall_time_s'), 0)} s |",
        f"| reward, first 5 -> last 5 steps | {_fmt(summary.get('reward_first5'))} -> "
        f"{_fmt(summary.get('reward_last5'))} |",
        (
            f"| best validation accuracy | {_fmt(summary.get('best_eval_accuracy'))} (step "
            f"{summary.get('best_step')}; `best.png`) |"
            if summary.get("best_step") is not None
            else "| best validation accuracy | not measured (`eval.every=0`) |"
        ),
        "",
        "## Evaluation",
        "",
    ]
    if evals:
        lines += ["| condition | accuracy | n |", "| --- | --- | --- |"]
        for condition, metrics in evals.items():
            lines.append(f"| {condition} | {_fmt(metrics.get('accuracy'))} | {metrics.get('n')} |")
    else:
        lines.append(
            "Not evaluated yet: `art-eval "
            f'"eval.conditions=[none,seed,{run_dir}/{artifact.rstrip("/")}]"` fills this table.'
        )
    lines += ["", "## Serve it", ""]
    # the embedded models are folders of this repository: served by path, named as the model
    folder = EMBEDDED.get(model)
    launch = f"{folder} --model {model}" if folder else model
    vllm_model = f"{folder} --served-model-name {model}" if folder else model
    if art:
        lines += [
            "By name, with `art-serve` in front of a stock vLLM server of the model (`--tasks` "
            "serves every run folder beside this one):",
            "",
            "```bash",
            f"art-serve --tasks {run_dir.parent} --launch {launch}",
            "curl -s http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' "
            f'\\\n    -d \'{{"model": "{name}", "messages": [{{"role": "user", '
            '"content": "<your question>"}]}\'',
            "```",
            "",
            f"Or with any OpenAI-compatible server of the model (`vllm serve {vllm_model}`), the "
            "PNG first in the user turn, as in training:",
            "",
            "```python",
            "from openai import OpenAI",
            "from shared.serving import art_messages",
            "",
            'client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")',
            f'messages = art_messages("{image}", "<your question>")',
            f'reply = client.chat.completions.create(model="{model}", messages=messages, '
            "temperature=0)",
            "```",
        ]
    else:
        lines += [
            f"A standard PEFT adapter: `vllm serve {model} --enable-lora --lora-modules "
            f"{name}={run_dir}/adapter` (deploy/serve/README.md)."
        ]
    lines += ["", "The resolved config is `config.yaml`; every step's figures `metrics.jsonl`.", ""]
    return "\n".join(lines)


def write_card(run_dir: Path) -> Path:
    return write_bytes_atomic(Path(run_dir) / "README.md", render(Path(run_dir)).encode())


def record_evaluation(results: dict) -> list[Path]:
    """After `art-eval`: each evaluated run's PNG (or adapter) gets its row in that run's
    eval_results.json (with none and seed for comparison), and its card again."""
    cards = []
    baselines = {c: m for c, m in results.items() if c in ("none", "seed")}
    for condition, metrics in results.items():
        path = Path(condition)
        run_dir = path.parent
        if condition in ("none", "seed") or not (run_dir / "summary.json").is_file():
            continue
        file = run_dir / EVAL_FILE
        known = json.loads(file.read_text()) if file.is_file() else {}
        known.update(baselines)
        known[path.name] = metrics
        keep = {k: {"accuracy": v.get("accuracy"), "n": v.get("n")} for k, v in known.items()}
        write_bytes_atomic(file, strict_json(keep))
        cards.append(write_card(run_dir))
    return cards
