"""`--help` and `--version` of the Hydra entry points (art-train, art-eval, art-compare): each
its own description, its main options with their defaults and the comment above each field
in `shared/config.py` (read from the source, so the help and the schema cannot drift), the
config groups with their presets, and a few examples. `--hydra-help` is still Hydra's own."""

from __future__ import annotations

import ast
import importlib.metadata
import textwrap
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path

import shared.config as schema

CONF = Path(__file__).resolve().parents[2] / "conf"
GROUPS = ("model", "task", "algo", "rollout", "image", "method", "cluster")


def version() -> str:
    try:
        return importlib.metadata.version("art-rl")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def field_comments() -> dict[tuple[str, str], str]:
    """(dataclass name, field) -> the comment lines right above the field, joined."""
    source = Path(schema.__file__).read_text()
    lines = source.splitlines()
    out = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                comment, i = [], item.lineno - 2
                while i >= 0 and lines[i].strip().startswith("#"):
                    comment.insert(0, lines[i].strip().lstrip("# ").strip())
                    i -= 1
                out[(node.name, item.target.id)] = " ".join(comment)
    return out


def default_of(f) -> str:
    if f.default is not MISSING:
        if f.default is None:
            return "null"
        return repr(f.default) if isinstance(f.default, str) else str(f.default)
    if f.default_factory is not MISSING:
        value = f.default_factory()
        return "..." if is_dataclass(value) else str(value)
    return "(required)"


def options(keys: list[str]) -> list[str]:
    """`key (default): its comment` for each dotted key of the schema."""
    comments, out = field_comments(), []
    for key in keys:
        node, parts = schema.TrainConfig, key.split(".")
        for part in parts[:-1]:
            node = {f.name: f for f in fields(node)}[part].default_factory
        f = {f.name: f for f in fields(node)}[parts[-1]]
        text = comments.get((node.__name__, f.name), "")
        head = f"  {key}={default_of(f)}"
        body = textwrap.fill(text, 96, initial_indent=" " * 6, subsequent_indent=" " * 6)
        out += [head, body] if text else [head]
    return out


def presets() -> list[str]:
    out = []
    for group in GROUPS:
        names = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
        out.append(textwrap.fill(f"{group}= {', '.join(names)}", 96, subsequent_indent=" " * 6))
    return ["  " + line if not line.startswith(" ") else line for line in out]


# What each entry point says about itself, its main options, its examples.
PROGRAMS = {
    "art-train": (
        "Train an image with RL (or any objective) so that a frozen multimodal model does a task.",
        ["steps", "seed", "task.name", "algo.loss", "algo.group_size", "algo.prompts_per_step",
         "model.name", "image.init", "learner.lr", "rollout.engine", "rollout.num_workers",
         "eval.every", "output_dir", "run_name", "resume"],
        ["art-train                                  # the embedded default: 60 steps on the CPU",
         "art-train steps=100 algo.group_size=16      # any field: key=value",
         "art-train model=qwen3_5_0_8b task=gsm8k rollout=vllm image=paper   # a real run (GPU)",
         "art-train algo=sft steps=10                 # another objective (conf/algo/)",
         "art-train resume=auto steps=120             # continue the newest run"],
    ),
    "art-eval": (
        "Evaluate the text-only baseline, the seed image and trained PNGs (or LoRA adapters) "
        "greedily on a task split, with the paper's settings.",
        ["eval.conditions", "eval.split", "eval.limit", "eval.max_new_tokens",
         "eval.presence_penalty", "task.name", "model.name", "rollout.engine"],
        ['art-eval "eval.conditions=[none,seed,outputs/<run>/art.png]"',
         "art-eval task=gsm8k model=qwen3_5_0_8b rollout=vllm eval.limit=200"],
    ),
    "art-compare": (
        "Train ART and the LoRA baseline (or several objectives) on the same task, seed and "
        "rollout budget, evaluate them the same way, and write compare.json/.md/.png.",
        ["steps", "task.name", "model.name", "method.lora.rank", "eval.limit"],
        ["art-compare                                # ART vs LoRA on the embedded default",
         'art-compare "objectives=[dapo,grpo,sft]" steps=20   # objectives side by side',
         'art-compare "objectives=[dapo,sft]" sft:learner.lr=0.1   # one arm\'s own override'],
    ),
}  # fmt: skip


def help_text(prog: str) -> str:
    description, keys, examples = PROGRAMS[prog]
    lines = [
        f"usage: {prog} [key=value ...] [group=preset ...]  (--version, --hydra-help)",
        "",
        textwrap.fill(description, 96),
        "",
        *textwrap.wrap(
            "Options are key=value overrides of the config (every field and its meaning: "
            "shared/config.py; `+key=value` adds a key a preset lacks). The main ones, with "
            "their defaults:",
            96,
        ),
        *options(keys),
        "",
        "Config groups (group=preset, conf/<group>/):",
        *presets(),
        "",
        "Examples:",
        *(f"  {e}" for e in examples),
    ]
    return "\n".join(lines)
