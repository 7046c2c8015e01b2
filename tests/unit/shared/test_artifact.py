import numpy as np
import pytest

from shared.artifact import decode_png, encode_png, png_to_pil


def test_png_round_trip_is_exact_and_keeps_metadata():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    data = encode_png(pixels, {"model": "tiny", "step": 7})
    back, meta = decode_png(data)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, pixels)
    assert meta == {"model": "tiny", "step": "7"}
    np.testing.assert_array_equal(np.asarray(png_to_pil(data)), pixels)


def test_encode_refuses_non_uint8():
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 4, 3), dtype=np.float32))
