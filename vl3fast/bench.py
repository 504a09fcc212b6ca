"""The main job (`vl3fast bench`, `make demo`): a synthetic image + video batch at real VideoLLaMA3
shapes through the reference path and the vl3fast path of every stage that exists, printing
tokens/sec, speedups and agreement, and writing the numbers as JSON.

The default batch is embedded (no files needed): a 16-frame 336x336 video at merge size 2 (a static
background with a moving square, so frame pruning has something to do) and two images at merge
size 1, with the vision encoder's attention shape (16 heads x 72).
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from . import ops, reference
from .info import info

PATCH = 14
HEADS, HEAD_DIM = 16, 72


@dataclass
class Batch:
    """A packed visual batch: pixel_values_P588, grid_thw_N3, merge_sizes_N."""

    pixel_values: torch.Tensor
    grid_thw: torch.Tensor
    merge_sizes: torch.Tensor

    @property
    def num_patches(self) -> int:
        return self.pixel_values.shape[0]


def synthetic_batch(frames: int = 16, video_px: int = 336, image_px=((448, 336), (224, 602)), seed: int = 0) -> Batch:
    """Patch rows of a synthetic video (moving square on a static textured background) plus images."""
    gen = torch.Generator().manual_seed(seed)
    m = 2
    side = video_px // PATCH
    tokens_per_frame = (side // m) ** 2
    background = torch.rand(tokens_per_frame, m * m * 3 * PATCH * PATCH, generator=gen) * 2 - 1
    video = background.repeat(frames, 1, 1)
    for t in range(1, frames):  # a 2x2-token square that moves one token per frame
        row, col = divmod(t % (side // m - 1), side // m)
        for dr in (0, 1):
            start = (row + dr) * (side // m) + col
            video[t, start : start + 2] = torch.rand(2, video.shape[-1], generator=gen)
    parts, grids, merges = [video.reshape(-1, 3 * PATCH * PATCH)], [(frames, side, side)], [m]
    for h_px, w_px in image_px:
        h, w = h_px // PATCH, w_px // PATCH
        parts.append(torch.rand(h * w, 3 * PATCH * PATCH, generator=gen) * 2 - 1)
        grids.append((1, h, w))
        merges.append(1)
    return Batch(torch.cat(parts), torch.tensor(grids), torch.tensor(merges))


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
    if a.dtype in (torch.bool, torch.int32, torch.int64):
        return 0.0 if torch.equal(a, b) else float("inf")
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def _stage(name, tokens, ref_fn, fast_fn, tolerance, repeats, note=""):
    diff = _max_diff(ref_fn(), fast_fn())
    return StageResult(name, tokens, median_ms(ref_fn, repeats), median_ms(fast_fn, repeats), diff, diff <= tolerance, note)


def run(batch: Batch | None = None, repeats: int = 5) -> list[StageResult]:
    """Runs every stage on `batch` (default: synthetic_batch()) and returns the measurements."""
    batch = batch or synthetic_batch()
    grid, merges = batch.grid_thw, batch.merge_sizes
    pos_hw, _ = ops.rope2d_position_ids(grid, merges)
    T = batch.num_patches
    q = torch.randn(T, HEADS, HEAD_DIM)
    results = [
        _stage("position ids", T, lambda: reference.rope2d_position_ids(grid, merges),
               lambda: ops.rope2d_position_ids(grid, merges), 0.0, repeats, "exact"),
        _stage(f"2D RoPE fp32 [{T},{HEADS},{HEAD_DIM}]", T, lambda: reference.apply_rope2d(q, pos_hw),
               lambda: ops.apply_rope2d(q, pos_hw), 1e-4, repeats, "max |diff| vs fp32 reference"),
    ]
    q_bf16 = q.bfloat16()
    results.append(_stage(f"2D RoPE bf16 [{T},{HEADS},{HEAD_DIM}]", T, lambda: reference.apply_rope2d(q_bf16, pos_hw),
                          lambda: ops.apply_rope2d(q_bf16, pos_hw), 2**-6, repeats, "within one bf16 ulp"))
    return results


def format_table(results: list[StageResult]) -> str:
    header = f"{'stage':<34} {'tokens':>7} {'ref tok/s':>12} {'vl3fast tok/s':>14} {'speedup':>8}  agreement"
    lines = [header, "-" * len(header)]
    for r in results:
        verdict = "OK" if r.agree else "MISMATCH"
        lines.append(
            f"{r.stage:<34} {r.tokens:>7} {r.reference_tokens_per_s:>12,.0f} {r.vl3fast_tokens_per_s:>14,.0f} "
            f"{r.speedup:>7.2f}x  {verdict} (max |diff| {r.max_abs_diff:.2e}; {r.note})"
        )
    return "\n".join(lines)


def to_json(results: list[StageResult], batch: Batch) -> str:
    return json.dumps(
        {
            "environment": info(),
            "batch": {"grid_thw": batch.grid_thw.tolist(), "merge_sizes": batch.merge_sizes.tolist(),
                      "patches": batch.num_patches},
            "torch_threads": torch.get_num_threads(),
            "stages": [asdict(r) for r in results],
        },
        indent=2,
    )
