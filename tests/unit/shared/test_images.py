"""Seed pictures: every reasonable image file, icons, and clear refusals."""

import numpy as np
import pytest
from PIL import Image

from shared.images import SeedImageError, draw_icon, seed_image


def _save(tmp_path, img, name="seed.png"):
    path = tmp_path / name
    img.save(path)
    return str(path)


def test_gray_and_noise():
    assert (seed_image("gray", 32, 64) == 128).all() and seed_image("gray", 32, 64).shape == (
        32,
        64,
        3,
    )
    a, b = seed_image("noise", 32, 32, seed=1), seed_image("noise", 32, 32, seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, seed_image("noise", 32, 32, seed=2))


def test_rgba_is_composited_over_the_background(tmp_path):
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:16] = (255, 0, 0, 255)  # opaque red top, transparent (black) bottom
    path = _save(tmp_path, Image.fromarray(rgba, "RGBA"))
    white = seed_image(path, 32, 32)
    assert tuple(white[0, 0]) == (255, 0, 0) and tuple(white[31, 0]) == (255, 255, 255)
    assert tuple(seed_image(path, 32, 32, background="#102030")[31, 0]) == (16, 32, 48)


def test_palette_grayscale_and_16_bit(tmp_path):
    palette = Image.fromarray(np.full((32, 32, 3), (0, 200, 0), np.uint8)).convert(
        "P", palette=Image.Palette.ADAPTIVE
    )
    assert tuple(seed_image(_save(tmp_path, palette, "p.png"), 32, 32)[5, 5]) == (0, 200, 0)
    transparent = Image.new("P", (32, 32), 0)
    transparent.putpalette([0, 0, 0] * 256)
    transparent.info["transparency"] = 0
    path = _save(tmp_path, transparent, "pt.png")
    assert tuple(seed_image(path, 32, 32)[0, 0]) == (255, 255, 255)
    gray = Image.fromarray(np.full((32, 32), 77, np.uint8), "L")
    assert tuple(seed_image(_save(tmp_path, gray, "l.png"), 32, 32)[3, 3]) == (77, 77, 77)
    deep = Image.fromarray(np.full((32, 32), 65535, np.uint16))  # 16-bit PNG, I;16
    assert deep.mode.startswith("I;16")
    assert tuple(seed_image(_save(tmp_path, deep, "i16.png"), 32, 32)[0, 0]) == (255,) * 3


def test_any_size_is_resized_to_the_configured_one(tmp_path, caplog):
    path = _save(tmp_path, Image.fromarray(np.full((10, 20, 3), 200, np.uint8)))
    with caplog.at_level("INFO", logger="shared.images"):
        pixels = seed_image(path, 64, 32)
    assert pixels.shape == (64, 32, 3) and abs(int(pixels.mean()) - 200) <= 1
    assert "resized to 64x32 (Lanczos)" in caplog.text


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_bytes(b"not an image at all"), "cannot be read"),
        (
            lambda p: p.write_bytes(
                _png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))[:300]
            ),
            "cannot be read",
        ),
        (lambda p: Image.new("CMYK", (8, 8)).save(p.with_suffix(".jpg")), "CMYK"),
    ],
)
def test_unusable_files_are_refused_with_what_to_do(tmp_path, make, message):
    path = tmp_path / "seed.png"
    make(path)
    if not path.exists() and path.with_suffix(".jpg").exists():
        path = path.with_suffix(".jpg")
    with pytest.raises(SeedImageError, match=message):
        seed_image(str(path), 32, 32)


def _png_bytes(pixels):
    import io

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_icons_are_drawn_and_the_task_picks_its_own():
    math, wrench = draw_icon("math"), draw_icon("wrench")
    assert math.shape == wrench.shape == (256, 256, 3)
    assert not np.array_equal(math, wrench)
    assert len(np.unique(math.reshape(-1, 3), axis=0)) > 10  # a picture, not a flat colour
    assert np.array_equal(seed_image("icon:task", 256, 256, task_icon="wrench"), wrench)
    assert np.array_equal(seed_image("icon:math", 256, 256), math)
    assert seed_image("icon:math", 64, 64).shape == (64, 64, 3)
    with pytest.raises(SeedImageError, match="unknown icon"):
        seed_image("icon:flask", 64, 64)
