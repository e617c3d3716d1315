"""Reading image files of any common format into the package's ``uint8 (H, W, 3)`` RGB convention.

:func:`list_images` turns command-line paths (files and folders, searched recursively) into a sorted
list of image files; :func:`read_image` decodes one of them. Every problem a user can cause (a missing
file, a folder where a file is expected, an empty, truncated or corrupt file, a text file named
``.png``, a mode that cannot be converted, an image too large to decode safely) raises a
:class:`~spair.errors.DataError` whose one-line message names the file.

Conversion rules (pixel data is used as stored: EXIF orientation is not applied, and for
multi-frame files such as animated GIFs or multi-page TIFFs only the first frame is read):

==========================================  ====================================================
PIL mode                                    becomes RGB by
==========================================  ====================================================
``RGB``, ``RGBX``                           taking the three colour channels
``1``, ``L``, ``P`` (no transparency)       palette lookup / replicating the grey value
``LA``, ``La``, ``PA``, ``RGBA``, ``RGBa``,  compositing over black:
``P`` with transparency                     ``out = (c * a + 127) // 255`` per channel
``I;16``, ``I;16B``, ``I;16L``, ``I;16N``   16-bit grey scaled to 8 bits by ``v >> 8``
``I`` (32-bit integer)                      treated as 16-bit grey (the mode PIL uses for 16-bit
                                            data of several formats): clipped to ``[0, 65535]``,
                                            then ``>> 8``
``F`` (32-bit float)                        clipped to ``[0, 1]``, then ``round(255 * v)``
``CMYK``, ``YCbCr``, ``LAB``, ``HSV``       PIL's colour conversion to RGB
==========================================  ====================================================

Any other mode raises a :class:`~spair.errors.DataError`. Grey values are replicated to three
channels. The header is read first and an image with more than ``max_pixels`` pixels is refused
before any pixel data is decoded, so a huge image cannot exhaust memory.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

#: File-name extensions (lower case) that :func:`list_images` picks up inside folders.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

#: Default upper limit on width × height; larger images are refused before decoding.
DEFAULT_MAX_PIXELS: int = 64_000_000

_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
_DIRECT_RGB_MODES = frozenset({"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})


def list_images(paths: Iterable[str | os.PathLike]) -> list[tuple[Path, str]]:
    """Expand files and folders into ``(path, display name)`` pairs of image files.

    A file is taken as given, whatever its extension, and its display name is the path as given.
    A folder is searched recursively (symbolic links to folders are not followed) for files whose
    extension, in any case, is one of :data:`IMAGE_EXTENSIONS`; their display names are the paths
    relative to that folder, with ``/`` separators, and they are listed in sorted order of that name.

    Raises :class:`DataError` for a path that does not exist, when two inputs would get the same
    display name, and when no image is found at all.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise DataError("no input images given")
    found: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_dir():
            found.extend(_images_in_folder(path))
        elif path.exists():
            found.append((path, str(path)))
        else:
            raise DataError(f"no such file or folder: {path}")
    if not found:
        where = ", ".join(str(p) for p in paths)
        raise DataError(f"no images found in {where} (looked for {' '.join(IMAGE_EXTENSIONS)})")
    seen: dict[str, Path] = {}
    for path, name in found:
        if name in seen:
            raise DataError(f"two inputs have the same name '{name}': {seen[name]} and {path}")
        seen[name] = path
    return found


def _images_in_folder(folder: Path) -> list[tuple[Path, str]]:
    """Image files below ``folder`` as ``(path, relative posix name)``, sorted by that name."""
    out = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        for name in files:
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                path = Path(root) / name
                out.append((path, path.relative_to(folder).as_posix()))
    out.sort(key=lambda item: item[1])
    return out


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode the image file ``path`` into a ``uint8 (H, W, 3)`` RGB array (rules in the module doc).

    The whole image is decoded (``Image.load``), so a truncated or corrupt file is detected here
    rather than producing a partly grey image. Images with more than ``max_pixels`` pixels are
    refused after reading the header and before decoding.
    """
    path = Path(path)
    if max_pixels < 1:
        raise DataError(f"max_pixels must be at least 1, got {max_pixels}")
    if path.is_dir():
        raise DataError(f"expected an image file but got a folder: {path}")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except OSError as e:
        raise DataError(f"cannot read image file {path}: {e.strerror or e}") from None
    if size == 0:
        raise DataError(f"image file is empty (0 bytes): {path}")
    try:
        # PIL warns above its own pixel limit; our own limit (checked below) applies instead.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except UnidentifiedImageError:
        raise DataError(f"not an image file (unrecognised format): {path}") from None
    except Image.DecompressionBombError:
        # PIL refuses, already in its header parser, images above twice its own pixel limit.
        decoder_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        if max_pixels < decoder_limit:
            raise DataError(f"image is too large: {path} has more than {decoder_limit} pixels, "
                            f"more than the limit max_pixels = {max_pixels}") from None
        raise DataError(f"image is too large: {path} has more than {decoder_limit} pixels, "
                        "the most the image decoder accepts") from None
    except PermissionError as e:
        raise DataError(f"cannot read image file {path}: {e.strerror or e}") from None
    except (OSError, SyntaxError, ValueError) as e:  # a header PIL recognises but cannot parse
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"image file is truncated or corrupt: {path} ({detail})") from None
    with img:
        width, height = img.size
        if width * height > max_pixels:
            raise DataError(f"image is too large: {path} is {width}x{height} = {width * height} pixels, "
                            f"more than the limit max_pixels = {max_pixels}")
        if width < 1 or height < 1:
            raise DataError(f"image has no pixels ({width}x{height}): {path}")
        try:
            img.load()
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - PIL reports corrupt data with many exception types
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(f"image file is truncated or corrupt: {path} ({detail})") from None
        try:
            return to_rgb(img)
        except DataError as e:
            raise DataError(f"{e}: {path}") from None


def to_rgb(img: Image.Image) -> np.ndarray:
    """Convert a loaded PIL image into a ``uint8 (H, W, 3)`` array following the module's rules.

    Raises :class:`DataError` (without a file name) for a mode with no rule.
    """
    mode = img.mode
    if mode == "P" and img.has_transparency_data:
        mode = "PA"
    elif mode == "L" and "transparency" in img.info:
        mode = "LA"
    elif mode == "RGB" and "transparency" in img.info:
        mode = "RGBA"
    if mode in _ALPHA_MODES:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
        out = (rgba[..., :3] * rgba[..., 3:4] + 127) // 255
        return np.ascontiguousarray(out, dtype=np.uint8)
    if mode in _SIXTEEN_BIT_MODES:
        grey = (np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8)
        return _grey_to_rgb(grey)
    if mode == "I":
        grey = (np.clip(np.asarray(img, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
        return _grey_to_rgb(grey)
    if mode == "F":
        values = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0)
        grey = np.round(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
        return _grey_to_rgb(grey)
    if mode in _DIRECT_RGB_MODES:
        return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))
    raise DataError(f"unsupported image mode '{img.mode}'")


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=-1))
