"""Image loading with Pillow: RGB, EXIF orientation applied, transparency composited on white."""
from __future__ import annotations

import os
from typing import Union

import numpy as np

from .errors import CorruptMediaError, MediaNotFoundError, NotMediaError

ImageLike = Union[str, os.PathLike, "PIL.Image.Image", np.ndarray]  # noqa: F821


def _check_file(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MediaNotFoundError(f"no such file: {path!r}")
    if not os.path.isfile(path):
        raise MediaNotFoundError(f"not a regular file: {path!r}")
    return path


def _open(path: str | os.PathLike) -> tuple[str, "PIL.Image.Image"]:  # noqa: F821
    """(name, lazily opened image): reads the header only; NotMediaError when Pillow cannot read it."""
    from PIL import Image, UnidentifiedImageError

    name = _check_file(path)
    try:
        return name, Image.open(name)
    except UnidentifiedImageError as e:
        raise NotMediaError(f"{name!r} is not an image Pillow can read ({e})") from e


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


def load_image(source: ImageLike) -> "PIL.Image.Image":  # noqa: F821
    """Opens an image file (or takes a PIL image) and returns it as a decoded RGB PIL image with its
    EXIF orientation applied (a photo taken in portrait comes back upright).

    Raises MediaNotFoundError (missing path), NotMediaError (not an image Pillow can read) and
    CorruptMediaError (a truncated or damaged image).
    """
    from PIL import Image, ImageOps

    if isinstance(source, Image.Image):
        image = source
        name = "<PIL image>"
    elif isinstance(source, (str, os.PathLike)):
        name, image = _open(source)
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as e:  # Pillow raises OSError for truncated data
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
        image = source
    elif isinstance(source, (str, os.PathLike)):
        _, image = _open(source)
    else:
        raise TypeError(f"expected a path, PIL.Image or array, got {type(source).__name__}")
    width, height = image.size
    try:
        orientation = image.getexif().get(0x0112, 1)
    except (OSError, SyntaxError, ValueError):
        orientation = 1
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return height, width
