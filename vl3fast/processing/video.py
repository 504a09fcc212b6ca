"""Video loading with PyAV: frame sampling as transformers' VideoLLaMA3 video processor, seek-based
decoding of only the sampled frames, threaded decoding, a timeout, and a progress bar.

The steps live in their own modules: `video_file` opens and probes a file once (`VideoFile`,
`VideoInfo`), `sampling` picks the frames, `decode` decodes them within the deadline; this module
ties them together (`load_video`, `decode_frames`) and holds the result type (`Video`).
"""
from __future__ import annotations

import numbers
import os
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .decode import _decode_with_fallback, _FrameSink, _raise_decode_error, _run_with_deadline
from .image import _check_file
from .sampling import DEFAULT_FPS, DEFAULT_MAX_FRAMES, DEFAULT_MIN_FRAMES, sample_frame_indices
from .video_file import DEFAULT_TIMEOUT_S, VideoFile, VideoInfo

__all__ = ["DEFAULT_TIMEOUT_S", "PROGRESS_MIN_FRAMES", "Video", "VideoFile", "VideoInfo", "decode_frames",
           "load_video", "probe_video"]

PROGRESS_MIN_FRAMES = 64  # progress=None shows a bar (on a terminal) from this many sampled frames on


@dataclass
class Video:
    """Sampled frames of one video.

    frames: uint8 [T, H, W, 3] RGB (numpy); indices: int64 [T], frame numbers in the file;
    timestamps: seconds of each sampled frame from frame 0: `index / fps` (as transformers'
        `VideoMetadata`) for constant-rate files, the frames' own pts for variable-rate ones
        (`decode._FrameSink.timestamps`). Frames are turned as the file's display matrix says.
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


def probe_video(path: str | os.PathLike, *, timeout: float | None = DEFAULT_TIMEOUT_S) -> VideoInfo:
    """Reads the header of a video (no decoding): frame count, frame rate, displayed size (after the
    display matrix's rotation), codec and rotation.

    Raises MediaNotFoundError (also for directories and FIFOs), NotMediaError (ImageNotVideoError for a
    still image), CorruptMediaError, EmptyVideoError (no video stream or no frames), UnsupportedCodecError
    and MediaSizeError (a frame over the pixel cap, `image.max_image_pixels`).
    """
    with VideoFile(path, timeout=timeout) as video:
        return video.info


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

    Returns a `Video` (frames uint8 [T, H, W, 3] as displayed, indices, timestamps, info). Raises the
    `vl3fast.processing.errors` exceptions of `probe_video` and DecodeTimeoutError; ValueError / TypeError
    naming the argument for sampling settings or `resize_to` out of range.
    """
    path = _check_file(path)
    _check_decode_settings(threads, timeout, resize_to)
    deadline = None if timeout is None else time.monotonic() + timeout
    with VideoFile(path, timeout=timeout) as video:
        if indices is None:
            idx = sample_frame_indices(video.info.total_frames, video.info.fps,
                                       fps=None if num_frames is not None else fps, num_frames=num_frames,
                                       min_frames=min_frames, max_frames=max_frames)
        else:
            idx = _checked_indices(indices, video.info)
        return decode_frames(video, idx, threads=threads, deadline=deadline, progress=progress, seek=seek,
                             resize_to=resize_to)


def _check_decode_settings(threads, timeout=None, resize_to=None) -> None:
    if not isinstance(threads, int) or threads < 0:
        raise ValueError(f"threads must be an int >= 0, got {threads!r}")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds or None, got {timeout!r}")
    if resize_to is not None:
        valid = (isinstance(resize_to, (tuple, list)) and len(resize_to) == 2
                 and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in resize_to))
        if not valid:
            raise TypeError(f"resize_to must be None or (height, width) ints, got {resize_to!r}")
        if min(resize_to) < 1:
            raise ValueError(f"resize_to must be (height, width) of at least 1 pixel each, got {tuple(resize_to)!r}")


def _checked_indices(indices, info: VideoInfo) -> np.ndarray:
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0 or (np.diff(idx) <= 0).any() or idx[0] < 0 or idx[-1] >= info.total_frames:
        raise ValueError(f"indices must be increasing frame numbers in [0, {info.total_frames}), got {idx.tolist()}")
    return idx


def decode_frames(video: VideoFile, idx: np.ndarray, *, threads: int = 0, deadline: float | None = None,
                  progress: bool | None = None, seek: bool = True, resize_to: tuple[int, int] | None = None) -> Video:
    """The frames `idx` (increasing) of an opened `VideoFile`, decoded by a worker thread that must finish
    by `deadline` (time.monotonic() seconds; None: no limit).  See `load_video` for the other settings."""
    _check_decode_settings(threads, resize_to=resize_to)
    sink = _FrameSink(len(idx), video.info, resize_to, video.container.streams.video[0].time_base)
    bar = _progress_bar(progress, len(idx), video.path)
    cancel = threading.Event()
    try:
        error = _run_with_deadline(
            lambda: _decode_with_fallback(video, threads, idx, sink, cancel, deadline, bar, seek),
            deadline, cancel, on_abandoned=video)
    finally:
        if bar is not None:
            bar.close()
    _raise_decode_error(error, video, len(idx))
    return Video(frames=sink.out, indices=idx, info=video.info, timestamps=sink.timestamps(idx))


def _progress_bar(progress: bool | None, n: int, path: str):
    show = progress if progress is not None else (n >= PROGRESS_MIN_FRAMES and sys.stderr.isatty())
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=n, unit="frame", desc=f"decoding {os.path.basename(path)}", leave=False)
