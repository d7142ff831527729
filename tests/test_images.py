import io
import re
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


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return buf.getvalue()


def png_16bit_rgb(width: int = 40, height: int = 40) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one; Pillow reads it as 8-bit RGB, truncated)."""
    rows = b"".join(b"\x00" + b"\xff\x00" * 3 * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (
            encoded(Image.fromarray(np.full((40, 40), 1000, np.uint16))),
            "mode I;16 (16-bit grey) is not accepted",
        ),
        (png_16bit_rgb(), "mode RGB with 16 bits per channel (RGB;16B) is not accepted"),
        (encoded(Image.fromarray(np.full((40, 40), 0.5, np.float32)), "TIFF"), "mode F (32-bit float)"),
        (encoded(Image.fromarray(np.full((40, 40), 7, np.int32)), "TIFF"), "mode I (32-bit integer)"),
        (encoded(Image.new("CMYK", (40, 40)), "JPEG"), "mode CMYK"),
    ],
)
def test_pixel_formats_outside_the_rule_are_refused_naming_the_mode(data, needle):
    with pytest.raises(InvalidImageError, match=re.escape(needle)) as caught:
        decode_image(data)
    assert "modes 1, L, LA, P, PA, RGB, RGBA" in str(caught.value)
    with pytest.raises(InvalidMaskError, match=re.escape(needle)):
        decode_mask(data)


@pytest.mark.parametrize(
    ("image", "fmt"),
    [
        (Image.new("RGB", (40, 40), (200, 100, 50)), "PNG"),
        (Image.new("RGB", (40, 40), (200, 100, 50)), "TIFF"),
        (Image.new("RGB", (40, 40), (200, 100, 50)), "BMP"),
        (Image.new("RGBA", (40, 40), (200, 100, 50, 255)), "WEBP"),
        (Image.new("P", (40, 40), 3), "PNG"),
        (Image.new("1", (40, 40), 1), "PNG"),
        (Image.new("LA", (40, 40), (90, 255)), "PNG"),
    ],
)
def test_eight_bit_formats_are_accepted_and_converted_to_rgb(image, fmt):
    out = decode_image(encoded(image, fmt), min_side=32)
    assert out.shape == (40, 40, 3) and out.dtype == np.uint8
    expected = np.asarray(image.convert("RGBA").convert("RGB"))
    np.testing.assert_array_equal(out, expected)


def test_minimum_side_checked_from_the_header():
    tiny = encode_png(np.zeros((1, 1, 3), np.uint8))
    assert decode_image(tiny).shape == (1, 1, 3)  # the library's default minimum is 1 pixel
    with pytest.raises(InvalidImageError, match=r"image: 1x1 is under the minimum of 32 pixels per side"):
        decode_image(tiny, min_side=32)
    narrow = encode_png(np.zeros((31, 200, 3), np.uint8))
    with pytest.raises(InvalidImageError, match="mask: 200x31 is under the minimum"):
        decode_mask(narrow, min_side=32)
    assert decode_image(encode_png(np.zeros((32, 32, 3), np.uint8)), min_side=32).shape == (32, 32, 3)


def test_max_pixels_variable_is_parsed_in_one_place(monkeypatch):
    from models.data.images import DEFAULT_MAX_PIXELS, max_pixels_from_env
    from models.errors import ConfigError

    monkeypatch.delenv("LESIONSYNTH_MAX_PIXELS", raising=False)
    assert max_pixels_from_env() == DEFAULT_MAX_PIXELS
    for raw, needle in (("many", "must be an integer, got 'many'"), ("0", "must be >= 1, got 0")):
        monkeypatch.setenv("LESIONSYNTH_MAX_PIXELS", raw)
        with pytest.raises(ConfigError, match=f"LESIONSYNTH_MAX_PIXELS {needle}"):
            max_pixels_from_env()


@pytest.mark.parametrize("mode", ["RGB", "L", "1", "P", "RGBA", "LA"])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP"])
def test_decode_equals_the_previous_conversion_and_is_writable(mode, fmt):
    """Issue 14: decode_image makes one copy (no convert() of an RGB image, no asarray().copy()); the pixels
    are those of the previous path, and the array is still the caller's to write into."""
    if fmt == "JPEG" and mode not in ("RGB", "L"):
        pytest.skip("JPEG holds no alpha, palette or 1-bit images")
    rng = np.random.default_rng(1)
    rgba = Image.fromarray(rng.integers(0, 256, (37, 41, 4), dtype=np.uint8), "RGBA")
    img = rgba if mode == "RGBA" else rgba.convert(mode)
    if fmt == "BMP" and mode in ("RGBA", "LA"):
        img = img.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    data = buf.getvalue()
    before = Image.open(io.BytesIO(data))
    if before.mode in ("RGBA", "LA", "PA") or (before.mode == "P" and "transparency" in before.info):
        before = before.convert("RGBA")
        before = Image.alpha_composite(Image.new("RGBA", before.size, (0, 0, 0, 255)), before)
    expected = np.asarray(before.convert("RGB"), dtype=np.uint8).copy()
    out = decode_image(data)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint8 and out.flags.writeable and out.flags.c_contiguous and out.flags.owndata
    out[0, 0] = 0  # writable without a copy
