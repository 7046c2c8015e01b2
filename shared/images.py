"""Seed images: the picture ART starts from.

`image.init` is one of:
- `gray` (every pixel 128) or `noise` (uniform, seeded);
- `icon:math`, `icon:wrench`: icons this project draws in code (below), 256x256 at heart and
  resized to the configured size; `icon:task` takes the task's own icon (math for GSM8K, SVAMP
  and GPQA, the wrench for ToolMind), as the paper starts math tasks from a math icon;
- a path to an image file. RGB, RGBA, LA, palette (with or without transparency), grayscale
  and 16-bit images are accepted: transparency is composited over `image.background` (white by
  default), 16-bit values are scaled to 8 bits (v / 257), and a picture of another size is
  resized to height x width with a Lanczos filter (logged). CMYK and other modes are refused
  with what to do.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from shared.errors import UserError

logger = logging.getLogger(__name__)

ICONS = ("math", "wrench")
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128)}
RESIZE_FILTER = Image.Resampling.LANCZOS


class SeedImageError(UserError):
    """A seed image that cannot be used; the message says why and what to do."""


def parse_background(background: str) -> tuple[int, int, int]:
    if background in BACKGROUNDS:
        return BACKGROUNDS[background]
    if len(background) == 7 and background.startswith("#"):
        try:
            return tuple(int(background[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
        except ValueError:
            pass
    raise SeedImageError(
        f"image.background={background!r}: use white, black, gray or a colour like #ffcc00"
    )


def seed_image(
    init: str,
    height: int,
    width: int,
    seed: int = 0,
    task_icon: str = "math",
    background: str = "white",
) -> np.ndarray:
    """The seed picture as uint8 (height, width, 3)."""
    if init == "gray":
        return np.full((height, width, 3), 128, dtype=np.uint8)
    if init == "noise":
        rng = np.random.default_rng(seed)
        return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    if init.startswith("icon:"):
        name = task_icon if init == "icon:task" else init.split(":", 1)[1]
        if name not in ICONS:
            raise SeedImageError(
                f"image.init={init!r}: unknown icon; use one of "
                + ", ".join(f"icon:{i}" for i in ICONS)
                + ", icon:task, gray, noise or a path to an image file"
            )
        return _resize(Image.fromarray(draw_icon(name)), height, width, f"icon {name}")
    return load_seed_file(init, height, width, background)


def load_seed_file(path: str | Path, height: int, width: int, background: str = "white"):
    """Any reasonable image file -> uint8 (height, width, 3) (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise SeedImageError(
            f"seed image {path} does not exist; set image.init to an image file, or to gray, "
            "noise or icon:task"
        )
    try:
        with Image.open(path) as img:
            img.load()
            rgb = to_rgb(img, parse_background(background), str(path))
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise SeedImageError(
            f"seed image {path} cannot be read as an image ({err}); is it a complete PNG/JPEG "
            "file? Re-export it, or set image.init to gray, noise or icon:task"
        ) from err
    return _resize(rgb, height, width, str(path))


def to_rgb(img: Image.Image, background: tuple[int, int, int], source: str) -> Image.Image:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(img, dtype=np.float64)
        scale = 257.0 if values.max(initial=0) > 255 or mode.startswith("I;16") else 1.0
        gray = np.clip(np.round(values / scale), 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([gray] * 3, axis=-1))
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "La", "PA"):
        img = img.convert("RGBA")
    elif mode in ("L", "1"):
        img = img.convert("RGB")
    elif mode == "RGBa":
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        canvas = Image.new("RGBA", img.size, (*background, 255))
        return Image.alpha_composite(canvas, img).convert("RGB")
    if img.mode == "RGB":
        return img
    raise SeedImageError(
        f"seed image {source} is in colour mode {mode}, which has no faithful RGB conversion "
        "here; convert it to RGB (or RGBA) PNG first, e.g. with an image editor"
    )


def _resize(img: Image.Image, height: int, width: int, source: str) -> np.ndarray:
    if (img.height, img.width) != (height, width):
        logger.info(
            "seed image %s is %dx%d; resized to %dx%d (Lanczos)",
            source,
            img.height,
            img.width,
            height,
            width,
        )
        img = img.resize((width, height), RESIZE_FILTER)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def draw_icon(name: str, size: int = 256) -> np.ndarray:
    """A flat icon drawn in code: `math` (a calculator with + - x = keys and a pencil) or
    `wrench` (a wrench over a gear). uint8 (size, size, 3) on a white background."""
    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    s = size / 256.0

    def box(x0, y0, x1, y1):
        return [round(x0 * s), round(y0 * s), round(x1 * s), round(y1 * s)]

    if name == "math":
        draw.rounded_rectangle(box(48, 28, 188, 228), radius=round(16 * s), fill=(52, 73, 94))
        draw.rounded_rectangle(box(64, 44, 172, 92), radius=round(6 * s), fill=(171, 235, 198))
        font = ImageFont.load_default(size=max(8, round(30 * s)))
        draw.text(box(120, 50, 0, 0)[:2], "42", fill=(30, 60, 40), font=font)
        font = ImageFont.load_default(size=max(6, round(18 * s)))
        keys = ["+", "-", "x", "=", "7", "8", "9", "/", "4", "5", "6", "%"]
        colours = [(231, 76, 60), (52, 152, 219), (241, 196, 15), (46, 204, 113)]
        for k, label in enumerate(keys):
            row, col = divmod(k, 4)
            x0, y0 = 64 + col * 28, 104 + row * 40
            draw.rounded_rectangle(
                box(x0, y0, x0 + 22, y0 + 32), radius=round(4 * s), fill=colours[k % 4]
            )
            draw.text(
                box(x0 + 11, y0 + 16, 0, 0)[:2], label, fill=(255, 255, 255), font=font, anchor="mm"
            )
        # A pencil across the corner.
        draw.polygon(
            [
                tuple(box(196, 60, 0, 0)[:2]),
                tuple(box(220, 36, 0, 0)[:2]),
                tuple(box(236, 52, 0, 0)[:2]),
                tuple(box(212, 76, 0, 0)[:2]),
            ],
            fill=(243, 156, 18),
        )
        draw.polygon(
            [
                tuple(box(196, 60, 0, 0)[:2]),
                tuple(box(212, 76, 0, 0)[:2]),
                tuple(box(186, 86, 0, 0)[:2]),
            ],
            fill=(90, 60, 30),
        )
    elif name == "wrench":
        centre = (128 * s, 128 * s)
        for k in range(8):  # gear teeth
            angle = k * np.pi / 4
            cx, cy = centre[0] + 84 * s * np.cos(angle), centre[1] + 84 * s * np.sin(angle)
            draw.ellipse([cx - 16 * s, cy - 16 * s, cx + 16 * s, cy + 16 * s], fill=(127, 140, 141))
        draw.ellipse(box(52, 52, 204, 204), fill=(149, 165, 166))
        draw.ellipse(box(100, 100, 156, 156), fill=(255, 255, 255))
        # The wrench: a thick diagonal handle with an open jaw at the top left.
        draw.line(box(84, 180, 176, 88), fill=(192, 57, 43), width=round(26 * s))
        draw.ellipse(box(40, 40, 116, 116), fill=(192, 57, 43))
        draw.polygon(
            [
                tuple(box(50, 50, 0, 0)[:2]),
                tuple(box(80, 40, 0, 0)[:2]),
                tuple(box(86, 70, 0, 0)[:2]),
                tuple(box(70, 86, 0, 0)[:2]),
                tuple(box(40, 80, 0, 0)[:2]),
            ],
            fill=(255, 255, 255),
        )
        draw.ellipse(box(160, 160, 200, 200), fill=(192, 57, 43))
    else:
        raise SeedImageError(f"unknown icon {name!r}; icons: {', '.join(ICONS)}")
    return np.asarray(img, dtype=np.uint8).copy()
