"""The text a video placeholder becomes: transformers' ``replace_video_token``, one ``Time t.ts:`` label per
frame followed by that frame's video tokens, frames joined by ",".  Used by the processor's ``__call__``
(kept tokens per frame) and its token estimate (every token), so both expand exactly alike."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def sampled_stamps(indices, fps: float) -> list[str]:
    """`t.t` labels of frames transformers sampled itself: its `sample_frames` returns int32 tensors, so
    `VideoMetadata.timestamps` are float32 (`index / fps`), formatted with `{:.1f}`. Computing them the
    same way keeps the rare float32-vs-float64 rounding differences at .x5 identical."""
    stamps = torch.as_tensor(np.asarray(indices)).to(torch.int32) / fps
    return [f"{t:.1f}" for t in stamps]


def decoded_stamps(indices, fps: float, timestamps) -> list[str]:
    """Labels of frames vl3fast sampled from a file: `sampled_stamps` when `timestamps` are `index / fps`
    (constant-rate files: identical to transformers), else the frames' own times (variable-rate files,
    where `index / fps` is off by up to seconds)."""
    if [float(t) for t in timestamps] == [float(i) / fps for i in indices]:
        return sampled_stamps(indices, fps)
    return [f"{t:.1f}" for t in timestamps]


def given_stamps(frames_indices, fps: float) -> list[str]:
    """Labels of frames passed as arrays: transformers divides whatever `frames_indices` holds
    (by default python ints) by fps, with python / numpy semantics."""
    return [f"{idx / fps:.1f}" for idx in frames_indices]


def video_expansion(labels: Sequence[str], tokens_per_frame: Sequence[int], video_token: str) -> str:
    """``Time {label}s:`` + ``video_token`` x (that frame's tokens), for every frame, joined by ","."""
    if len(labels) != len(tokens_per_frame):
        raise ValueError(f"{len(labels)} timestamps for {len(tokens_per_frame)} frames")
    return ",".join(f"Time {s}s:" + video_token * int(c) for s, c in zip(labels, tokens_per_frame))
