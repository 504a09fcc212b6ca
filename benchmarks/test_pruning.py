"""Frame pruning (DiffFP) on the CPU: vl3fast against transformers' path on the same inputs.

Cases per workload (one pytest-benchmark entry each; medians compared within the run):
  read_sum          torch `sum` over pixel_values: the single-read bandwidth baseline
  hf_mask           transformers VideoLlama3VideoProcessor._get_compression_mask
  hf_mask_compact   that plus the model's boolean-index compaction `features[mask]`
  vl3fast_mask      vl3fast.ops.frame_keep_mask
  vl3fast_mask_compact  frame_keep_mask + prune_tokens(features, keep, ...) (indices, cu_seqlens, gather)
features are the merged visual features the LLM receives: [M, 1536] bfloat16 (Qwen2-1.5B hidden size).
extra_info: GB/s over pixel_values (and the fraction of read_sum's GB/s), tokens/s and the speedup
against the matching transformers case.

Workloads: video16x336 (16 frames 336x336, m=2) and video48x448 by default; video180x448 (180 frames
448x448, m=2, pixel_values [184320, 588] fp32 = 433 MB) only with VL3FAST_BENCH_FULL=1.
Run: VL3FAST_BENCH_FULL=1 pytest benchmarks/test_pruning.py --benchmark-only \
       --benchmark-json=benchmarks/results/pruning_cpu_<date>.json
"""
from __future__ import annotations

import os

import pytest
import torch

from vl3fast.ops import frame_keep_mask, prune_tokens
from workloads import WORKLOADS as SHARED_WORKLOADS

vp = pytest.importorskip("transformers.models.video_llama_3.video_processing_video_llama_3")
PROC = vp.VideoLlama3VideoProcessor()

NAMES = ["video16x336", "video48x448"] + (["video180x448"] if os.environ.get("VL3FAST_BENCH_FULL") == "1" else [])
WORKLOADS = {name: SHARED_WORKLOADS[name] for name in NAMES}  # one video each, m=2
HIDDEN = 1536
CASES = ["read_sum", "hf_mask", "hf_mask_compact", "vl3fast_mask", "vl3fast_mask_compact"]
_medians: dict = {}
_cache: dict = {}


def _inputs(name):
    """A moving square over a textured, slightly flickering background: a realistic keep fraction."""
    if name not in _cache:
        _cache.clear()
        [[t, h, w]], [m] = WORKLOADS[name]
        g = torch.Generator().manual_seed(0)
        P = 14
        frame = (torch.randint(0, 256, (3, h * P, w * P), generator=g).float() / 127.5 - 1)
        frames = frame.expand(t, -1, -1, -1).clone()
        for f in range(t):
            y, x = (7 * f) % (h * P - 64), (13 * f) % (w * P - 64)
            frames[f, :, y : y + 64, x : x + 64] = 1.0
            if f % 3 == 0:  # flicker on a band of rows
                frames[f, :, : 2 * P] += 2 / 127.5
        x = frames.reshape(t, 3, h // m, m, P, w // m, m, P).permute(0, 2, 5, 3, 6, 1, 4, 7)
        px = x.reshape(t * h * w, 3 * P * P).contiguous()
        grid, merges = torch.tensor([[t, h, w]]), torch.tensor([m])
        feats = torch.randn(t * (h // m) * (w // m), HIDDEN, generator=g).to(torch.bfloat16)
        _cache[name] = (px, grid, merges, feats)
    return _cache[name]


def _fn(case, px, grid, merges, feats):
    if case == "read_sum":
        return lambda: px.sum()
    if case == "hf_mask":
        return lambda: PROC._get_compression_mask(px, grid, merges)
    if case == "hf_mask_compact":
        return lambda: feats[PROC._get_compression_mask(px, grid, merges)]
    if case == "vl3fast_mask":
        return lambda: frame_keep_mask(px, grid, merges)
    if case == "vl3fast_mask_compact":
        return lambda: prune_tokens(feats, frame_keep_mask(px, grid, merges), grid, merges).features
    raise ValueError(case)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_pruning(bench, workload, case):
    px, grid, merges, feats = _inputs(workload)
    if case in ("vl3fast_mask", "vl3fast_mask_compact"):  # same answer as transformers before timing
        ref = PROC._get_compression_mask(px, grid, merges)
        assert torch.equal(frame_keep_mask(px, grid, merges), ref)
    fn = _fn(case, px, grid, merges, feats)
    slow = case.startswith("hf") and workload == "video180x448"
    bench.group = f"pruning-{workload}"
    bench.extra_info.update({"workload": workload, "case": case, "pixel_bytes": px.numel() * px.element_size(),
                             "merged_tokens": feats.shape[0]})
    bench.pedantic(fn, rounds=5 if slow else 15, iterations=1, warmup_rounds=1)
    if bench.stats is None:  # --benchmark-disable
        return
    med = bench.stats.stats.median
    _medians[(workload, case)] = med
    info = bench.extra_info
    info["median_s"] = med
    info["GB_per_s"] = px.numel() * px.element_size() / med / 1e9
    info["tokens_per_s"] = feats.shape[0] / med
    read = _medians.get((workload, "read_sum"))
    if read:
        info["fraction_of_read_bw"] = read / med
    base = {"vl3fast_mask": "hf_mask", "vl3fast_mask_compact": "hf_mask_compact"}.get(case)
    if base and (workload, base) in _medians:
        info["speedup_vs_transformers"] = _medians[(workload, base)] / med


@pytest.mark.cuda
@pytest.mark.parametrize("case", ["read_sum", "hf_mask", "hf_mask_compact", "vl3fast_mask", "vl3fast_mask_compact"])
def test_pruning_cuda(bench, case):
    """video180x448 on the GPU (wall time around a synchronize; the median over rounds)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    import vl3fast

    if not vl3fast.cuda_available():
        pytest.skip(vl3fast.cuda_status()[1])
    [[t, h, w]], [m] = SHARED_WORKLOADS["video180x448"]
    g = torch.Generator(device="cuda").manual_seed(0)
    px = torch.rand(t * h * w, 588, device="cuda", generator=g) * 2 - 1
    px[h * w :: 2] = px[: -h * w : 2]  # half of the later rows repeat: a mixed mask
    grid, merges = torch.tensor([[t, h, w]]), torch.tensor([m])
    feats = torch.randn(t * (h // m) * (w // m), HIDDEN, device="cuda").to(torch.bfloat16)
    gpu_grid, gpu_merges = grid.cuda(), merges.cuda()
    if case.startswith("vl3fast"):
        assert torch.equal(frame_keep_mask(px, grid, merges).cpu(), PROC._get_compression_mask(px.cpu(), grid, merges))
    inner = _fn(case, px, gpu_grid if case.startswith("hf") else grid, gpu_merges if case.startswith("hf") else merges,
                feats)

    def fn():
        out = inner()
        torch.cuda.synchronize()
        return out

    bench.group = "pruning-cuda-video180x448"
    bench.extra_info.update({"workload": "video180x448", "case": case, "pixel_bytes": px.numel() * 4})
    bench.pedantic(fn, rounds=10, iterations=1, warmup_rounds=2)
    if bench.stats is not None:
        bench.extra_info["GB_per_s"] = px.numel() * 4 / bench.stats.stats.median / 1e9
