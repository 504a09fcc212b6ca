"""Decoding the sampled frames of an opened `VideoFile` with PyAV, in a worker thread held to a deadline.

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
import threading
import time

import numpy as np
import torch

from .errors import CorruptMediaError, DecodeTimeoutError, MediaError, UnsupportedCodecError
from .video_file import VideoFile, VideoInfo, _packet_index, frame_timestamps


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


def _check_deadline(cancel: threading.Event, deadline: float | None) -> None:
    if cancel.is_set() or (deadline is not None and time.monotonic() > deadline):
        raise _Cancelled()


def _decode_sampled(container, stream, info: VideoInfo, indices: np.ndarray, sink: "_FrameSink",
                    cancel: threading.Event, deadline: float | None, bar, index) -> None:
    """Decodes the frames `indices` (increasing), calling `sink.store(k, frame)` for the k-th.

    index: `_packet_index` output, or ([], []) to decode sequentially and count frames."""
    import av

    pts, keyframes = index
    sink.first_pts = pts[0] if pts else None
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
            _check_deadline(cancel, deadline)
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
                if current == 0:
                    sink.first_pts = frame.pts
            if current == target:
                break
            if current > target:
                raise CorruptMediaError(f"{info.path!r}: frame {target} was never output by the decoder")
        if (frame.height, frame.width) != info.coded_size:
            raise CorruptMediaError(
                f"{info.path!r}: frame {target} is {frame.height}x{frame.width}, the stream says "
                "{}x{} (size changes inside a video are not supported)".format(*info.coded_size)
            )
        sink.store(k, frame)
        if bar is not None:
            bar.update(1)


def _decode_with_fallback(video: "VideoFile", threads, indices, sink, cancel, deadline, bar, seek):
    if seek and video.index is None:
        video.index = _packet_index(video, lambda: _check_deadline(cancel, deadline))
    index = video.index if seek else ([], [])
    container, info = video.container, video.info
    stream = container.streams.video[0]
    stream.thread_type = "AUTO" if threads != 1 else "SLICE"
    stream.thread_count = threads
    try:
        _decode_sampled(container, stream, info, indices, sink, cancel, deadline, bar, index)
    except _IndexMismatch:  # the packet index does not describe the decoded frames: count instead
        stream.codec_context.skip_frame = "DEFAULT"
        container.seek(0)
        if bar is not None:
            bar.reset()
        _decode_sampled(container, stream, info, indices, sink, cancel, deadline, bar, ([], []))


def as_displayed(rgb_HW3: np.ndarray, info: VideoInfo) -> np.ndarray:
    """A decoded uint8 [H, W, 3] frame turned as the display matrix says (`VideoInfo.rotation` degrees
    counterclockwise, then `flipped` top to bottom), a view; unchanged for unrotated videos."""
    if info.rotation:
        rgb_HW3 = np.rot90(rgb_HW3, info.rotation // 90)
    return rgb_HW3[::-1] if info.flipped else rgb_HW3


class _FrameSink:
    """The uint8 [n, H, W, 3] output array and `store(k, frame)`, which writes decoded frame k into it
    (turned as displayed, then resized to `resize_to` as soon as it is decoded, when given), keeping each
    frame's pts for its timestamp."""

    def __init__(self, n: int, info: VideoInfo, resize_to, time_base):
        self.info, self.time_base = info, time_base
        self.pts: list = [None] * n
        self.first_pts = None  # pts of frame 0, the origin of the timestamps (set by `_decode_sampled`)
        self.size = (info.height, info.width) if resize_to is None else tuple(int(v) for v in resize_to)
        self.out = np.empty((n, *self.size, 3), dtype=np.uint8)
        self._resize = None
        if resize_to is not None:
            from .resize import resize_frames

            self._resize = resize_frames
            self._out_nchw = torch.from_numpy(self.out).permute(0, 3, 1, 2)

    def store(self, k: int, frame) -> None:
        rgb = as_displayed(frame.to_ndarray(format="rgb24"), self.info)
        self.pts[k] = frame.pts
        if self._resize is None:
            self.out[k] = rgb
            return
        rgb_13HW = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
        self._out_nchw[k:k + 1].copy_(self._resize(rgb_13HW, *self.size))

    def timestamps(self, indices: np.ndarray) -> list[float]:
        """Seconds of each stored frame from its own pts (`video_file.frame_timestamps`)."""
        return frame_timestamps(indices, self.info.fps, self.pts, self.first_pts, self.time_base)


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
                    # nobody will read the error: drop it now, as its traceback holds this frame and so
                    # `state` (a reference cycle that kept the decoder and frames alive until a full GC)
                    state["error"] = None

    worker = threading.Thread(target=run, name="vl3fast-decode", daemon=True)
    worker.start()
    worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
    with lock:
        if not state["finished"]:
            on_abandoned.abandoned = True
            cancel.set()
            return _Cancelled()
    return state.pop("error")  # not kept in `state`: see above


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
