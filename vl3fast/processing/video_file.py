"""An opened video file: the PyAV container, its video stream and what the header says (`VideoInfo`),
probed once.  Opening maps FFmpeg's failures to the `errors` classes (not media, corrupt, timeout), and
the packet index (pts and keyframes, read by demuxing without decoding) is built here for `decode`.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from .errors import (
    CorruptMediaError, DecodeTimeoutError, EmptyVideoError, ImageNotVideoError, NotMediaError, UnsupportedCodecError,
)
from .image import _check_file, _check_pixels
from .mp4_header import display_matrix, orientation, top_level_boxes

DEFAULT_TIMEOUT_S = 120.0

# Leading bytes of container formats PyAV reads; a file that starts like one but cannot be opened
# is called corrupt, anything else "not media".
_CONTAINER_MAGIC = (
    (4, b"ftyp"), (4, b"moov"), (4, b"mdat"), (4, b"free"), (4, b"wide"),  # MP4 / MOV / 3GP
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska / WebM
    (0, b"RIFF"),  # AVI
    (0, b"FLV"), (0, b"OggS"), (0, b"\x00\x00\x01\xba"),  # FLV, Ogg, MPEG-PS
)


@dataclass(frozen=True)
class VideoInfo:
    """What the container header says (no decoding): the numbers frame sampling is computed from.
    `total_frames` and `fps` are read exactly as transformers' PyAV loader reads them
    (`stream.frames`, `stream.average_rate`); `total_frames` is counted from packets if the header
    has no count. `height` x `width` is the size as displayed: the coded size turned by `rotation`."""

    path: str
    total_frames: int
    fps: float
    height: int  # as displayed: after `rotation`
    width: int
    codec: str
    rotation: int = 0  # degrees counterclockwise (0, 90, 180, 270) the display matrix turns the coded frames
    flipped: bool = False  # then mirrored top to bottom (see `mp4_header.orientation`)

    @property
    def duration(self) -> float:
        return self.total_frames / self.fps

    @property
    def coded_size(self) -> tuple[int, int]:
        """(height, width) of the frames the decoder outputs, before the display rotation."""
        return (self.width, self.height) if self.rotation in (90, 270) else (self.height, self.width)


def _looks_like_container(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    return any(head[off:off + len(magic)] == magic for off, magic in _CONTAINER_MAGIC)


def _open_container(path: str, timeout: float | None):
    import av

    path = _check_file(path)
    if os.path.getsize(path) == 0:
        raise NotMediaError(f"{path!r} is an empty file, not a video")
    start = time.monotonic()
    try:
        return av.open(path, mode="r", timeout=timeout)
    except av.error.FFmpegError as e:
        # FFmpeg's I/O interrupt fires when the timeout passes; the parser may then report it as
        # ExitError or as invalid data, so the clock decides.
        if isinstance(e, av.error.ExitError) or (timeout is not None and time.monotonic() - start >= timeout):
            raise DecodeTimeoutError(f"{path!r}: opening did not finish within timeout={timeout} s") from e
        if isinstance(e, av.error.EOFError):
            raise CorruptMediaError(f"{path!r} ends before its header does (truncated?): {e}") from e
        if _looks_like_container(path):
            raise CorruptMediaError(f"{path!r} looks like a video container but cannot be opened "
                                    f"(truncated or corrupt): {e}") from e
        raise NotMediaError(f"{path!r} is not a video file FFmpeg can read: {e}") from e


def _video_stream(container, path: str):
    if not container.streams.video:
        if len(container.streams) == 0:
            boxes = top_level_boxes(path)
            if boxes is not None and b"moov" not in boxes:
                raise CorruptMediaError(
                    f"{path!r} has no 'moov' index box: the MP4 is truncated or was not finalized"
                )
        raise EmptyVideoError(f"{path!r} has no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        import av

        tag = getattr(stream, "codec_tag", None) or "unknown"
        raise UnsupportedCodecError(
            f"{path!r}: no decoder for its video codec (tag {tag!r}) in the FFmpeg build of PyAV {av.__version__}"
        )
    return stream


def _packet_index(video: "VideoFile", check_stop=None) -> tuple[list[int], list[int]]:
    """(pts of every frame in presentation order, presentation positions of the keyframes), read by
    demuxing only; the file is rewound to its start afterwards. Empty when frames lack a pts or the
    demuxer fails: the caller then decodes sequentially (always correct).  `check_stop()` runs every
    256 packets and may raise to abandon the pass (a decode past its deadline)."""
    import av

    pts, key_pts = [], []
    try:
        for n, packet in enumerate(video.container.demux(video.container.streams.video[0])):
            if check_stop is not None and n % 256 == 0:
                check_stop()
            if packet.size == 0:
                continue  # the flush packet at the end
            if packet.pts is None:
                pts = None
                break
            pts.append(packet.pts)
            if packet.is_keyframe:
                key_pts.append(packet.pts)
    except av.error.FFmpegError:
        pts = None
    video.rewind()
    if pts is None:
        return [], []
    pts.sort()
    if len(set(pts)) != len(pts):
        return [], []
    position = {p: i for i, p in enumerate(pts)}
    return pts, sorted(position[p] for p in key_pts)


def frame_timestamps(indices, fps: float, pts, first_pts, time_base) -> list[float]:
    """Seconds of the frames `indices` (`pts`: theirs) from frame 0 (`first_pts`), as FFmpeg times frames.
    When every one lies within half a frame of `index / fps` (a constant-rate file), `index / fps` is
    returned instead: it is what transformers reports, so prompts stay token-identical to it."""
    nominal = [float(i) / fps for i in indices]
    if first_pts is None or time_base is None or any(p is None for p in pts):
        return nominal
    actual = [float((p - first_pts) * time_base) for p in pts]
    if all(abs(a - n) <= 0.5 / fps for a, n in zip(actual, nominal)):
        return nominal
    return actual


def _count_packets(video: "VideoFile") -> int:
    n = sum(1 for p in video.container.demux(video.container.streams.video[0]) if p.size)
    if n:
        video.rewind()
    return n


# FFmpeg's single-image demuxers (`image2` and the `*_pipe` family: png_pipe, jpeg_pipe, webp_pipe...); an
# animated GIF / APNG has its own demuxer and is a video.
def _is_still_image(container) -> bool:
    names = container.format.name.split(",")
    return any(n == "image2" or n.endswith("_pipe") for n in names)


def _probe(video: "VideoFile") -> VideoInfo:
    path = video.path
    if _is_still_image(video.container):
        raise ImageNotVideoError(
            f"{path!r} is a still image ({video.container.format.name}), not a video: pass it as an image "
            "(images=..., load_image, preprocess_images)"
        )
    stream = _video_stream(video.container, path)
    total = int(stream.frames or 0)
    if total == 0:  # no count in the header (e.g. Matroska/WebM): count packets, keeping their index
        video.index = _packet_index(video)
        total = len(video.index[0]) or _count_packets(video)
    if total == 0:
        raise EmptyVideoError(f"{path!r}: its video stream has no frames")
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise CorruptMediaError(f"{path!r}: the video stream has no frame rate")
    cc = stream.codec_context
    height, width = int(cc.height), int(cc.width)
    if height < 1 or width < 1:
        raise CorruptMediaError(f"{path!r}: the video stream header gives no frame size ({height}x{width})")
    _check_pixels(path, width, height, None)  # the image decode cap, per frame
    quarter_turns, flipped = orientation(display_matrix(path))
    if quarter_turns % 2:
        height, width = width, height
    return VideoInfo(path=path, total_frames=total, fps=float(rate), height=height, width=width, codec=cc.name,
                     rotation=90 * quarter_turns, flipped=flipped)


class VideoFile:
    """One opened video file: its container and header (`VideoInfo`), probed once.  Sampling, budget
    checks and decoding all use this one container, so a file is opened once per call.  Use as a context
    manager (or call `close`)."""

    def __init__(self, path: str | os.PathLike, *, timeout: float | None = DEFAULT_TIMEOUT_S):
        path = _check_file(path)
        self.path, self.timeout = path, timeout
        self.container = _open_container(path, timeout)
        self.abandoned = False  # a timed-out decode still runs and closes the container itself
        self.index = None  # `_packet_index`, once a pass has read it
        try:
            self.info = _probe(self)
        except BaseException:
            self.container.close()
            raise

    def sampled_timestamps(self, indices) -> list[float]:
        """The timestamps decoding will give the frames `indices`, without decoding: `index / fps` when the
        header's index shows evenly spaced frames (MP4/MOV at a constant rate), else from the pts of a
        demux-only pass (`frame_timestamps`; variable-rate files, and containers whose header lists no
        frames, such as Matroska, which probing already demuxed to count)."""
        stream = self.container.streams.video[0]
        entries = stream.index_entries
        if len(entries) == self.info.total_frames:
            dts = [e.timestamp for e in entries]
            if len({b - a for a, b in zip(dts, dts[1:])}) <= 1:
                return [float(i) / self.info.fps for i in indices]
        if self.index is None:
            self.index = _packet_index(self)
        pts = self.index[0]
        if not pts or len(pts) <= int(indices[-1]):
            return [float(i) / self.info.fps for i in indices]
        return frame_timestamps(indices, self.info.fps, [pts[int(i)] for i in indices], pts[0], stream.time_base)

    def rewind(self) -> None:
        """Back to the start after a demux-only pass, so decoding starts at frame 0 as from a fresh open
        (reopened when the container cannot seek)."""
        import av

        try:
            self.container.seek(0)
        except av.error.FFmpegError:
            self.container.close()
            self.container = _open_container(self.path, self.timeout)

    def close(self) -> None:
        if not self.abandoned:
            self.container.close()

    def __enter__(self) -> "VideoFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
