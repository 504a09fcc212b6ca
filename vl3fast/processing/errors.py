"""Every way a media file or a processing setting can be refused, in one place.

All are `ValueError`s (bad input, not a bug), so `except ValueError` catches them; each also says
which file and what was wrong. `MediaNotFoundError` is a `FileNotFoundError` too, and
`DecodeTimeoutError` a `TimeoutError`, so code written against the built-ins keeps working.
"""
from __future__ import annotations


class MediaError(ValueError):
    """Base class of the errors below."""


class MediaNotFoundError(MediaError, FileNotFoundError):
    """The path does not exist or is not a regular file."""


class NotMediaError(MediaError):
    """The file is not an image or video this package can open (e.g. a text file)."""


class ImageNotVideoError(NotMediaError):
    """A still image (PNG, JPEG, WebP...) was given where a video is expected."""


class CorruptMediaError(MediaError):
    """The file is media but truncated or damaged: it cannot be opened or decoding stops early."""


class EmptyVideoError(MediaError):
    """The file has no video stream, or its video stream has no frames."""


class UnsupportedCodecError(MediaError):
    """The video's codec has no decoder in the FFmpeg build PyAV uses."""


class DecodeTimeoutError(MediaError, TimeoutError):
    """Decoding did not finish within the `timeout` given to `load_video`."""


class MediaSizeError(MediaError):
    """An image or frame size the resize rules cannot handle (aspect ratio > 200, zero size)."""


class TokenBudgetError(MediaError):
    """The media would become more visual tokens than the budget allows (raised before any decoding)."""


__all__ = [
    "MediaError", "MediaNotFoundError", "NotMediaError", "ImageNotVideoError", "CorruptMediaError",
    "EmptyVideoError", "UnsupportedCodecError", "DecodeTimeoutError", "MediaSizeError", "TokenBudgetError",
]
