"""frame_keep_mask and its compaction ops against transformers' DiffFP and the vl3fast oracle.

Masks and indices: exact equality.  The float32 scores are compared bit for bit with transformers'
``pixel_diff`` computation, which is what makes near-threshold decisions identical.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import vl3fast
from vl3fast.ops import (
    PackedGrid, frame_keep_mask, frame_token_diff, keep_compaction, prune_patches, prune_tokens, pruning_report,
    rope2d_position_ids,
)
from vl3fast.reference.pruning import frame_keep_mask as reference_mask

transformers_vp = pytest.importorskip("transformers.models.video_llama_3.video_processing_video_llama_3")
PROC = transformers_vp.VideoLlama3VideoProcessor()
PATCH = 14


def hf_mask(px, grid, merge, threshold=0.1, min_tokens=1):
    return PROC._get_compression_mask(px, torch.tensor(grid), torch.tensor(merge), threshold, min_tokens)


def hf_diff(px, t, h, w, m):
    """transformers' pixel_diff for one video, frames 1..t-1, flattened."""
    item = px.view(t, (h // m) * (w // m), -1)
    return ((item[1:] - item[:-1]).abs().mean(dim=-1) * 255).flatten()


def patchify(frames, m):
    """uint8-valued float frames [t, H, W, 3] -> normalized pixel_values [t*h*w, 588] in merge-block order."""
    t, H, W, _ = frames.shape
    h, w = H // PATCH, W // PATCH
    x = (frames.float() / 255 - 0.5) / 0.5
    x = x.permute(0, 3, 1, 2).reshape(t, 3, h // m, m, PATCH, w // m, m, PATCH)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # t, bh, bw, r, c, C, py, px
    return x.reshape(t * h * w, 3 * PATCH * PATCH).contiguous(), [t, h, w]


def synthetic(kind, t, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    H, W = h * PATCH, w * PATCH
    base = torch.randint(0, 256, (H, W, 3), generator=g).float()
    if kind == "static":
        v = base.expand(t, H, W, 3).clone()
    elif kind.startswith("noise"):
        sigma = float(kind[5:])
        v = (base + sigma * torch.randn(t, H, W, 3, generator=g)).round().clamp(0, 255)
    elif kind == "random":
        v = torch.randint(0, 256, (t, H, W, 3), generator=g).float()
    elif kind == "square":  # a moving square on a textured background
        v = base.expand(t, H, W, 3).clone()
        for f in range(t):
            y, x = (5 * f) % (H - 20), (11 * f) % (W - 20)
            v[f, y : y + 20, x : x + 20] = 255.0
    elif kind == "ramp":  # global lighting ramp, one level per frame on part of the frame
        v = torch.stack([(base + f * (torch.arange(W) < W // 2).float()[None, :, None]).clamp(0, 255) for f in range(t)])
    elif kind == "cut":  # scene cut half way
        other = torch.randint(0, 256, (H, W, 3), generator=g).float()
        v = torch.stack([base if f < t // 2 else other for f in range(t)])
    else:
        raise ValueError(kind)
    return v


KINDS = ["static", "noise0.3", "noise1", "noise4", "random", "square", "ramp", "cut"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("t,h,w,m", [(5, 6, 10, 2), (4, 5, 7, 1), (3, 2, 2, 2)])
def test_synthetic_videos_match_transformers(kind, t, h, w, m):
    frames = synthetic(kind, t, h, w, seed=t * 100 + h)
    px, grid = patchify(frames, m)
    keep = frame_keep_mask(px, [grid], [m])
    assert torch.equal(keep, hf_mask(px, [grid], [m]))
    assert torch.equal(keep, reference_mask(px, torch.tensor([grid]), torch.tensor([m])))
    n = (h // m) * (w // m)
    diff = frame_token_diff(px, [grid], [m])
    assert torch.equal(diff[n:], hf_diff(px, t, h, w, m))  # bit-identical float32 scores


@pytest.mark.parametrize("m,row_width", [(2, 588), (1, 588), (2, 100), (1, 5), (3, 7), (4, 588)])  # m=4: cascade level-2 carry
def test_scores_bitwise_near_threshold(m, row_width):
    """Differences placed within a few ulps of the threshold, with random spread so that the
    summation order decides the rounding: every score and decision must equal torch's."""
    g = torch.Generator().manual_seed(m * 1000 + row_width)
    t, h, w = 4, 2 * m, 3 * m
    n = (h // m) * (w // m)
    K = m * m * row_width
    prev = torch.rand(n, K, generator=g) * 2 - 1
    frames = [prev]
    target = 0.1 / 255  # mean |diff| at which d == threshold
    for f in range(1, t):
        spread = torch.rand(n, K, generator=g) * 2 * target  # mean ~= target, not constant
        scale = 1 + (torch.arange(n, dtype=torch.float32) - n / 2) * 1e-7  # straddle the threshold by ulps
        step = spread * scale[:, None] * torch.where(torch.rand(n, K, generator=g) < 0.5, -1.0, 1.0)
        frames.append(frames[-1] + step)
    px = torch.stack(frames).reshape(t * h * w, row_width)
    keep = frame_keep_mask(px, [[t, h, w]], [m], min_tokens=0)
    assert torch.equal(keep, hf_mask(px, [[t, h, w]], [m], min_tokens=0))
    assert torch.equal(frame_token_diff(px, [[t, h, w]], [m])[n:], hf_diff(px, t, h, w, m))
    d = hf_diff(px, t, h, w, m)
    assert (d > 0.1).any() and (d <= 0.1).any(), "the case must straddle the threshold"


def test_batch_of_videos_and_images():
    items = [("square", 5, 4, 6, 2), ("image", 1, 6, 4, 2), ("noise1", 3, 3, 5, 1), ("image", 1, 5, 5, 1),
             ("cut", 6, 2, 2, 2), ("static", 2, 4, 4, 2)]
    pxs, grids, merges = [], [], []
    for i, (kind, t, h, w, m) in enumerate(items):
        frames = synthetic("random" if kind == "image" else kind, t, h, w, seed=i)
        px, grid = patchify(frames, m)
        pxs.append(px), grids.append(grid), merges.append(m)
    px = torch.cat(pxs)
    for threshold, min_tokens in [(0.1, 1), (0.0, 0), (2.5, 0), (30.0, 1)]:
        keep = frame_keep_mask(px, grids, merges, threshold=threshold, min_tokens=min_tokens)
        assert torch.equal(keep, hf_mask(px, grids, merges, threshold, min_tokens)), (threshold, min_tokens)


def test_min_tokens_forces_first_tokens_of_starved_frames():
    frames = synthetic("static", 4, 4, 6, seed=3)
    px, grid = patchify(frames, 2)
    n = 6
    for min_tokens in (0, 1, 4, 6):
        keep = frame_keep_mask(px, [grid], [2], min_tokens=min_tokens).view(4, n)
        assert keep[0].all()
        assert keep[1:, :min_tokens].all() and not keep[1:, min_tokens:].any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_matches_upcast_oracle(dtype):
    frames = synthetic("noise1", 4, 4, 6, seed=5)
    px, grid = patchify(frames, 2)
    px = px.to(dtype)
    keep = frame_keep_mask(px, [grid], [2])
    assert torch.equal(keep, reference_mask(px, torch.tensor([grid]), torch.tensor([2])))
    assert torch.equal(keep, hf_mask(px.float(), [grid], [2]))


def test_nan_pixels_drop_the_token_like_transformers():
    frames = synthetic("noise4", 3, 4, 4, seed=7)
    px, grid = patchify(frames, 2)
    px[4 * 4 + 5, 17] = float("nan")  # frame 1, merged token 1
    keep = frame_keep_mask(px, [grid], [2])
    assert torch.equal(keep, hf_mask(px, [grid], [2]))
    assert not keep[4 + 1] and not keep[2 * 4 + 1]  # NaN diff in frames 1 and 2 -> dropped


def test_non_contiguous_pixels():
    frames = synthetic("square", 4, 4, 4, seed=2)
    px, grid = patchify(frames, 2)
    wide = torch.zeros(px.shape[0], 2 * px.shape[1])
    wide[:, ::2] = px
    view = wide[:, ::2]
    assert torch.equal(frame_keep_mask(view, [grid], [2]), hf_mask(px, [grid], [2]))


# ---- compaction -----------------------------------------------------------------------------------


def _batch():
    grids, merges, pxs = [[5, 4, 6], [1, 6, 4], [3, 3, 5], [4, 2, 2]], [2, 2, 1, 2], []
    for i, ((t, h, w), m) in enumerate(zip(grids, merges)):
        pxs.append(patchify(synthetic(["square", "random", "noise1", "static"][i], t, h, w, seed=i), m)[0])
    return torch.cat(pxs), grids, merges


def test_compaction_round_trip_and_positions():
    px, grids, merges = _batch()
    keep = frame_keep_mask(px, grids, merges)
    idx = keep_compaction(keep, grids, merges)
    n_tok, n_patch = idx.num_kept.tolist()
    assert n_tok == int(keep.sum())
    assert torch.equal(idx.token_index[:n_tok], keep.nonzero()[:, 0])
    assert (idx.token_index[n_tok:] == -1).all()
    # per-frame counts
    counts, starts = [], 0
    for (t, h, w), m in zip(grids, merges):
        n = (h // m) * (w // m)
        counts += keep[starts : starts + t * n].view(t, n).sum(1).tolist()
        starts += t * n
    assert idx.token_cu_seqlens.diff().tolist() == counts
    # patches: m*m rows per kept merged token, with their original positions
    patch_keep = torch.cat([keep[s : s + (t * (h // m) * (w // m))].repeat_interleave(m * m)
                            for s, ((t, h, w), m) in zip(_offsets(grids, merges), zip(grids, merges))])
    assert n_patch == int(patch_keep.sum())
    assert torch.equal(idx.patch_index[:n_patch], patch_keep.nonzero()[:, 0])
    assert (idx.patch_index[n_patch:] == -1).all() and (idx.patch_pos_hw[n_patch:] == -1).all()
    pos_hw, cu = rope2d_position_ids(grids, merges)
    assert torch.equal(idx.patch_pos_hw[:n_patch], pos_hw[patch_keep])
    mm = [m * m for (t, h, w), m in zip(grids, merges) for _ in range(t)]
    assert idx.patch_cu_seqlens.diff().tolist() == [c * k for c, k in zip(counts, mm)]
    # public calls
    features = torch.randn(keep.numel(), 7)
    pruned = prune_tokens(features, keep, grids, merges)
    assert torch.equal(pruned.features, features[keep])
    pp = prune_patches(px, keep, grids, merges)
    assert torch.equal(pp.pixel_values, px[patch_keep])
    assert torch.equal(pp.pos_hw, pos_hw[patch_keep])
    assert pp.max_seqlen == int(pp.cu_seqlens.diff().max())


def _offsets(grids, merges):
    out, s = [], 0
    for (t, h, w), m in zip(grids, merges):
        out.append(s)
        s += t * (h // m) * (w // m)
    return out


def test_report_counts():
    px, grids, merges = _batch()
    keep = frame_keep_mask(px, grids, merges)
    rep = pruning_report(keep, grids, merges)
    assert rep.tokens_before == keep.numel() and rep.tokens_after == int(keep.sum())
    assert rep.items[1]["kind"] == "image" and rep.items[1]["tokens_after"] == rep.items[1]["tokens_before"]
    assert rep.items[3]["per_frame_after"] == [1, 1, 1, 1]  # 2x2 grid, m=2: one token, static -> kept by rule/min_tokens
    text = str(rep)
    assert "before" in text and str(rep.tokens_after) in text


def test_empty_batch():
    keep = frame_keep_mask(torch.zeros(0, 588), torch.zeros(0, 3, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))
    assert keep.shape == (0,)
    idx = keep_compaction(keep, torch.zeros(0, 3, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))
    assert idx.token_cu_seqlens.tolist() == [0] and idx.num_kept.tolist() == [0, 0]


# ---- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case,exc,match", [
    ("rows", ValueError, "rows"),
    ("divisible", ValueError, "divisible"),
    ("merge0", ValueError, "merge_sizes"),
    ("thr_nan", ValueError, "threshold"),
    ("thr_neg", ValueError, "threshold"),
    ("min_neg", ValueError, "min_tokens"),
    ("min_big", ValueError, "min_tokens"),
    ("int_pixels", TypeError, "pixel_values"),
    ("device", ValueError, "device"),
    ("shape", ValueError, "pixel_values"),
])
def test_bad_input(case, exc, match):
    px, grid, m = torch.zeros(2 * 4 * 4, 588), [[2, 4, 4]], [2]
    kwargs = {}
    if case == "rows":
        px = px[:-1]
    elif case == "divisible":
        grid, px = [[2, 3, 4]], torch.zeros(24, 588)
    elif case == "merge0":
        m = [0]
    elif case == "thr_nan":
        kwargs["threshold"] = float("nan")
    elif case == "thr_neg":
        kwargs["threshold"] = -0.1
    elif case == "min_neg":
        kwargs["min_tokens"] = -1
    elif case == "min_big":
        kwargs["min_tokens"] = 5
    elif case == "int_pixels":
        px = px.to(torch.int32)
    elif case == "device":
        grid = torch.tensor(grid, device="meta")
        m = torch.tensor(m, device="meta")
    elif case == "shape":
        px = px.reshape(-1)
    with pytest.raises(exc, match=match):
        frame_keep_mask(px, grid, m, **kwargs)


def test_bad_keep():
    with pytest.raises(ValueError, match="keep"):
        keep_compaction(torch.ones(5, dtype=torch.bool), [[2, 4, 4]], [2])
    with pytest.raises(TypeError, match="keep"):
        keep_compaction(torch.ones(8, dtype=torch.int64), [[2, 4, 4]], [2])


# ---- ISA levels and torch capabilities --------------------------------------------------------------

_SCRIPT = r"""
import json, sys, torch
from vl3fast.ops import frame_token_diff, frame_keep_mask
g = torch.Generator().manual_seed(11)
t, h, w, m = 3, 4, 6, 2
px = torch.rand(t * h * w, 588, generator=g) * 2 - 1
px[h * w:] = px[:-h * w] + (torch.rand(2 * h * w, 588, generator=g) - 0.5) * (0.2 / 255) * 2
d = frame_token_diff(px, [[t, h, w]], [m])
item = px.view(t, (h // m) * (w // m), -1)
hf = ((item[1:] - item[:-1]).abs().mean(dim=-1) * 255).flatten()
n = (h // m) * (w // m)
import vl3fast
print(json.dumps({"isa": vl3fast.info()["cpu_isa"], "cap": torch.backends.cpu.get_cpu_capability(),
                  "bits": d.view(torch.int32).tolist(), "torch_equal": bool(torch.equal(d[n:], hf))}))
"""


def _run(env_extra):
    env = dict(os.environ, **env_extra)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(vl3fast.__file__)) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cpu_isa_levels_and_torch_capabilities_agree():
    """Every vl3fast ISA build gives the same bits, and each matches torch under one of its CPU
    capabilities (torch sums in the same 8-lane order under all three): one subprocess per pair."""
    pairs = [("generic", "default"), ("avx2", "avx2"), ("avx512", "avx512")]
    compiled = vl3fast.info()["cpu_isas_compiled"]
    results = []
    for isa, cap in pairs:
        if isa not in compiled:
            continue
        try:
            results.append(_run({"VL3FAST_CPU_ISA": isa, "ATEN_CPU_CAPABILITY": cap}))
        except subprocess.CalledProcessError:
            continue  # level compiled but not supported by this CPU
    assert results and results[0]["isa"] == "generic"
    assert all(r["bits"] == results[0]["bits"] for r in results), [r["isa"] for r in results]
    assert all(r["torch_equal"] for r in results), [(r["isa"], r["cap"]) for r in results]


# ---- torch.library ----------------------------------------------------------------------------------


def test_opcheck():
    frames = synthetic("noise1", 3, 4, 4, seed=1)
    px, grid = patchify(frames, 2)
    g = PackedGrid.from_grid([grid], [2])
    table = g.item_table()
    torch.library.opcheck(torch.ops.vl3fast.frame_keep_mask.default,
                          (px, table, g.num_tokens, g.num_frames, g.max_frame_tokens, 0.1, 1, 8, True))
    keep = frame_keep_mask(px, g)
    torch.library.opcheck(torch.ops.vl3fast.keep_compaction.default, (keep, table, g.num_patches, g.num_frames))


def test_shared_grid_cases_match_transformers(grid):
    """tests/conftest.py's grids (odd sizes, single-frame items, one large item beside tiny ones)."""
    grid_thw, merges = grid
    rows = sum(int(t * h * w) for t, h, w in grid_thw.tolist())
    base = torch.rand(rows, 588) * 2 - 1
    px = base + (torch.rand(rows, 588) - 0.5) * (0.3 / 255)  # scores straddle the threshold
    keep = frame_keep_mask(px, grid_thw, merges)
    assert torch.equal(keep, PROC._get_compression_mask(px, grid_thw, merges))
