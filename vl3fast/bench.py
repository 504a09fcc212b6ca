"""The main job (`vl3fast bench`, `make demo`): synthetic media at real VideoLLaMA3 shapes through the
reference path and the vl3fast path of every stage, printing tokens/sec, speedups and agreement, the
tokens before and after frame pruning, and writing the numbers as JSON.

The default input is embedded (no files needed): a 16-frame 336x336 video (a static textured
background with a moving square, so frame pruning has something to do) at merge size 2, and two
images at merge size 1.  Stages and their reference paths (what users run today):
  processing       transformers' VideoLLaMA3 video + image processors on the same frames
  position ids     vl3fast.reference (checked equal to transformers in the tests)
  frame pruning    transformers' mask rule (vl3fast.reference.frame_keep_mask, tested bit-equal)
  attention        fp32 rotate_half RoPE, then one SDPA call per frame/image (transformers' path)
  vision encoder   transformers' VideoLlama3VisionModel (sdpa) with the same random weights, at the real
                   width (1152 hidden, 16 heads x 72, MLP 4304) and `layers` layers (27 in the model)
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from . import ops, reference
from .info import info

HEADS, HEAD_DIM = 16, 72


@dataclass
class Batch:
    """A packed visual batch (video first, then images): pixel_values_P588, grid_thw_N3, merge_sizes_N."""

    pixel_values: torch.Tensor
    grid_thw: torch.Tensor
    merge_sizes: torch.Tensor
    frames: np.ndarray  # the video, uint8 [t, H, W, 3]
    images: list  # uint8 [H, W, 3] arrays

    @property
    def num_patches(self) -> int:
        return self.pixel_values.shape[0]


def synthetic_media(frames: int = 16, video_px: int = 336, image_px=((448, 336), (224, 602)), seed: int = 0):
    """uint8 video [t, H, W, 3] (textured background, a 56-pixel square moving 28 px per frame) and images."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 256, (video_px, video_px, 3), dtype=np.uint8)
    video = np.repeat(background[None], frames, axis=0)
    for t in range(frames):
        y = x = (28 * t) % (video_px - 56)
        video[t, y : y + 56, x : x + 56] = (255, 64, 0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in image_px]
    return video, images


# Processor settings that keep the media at their native sizes (multiples of 28), as VideoLLaMA3's
# official 16384-token budget would.
_VIDEO_MAX_PIXELS = 28 * 28 * 16384
_IMAGE_MAX_PIXELS = 28 * 28 * 16384


def process(video: np.ndarray, images: list):
    """vl3fast.processing: (pixel_values, grid_thw, merge_sizes) of the video followed by the images."""
    from .processing import preprocess_images, preprocess_videos

    v = preprocess_videos(video, video_max_pixels=_VIDEO_MAX_PIXELS)
    i = preprocess_images(images, image_max_pixels=_IMAGE_MAX_PIXELS)
    return (torch.cat([v.pixel_values, i.pixel_values]), torch.cat([v.grid_thw, i.grid_thw]),
            torch.cat([v.merge_sizes, i.merge_sizes]))


def process_with_transformers(video: np.ndarray, images: list):
    from transformers.models.video_llama_3.image_processing_video_llama_3 import VideoLlama3ImageProcessor
    from transformers.models.video_llama_3.video_processing_video_llama_3 import VideoLlama3VideoProcessor

    v = VideoLlama3VideoProcessor()(videos=[video], size={"shortest_edge": 128 * 28 * 28, "longest_edge": _VIDEO_MAX_PIXELS},
                                    do_sample_frames=False, return_tensors="pt")
    i = VideoLlama3ImageProcessor()(images=images, size={"shortest_edge": 56 * 56, "longest_edge": _IMAGE_MAX_PIXELS},
                                    return_tensors="pt")
    return (torch.cat([v["pixel_values_videos"], i["pixel_values"]]), torch.cat([v["video_grid_thw"], i["image_grid_thw"]]),
            torch.cat([v["video_merge_sizes"], i["image_merge_sizes"]]))


def synthetic_batch(frames: int = 16) -> Batch:
    video, images = synthetic_media(frames)
    return Batch(*process(video, images), video, images)


@dataclass
class StageResult:
    stage: str
    tokens: int
    reference_ms: float
    vl3fast_ms: float
    max_abs_diff: float
    agree: bool
    note: str = ""
    reference_tokens_per_s: float = field(init=False)
    vl3fast_tokens_per_s: float = field(init=False)
    speedup: float = field(init=False)

    def __post_init__(self):
        self.reference_tokens_per_s = self.tokens / (self.reference_ms / 1e3)
        self.vl3fast_tokens_per_s = self.tokens / (self.vl3fast_ms / 1e3)
        self.speedup = self.reference_ms / self.vl3fast_ms


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _max_diff(a, b) -> float:
    if isinstance(a, (tuple, list)):
        return max(_max_diff(x, y) for x, y in zip(a, b))
    if a.dtype in (torch.bool, torch.int32, torch.int64) or b.dtype in (torch.bool, torch.int32, torch.int64):
        return 0.0 if a.shape == b.shape and torch.equal(a.long(), b.long()) else float("inf")
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


NUM_STAGES = 7


def _measure_stage(name, tokens, ref_fn, fast_fn, tolerance, repeats, note, compare=_max_diff):
    with torch.no_grad():
        diff = compare(fast_fn(), ref_fn())
        return StageResult(name, tokens, median_ms(ref_fn, repeats), median_ms(fast_fn, repeats), diff,
                           diff <= tolerance, note)


def vision_encoders(layers: int, dtype: torch.dtype, seed: int = 0):
    """transformers' VideoLlama3VisionModel (sdpa) and vl3fast's VisionEncoder with the same random weights,
    at the released width (1152 hidden, 16 heads x 72, MLP 4304)."""
    from transformers import VideoLlama3VisionConfig
    from transformers.models.video_llama_3.modeling_video_llama_3 import VideoLlama3VisionModel

    from .models.videollama3 import VideoLLaMA3Config, VisionEncoder
    from .models.videollama3.state_dict_adapter import vision_state_from_transformers

    cfg = VideoLLaMA3Config.from_name("2b").vision
    cfg.num_hidden_layers = layers
    hf_cfg = VideoLlama3VisionConfig(**cfg.to_dict("native"))
    hf_cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    theirs = VideoLlama3VisionModel(hf_cfg).eval().to(dtype)
    ours = VisionEncoder(cfg).eval()
    ours.load_state_dict(vision_state_from_transformers(theirs.state_dict()), strict=True)
    return theirs, ours.to(dtype)


def run(batch: Batch | None = None, repeats: int = 3, layers: int = 1,
        on_stage: Callable[[str], None] | None = None) -> tuple[list[StageResult], object]:
    """Runs every stage; returns the measurements and the frame-pruning report.
    `on_stage(name)` is called as each of the NUM_STAGES stages starts (the CLI's progress bar)."""
    def _stage(name, *args, **kwargs):  # reports progress, then measures
        if on_stage is not None:
            on_stage(name)
        return _measure_stage(name, *args, **kwargs)

    batch = batch or synthetic_batch()
    pixels, grid, merges = batch.pixel_values, batch.grid_thw, batch.merge_sizes
    P = batch.num_patches
    results = [
        _stage(f"processing ({len(batch.frames)} frames + {len(batch.images)} images)", P,
               lambda: process_with_transformers(batch.frames, batch.images), lambda: process(batch.frames, batch.images),
               0.0, repeats, "pixels, grids: exact"),
        _stage("position ids", P, lambda: reference.rope2d_position_ids(grid, merges),
               lambda: ops.rope2d_position_ids(grid, merges), 0.0, repeats, "exact"),
    ]
    merged_tokens = int((grid.prod(1) // merges**2).sum())
    results.append(_stage("frame pruning mask", merged_tokens,
                          lambda: reference.frame_keep_mask(pixels, grid, merges),
                          lambda: ops.frame_keep_mask(pixels, grid, merges), 0.0, repeats, "exact"))
    report = ops.pruning_report(ops.frame_keep_mask(pixels, grid, merges), grid, merges)

    pos_hw, cu_seqlens = ops.rope2d_position_ids(grid, merges)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
        q, k, v = (torch.randn(P, HEADS, HEAD_DIM).to(dtype) for _ in range(3))
        results.append(_stage(
            f"attention {str(dtype)[6:]} [{P},{HEADS},{HEAD_DIM}]", P,
            lambda: reference.rope2d_attention(q, k, v, cu_seqlens, pos_hw),
            lambda: ops.rope2d_attention(q, k, v, cu_seqlens, pos_hw), tol, repeats,
            "2D RoPE + packed attention, rel. error", compare=_rel_err))

    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
        theirs, ours = vision_encoders(layers, dtype)
        results.append(_stage(
            f"vision encoder {str(dtype)[6:]} ({layers} layer{'s' * (layers > 1)})", P,
            lambda: theirs(pixel_values=pixels, grid_thw=grid, merge_sizes=merges).last_hidden_state,
            lambda: ours(pixels, grid, merges, backend="vl3fast"), tol, max(1, repeats // 2),
            "features after downsample, rel. error", compare=_rel_err))
    return results, report


def format_table(results: list[StageResult]) -> str:
    header = f"{'stage':<40} {'tokens':>7} {'ref tok/s':>12} {'vl3fast tok/s':>14} {'speedup':>8}  agreement"
    lines = [header, "-" * len(header)]
    for r in results:
        verdict = "OK" if r.agree else "MISMATCH"
        lines.append(
            f"{r.stage:<40} {r.tokens:>7} {r.reference_tokens_per_s:>12,.0f} {r.vl3fast_tokens_per_s:>14,.0f} "
            f"{r.speedup:>7.2f}x  {verdict} ({r.note}: {r.max_abs_diff:.1e})"
        )
    return "\n".join(lines)


def to_json(results: list[StageResult], batch: Batch, report, layers: int) -> str:
    return json.dumps(
        {
            "environment": info(),
            "torch_threads": torch.get_num_threads(),
            "batch": {"grid_thw": batch.grid_thw.tolist(), "merge_sizes": batch.merge_sizes.tolist(),
                      "patches": batch.num_patches},
            "vision_encoder_layers": layers,
            "pruning": {"tokens_before": report.tokens_before, "tokens_after": report.tokens_after},
            "stages": [asdict(r) for r in results],
        },
        indent=2,
    )
