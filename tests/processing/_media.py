"""Helpers shared by the processing tests and benchmarks: synthetic video writing, transformers' loader."""
from __future__ import annotations

from functools import partial

import numpy as np

# seconds of each frame of the variable-frame-rate clip: 10 fps for 2 s, then 1 fps (its average_rate of
# 100/31 makes index / fps off by 2 s at the end)
VFR_TIMES = [0.1 * i for i in range(20)] + [2.0 + 1.0 * i for i in range(10)]


def frame_pattern(i: int, height: int, width: int) -> np.ndarray:
    """A moving gradient plus a checkerboard that flips every 7 frames: every frame differs, some
    regions stay static (so DiffFP pruning has both kinds of tokens)."""
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = (xx * 3 + 5 * i) % 256
    img[..., 1] = (yy * 2 + 3 * i) % 256
    img[..., 2] = (((xx // 8 + yy // 8 + i // 7) % 2) * 180 + 20) * (xx < width // 2)
    return img


def write_video(path, *, width, height, fps, frames, codec="libx264", gop=None, bframes=None,
                container_options=None, pattern=frame_pattern, rotation=None, hflip=False, times=None) -> str:
    """rotation, hflip: the display matrix's counterclockwise degrees and mirror (PyAV's
    `set_display_rotation`; a phone writes -90 for portrait video); times: seconds of each frame (a
    variable frame rate; `frames` is then len(times)), written as pts in milliseconds."""
    from fractions import Fraction

    import av

    container = av.open(str(path), "w", options=container_options or {})
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    if gop:
        stream.codec_context.gop_size = gop
    if rotation is not None:
        stream.set_display_rotation(rotation, hflip=hflip)
    if times is not None:
        frames = len(times)
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
    options = {}
    if codec == "libx264":
        options["preset"] = "veryfast"
        if bframes is not None:
            options["bframes"] = str(bframes)
    stream.options = options
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(pattern(i, height, width), format="rgb24")
        if times is not None:
            frame.pts, frame.time_base = round(times[i] * 1000), Fraction(1, 1000)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return str(path)


def hf_load_video(path, processor, **sample_kwargs):
    """transformers' own PyAV loader with the VideoLLaMA3 processor's `sample_frames`."""
    from transformers.video_utils import load_video

    return load_video(str(path), backend="pyav", sample_indices_fn=partial(processor.sample_frames, **sample_kwargs))
