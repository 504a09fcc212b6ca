"""Video loading with PyAV: frame sampling as transformers' VideoLLaMA3 video processor, seek-based
decoding of only the sampled frames, threaded decoding, a timeout, and a progress bar.

Frame `i` is the i-th frame in presentation order, which is what transformers' PyAV loader counts
(`enumerate(container.decode(video=0))` from the start). To decode only what is needed, the packet
index (pts and keyframe flags, read without decoding) maps each sampled index to a pts and to the last
keyframe at or before it; the decoder seeks to that keyframe whenever doing so skips frames, and
otherwise keeps decoding forward, skipping the non-reference frames it does not need. Decoded
frames go through the same `to_ndarray(format="rgb24")` conversion as transformers' loader, so the
pixels are identical.
"""
from __future__ import annotations

import bisect
import os
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import (
    CorruptMediaError, DecodeTimeoutError, EmptyVideoError, MediaError, NotMediaError,
    UnsupportedCodecError,
)
from .image import _check_file
from .sampling import DEFAULT_FPS, DEFAULT_MAX_FRAMES, DEFAULT_MIN_FRAMES, sample_frame_indices

DEFAULT_TIMEOUT_S = 120.0
PROGRESS_MIN_FRAMES = 64  # progress=None shows a bar (on a terminal) from this many sampled frames on

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
    has no count."""

    path: str
    total_frames: int
    fps: float
    height: int
    width: int
    codec: str

    @property
    def duration(self) -> float:
        return self.total_frames / self.fps


@dataclass
class Video:
    """Sampled frames of one video.

    frames: uint8 [T, H, W, 3] RGB (numpy); indices: int64 [T], frame numbers in the file;
    timestamps: seconds of each sampled frame (`index / fps`, as transformers' `VideoMetadata`).
    """

    frames: np.ndarray
    indices: np.ndarray
    info: VideoInfo
    timestamps: list[float] = field(default_factory=list)

    def __post_init__(self):
        if not self.timestamps:
            self.timestamps = [float(i) / self.info.fps for i in self.indices]

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def check_full_size(self) -> None:
        """Raises ValueError if the frames were resized while loading (`load_video(resize_to=...)`):
        preprocessing plans sizes from the source size and must not see resized frames."""
        if self.frames.shape[1:3] != (self.info.height, self.info.width):
            raise ValueError(
                f"{self.info.path!r} was loaded with resize_to={tuple(self.frames.shape[1:3])}; pass the path, "
                "or a Video loaded without resize_to, to preprocess_videos / estimate_tokens"
            )


# ----------------------------------------------------------------------------------------------
# Opening and probing
# ----------------------------------------------------------------------------------------------

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


def _mp4_top_level_boxes(path: str) -> list[bytes] | None:
    """Types of the top-level boxes of an ISO-BMFF (MP4/MOV) file, None if it is not one."""
    boxes = []
    size_total = os.path.getsize(path)
    with open(path, "rb") as f:
        offset = 0
        while offset + 8 <= size_total and len(boxes) < 10000:
            f.seek(offset)
            header = f.read(16)
            size, kind = int.from_bytes(header[:4], "big"), header[4:8]
            if not boxes and kind != b"ftyp":
                return None
            boxes.append(kind)
            if size == 1 and len(header) == 16:
                size = int.from_bytes(header[8:16], "big")
            elif size == 0:
                break
            if size < 8:
                break
            offset += size
    return boxes


def _video_stream(container, path: str):
    if not container.streams.video:
        if len(container.streams) == 0:
            boxes = _mp4_top_level_boxes(path)
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


def _packet_index(video: "VideoFile") -> tuple[list[int], list[int]]:
    """(pts of every frame in presentation order, presentation positions of the keyframes), read by
    demuxing only; the file is rewound to its start afterwards. Empty when frames lack a pts or the
    demuxer fails: the caller then decodes sequentially (always correct)."""
    import av

    pts, key_pts = [], []
    try:
        for packet in video.container.demux(video.container.streams.video[0]):
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


def _count_packets(video: "VideoFile") -> int:
    n = sum(1 for p in video.container.demux(video.container.streams.video[0]) if p.size)
    if n:
        video.rewind()
    return n


def probe_video(path: str | os.PathLike, *, timeout: float | None = DEFAULT_TIMEOUT_S) -> VideoInfo:
    """Reads the header of a video (no decoding): frame count, frame rate, size and codec.

    Raises MediaNotFoundError, NotMediaError, CorruptMediaError, EmptyVideoError (no video stream or
    no frames) and UnsupportedCodecError.
    """
    with VideoFile(path, timeout=timeout) as video:
        return video.info


def _probe(video: "VideoFile") -> VideoInfo:
    path = video.path
    stream = _video_stream(video.container, path)
    total = int(stream.frames or 0)
    if total == 0:  # no count in the header (e.g. some Matroska/WebM): count packets
        total = _count_packets(video)
    if total == 0:
        raise EmptyVideoError(f"{path!r}: its video stream has no frames")
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise CorruptMediaError(f"{path!r}: the video stream has no frame rate")
    cc = stream.codec_context
    return VideoInfo(path=path, total_frames=total, fps=float(rate), height=int(cc.height),
                     width=int(cc.width), codec=cc.name)


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------

class _Cancelled(Exception):
    pass


class _IndexMismatch(Exception):
    pass


def _sparse_frames(container, stream, wanted_pts: set):
    """Decodes forward from the container's position, telling the decoder to skip non-reference
    frames (`skip_frame=NONREF`) except the wanted ones. A non-reference frame is by definition
    not used to decode any other frame, so every frame that is output is bit-identical to a full
    decode; B-frame-heavy streams decode about twice as fast when sampled sparsely."""
    cc = stream.codec_context
    for packet in container.demux(stream):
        cc.skip_frame = "DEFAULT" if packet.pts is None or packet.pts in wanted_pts else "NONREF"
        yield from cc.decode(packet)


def _decode_sampled(container, stream, info: VideoInfo, indices: np.ndarray, store,
                    cancel: threading.Event, deadline: float | None, bar, index) -> None:
    """Decodes the frames `indices` (increasing), calling `store(k, frame)` for the k-th.

    index: `_packet_index` output, or ([], []) to decode sequentially and count frames."""
    import av

    pts, keyframes = index
    if pts and len(pts) <= int(indices[-1]):
        raise CorruptMediaError(
            f"{info.path!r}: the header claims {info.total_frames} frames but the file holds {len(pts)} "
            f"(truncated?); frame {int(indices[-1])} was requested"
        )
    position = {p: i for i, p in enumerate(pts)}
    use_pts = can_seek = bool(pts)
    wanted = {pts[int(i)] for i in indices} if use_pts else set()
    frames_iter = _sparse_frames(container, stream, wanted) if use_pts else container.decode(stream)
    current = -1  # presentation position of the last decoded frame
    after_seek = False

    for k, target in enumerate(int(i) for i in indices):
        if can_seek:
            key = keyframes[bisect.bisect_right(keyframes, target) - 1] if keyframes else 0
            if key > current + 1:  # frames between here and that keyframe need no decoding
                try:
                    container.seek(pts[key], stream=stream, backward=True, any_frame=False)
                    frames_iter = _sparse_frames(container, stream, wanted)
                    after_seek = True
                except av.error.FFmpegError:
                    can_seek = False  # not seekable: keep decoding forward
        while True:
            if cancel.is_set() or (deadline is not None and time.monotonic() > deadline):
                raise _Cancelled()
            try:
                frame = next(frames_iter)
            except StopIteration:
                raise CorruptMediaError(
                    f"{info.path!r}: decoding ended after frame {current} of the {info.total_frames} the "
                    f"header claims, before the sampled frame {target} (truncated or corrupt file)"
                ) from None
            if use_pts:
                where = position.get(frame.pts)
                if where is None or (after_seek and where > target):
                    raise _IndexMismatch()  # a pts not in the index, or the seek overshot
                after_seek = False
                current = where
            else:
                current += 1
            if current == target:
                break
            if current > target:
                raise CorruptMediaError(f"{info.path!r}: frame {target} was never output by the decoder")
        if frame.height != info.height or frame.width != info.width:
            raise CorruptMediaError(
                f"{info.path!r}: frame {target} is {frame.height}x{frame.width}, the stream says "
                f"{info.height}x{info.width} (size changes inside a video are not supported)"
            )
        store(k, frame)
        if bar is not None:
            bar.update(1)


def _decode_with_fallback(video: "VideoFile", threads, indices, store, cancel, deadline, bar, seek):
    index = _packet_index(video) if seek else ([], [])
    container, info = video.container, video.info
    stream = container.streams.video[0]
    stream.thread_type = "AUTO" if threads != 1 else "SLICE"
    stream.thread_count = threads
    try:
        _decode_sampled(container, stream, info, indices, store, cancel, deadline, bar, index)
    except _IndexMismatch:  # the packet index does not describe the decoded frames: count instead
        stream.codec_context.skip_frame = "DEFAULT"
        container.seek(0)
        if bar is not None:
            bar.reset()
        _decode_sampled(container, stream, info, indices, store, cancel, deadline, bar, ([], []))


class VideoFile:
    """One opened video file: its container and header (`VideoInfo`), probed once.  Sampling, budget
    checks and decoding all use this one container, so a file is opened once per call.  Use as a context
    manager (or call `close`)."""

    def __init__(self, path: str | os.PathLike, *, timeout: float | None = DEFAULT_TIMEOUT_S):
        path = _check_file(path)
        self.path, self.timeout = path, timeout
        self.container = _open_container(path, timeout)
        self.abandoned = False  # a timed-out decode still runs and closes the container itself
        try:
            self.info = _probe(self)
        except BaseException:
            self.container.close()
            raise

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


def load_video(
    path: str | os.PathLike,
    *,
    fps: float | None = DEFAULT_FPS,
    num_frames: int | None = None,
    min_frames: int = DEFAULT_MIN_FRAMES,
    max_frames: int = DEFAULT_MAX_FRAMES,
    indices: np.ndarray | list[int] | None = None,
    threads: int = 0,
    timeout: float | None = DEFAULT_TIMEOUT_S,
    progress: bool | None = None,
    seek: bool = True,
    resize_to: tuple[int, int] | None = None,
) -> Video:
    """Decodes the sampled frames of a video file.

    Sampling (unless `indices` is given) is `sample_frame_indices(total, video_fps, fps=..., ...)`
    (`num_frames`, when given, takes precedence over `fps`),
    i.e. what transformers' VideoLLaMA3 video processor picks: by default 1 frame per second, at
    least 4 and at most 180 frames, evenly spread over the whole video (`sampling.DEFAULT_*`).

    threads: FFmpeg decoding threads (0 = FFmpeg's choice; 1 = single-threaded).
    timeout: seconds for the whole decode; past it a DecodeTimeoutError is raised (a damaged file
        fails instead of hanging). None waits forever.
    progress: a tqdm bar over the sampled frames; None shows one on a terminal from
        PROGRESS_MIN_FRAMES frames on.
    seek: decode only from the keyframe before each sampled frame (False decodes every frame up to
        the last sampled one, as transformers' loader does; the frames are the same either way).
    resize_to: (height, width): resize each frame as soon as it is decoded (bicubic, antialiased,
        `resize.resize_frames`), so full-size frames are never all held at once. The result is
        identical to resizing the full-size frames afterwards.

    Returns a `Video` (frames uint8 [T, H, W, 3], indices, timestamps, info). Raises the
    `vl3fast.processing.errors` exceptions: MediaNotFoundError, NotMediaError, CorruptMediaError,
    EmptyVideoError, UnsupportedCodecError, DecodeTimeoutError.
    """
    path = _check_file(path)
    _check_decode_settings(threads, timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    with VideoFile(path, timeout=timeout) as video:
        if indices is None:
            idx = sample_frame_indices(video.info.total_frames, video.info.fps, fps=None if num_frames else fps,
                                       num_frames=num_frames, min_frames=min_frames, max_frames=max_frames)
        else:
            idx = _checked_indices(indices, video.info)
        return decode_frames(video, idx, threads=threads, deadline=deadline, progress=progress, seek=seek,
                             resize_to=resize_to)


def _check_decode_settings(threads, timeout) -> None:
    if not isinstance(threads, int) or threads < 0:
        raise ValueError(f"threads must be an int >= 0, got {threads!r}")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds or None, got {timeout!r}")


def _checked_indices(indices, info: VideoInfo) -> np.ndarray:
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0 or (np.diff(idx) <= 0).any() or idx[0] < 0 or idx[-1] >= info.total_frames:
        raise ValueError(f"indices must be increasing frame numbers in [0, {info.total_frames}), got {idx.tolist()}")
    return idx


def decode_frames(video: VideoFile, idx: np.ndarray, *, threads: int = 0, deadline: float | None = None,
                  progress: bool | None = None, seek: bool = True, resize_to: tuple[int, int] | None = None) -> Video:
    """The frames `idx` (increasing) of an opened `VideoFile`, decoded by a worker thread that must finish
    by `deadline` (time.monotonic() seconds; None: no limit).  See `load_video` for the other settings."""
    out, store = _frame_store(len(idx), video.info, resize_to)
    bar = _progress_bar(progress, len(idx), video.path)
    cancel = threading.Event()
    try:
        error = _run_with_deadline(
            lambda: _decode_with_fallback(video, threads, idx, store, cancel, deadline, bar, seek),
            deadline, cancel, on_abandoned=video)
    finally:
        if bar is not None:
            bar.close()
    _raise_decode_error(error, video, len(idx))
    return Video(frames=out, indices=idx, info=video.info)


def _frame_store(n: int, info: VideoInfo, resize_to):
    """The uint8 [n, H, W, 3] output array and `store(k, frame)`, which writes decoded frame k into it
    (resized to `resize_to` as soon as it is decoded, when given)."""
    if resize_to is None:
        out = np.empty((n, info.height, info.width, 3), dtype=np.uint8)

        def store(k, frame):
            out[k] = frame.to_ndarray(format="rgb24")
        return out, store
    from .resize import resize_frames

    rh, rw = (int(v) for v in resize_to)
    out = np.empty((n, rh, rw, 3), dtype=np.uint8)
    out_nchw = torch.from_numpy(out).permute(0, 3, 1, 2)

    def store(k, frame):
        rgb = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)[None]
        out_nchw[k:k + 1].copy_(resize_frames(rgb, rh, rw))
    return out, store


def _progress_bar(progress: bool | None, n: int, path: str):
    show = progress if progress is not None else (n >= PROGRESS_MIN_FRAMES and sys.stderr.isatty())
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=n, unit="frame", desc=f"decoding {os.path.basename(path)}", leave=False)


def _run_with_deadline(work, deadline: float | None, cancel: threading.Event, on_abandoned: VideoFile):
    """Runs `work()` in a worker thread, so that a decoder stuck inside FFmpeg still lets the caller fail
    at the deadline (the worker also stops by itself at the next frame past it, `cancel`).  Returns the
    exception the worker raised (None on success); on a timeout the worker is left running, marked
    `_Cancelled`, and closes the file itself when it ends (`on_abandoned.abandoned`)."""
    state = {"finished": False, "error": None}
    lock = threading.Lock()

    def run():
        try:
            work()
        except BaseException as e:  # handed to the caller's thread
            state["error"] = e
        finally:
            with lock:
                state["finished"] = True
                if on_abandoned.abandoned:  # the caller timed out and left the container to us
                    on_abandoned.container.close()

    worker = threading.Thread(target=run, name="vl3fast-decode", daemon=True)
    worker.start()
    worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
    with lock:
        if not state["finished"]:
            on_abandoned.abandoned = True
            cancel.set()
            return _Cancelled()
    return state["error"]


def _raise_decode_error(error, video: VideoFile, n: int) -> None:
    """The `vl3fast.processing.errors` exception for what the decoding worker raised (None: nothing)."""
    import av

    if error is None:
        return
    path = video.path
    if isinstance(error, (_Cancelled, av.error.ExitError)):
        raise DecodeTimeoutError(f"{path!r}: decoding {n} sampled frames did not finish within timeout={video.timeout} s")
    if isinstance(error, MediaError):
        raise error
    if isinstance(error, av.error.DecoderNotFoundError):
        raise UnsupportedCodecError(f"{path!r}: no decoder for its video codec: {error}") from error
    if isinstance(error, av.error.FFmpegError):
        raise CorruptMediaError(f"{path!r}: decoding failed (corrupt data?): {error}") from error
    raise error
