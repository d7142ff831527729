import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from models.data.images import check_pair, decode_image, decode_mask, encode_png
from models.errors import InvalidImageError, InvalidMaskError


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def test_rgb_round_trip():
    img = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    out = decode_image(encode_png(img))
    assert out.dtype == np.uint8 and out.shape == (7, 9, 3)
    np.testing.assert_array_equal(out, img)


def test_grayscale_becomes_rgb():
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5)
    out = decode_image(png(gray))
    assert out.shape == (4, 5, 3)
    np.testing.assert_array_equal(out[..., 0], gray)
    np.testing.assert_array_equal(out[..., 2], gray)


def test_rgba_is_composited_on_black():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 100, 50, 255)  # opaque
    rgba[1, 1] = (200, 100, 50, 0)  # fully transparent
    out = decode_image(png(rgba))
    assert tuple(out[0, 0]) == (200, 100, 50)
    assert tuple(out[1, 1]) == (0, 0, 0)


def test_mask_threshold_is_127():
    values = np.array([[0, 127, 128, 255]], dtype=np.uint8)
    assert decode_mask(png(values)).tolist() == [[False, False, True, True]]


def test_colour_mask_accepted():
    colour = np.zeros((3, 3, 3), dtype=np.uint8)
    colour[1, 1] = 255
    mask = decode_mask(png(colour))
    assert mask.sum() == 1 and mask[1, 1]


@pytest.mark.parametrize(
    "data, needle",
    [
        (b"definitely not an image", "not a supported image"),
        (b"", "not a supported image"),
        (b"%PDF-1.4 fake", "not a supported image"),
    ],
)
def test_not_an_image(data, needle):
    with pytest.raises(InvalidImageError, match=needle):
        decode_image(data)


def test_truncated_png():
    data = encode_png(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    with pytest.raises(InvalidImageError, match="truncated or corrupt|cannot be read"):
        decode_image(data[: len(data) // 2])


def test_pixel_limit_checked_before_decoding(monkeypatch):
    data = encode_png(np.zeros((100, 100, 3), dtype=np.uint8))
    with pytest.raises(InvalidImageError, match="10,000 pixels is over the limit of 9,999"):
        decode_image(data, max_pixels=9_999)
    assert decode_image(data, max_pixels=10_000).shape == (100, 100, 3)
    monkeypatch.setenv("LESIONSYNTH_MAX_PIXELS", "5000")
    with pytest.raises(InvalidImageError, match="over the limit of 5,000"):
        decode_image(data)


def test_huge_declared_dimensions_refused_cheaply():
    # A tiny file declaring 60000 x 60000 pixels: refused from the header, never decoded.
    data = bytearray(encode_png(np.zeros((1, 1, 3), dtype=np.uint8)))
    data[16:24] = struct.pack(">II", 60000, 60000)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # IHDR CRC
    with pytest.raises(InvalidImageError, match="60000x60000 = 3,600,000,000 pixels is over the limit"):
        decode_image(bytes(data))


def test_check_pair_errors():
    img = np.zeros((4, 4, 3), dtype=np.uint8)
    with pytest.raises(InvalidMaskError, match="mask is 5x4 but the image is 4x4"):
        check_pair(img, np.ones((4, 5), dtype=bool))
    with pytest.raises(InvalidMaskError, match="empty"):
        check_pair(img, np.zeros((4, 4), dtype=bool))
    check_pair(img, np.eye(4, dtype=bool))
