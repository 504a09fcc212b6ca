"""Images and videos to model inputs: resize, rescale + normalize, patchify in merge-block order.

Output (`VisualInputs`), the layout of spec A and of transformers' VideoLLaMA3 processors:
  pixel_values  float32 [P, 3*p*p]  one row per p x p patch, flattened (C, py, px); rows ordered
                item -> frame -> merge block (row-major over (h/m, w/m)) -> in-block (r, c)
  grid_thw      int64 [N, 3]        (t, h, w) per item in patches, before merging
  merge_sizes   int64 [N]
  timestamps    per item: seconds of each frame (videos) or None (images)
  frame_indices per item: frame numbers in the source (videos from files or `Video`s), else None
  video_fps     per item: the source frame rate the timestamps are `index / fps` of, else None
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Sequence, Union

import numpy as np
import torch

from .config import ProcessingConfig, resolve_config
from .errors import TokenBudgetError
from .image import ImageLike, load_image
from .resize import ItemPlan, ItemShape, plan_sizes, resize_frames
from .sampling import sample_with_config
from .video import DEFAULT_TIMEOUT_S, Video, VideoFile, _check_decode_settings, decode_frames

VideoLike = Union[str, os.PathLike, Video, np.ndarray, torch.Tensor]


@dataclass
class VisualInputs:
    pixel_values: torch.Tensor
    grid_thw: torch.Tensor
    merge_sizes: torch.Tensor
    timestamps: list = field(default_factory=list)
    frame_indices: list = field(default_factory=list)
    video_fps: list = field(default_factory=list)

    @property
    def num_tokens(self) -> list[int]:
        """Visual tokens per item after the m x m merge (before frame pruning)."""
        return [int(t * h * w) // int(m * m) for (t, h, w), m in zip(self.grid_thw.tolist(), self.merge_sizes.tolist())]


def normalize_patchify(frames: torch.Tensor, merge_size: int, config: ProcessingConfig) -> torch.Tensor:
    """uint8 frames [T, 3, H, W] (any memory format; H, W multiples of patch_size * merge_size) to
    float32 patches [T*(H/p)*(W/p), 3*p*p] in merge-block order, rescaled and normalized.

    The values are bit-identical to transformers' fused rescale+normalize, `(x - mean/r) / (std/r)`
    in float32 with r the rescale factor (127.5 and 127.5 for the VideoLLaMA3 settings)."""
    p, m = config.patch_size, merge_size
    t, c, h, w = frames.shape
    if h % (p * m) or w % (p * m):
        raise ValueError(f"frame size {h}x{w} is not a multiple of patch_size*merge_size={p * m}")
    gh, gw = h // p, w // p
    blocks = frames.reshape(t, c, gh // m, m, p, gw // m, m, p).permute(0, 2, 5, 3, 6, 1, 4, 7)
    # the one copy, as uint8 -> float; contiguous even when the reshape above is a strided view (e.g. one
    # merge block per row), which `.to` alone would preserve and `.view` below would reject
    patches = blocks.reshape(t * gh * gw, c, p * p).to(torch.float32, memory_format=torch.contiguous_format)
    mean = (torch.tensor(config.image_mean) * (1.0 / config.rescale_factor)).view(1, c, 1)
    std = (torch.tensor(config.image_std) * (1.0 / config.rescale_factor)).view(1, c, 1)
    patches.sub_(mean).div_(std)
    return patches.view(t * gh * gw, c * p * p)


def _image_to_tensor(image) -> torch.Tensor:
    """A loaded image (PIL RGB, or uint8 array [H, W, 3] / [H, W]) as a uint8 [1, 3, H, W] view."""
    from PIL import Image

    if isinstance(image, Image.Image):
        array = np.array(image)  # writable (np.asarray of a PIL image is read-only)
    elif isinstance(image, np.ndarray):
        array = image
        if array.dtype != np.uint8:
            raise TypeError(f"image arrays must be uint8 [H, W, 3] RGB, got dtype {array.dtype}")
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=-1)
        if array.ndim != 3 or array.shape[-1] != 3:
            raise TypeError(f"image arrays must be uint8 [H, W, 3] RGB, got shape {array.shape}")
    else:
        raise TypeError(f"expected a path, PIL image or uint8 array, got {type(image).__name__}")
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None]


def _check_budget(plans: Sequence[ItemPlan], names: Sequence[str], budget: int | None) -> None:
    if budget is None:
        return
    total = sum(pl.num_tokens for pl in plans)
    if total > budget:
        parts = ", ".join(
            f"{n}: {pl.grid_thw[0]} x {pl.tokens_per_frame}" for n, pl in zip(names, plans)
        )
        raise TokenBudgetError(
            f"{total} visual tokens exceed max_visual_tokens={budget} ({parts} tokens); lower fps, "
            "max_frames or the pixel limits, or raise the budget"
        )


def preprocess_images(
    images: ImageLike | Sequence[ImageLike],
    config: ProcessingConfig | None = None,
    *,
    max_visual_tokens: int | None = None,
    **overrides,
) -> VisualInputs:
    """Images (paths, PIL images or uint8 [H, W, 3] arrays) to `VisualInputs`, with the settings of
    `config` (default: transformers' VideoLlama3ImageProcessor defaults) plus keyword overrides.
    Raises TokenBudgetError before resizing when the images exceed `max_visual_tokens`."""
    config = resolve_config(config, overrides)
    if not isinstance(images, (list, tuple)):
        images = [images]
    if not images:
        raise ValueError("no images given")
    loaded = [load_image(im) if isinstance(im, (str, os.PathLike)) else im for im in images]
    tensors = [_image_to_tensor(im) for im in loaded]
    names = [repr(os.fspath(im)) if isinstance(im, (str, os.PathLike)) else f"image {i}" for i, im in enumerate(images)]
    plans = plan_sizes([ItemShape(int(x.shape[2]), int(x.shape[3]), name=n) for x, n in zip(tensors, names)], config)
    _check_budget(plans, [f"image {i}" for i in range(len(plans))], max_visual_tokens)
    pixel_values = []
    for x, plan in zip(tensors, plans):
        resized = resize_frames(x, plan.resized_height, plan.resized_width)
        pixel_values.append(normalize_patchify(resized, plan.merge_size, config))
    return VisualInputs(
        pixel_values=torch.cat(pixel_values) if len(pixel_values) > 1 else pixel_values[0],
        grid_thw=torch.tensor([pl.grid_thw for pl in plans], dtype=torch.int64),
        merge_sizes=torch.tensor([pl.merge_size for pl in plans], dtype=torch.int64),
        timestamps=[None] * len(plans),
        frame_indices=[None] * len(plans),
        video_fps=[None] * len(plans),
    )


def _frames_to_tensor(frames) -> torch.Tensor:
    """uint8 frames [T, H, W, 3] (numpy or torch) as a uint8 [T, 3, H, W] view."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(frames)
    if not isinstance(frames, torch.Tensor) or frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[-1] != 3:
        desc = f"{frames.dtype} {tuple(frames.shape)}" if hasattr(frames, "shape") else type(frames).__name__
        raise TypeError(f"video frames must be uint8 [T, H, W, 3] RGB, got {desc}")
    if frames.shape[0] < 1:
        raise ValueError("a video needs at least one frame, got 0")
    return frames.permute(0, 3, 1, 2)


def preprocess_videos(
    videos: VideoLike | Sequence[VideoLike],
    config: ProcessingConfig | None = None,
    *,
    max_visual_tokens: int | None = None,
    video_fps: float | None = None,
    threads: int = 0,
    timeout: float | None = DEFAULT_TIMEOUT_S,
    progress: bool | None = None,
    **overrides,
) -> VisualInputs:
    """Videos to `VisualInputs`.

    A path is probed (header only), sampled (`config.fps` / `num_frames`, `min_frames`,
    `max_frames`), checked against `max_visual_tokens` *before any decoding*, then decoded with each
    frame resized as soon as it is decoded. A `Video` (from `load_video`) or a uint8 [T, H, W, 3]
    array is used as given, every frame kept (as transformers does with decoded frames);
    `video_fps` then gives the timestamps of raw arrays.
    """
    config = resolve_config(config, overrides)
    if not isinstance(videos, (list, tuple)):
        videos = [videos]
    if not videos:
        raise ValueError("no videos given")
    _check_decode_settings(threads, timeout)
    with contextlib.ExitStack() as files:  # each file is opened once: probed, sampled, then decoded
        shapes, names, sources, indices, rates = [], [], [], [], []
        for i, v in enumerate(videos):
            if isinstance(v, (str, os.PathLike)):
                video = files.enter_context(VideoFile(v, timeout=timeout))
                idx = sample_with_config(video.info.total_frames, video.info.fps, config)
                shapes.append(ItemShape(video.info.height, video.info.width, len(idx)))
                sources.append(("path", video, idx))
                names.append(os.path.basename(os.fspath(v)))
                indices.append(np.asarray(idx, dtype=np.int64))
                rates.append(video.info.fps)
            elif isinstance(v, Video):
                v.check_full_size()
                shapes.append(ItemShape(v.frames.shape[1], v.frames.shape[2], v.frames.shape[0]))
                sources.append(("frames", _frames_to_tensor(v.frames), list(v.timestamps)))
                names.append(os.path.basename(v.info.path))
                indices.append(np.asarray(v.indices, dtype=np.int64))
                rates.append(v.info.fps)
            else:
                x = _frames_to_tensor(v)
                stamps = [k / video_fps for k in range(x.shape[0])] if video_fps else None
                shapes.append(ItemShape(int(x.shape[2]), int(x.shape[3]), int(x.shape[0])))
                sources.append(("frames", x, stamps))
                names.append(f"video {i}")
                indices.append(None)
                rates.append(video_fps)
        # size errors name the file by its full path, the budget breakdown by its base name
        shapes = [dataclasses.replace(sh, name=repr(os.fspath(v)) if isinstance(v, (str, os.PathLike)) else
                                      repr(v.info.path) if isinstance(v, Video) else n)
                  for sh, n, v in zip(shapes, names, videos)]
        plans = plan_sizes(shapes, config)
        _check_budget(plans, names, max_visual_tokens)
        pixel_values, timestamps = [], []
        for (kind, src, extra), plan in zip(sources, plans):
            size = (plan.resized_height, plan.resized_width)
            if kind == "path":
                deadline = None if timeout is None else time.monotonic() + timeout
                decoded = decode_frames(src, extra, threads=threads, deadline=deadline, progress=progress,
                                        resize_to=size)
                resized = torch.from_numpy(decoded.frames).permute(0, 3, 1, 2)
                timestamps.append(decoded.timestamps)
            else:
                resized = resize_frames(src, *size)
                timestamps.append(extra)
            pixel_values.append(normalize_patchify(resized, plan.merge_size, config))
    return VisualInputs(
        pixel_values=torch.cat(pixel_values) if len(pixel_values) > 1 else pixel_values[0],
        grid_thw=torch.tensor([pl.grid_thw for pl in plans], dtype=torch.int64),
        merge_sizes=torch.tensor([pl.merge_size for pl in plans], dtype=torch.int64),
        timestamps=timestamps,
        frame_indices=indices,
        video_fps=rates,
    )
