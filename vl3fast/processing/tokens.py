"""Exact visual-token counts without decoding pixels or running a model.

Reads headers (image size and EXIF orientation; video frame count, frame rate, size and rotation) and,
for videos whose header cannot show a constant frame rate, the packets' pts (demuxed, never decoded), then
runs the same sampling (`sample_frame_indices`) and size planning (`plan_sizes`) as preprocessing,
so the counts equal `preprocess_*(...).num_tokens` by construction (tests check it).

The counts are before DiffFP frame pruning (`use_token_compression`), which depends on pixel content:
they are the upper bound that decides memory.  This module is about media only; the text tokens of a
prompt are counted by `VideoLLaMA3Processor.estimate_tokens`, which calls `estimate_tokens` here and
expands the prompt exactly as the processor does, so its `total_tokens` equals the processor's
`input_ids` length with compression off (with compression on: `total_tokens - (pruned tokens)`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass


from .config import ProcessingConfig, resolve_config
from .errors import TokenBudgetError
from .image import image_size
from .resize import ItemShape, plan_sizes
from .sampling import sample_with_config
from .video import DEFAULT_TIMEOUT_S, Video, VideoFile, VideoInfo


@dataclass(frozen=True)
class ItemEstimate:
    kind: str                       # "image" or "video"
    name: str
    height: int                     # source size
    width: int
    resized_height: int
    resized_width: int
    grid_thw: tuple[int, int, int]  # patches before merging
    merge_size: int
    tokens: int                     # after merging, before pruning
    frame_indices: tuple[int, ...] | None = None
    timestamps: tuple[float, ...] | None = None
    video_fps: float | None = None  # source frame rate (videos read from files or `Video`s)

    @property
    def num_frames(self) -> int:
        return self.grid_thw[0]

    @property
    def tokens_per_frame(self) -> int:
        return self.tokens // self.grid_thw[0]


@dataclass(frozen=True)
class TokenEstimate:
    items: tuple[ItemEstimate, ...]
    text_tokens: int | None = None  # prompt tokens besides the visual ones; None without a tokenizer

    @property
    def total_tokens(self) -> int | None:
        """Length of the tokenized prompt (text + every visual token), or None without a tokenizer."""
        return None if self.text_tokens is None else self.text_tokens + self.visual_tokens

    @property
    def visual_tokens(self) -> int:
        return sum(it.tokens for it in self.items)

    @property
    def image_tokens(self) -> int:
        return sum(it.tokens for it in self.items if it.kind == "image")

    @property
    def video_tokens(self) -> int:
        return sum(it.tokens for it in self.items if it.kind == "video")

    def summary(self) -> str:
        lines = []
        for it in self.items:
            if it.kind == "video":
                span = f", {it.timestamps[0]:.1f}-{it.timestamps[-1]:.1f} s" if it.timestamps else ""
                lines.append(f"video {it.name}: {it.num_frames} frames{span} at {it.resized_height}x"
                             f"{it.resized_width} -> {it.num_frames} x {it.tokens_per_frame} = {it.tokens} tokens")
            else:
                lines.append(f"image {it.name}: {it.height}x{it.width} -> {it.resized_height}x"
                             f"{it.resized_width} -> {it.tokens} tokens")
        lines.append(f"total visual tokens: {self.visual_tokens}")
        if self.text_tokens is not None:
            lines.append(f"text tokens: {self.text_tokens}")
            lines.append(f"total tokens: {self.total_tokens} (before DiffFP pruning)")
        return "\n".join(lines)


def _as_list(x) -> list:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _image_shape(source) -> tuple[int, int]:
    if isinstance(source, tuple) and len(source) == 2 and all(isinstance(v, int) for v in source):
        return source
    return image_size(source)


def estimate_tokens(
    images=None,
    videos=None,
    config: ProcessingConfig | None = None,
    *,
    max_visual_tokens: int | None = None,
    timeout: float | None = DEFAULT_TIMEOUT_S,
    **overrides,
) -> TokenEstimate:
    """Visual tokens the given media become under `config` (plus keyword overrides such as
    `fps=2, max_frames=64, resize_rule="official"`).

    images: paths, PIL images, uint8 [H, W, 3] arrays or (height, width) tuples.
    videos: paths, `VideoInfo`s (from `probe_video`), `Video`s, uint8 [T, H, W, 3] arrays or
        (num_frames, height, width) tuples (arrays and tuples: frames used as given, no sampling).
    max_visual_tokens: raise TokenBudgetError (with a per-item breakdown) when the total exceeds it.
    Text tokens too: `VideoLLaMA3Processor.estimate_tokens(text=..., images=..., videos=...)`.

    Images and videos are planned as separate calls, as transformers' processor runs its image and
    video processors separately (this matters only for the official rule's shared budget).
    """
    config = resolve_config(config, overrides)
    items: list[ItemEstimate] = []

    image_list = _as_list(images)
    if image_list:
        shapes = [ItemShape(*_image_shape(im), name=repr(os.fspath(im)) if isinstance(im, (str, os.PathLike))
                            else f"image {i}") for i, im in enumerate(image_list)]
        for i, (im, sh, pl) in enumerate(zip(image_list, shapes, plan_sizes(shapes, config))):
            name = os.path.basename(os.fspath(im)) if isinstance(im, (str, os.PathLike)) else str(i)
            items.append(ItemEstimate("image", name, sh.height, sh.width, pl.resized_height, pl.resized_width,
                                      pl.grid_thw, pl.merge_size, pl.num_tokens))

    video_list = _as_list(videos)
    if video_list:
        shapes, extras, rates = [], [], []
        for i, v in enumerate(video_list):
            if isinstance(v, (str, os.PathLike, VideoInfo)):
                if isinstance(v, VideoInfo):  # header numbers only: timestamps index / fps
                    info = v
                    idx = sample_with_config(info.total_frames, info.fps, config)
                    stamps = tuple(float(k) / info.fps for k in idx)
                else:
                    with VideoFile(v, timeout=timeout) as video:
                        info = video.info
                        idx = sample_with_config(info.total_frames, info.fps, config)
                        stamps = tuple(video.sampled_timestamps(idx))
                shapes.append(ItemShape(info.height, info.width, len(idx), name=repr(info.path)))
                extras.append((os.path.basename(info.path), tuple(int(k) for k in idx), stamps))
                rates.append(info.fps)
            elif isinstance(v, Video):
                v.check_full_size()
                shapes.append(ItemShape(v.frames.shape[1], v.frames.shape[2], v.frames.shape[0]))
                extras.append((os.path.basename(v.info.path), tuple(int(k) for k in v.indices), tuple(v.timestamps)))
                rates.append(v.info.fps)
            elif isinstance(v, tuple) and len(v) == 3:
                shapes.append(ItemShape(int(v[1]), int(v[2]), int(v[0])))
                extras.append((str(i), None, None))
                rates.append(None)
            elif hasattr(v, "shape") and len(v.shape) == 4:
                shapes.append(ItemShape(int(v.shape[1]), int(v.shape[2]), int(v.shape[0])))
                extras.append((str(i), None, None))
                rates.append(None)
            else:
                raise TypeError(f"videos[{i}]: expected a path, VideoInfo, Video, [T, H, W, 3] array or "
                                f"(frames, height, width) tuple, got {type(v).__name__}")
        for sh, pl, (name, idx, stamps), rate in zip(shapes, plan_sizes(shapes, config), extras, rates):
            items.append(ItemEstimate("video", name, sh.height, sh.width, pl.resized_height, pl.resized_width,
                                      pl.grid_thw, pl.merge_size, pl.num_tokens, idx, stamps, rate))

    estimate = TokenEstimate(tuple(items))
    if max_visual_tokens is not None and estimate.visual_tokens > max_visual_tokens:
        raise TokenBudgetError(
            f"{estimate.visual_tokens} visual tokens exceed max_visual_tokens={max_visual_tokens}:\n"
            f"{estimate.summary()}\nLower fps or max_frames, lower the pixel limits, or raise the budget."
        )
    return estimate
