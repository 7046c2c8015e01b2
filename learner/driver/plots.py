"""Figures a run leaves behind: training curves, the image's evolution, the comparison."""

from __future__ import annotations

import io
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

COLOURS = {"none": "#999999", "seed": "#bbbbbb", "art": "tab:orange", "lora": "tab:green"}
# The trained runs' colours where COLOURS has none (objectives compared: dapo, grpo, sft, ...).
PALETTE = ("tab:orange", "tab:green", "tab:blue", "tab:red", "tab:purple", "tab:brown")


def bar_colours(names: list[str]) -> list[str]:
    """none and seed in grays, then the trained runs: art and lora in their colours, others in
    the palette's order."""
    others = [n for n in names if n not in COLOURS]
    return [COLOURS.get(n) or PALETTE[others.index(n) % len(PALETTE)] for n in names]


def _figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    # start-up time: a heavy library, loaded when this runs
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


def _pyplot():
    # start-up time: a heavy library, loaded when this runs
    import matplotlib

    matplotlib.use("Agg")
    # start-up time: a heavy library, loaded when this runs
    import matplotlib.pyplot as plt

    return plt


# The panels of curves.png: rewarded objectives, and those that sample no reward (sft,
# distill), whose loss is drawn instead (key, title, fixed y range or None).
REWARD_PANELS = (
    ("reward_mean", "reward (first round)", True),
    ("accuracy", "accuracy (first round)", True),
    ("kept_group_frac", "kept-group fraction", True),
)
LOSS_PANELS = (
    ("loss", "training loss", False),
    ("teacher_sample_accuracy", "teacher's sampled accuracy", True),
    ("student_sample_accuracy", "student's sampled accuracy", True),
    ("prompt_tokens_saved", "prompt tokens saved per request", False),
)


def training_curves(history: dict[str, list[float]], title: str) -> bytes:
    """Reward, strict accuracy and kept-group fraction per step (a moving average drawn over
    the raw points); for objectives without rewards (sft, distill) the loss and what they
    record instead."""
    plt = _pyplot()
    rewarded = any(math.isfinite(v) for v in history.get("reward_mean", []))
    panels = REWARD_PANELS
    if not rewarded:
        panels = tuple(
            p
            for p in LOSS_PANELS
            if any(math.isfinite(v) for v in history.get(p[0], [])) or p[0] == "loss"
        )
    series = [(key, label) for key, label, _ in panels]
    fig, axes = plt.subplots(1, len(series), figsize=(4 * len(series), 3.2), squeeze=False)
    axes = axes[0]
    for ax, (key, label), (_, _, unit) in zip(axes, series, panels, strict=True):
        values = history.get(key, [])
        steps = list(range(1, len(values) + 1))
        ax.plot(steps, values, ".", alpha=0.35, color="tab:blue")
        if len(values) >= 5:
            window = max(3, len(values) // 10)
            smooth = [
                sum(values[max(0, i - window + 1) : i + 1])
                / len(values[max(0, i - window + 1) : i + 1])
                for i in range(len(values))
            ]
            ax.plot(steps, smooth, "-", color="tab:blue", label=f"mean of {window}")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        if unit:
            ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11, y=1.04)
    return _figure_png(fig)


def evolution_grid(step_images: list[Path], seed: Path | None = None, cell: int = 128) -> bytes:
    """The image at every checkpoint in one grid, the step under each (the paper's Figure 2)."""
    items = ([("seed", seed)] if seed is not None and seed.exists() else []) + [
        (f"step {int(p.stem.split('_')[-1])}", p) for p in step_images
    ]
    columns = min(8, len(items))
    rows = math.ceil(len(items) / columns)
    label_h, pad = 18, 6
    grid = Image.new(
        "RGB", (columns * (cell + pad) + pad, rows * (cell + label_h + pad) + pad), "white"
    )
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=12)
    for k, (label, path) in enumerate(items):
        r, c = divmod(k, columns)
        x, y = pad + c * (cell + pad), pad + r * (cell + label_h + pad)
        with Image.open(path) as img:
            grid.paste(img.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST), (x, y))
        draw.text((x + cell // 2, y + cell + 2), label, fill="black", font=font, anchor="mt")
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    return buffer.getvalue()


def comparison_figure(rewards: dict[str, list[float]], accuracy: dict[str, float], title: str):
    """Reward curves of the trained methods and accuracy bars of every evaluated condition."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.8))
    for name, values in rewards.items():
        steps = list(range(1, len(values) + 1))
        window = max(3, len(values) // 10)
        smooth = [
            sum(values[max(0, i - window + 1) : i + 1])
            / len(values[max(0, i - window + 1) : i + 1])
            for i in range(len(values))
        ]
        colour = COLOURS.get(name) or PALETTE[list(rewards).index(name) % len(PALETTE)]
        left.plot(steps, smooth, "-", color=colour, label=f"{name} (mean of {window})")
        left.plot(steps, values, ".", alpha=0.25, color=colour)
    left.set_title("training reward per step", fontsize=10)
    left.set_xlabel("step")
    left.set_ylim(-0.02, 1.02)
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    names = list(accuracy)
    bars = right.bar(names, [accuracy[n] for n in names], color=bar_colours(names))
    for bar, name in zip(bars, names, strict=True):
        right.text(
            bar.get_x() + bar.get_width() / 2,
            bar.get_height() + 0.01,
            f"{accuracy[name]:.3f}",
            ha="center",
            fontsize=9,
        )
    right.set_ylim(0, 1.08)
    right.set_title("held-out accuracy (greedy)", fontsize=10)
    right.grid(alpha=0.3, axis="y")
    fig.suptitle(title, fontsize=11, y=1.04)
    return _figure_png(fig)
