"""What an ISO-BMFF (MP4/MOV) header says that PyAV does not expose before decoding: the top-level boxes
(a file without `moov` was never finalized) and the video track's display matrix (phones record portrait
video as landscape frames plus a rotation in the track header).

The rotation is turned into what FFmpeg's command line applies by default (`-autorotate`, fftools'
`get_rotation` and its transpose/flip choice), so frames come out as every player shows them.  PyAV only
offers the matrix per decoded frame (`VideoFrame.rotation`); reading it here keeps probing header-only.
"""
from __future__ import annotations

import math
import os
from typing import BinaryIO, Iterator

_IDENTITY = (1 << 16, 0, 0, 0, 1 << 16, 0, 0, 0, 1 << 30)
_MAX_BOXES = 10000  # per level: a bound against garbage that parses as endless tiny boxes


def _boxes(f: BinaryIO, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of the boxes in [start, end)."""
    offset, count = start, 0
    while offset + 8 <= end and count < _MAX_BOXES:
        f.seek(offset)
        header = f.read(16)
        if len(header) < 8:
            return
        size, kind, payload = int.from_bytes(header[:4], "big"), header[4:8], offset + 8
        if size == 1:
            if len(header) < 16:
                return
            size, payload = int.from_bytes(header[8:16], "big"), offset + 16
        elif size == 0:
            size = end - offset
        if size < 8:
            return
        yield kind, payload, min(offset + size, end)
        offset += size
        count += 1


def _child(f: BinaryIO, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    return next(((p, e) for k, p, e in _boxes(f, start, end) if k == kind), None)


def top_level_boxes(path: str) -> list[bytes] | None:
    """Types of the top-level boxes of an ISO-BMFF file, None if it is not one (no leading `ftyp`)."""
    with open(path, "rb") as f:
        kinds = [kind for kind, _, _ in _boxes(f, 0, os.path.getsize(path))]
    return kinds if kinds and kinds[0] == b"ftyp" else None


def _matrix(f: BinaryIO, payload: int, offset_v0: int, offset_v1: int) -> tuple[int, ...]:
    """The 3x3 matrix of an `mvhd` / `tkhd` full box (9 big-endian int32: 16.16, 16.16, 2.30 per row)."""
    f.seek(payload)
    version = f.read(1)[:1]
    f.seek(payload + (offset_v1 if version == b"\x01" else offset_v0))
    raw = f.read(36)
    if len(raw) < 36:
        return _IDENTITY
    return tuple(int.from_bytes(raw[i:i + 4], "big", signed=True) for i in range(0, 36, 4))


def display_matrix(path: str) -> tuple[int, ...] | None:
    """The display matrix of the first video track (track header x movie header, composed as FFmpeg's
    mov demuxer does), None when the file is not ISO-BMFF or the matrix is the identity."""
    if top_level_boxes(path) is None:
        return None
    with open(path, "rb") as f:
        moov = _child(f, 0, os.path.getsize(path), b"moov")
        if moov is None:
            return None
        mvhd = _child(f, *moov, b"mvhd")
        movie = _matrix(f, mvhd[0], 36, 48) if mvhd else _IDENTITY
        for kind, start, end in _boxes(f, *moov):
            if kind != b"trak":
                continue
            mdia = _child(f, start, end, b"mdia")
            hdlr = _child(f, *mdia, b"hdlr") if mdia else None
            if hdlr is None:
                continue
            f.seek(hdlr[0] + 8)
            if f.read(4) != b"vide":
                continue
            tkhd = _child(f, start, end, b"tkhd")
            track = _matrix(f, tkhd[0], 40, 52) if tkhd else _IDENTITY
            shift = (16, 16, 30)
            composed = tuple(sum((track[3 * i + e] * movie[3 * e + j]) >> shift[e] for e in range(3))
                             for i in range(3) for j in range(3))
            return None if composed == _IDENTITY else composed
    return None


def _c_round(x: float) -> float:
    return math.floor(x + 0.5) if x >= 0 else -math.floor(-x + 0.5)


def orientation(matrix: tuple[int, ...] | None) -> tuple[int, bool]:
    """(quarter turns counterclockwise, then a vertical flip?) that show the coded frames as FFmpeg's
    command line does for this display matrix: rotations by multiples of 90 degrees, with the mirrorings
    it distinguishes.  Other angles are left unrotated (FFmpeg would rotate with black corners)."""
    if matrix is None:
        return 0, False
    conv = [v / 65536.0 for v in matrix]
    scale0, scale1 = math.hypot(conv[0], conv[3]), math.hypot(conv[1], conv[4])
    if scale0 == 0.0 or scale1 == 0.0:
        return 0, False
    # av_display_rotation_get (counterclockwise) and fftools' get_rotation (clockwise, in [0, 360))
    theta = -_c_round(-math.degrees(math.atan2(conv[1] / scale1, conv[0] / scale0)))
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1.0:
        return (1, True) if matrix[3] > 0 else (3, False)  # transpose=cclock_flip / clock
    if abs(theta - 180) < 1.0:
        hflip, vflip = matrix[0] < 0, matrix[4] < 0  # hflip == a half turn then a vertical flip
        return (2, not vflip) if hflip else (0, vflip)
    if abs(theta - 270) < 1.0:
        return (3, True) if matrix[3] < 0 else (1, False)  # transpose=clock_flip / cclock
    if abs(theta) < 1.0:
        return 0, matrix[4] < 0
    return 0, False
