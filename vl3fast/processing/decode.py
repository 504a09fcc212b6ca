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
from .video_file import VideoFile, VideoInfo, _packet_index

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
