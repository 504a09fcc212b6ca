"""VideoLLaMA3 vision encoder end to end (patch embed -> layers -> post LN -> downsample), real sizes, random weights.

Compares vl3fast's VisionEncoder against transformers' VideoLlama3VisionModel (sdpa, per-frame loop) on the
same weights and inputs, in fp32 and bf16, on the shared workloads `video16x336` and `mixed5`.  The two run
*paired*: every round times transformers and vl3fast back to back (order alternating), so the speedup is a
ratio of medians from the same rounds under the same machine load.  Each round also checks that both give the
same features (fp32: relative L2 error < 1e-4; bf16: < 2e-2).

Layers: VL3FAST_BENCH_LAYERS (default 1; the released model has 27).  Each round also times both encoders with
their layers removed (patch embedding + post-LN + downsample: the fixed part, which is *not* negligible for
transformers, whose Conv2d patch embedding runs through oneDNN's convolution).  So per_layer_s =
(t - t_fixed) / layers, and the 27-layer time is extrapolated as t_fixed + 27 * per_layer_s
(`extrapolated_27_layer_s`, with its own speedup `speedup_27_layers`).

Heavy cases (video16x336, mixed5; minutes on 2 cores in bf16) run only with VL3FAST_BENCH_FULL=1; otherwise
a 2-frame smoke workload keeps `pytest benchmarks --benchmark-disable` fast for CI.

Run: VL3FAST_BENCH_FULL=1 pytest benchmarks/test_vision_encoder.py --benchmark-only \
         --benchmark-json=benchmarks/results/vision_encoder_cpu_<date>.json
Why the time goes where it goes: python benchmarks/profile_vision_encoder.py
"""
from __future__ import annotations

import copy
import os
import statistics
import time

import pytest
import torch
import torch.nn.functional as F

from vl3fast.models.videollama3 import VideoLLaMA3Config
from vl3fast.models.videollama3 import state_dict_adapter as adapter
from vl3fast.models.videollama3.vision import VisionEncoder
from workloads import WORKLOADS as SHARED_WORKLOADS

LAYERS = int(os.environ.get("VL3FAST_BENCH_LAYERS", "1"))
FULL = os.environ.get("VL3FAST_BENCH_FULL") == "1"
FULL_LAYERS = 27
ROUNDS = int(os.environ.get("VL3FAST_BENCH_ROUNDS", "3"))
# (grid_thw, merge_sizes) in patches of 14 px: the shared workloads (benchmarks/workloads.py) and a CI smoke case.
WORKLOADS = {name: SHARED_WORKLOADS[name] for name in ("video16x336", "mixed5")}
WORKLOADS["smoke"] = ([[2, 8, 8], [1, 6, 10]], [2, 1])
HEAVY = ("video16x336", "mixed5")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2}  # relative L2 error of vl3fast vs transformers features


def build_encoders(layers: int):
    """transformers' and vl3fast's encoders with the same random weights (real 2B vision config)."""
    from transformers import VideoLlama3VisionConfig
    from transformers.models.video_llama_3.modeling_video_llama_3 import VideoLlama3VisionModel

    cfg = VideoLLaMA3Config.from_name("2b").vision
    cfg.num_hidden_layers = layers
    torch.manual_seed(0)
    hf = VideoLlama3VisionModel(VideoLlama3VisionConfig(**cfg.to_dict("native"), attn_implementation="sdpa")).eval()
    ours = VisionEncoder(cfg).eval()
    state = {}
    for key, value in hf.state_dict().items():
        name = adapter.checkpoint_to_vl3fast_key("model.vision_model." + key, "native")
        state[name.removeprefix("vision.")] = adapter.from_checkpoint(name, value)
    ours.load_state_dict(state, strict=True)
    return hf, ours


@pytest.fixture(scope="module")
def encoders():
    return build_encoders(LAYERS)


def _skip_heavy(workload: str) -> None:
    if workload in HEAVY and not FULL:
        pytest.skip(f"{workload} is a heavy case: set VL3FAST_BENCH_FULL=1")


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_vision_encoder(bench, encoders, workload, dtype):
    _skip_heavy(workload)
    hf, ours = encoders
    grid_list, merge_list = WORKLOADS[workload]
    grid, merge = torch.tensor(grid_list), torch.tensor(merge_list)
    patches = int(grid.prod(1).sum())
    pixels = (torch.rand(patches, 588, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(DTYPES[dtype])
    hf, ours = (copy.deepcopy(m).to(DTYPES[dtype]) for m in (hf, ours))  # the fp32 masters stay fp32
    impls = {
        "transformers": lambda: hf(pixel_values=pixels, grid_thw=grid, merge_sizes=merge).last_hidden_state,
        "vl3fast": lambda: ours(pixels, grid, merge, backend="vl3fast"),
    }
    layer_lists = {"transformers": (hf.encoder, "layers"), "vl3fast": (ours, "layers")}
    times = {name: [] for name in impls}
    fixed = {name: [] for name in impls}
    errors = []

    def paired_round():
        order = list(impls) if len(times["vl3fast"]) % 2 == 0 else list(reversed(impls))
        outs = {}
        for name in order:
            start = time.perf_counter()
            outs[name] = impls[name]()
            times[name].append(time.perf_counter() - start)
            owner, attr = layer_lists[name]
            layers = getattr(owner, attr)
            setattr(owner, attr, torch.nn.ModuleList())
            try:
                start = time.perf_counter()
                impls[name]()
                fixed[name].append(time.perf_counter() - start)
            finally:
                setattr(owner, attr, layers)
        ref, got = outs["transformers"].float(), outs["vl3fast"].float()
        errors.append(float((got - ref).norm() / ref.norm()))

    with torch.inference_mode():
        if not bench.disabled:
            paired_round()  # warm-up: allocator, oneDNN primitive caches
            for t in (*times.values(), *fixed.values()):
                t.clear()
            errors.clear()
        bench.pedantic(paired_round, rounds=ROUNDS if not bench.disabled else 1, iterations=1)
    assert max(errors) < TOLERANCE[dtype], f"vl3fast vs transformers relative error {max(errors):.2e}"
    med = {name: statistics.median(t) for name, t in times.items()}
    med_fixed = {name: statistics.median(t) for name, t in fixed.items()}
    # per round, so the layer time and its ratio come from the same round's pair of measurements
    per_layer = {name: statistics.median((a - b) / LAYERS for a, b in zip(times[name], fixed[name]))
                 for name in impls}
    full = {name: med_fixed[name] + FULL_LAYERS * per_layer[name] for name in impls}
    # ratios per round (both impls measured back to back), then the median: robust to load changing between rounds
    round_ratio = [(ta - fa) / (tb - fb) for ta, fa, tb, fb in zip(times["transformers"], fixed["transformers"],
                                                                    times["vl3fast"], fixed["vl3fast"])]
    round_ratio_e2e = [ta / tb for ta, tb in zip(times["transformers"], times["vl3fast"])]
    round_ratio_27 = [(fa + FULL_LAYERS * (ta - fa) / LAYERS) / (fb + FULL_LAYERS * (tb - fb) / LAYERS)
                      for ta, fa, tb, fb in zip(times["transformers"], fixed["transformers"], times["vl3fast"],
                                                fixed["vl3fast"])]
    bench.extra_info.update(
        workload=workload, dtype=dtype, layers=LAYERS, patches=patches, rounds=len(times["vl3fast"]),
        seconds=times, fixed_seconds=fixed, median_s=med, fixed_median_s=med_fixed, per_layer_s=per_layer,
        tokens_per_s={name: patches / s for name, s in med.items()},
        speedup_vs_transformers=statistics.median(round_ratio_e2e),
        speedup_per_layer=statistics.median(round_ratio), speedup_per_layer_rounds=round_ratio,
        extrapolated_27_layer_s=full, speedup_27_layers=statistics.median(round_ratio_27),
        tokens_per_s_27_layers={name: patches / s for name, s in full.items()},
        max_rel_error=max(errors), load_avg_1min=os.getloadavg()[0],
    )


@pytest.mark.parametrize("shape", [(9216, 1152, 4304)], ids=["video16x336-fc1"])
def test_matmul_bf16_vs_fp32(bench, shape):
    """torch's own bf16 vs fp32 GEMM on this CPU (the issue assumed bf16 ~3x faster), paired like above."""
    if not FULL:
        shape = (512, shape[1], shape[2])
    m, k, n = shape
    x, w, b = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
    cases = {"fp32": (x, w, b), "bf16": (x.bfloat16(), w.bfloat16(), b.bfloat16())}
    times = {name: [] for name in cases}

    def paired_round():
        for name, (xx, ww, bb) in cases.items():
            start = time.perf_counter()
            F.linear(xx, ww, bb)
            times[name].append(time.perf_counter() - start)

    with torch.inference_mode():
        if not bench.disabled:
            paired_round()
            for t in times.values():
                t.clear()
        bench.pedantic(paired_round, rounds=ROUNDS if not bench.disabled else 1, iterations=1)
    med = {name: statistics.median(t) for name, t in times.items()}
    bench.extra_info.update(
        shape_mkn=shape, median_s=med, gflops={name: 2 * m * k * n / s / 1e9 for name, s in med.items()},
        bf16_over_fp32_time=med["bf16"] / med["fp32"], cpu_has_avx512_bf16=_avx512_bf16(),
        load_avg_1min=os.getloadavg()[0],
    )


def _avx512_bf16() -> bool:
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(probe()) if probe else False
