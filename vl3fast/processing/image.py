"""Image loading with Pillow: RGB, EXIF orientation applied, transparency composited on white.

Decoded size is capped: an image whose header claims more than `max_image_pixels()` pixels (default
64 Mi = 8192 x 8192; set ``VL3FAST_MAX_IMAGE_PIXELS`` or pass ``max_pixels=``) is refused with a
`MediaSizeError` before any pixel is decoded, so a 100-byte PNG cannot allocate gigabytes.
"""
from __future__ import annotations

import os
import struct
from typing import Union

import numpy as np

from .errors import CorruptMediaError, MediaNotFoundError, MediaSizeError, NotMediaError

DEFAULT_MAX_IMAGE_PIXELS = 64 * 1024 * 1024
MAX_PIXELS_ENV = "VL3FAST_MAX_IMAGE_PIXELS"

ImageLike = Union[str, os.PathLike, "PIL.Image.Image", np.ndarray]  # noqa: F821


def _check_file(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MediaNotFoundError(f"no such file: {path!r}")
    if not os.path.isfile(path):
        raise MediaNotFoundError(f"not a regular file: {path!r}")
    return path


def max_image_pixels() -> int:
    """The decode limit in pixels: ``VL3FAST_MAX_IMAGE_PIXELS`` if set, else DEFAULT_MAX_IMAGE_PIXELS."""
    raw = os.environ.get(MAX_PIXELS_ENV)
    if raw is None or raw == "":
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{MAX_PIXELS_ENV}={raw!r}: expected a positive integer number of pixels") from None
    if value <= 0:
        raise ValueError(f"{MAX_PIXELS_ENV}={raw!r}: expected a positive integer number of pixels")
    return value


def _check_pixels(name: str, width: int, height: int, max_pixels: int | None) -> None:
    limit = max_image_pixels() if max_pixels is None else max_pixels
    if width * height > limit:
        raise MediaSizeError(
            f"{name!r} is {width}x{height} (WxH) = {width * height:,} pixels, over the decode limit of {limit:,} "
            f"pixels (raise it with {MAX_PIXELS_ENV} or max_pixels=)")


def _open_image(path: str | os.PathLike, max_pixels: int | None = None) -> tuple[str, "PIL.Image.Image"]:  # noqa: F821
    """(name, lazily opened image): reads the header only; NotMediaError when Pillow cannot read it,
    MediaSizeError when the header claims more pixels than the decode limit."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    name = _check_file(path)
    try:
        with warnings.catch_warnings():  # our own limit below replaces Pillow's bomb warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(name)
    except UnidentifiedImageError as e:
        raise NotMediaError(f"{name!r} is not an image Pillow can read ({e})") from e
    except Image.DecompressionBombError as e:
        raise MediaSizeError(f"{name!r}: {e} (vl3fast's own decode limit is {max_image_pixels():,} pixels, "
                             f"{MAX_PIXELS_ENV})") from e
    except (OSError, SyntaxError, ValueError, struct.error) as e:
        raise CorruptMediaError(f"{name!r} has a damaged image header: {e}") from e
    _check_pixels(name, image.size[0], image.size[1], max_pixels)
    return name, image


def to_rgb(image) -> "PIL.Image.Image":  # noqa: F821
    """A PIL image as RGB; transparency (alpha band or palette transparency) is composited onto
    white, exactly as transformers' `convert_to_rgb` does, so both pipelines see the same pixels."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(source: ImageLike, *, max_pixels: int | None = None) -> "PIL.Image.Image":  # noqa: F821
    """Opens an image file (or takes a PIL image) and returns it as a decoded RGB PIL image with its
    EXIF orientation applied (a photo taken in portrait comes back upright). Animated images give
    their first frame, as transformers' loader does.

    Raises MediaNotFoundError (missing path), NotMediaError (not an image Pillow can read),
    CorruptMediaError (a truncated or damaged image) and MediaSizeError (over the decode limit,
    `max_pixels` or `max_image_pixels()`).
    """
    from PIL import Image, ImageOps

    if isinstance(source, Image.Image):
        image = source
        name = "<PIL image>"
    elif isinstance(source, (str, os.PathLike)):
        name, image = _open_image(source, max_pixels)
        try:
            image.load()
        except (OSError, SyntaxError, ValueError, struct.error) as e:  # Pillow raises OSError for truncated data
            raise CorruptMediaError(f"{name!r} is a truncated or corrupt image: {e}") from e
    else:
        raise TypeError(f"load_image expects a path or a PIL.Image, got {type(source).__name__}")
    try:
        image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError) as e:
        raise CorruptMediaError(f"{name!r}: unreadable EXIF orientation: {e}") from e
    return to_rgb(image)


def image_size(source: ImageLike) -> tuple[int, int]:
    """(height, width) of an image as `load_image` would return it, reading only the header
    (EXIF orientations 5-8 swap the sides). Arrays are taken as [H, W, C] (or [H, W])."""
    from PIL import Image

    if isinstance(source, np.ndarray):
        return int(source.shape[0]), int(source.shape[1])
    if isinstance(source, Image.Image):
        image, name = source, None
    elif isinstance(source, (str, os.PathLike)):
        name, image = _open_image(source)
    else:
        raise TypeError(f"expected a path, PIL.Image or array, got {type(source).__name__}")
    width, height = image.size
    if _orientation(image, name) in (5, 6, 7, 8):
        width, height = height, width
    return height, width


def _orientation(image, name: str | None) -> int:
    """The EXIF orientation tag without decoding pixels. Pillow's PNG getexif() decodes the whole image to
    find an eXIf chunk stored after the pixel data, so for PNG files the chunks are walked here instead."""
    try:
        if image.format == "PNG" and name is not None and "exif" not in image.info:
            exif_bytes = _png_exif_chunk(name)
            if exif_bytes is None:
                return 1
            from PIL import Image

            exif = Image.Exif()
            exif.load(exif_bytes)
            return int(exif.get(0x0112, 1))
        return int(image.getexif().get(0x0112, 1))
    except (OSError, SyntaxError, ValueError, TypeError, struct.error):
        return 1  # an unreadable tag: load_image's exif_transpose treats it as upright too


def _png_exif_chunk(path: str) -> bytes | None:
    """The eXIf chunk of a PNG file (or None), found by seeking over the other chunks."""
    with open(path, "rb") as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            return None
        while True:
            head = f.read(8)
            if len(head) < 8:
                return None
            length, kind = struct.unpack(">I4s", head)
            if kind == b"eXIf":
                return f.read(length)
            if kind == b"IEND":
                return None
            f.seek(length + 4, os.SEEK_CUR)  # data + CRC
