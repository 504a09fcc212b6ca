"""Images that lie about their size, damaged images, and header-only size reads: each is refused with a named
MediaError (never Pillow's own exceptions) or read without decoding pixels."""
from __future__ import annotations

import io
import resource
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from vl3fast.processing import (
    CorruptMediaError, MediaError, MediaSizeError, NotMediaError, estimate_tokens, load_image, preprocess_images,
)
from vl3fast.processing.image import DEFAULT_MAX_IMAGE_PIXELS, MAX_PIXELS_ENV, image_size


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header_only(path, width, height, idat=b""):
    """A tiny PNG whose IHDR claims width x height (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))
    return str(path)


def _bomb_png(path, side):
    """A real, valid PNG of side x side black pixels that compresses to a few hundred bytes."""
    raw = zlib.compress(b"".join(b"\x00" + bytes(side) for _ in range(side)), 9)  # filter byte + gray row
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", raw) + _chunk(b"IEND", b""))
    return str(path)


def test_bomb_header_is_a_media_size_error(tmp_path):
    path = _png_header_only(tmp_path / "bomb.png", 30000, 30000)
    for call in (load_image, image_size, lambda p: estimate_tokens(images=[p]), preprocess_images):
        with pytest.raises(MediaSizeError, match="decode limit") as info:
            call(path)
        assert path in str(info.value)


def test_small_file_large_image_is_refused_before_decoding(tmp_path):
    path = _bomb_png(tmp_path / "big.png", 10000)
    assert (tmp_path / "big.png").stat().st_size < 200_000
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(MediaSizeError, match=MAX_PIXELS_ENV):
        load_image(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 100_000  # KiB: nothing was decoded


def test_limit_is_configurable(tmp_path, monkeypatch):
    path = _bomb_png(tmp_path / "mid.png", 300)
    monkeypatch.setenv(MAX_PIXELS_ENV, str(300 * 300 - 1))
    with pytest.raises(MediaSizeError, match="89,999 pixels"):
        load_image(path)
    assert load_image(path, max_pixels=300 * 300).size == (300, 300)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(ValueError, match=MAX_PIXELS_ENV):
        load_image(path)
    monkeypatch.delenv(MAX_PIXELS_ENV)
    assert load_image(path).size == (300, 300) and DEFAULT_MAX_IMAGE_PIXELS >= 8192 * 8192


def test_png_size_is_header_only(tmp_path):
    """Pillow's PNG getexif() decodes the whole image; image_size must not (a 6000x6000 PNG here)."""
    path = _bomb_png(tmp_path / "large.png", 6000)
    start = time.perf_counter()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert image_size(path) == (6000, 6000)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 20_000  # KiB (decoding would be 36 MB)
    assert time.perf_counter() - start < 5  # generous: a bound against a full decode, not a speed claim


@pytest.mark.parametrize("orientation,expect", [(1, (20, 30)), (6, (30, 20)), (8, (30, 20)), (3, (20, 30))])
def test_png_exif_after_pixels_is_found_header_only(tmp_path, orientation, expect):
    """An eXIf chunk stored after IDAT: image_size (chunk walk) agrees with load_image (full decode)."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(buf, format="PNG")
    data = buf.getvalue()
    exif = Image.Exif()
    exif[0x0112] = orientation
    iend = data.rindex(b"IEND") - 4
    path = tmp_path / "late_exif.png"
    path.write_bytes(data[:iend] + _chunk(b"eXIf", exif.tobytes()) + data[iend:])
    assert image_size(str(path)) == expect
    w, h = load_image(str(path)).size
    assert (h, w) == expect


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9])
def test_truncated_images_are_corrupt_media(tmp_path, cut):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buf, format="PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buf.getvalue()[: int(len(buf.getvalue()) * cut)])
    with pytest.raises(MediaError) as info:
        load_image(str(path))
    assert isinstance(info.value, (CorruptMediaError, NotMediaError)) and str(path) in str(info.value)


def test_animated_image_gives_its_first_frame(tmp_path):
    frames = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (10, 200)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    out = np.asarray(load_image(str(path)))
    assert out.shape == (8, 8, 3) and abs(int(out.mean()) - 10) <= 2


def test_size_error_names_the_file(tmp_path):
    path = tmp_path / "thin.png"
    Image.fromarray(np.zeros((1, 500, 3), np.uint8)).save(path)
    with pytest.raises(MediaSizeError) as info:
        preprocess_images([str(path)])
    assert str(path) in str(info.value)
    with pytest.raises(MediaSizeError) as info:
        estimate_tokens(images=[str(path)])
    assert str(path) in str(info.value)
