"""Frame sampling: which frames of a video become model inputs (transformers' VideoLlama3VideoProcessor
``sample_frames``, temporal_patch_size = 1).  Pure arithmetic, no decoding.

The defaults live here once; `ProcessingConfig` and `load_video` take them from this module.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from .errors import EmptyVideoError

DEFAULT_FPS = 1.0       # frames sampled per second of video
DEFAULT_MIN_FRAMES = 4
DEFAULT_MAX_FRAMES = 180


def check_sampling(fps, num_frames, min_frames, max_frames) -> None:
    """Raises TypeError / ValueError naming the argument for a sampling setting no video can satisfy:
    `fps` a finite number > 0 or None, `num_frames` an int >= 1 or None, `min_frames` <= `max_frames`
    ints >= 1 (a bool is not a number).  Without this, fps=0 or fps=-1 silently gave min_frames frames."""
    if fps is not None:
        if isinstance(fps, bool) or not isinstance(fps, numbers.Real):
            raise TypeError(f"fps must be a number of frames per second or None, got {type(fps).__name__} {fps!r}")
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be > 0 frames per second (or None), got {fps!r}")
    for name, value, optional in (("num_frames", num_frames, True), ("min_frames", min_frames, False),
                                  ("max_frames", max_frames, False)):
        if value is None and optional:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int{' or None' if optional else ''}, got {type(value).__name__} "
                            f"{value!r}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value!r}")
    if min_frames > max_frames:
        raise ValueError(f"min_frames ({min_frames}) must not exceed max_frames ({max_frames})")


def sample_frame_indices(
    total_frames: int,
    video_fps: float | None,
    *,
    fps: float | None = DEFAULT_FPS,
    num_frames: int | None = None,
    min_frames: int = DEFAULT_MIN_FRAMES,
    max_frames: int = DEFAULT_MAX_FRAMES,
) -> np.ndarray:
    """The frame numbers transformers' VideoLLaMA3 video processor samples (int64 array).

    With `num_frames`: that many frames, evenly spaced. With `fps`: `total / video_fps * fps` frames,
    clamped to [min_frames, max_frames] and to `total_frames`, rounded down. Neither: every frame.
    Indices are `arange(0, total, total / n)` truncated to int, computed with torch in float32 as
    transformers does, so the exact same frames are picked (including its rounding quirks).
    """
    if total_frames < 1:
        raise EmptyVideoError(f"cannot sample frames from a video with {total_frames} frames")
    check_sampling(fps, num_frames, min_frames, max_frames)
    if fps is not None and num_frames is not None:
        raise ValueError("fps and num_frames are mutually exclusive; pass one of them (or neither for all frames)")
    if num_frames is not None:
        n = num_frames
    elif fps is not None:
        if not video_fps:
            raise ValueError("sampling by fps needs the video's frame rate; pass num_frames instead")
        n = total_frames / video_fps * fps
        n = min(max(n, min_frames), min(max_frames, total_frames), total_frames)
        n = int(np.floor(n))
    else:
        return np.arange(total_frames, dtype=np.int64)
    if n < 1:
        raise ValueError(f"frame sampling selected {n} frames (num_frames/max_frames must be >= 1)")
    if n > total_frames:
        raise ValueError(
            f"cannot sample num_frames={n} frames from a video of {total_frames} frames; lower num_frames or fps"
        )
    return torch.arange(0, total_frames, total_frames / n).int().numpy().astype(np.int64)


def sample_with_config(total_frames: int, video_fps: float | None, config) -> np.ndarray:
    """`sample_frame_indices` with a `ProcessingConfig`'s settings (``num_frames`` wins over ``fps``)."""
    return sample_frame_indices(total_frames, video_fps, fps=config.sampling_fps, num_frames=config.num_frames,
                                min_frames=config.min_frames, max_frames=config.max_frames)
