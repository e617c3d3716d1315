"""Reading image files: conversion rules with hand-computed pixel values, and one clear error per bad file."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spair.data.images import DEFAULT_MAX_PIXELS, list_images, read_image, to_rgb
from spair.errors import DataError


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _save(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


# ---------------------------------------------------------------------------------------------
# Conversion rules
# ---------------------------------------------------------------------------------------------

def test_rgb_png_round_trip_is_exact(tmp_path):
    arr = _noise(7, 5)
    out = read_image(_save(Image.fromarray(arr), tmp_path / "a.png"))
    assert out.dtype == np.uint8 and out.shape == (7, 5, 3)
    np.testing.assert_array_equal(out, arr)


def test_grey_and_bilevel_are_replicated_to_three_channels(tmp_path):
    grey = np.array([[0, 17, 255]], np.uint8)
    out = read_image(_save(Image.fromarray(grey), tmp_path / "g.png"))
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=-1))

    bilevel = Image.new("1", (3, 1))
    bilevel.putpixel((1, 0), 1)
    out = read_image(_save(bilevel, tmp_path / "b.png"))
    np.testing.assert_array_equal(out[0, :, 0], [0, 255, 0])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_palette_image_uses_its_palette(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    img.putpixel((1, 0), 1)
    out = read_image(_save(img, tmp_path / "p.png"))
    np.testing.assert_array_equal(out[0], [[10, 20, 30], [200, 100, 50]])


def test_palette_with_transparency_is_composited_over_black(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    img.putpixel((1, 0), 1)
    img.info["transparency"] = 0  # palette entry 0 fully transparent
    out = read_image(_save(img, tmp_path / "pt.png"))
    np.testing.assert_array_equal(out[0], [[0, 0, 0], [200, 100, 50]])


def test_la_is_composited_over_black(tmp_path):
    grey = Image.fromarray(np.array([[200, 100, 255]], np.uint8))
    alpha = Image.fromarray(np.array([[128, 255, 0]], np.uint8))
    out = read_image(_save(Image.merge("LA", [grey, alpha]), tmp_path / "la.png"))
    # (c * a + 127) // 255: (200 * 128 + 127) // 255 = 100; a = 255 keeps 100; a = 0 gives 0
    np.testing.assert_array_equal(out[0, :, 0], [100, 100, 0])
    np.testing.assert_array_equal(out[..., 0], out[..., 1])


def test_rgba_is_composited_over_black(tmp_path):
    arr = np.array([[[255, 0, 10, 51], [1, 2, 3, 255]]], np.uint8)
    out = read_image(_save(Image.fromarray(arr, mode="RGBA"), tmp_path / "rgba.png"))
    # 255 * 51 + 127 = 13132 -> 51; 10 * 51 + 127 = 637 -> 2
    np.testing.assert_array_equal(out[0], [[51, 0, 2], [1, 2, 3]])


def test_sixteen_bit_png_is_shifted_right_by_8(tmp_path):
    arr = np.array([[0, 255, 256, 511, 32768, 65535]], np.uint16)
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    out = read_image(_save(img, tmp_path / "g16.png"))
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 1, 1, 128, 255])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_big_endian_sixteen_bit_tiff(tmp_path):
    img = Image.fromarray(np.array([[0, 256, 65535]], dtype=">u2"))
    assert img.mode == "I;16B"
    out = read_image(_save(img, tmp_path / "g16b.tif"))
    np.testing.assert_array_equal(out[0, :, 1], [0, 1, 255])


def test_32_bit_integer_is_clipped_to_16_bits_then_shifted(tmp_path):
    img = Image.fromarray(np.array([[-5, 0, 256, 65535, 70000]], np.int32))
    assert img.mode == "I"
    out = read_image(_save(img, tmp_path / "i32.tif"))
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 1, 255, 255])


def test_float_image_is_clipped_to_unit_range_and_scaled(tmp_path):
    img = Image.fromarray(np.array([[-1.0, 0.0, 0.2, 1.0, 2.0]], np.float32))
    assert img.mode == "F"
    out = read_image(_save(img, tmp_path / "f.tif"))
    # round(255 * 0.2) = 51
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 51, 255, 255])


def test_cmyk_is_converted_to_rgb(tmp_path):
    img = Image.new("CMYK", (2, 1), (0, 255, 0, 0))  # no cyan, full magenta, no yellow, no black
    img.putpixel((1, 0), (0, 0, 0, 255))  # full black
    out = read_image(_save(img, tmp_path / "cmyk.tif"))
    np.testing.assert_array_equal(out[0], [[255, 0, 255], [0, 0, 0]])


def test_ycbcr_goes_through_pil_conversion():
    img = Image.new("YCbCr", (1, 1), (128, 128, 128))  # neutral grey
    np.testing.assert_array_equal(to_rgb(img)[0, 0], [128, 128, 128])


def test_gif_reads_the_first_frame(tmp_path):
    frames = [Image.new("P", (2, 2), 1), Image.new("P", (2, 2), 2)]
    for f in frames:
        f.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    np.testing.assert_array_equal(read_image(tmp_path / "anim.gif")[0, 0], [255, 0, 0])


def test_unsupported_mode_is_refused():
    class Odd:
        mode = "XYZ"
        info: dict = {}
        has_transparency_data = False

    with pytest.raises(DataError, match="unsupported image mode 'XYZ'"):
        to_rgb(Odd())  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Errors: one DataError naming the file
# ---------------------------------------------------------------------------------------------

def _png_bytes(arr: np.ndarray, path: Path) -> bytes:
    Image.fromarray(arr).save(path)
    return path.read_bytes()


@pytest.mark.parametrize("case", ["missing", "folder", "empty", "truncated_png", "truncated_jpeg", "text"])
def test_bad_files_raise_one_line_naming_the_file(tmp_path, case):
    path = tmp_path / f"bad_{case}.png"
    if case == "folder":
        path.mkdir()
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "truncated_png":
        data = _png_bytes(_noise(64, 64), tmp_path / "full.png")
        path.write_bytes(data[: len(data) // 2])
    elif case == "truncated_jpeg":
        path = tmp_path / "bad.jpg"
        Image.fromarray(_noise(64, 64)).save(tmp_path / "full.jpg", quality=95)
        data = (tmp_path / "full.jpg").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "text":
        path.write_text("this is not an image\n")
    expected = {"missing": "not found", "folder": "folder", "empty": "empty", "truncated_png": "truncated or corrupt",
                "truncated_jpeg": "truncated or corrupt", "text": "not an image"}[case]
    with pytest.raises(DataError) as info:
        read_image(path)
    message = str(info.value)
    assert expected in message and str(path) in message and "\n" not in message


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk (8-bit RGB) with an empty IDAT: a header, no pixel data."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_huge_image_is_refused_from_its_header_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(_png_header_only(20000, 20000))  # 400 Mpx claimed, a few bytes on disk
    with pytest.raises(DataError, match=r"too large: .*huge.png.*max_pixels = 64000000"):
        read_image(path)
    path.write_bytes(_png_header_only(9000, 8000))  # 72 Mpx: below PIL's own limit, above ours
    with pytest.raises(DataError, match=r"too large: .*9000x8000 = 72000000 pixels.*max_pixels = 64000000"):
        read_image(path)
    assert DEFAULT_MAX_PIXELS == 64_000_000


def test_max_pixels_limit_is_configurable(tmp_path):
    path = _save(Image.fromarray(_noise(10, 10)), tmp_path / "a.png")
    assert read_image(path, max_pixels=100).shape == (10, 10, 3)
    with pytest.raises(DataError, match="max_pixels = 99"):
        read_image(path, max_pixels=99)


# ---------------------------------------------------------------------------------------------
# Listing inputs
# ---------------------------------------------------------------------------------------------

def test_list_images_recurses_filters_and_sorts(tmp_path):
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    for name in ("b.png", "A.JPG", "sub/c.webp", "notes.txt", "sub/d.tiff"):
        (root / name).write_bytes(b"x")
    listed = list_images([root])
    assert [name for _, name in listed] == ["A.JPG", "b.png", "sub/c.webp", "sub/d.tiff"]
    assert listed[2][0] == root / "sub" / "c.webp"


def test_list_images_keeps_explicit_files_with_any_extension(tmp_path):
    f = tmp_path / "scan.dat"
    f.write_bytes(b"x")
    assert list_images([f]) == [(f, str(f))]


def test_list_images_errors(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        list_images([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found in"):
        list_images([tmp_path / "empty"])
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "same.png").write_bytes(b"x")
    with pytest.raises(DataError, match="same name 'same.png'"):
        list_images([tmp_path / "a", tmp_path / "b"])
