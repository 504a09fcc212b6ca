"""CUDA frame pruning against the CPU kernels (which tests/ops/test_pruning.py ties to transformers).

The CUDA kernels reproduce torch's CPU summation order, so scores must match the CPU bit for bit and
masks/indices exactly.  Skipped where no CUDA device is visible (CUDA code there: compiles, unverified).
"""
from __future__ import annotations

import pytest
import torch

import vl3fast
from vl3fast.ops import frame_keep_mask, frame_token_diff, keep_compaction, prune_patches

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not (torch.cuda.is_available() and vl3fast.cuda_available()),
                       reason=f"needs a CUDA device and vl3fast's CUDA backend ({vl3fast.cuda_status()[1]})"),
]


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    grids, merges = [[5, 4, 6], [1, 6, 4], [3, 3, 5], [4, 2, 2], [7, 32, 32]], [2, 2, 1, 2, 2]
    pxs = []
    for (t, h, w), m in zip(grids, merges):
        frame = torch.rand(h * w, 588, generator=g) * 2 - 1
        step = (torch.rand(t, h * w, 588, generator=g) - 0.5) * (0.25 / 255) * 2  # near the threshold
        pxs.append((frame + step.cumsum(0)).reshape(t * h * w, 588))
    return torch.cat(pxs), grids, merges


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_mask_and_scores_match_cpu(dtype):
    px, grids, merges = _batch()
    px = px.to(dtype)
    for min_tokens in (0, 1):
        cpu = frame_keep_mask(px, grids, merges, min_tokens=min_tokens)
        gpu = frame_keep_mask(px.cuda(), grids, merges, min_tokens=min_tokens)
        assert torch.equal(cpu, gpu.cpu())
    assert torch.equal(frame_token_diff(px, grids, merges), frame_token_diff(px.cuda(), grids, merges).cpu())


def test_cuda_compaction_matches_cpu():
    px, grids, merges = _batch(1)
    keep = frame_keep_mask(px, grids, merges)
    cpu = keep_compaction(keep, grids, merges)
    gpu = keep_compaction(keep.cuda(), grids, merges)
    for a, b in zip(cpu, gpu):
        assert torch.equal(a, b.cpu())
    pc, pg = prune_patches(px, keep, grids, merges), prune_patches(px.cuda(), keep.cuda(), grids, merges)
    assert torch.equal(pc.pixel_values, pg.pixel_values.cpu()) and torch.equal(pc.pos_hw, pg.pos_hw.cpu())
    assert pc.max_seqlen == pg.max_seqlen
