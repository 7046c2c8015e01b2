"""Peak memory of one learner forward(+backward) above the loaded weights.

    python -m learner.bench.memory            # Qwen3.5-0.8B architecture, random weights
    python -m learner.bench.memory --model tiny --completions 2 --tokens 16
    python -m learner.bench.memory --per-token   # bytes per token: the presets' memory model

Every figure comes from a fresh process: load the model, then reset the kernel's peak-RSS
counter (`/proc/self/clear_refs`), run one forward (no gradient, as for old log-probs) or one
forward+backward into the pixels, and read the peak (`VmHWM`) minus the RSS before the pass.
Variants, on the same batch (a 256x256 image = 64 image tokens, a chat prompt, completions
of random tokens):
- `naive`: logits over every position of every sequence, one log-softmax over all of them
  (`learner.bench.naive`, what the learner did before);
- `lean`: logits at completion positions only, chunked and checkpointed log-softmax (the padded
  forward: every completion with its own copy of the prompt; art-bench section g measures the
  shared-prefix forward against it);
- `lean+ckpt`: `lean` plus activation checkpointing through the frozen decoder layers.
Linux only. Takes a few minutes on a 2-core CPU for the 0.8B architecture.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import subprocess
import sys
from pathlib import Path

from learner.bench.naive import full_logits_logprobs
from learner.models import resolve_model_path
from learner.pixels import PixelImage
from learner.policy import FrozenPolicy, load_model_and_processor
from shared.prompts import render_prompt

VARIANTS = ("naive", "lean", "lean+ckpt")
MODES = ("forward", "forward+backward")
QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
    "to her friends in May. How many clips did Natalia sell altogether in April and May?"
    "\n\nEnd your response with: Answer: <number>"
)


def status_kib(field: str) -> int:
    """A figure of /proc/self/status in KiB (VmRSS: resident now, VmHWM: the peak)."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", text).group(1))


def reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS; returns it in KiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return status_kib("VmRSS")


def measure(
    model: str,
    variant: str,
    mode: str,
    completions: int,
    tokens: int,
    size: int,
    dtype: str = "float32",
):
    """One measurement in this process; returns a dict of figures in MiB."""

    # start-up time: a heavy library, loaded when this runs
    import torch

    torch.manual_seed(0)
    path = resolve_model_path(model)
    hf_model, processor = load_model_and_processor(path, dtype=dtype)
    policy = FrozenPolicy(hf_model, processor, activation_checkpointing=variant == "lean+ckpt")
    prompt = render_prompt(processor, QUESTION)
    image = PixelImage.noise(size, size, seed=0)
    num_image_tokens = policy.spec.num_image_tokens(size, size)
    expanded = prompt.replace("<|image_pad|>", "<|image_pad|>" * num_image_tokens, 1)
    prompt_ids = processor.tokenizer(expanded, add_special_tokens=False)["input_ids"]
    vocab = len(processor.tokenizer)
    completion_ids = torch.randint(0, min(vocab, 50_000), (completions, tokens)).tolist()
    fn = full_logits_logprobs if variant == "naive" else None

    gc.collect()
    before_kib = reset_peak_rss()
    with torch.set_grad_enabled(mode == "forward+backward"):
        encoded = policy.encode_image(image())
        args = (encoded, [prompt_ids] * completions, completion_ids)
        logprobs_BT, mask_BT = fn(policy, *args) if fn else policy.padded_logprobs(*args)
        if mode == "forward+backward":
            (logprobs_BT * mask_BT).sum().backward()
    peak_kib = status_kib("VmHWM")
    return {
        "model": model,
        "variant": variant,
        "mode": mode,
        "weights_mib": round(before_kib / 1024, 1),
        "peak_above_weights_mib": round((peak_kib - before_kib) / 1024, 1),
        "sequence_len": len(prompt_ids) + tokens,
        "vocab": int(hf_model.config.text_config.vocab_size),
        "dtype": dtype,
        "completions": completions,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="qwen3_5_0_8b_random")
    parser.add_argument("--completions", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--size", type=int, default=256, help="image height = width")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument(
        "--per-token",
        action="store_true",
        help="the learner's activation bytes per sequence token (lean+ckpt, forward+backward): "
        "the slope between --completions and 3x as many, in float32 and bfloat16",
    )
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shape = (args.completions, args.tokens, args.size)
    if args.one:
        print(json.dumps(measure(args.model, *args.one, *shape, dtype=args.dtype)))
        return 0
    if args.per_token:
        return per_token(args)
    rows = []
    for variant in args.variants.split(","):
        for mode in MODES:
            try:
                rows.append(one(args, variant, mode, args.completions, args.dtype))
            except RuntimeError as err:
                print(err, file=sys.stderr)
                return 1
            print(f"  {variant:<10} {mode:<17} {rows[-1]['peak_above_weights_mib']:>9.1f} MiB")
    print(format_table(rows, args))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def one(args, variant: str, mode: str, completions: int, dtype: str) -> dict:
    """`measure` in a fresh process (peak RSS is per process)."""
    cmd = [sys.executable, "-m", "learner.bench.memory", "--model", args.model]
    cmd += ["--completions", str(completions), "--tokens", str(args.tokens)]
    cmd += ["--size", str(args.size), "--dtype", dtype, "--one", variant, mode]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def per_token(args) -> int:
    """Peak bytes per token of the micro-batch (prompt + completion tokens, the image's
    included), from two batch sizes: what the token budget of a preset is derived from."""
    rows = []
    for dtype in ("float32", "bfloat16"):
        small, large = (
            one(args, "lean+ckpt", "forward+backward", c, dtype)
            for c in (args.completions, 3 * args.completions)
        )
        extra_tokens = 2 * args.completions * small["sequence_len"]
        slope = (large["peak_above_weights_mib"] - small["peak_above_weights_mib"]) * 2**20
        rows.append(
            {
                "dtype": dtype,
                "sequence_len": small["sequence_len"],
                "peak_small_mib": small["peak_above_weights_mib"],
                "peak_large_mib": large["peak_above_weights_mib"],
                "bytes_per_token": round(slope / extra_tokens),
            }
        )
        print(
            f"{args.model} {dtype:<9} {args.completions} vs {3 * args.completions} sequences of "
            f"{small['sequence_len']} tokens: {small['peak_above_weights_mib']:.0f} / "
            f"{large['peak_above_weights_mib']:.0f} MiB -> {rows[-1]['bytes_per_token']:,} "
            "bytes per token (lean + activation checkpointing, forward+backward)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def format_table(rows: list[dict], args) -> str:
    by = {(r["variant"], r["mode"]): r["peak_above_weights_mib"] for r in rows}
    first = rows[0]
    lines = [
        f"peak memory above the loaded weights ({first['weights_mib']:.0f} MiB), model "
        f"{args.model}: {args.completions} completions x {args.tokens} tokens, "
        f"{args.size}x{args.size} image, sequence {first['sequence_len']} tokens, "
        f"vocabulary {first['vocab']}, {first['dtype']}",
        f"{'variant':<12} {'forward MiB':>12} {'fwd+bwd MiB':>12} {'fwd+bwd vs naive':>17}",
    ]
    naive = by.get(("naive", "forward+backward"))
    for variant in dict.fromkeys(r["variant"] for r in rows):
        fwd, both = by.get((variant, "forward")), by.get((variant, "forward+backward"))
        ratio = f"{naive / both:.2f}x lower" if naive and both else "-"
        lines.append(f"{variant:<12} {fwd:>12.1f} {both:>12.1f} {ratio:>17}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
