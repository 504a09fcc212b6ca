"""VideoLLaMA3 vision encoder end to end (patch embed -> layers -> post LN -> downsample), real sizes, random weights.

Compares vl3fast's VisionEncoder against transformers' VideoLlama3VisionModel (sdpa, per-frame loop) on the
same weights and inputs, in fp32 and bf16, on the shared workloads `video16x336` and `mixed5`.
Layers: VL3FAST_BENCH_LAYERS (default 1, so CI stays fast; the released model has 27).  Every layer costs the
same on a given workload, so the 27-layer time is extrapolated as t * 27 / layers (patch embedding, post-LN
and downsample are under 1% of one layer); it is stored as `extrapolated_27_layer_s`.

Run: pytest benchmarks/test_vision_encoder.py --benchmark-only   (or --benchmark-disable for a smoke run)
"""
from __future__ import annotations

import os

import pytest
import torch

import vl3fast
from vl3fast.models.videollama3 import VideoLLaMA3Config
from vl3fast.models.videollama3 import state_dict_adapter as adapter
from vl3fast.models.videollama3.vision import VisionEncoder

LAYERS = int(os.environ.get("VL3FAST_BENCH_LAYERS", "1"))
FULL_LAYERS = 27
# (grid_thw, merge_sizes) in patches of 14 px.
WORKLOADS = {
    "video16x336": ([[16, 24, 24]], [2]),
    "mixed5": ([[1, 16, 16], [1, 24, 32], [1, 32, 32], [1, 14, 22], [1, 36, 20]], [1, 1, 1, 1, 1]),
}
IMPLS = [
    "transformers",
    pytest.param("vl3fast", marks=pytest.mark.skipif(
        not hasattr(vl3fast.ops, "rope2d_attention"), reason="vl3fast.ops.rope2d_attention is not in this build")),
    "vl3fast-reference-attn",  # vl3fast's encoder with the reference attention: isolates the attention op's share
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@pytest.fixture(scope="module")
def encoders():
    """Both encoders with the same random weights, built once per module and cast per case."""
    from transformers import VideoLlama3VisionConfig
    from transformers.models.video_llama_3.modeling_video_llama_3 import VideoLlama3VisionModel

    cfg = VideoLLaMA3Config.from_name("2b").vision
    cfg.num_hidden_layers = LAYERS
    torch.manual_seed(0)
    hf = VideoLlama3VisionModel(VideoLlama3VisionConfig(**cfg.to_dict("native"), attn_implementation="sdpa")).eval()
    ours = VisionEncoder(cfg).eval()
    state = {}
    for key, value in hf.state_dict().items():
        name = adapter.checkpoint_to_vl3fast_key("model.vision_model." + key, "native")
        state[name.removeprefix("vision.")] = adapter.from_checkpoint(name, value, None)
    ours.load_state_dict(state, strict=True)
    return hf, ours


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_vision_encoder(bench, encoders, workload, impl, dtype):
    hf, ours = encoders
    grid_list, merge_list = WORKLOADS[workload]
    grid, merge = torch.tensor(grid_list), torch.tensor(merge_list)
    patches = int(grid.prod(1).sum())
    pixels = (torch.rand(patches, 588) * 2 - 1).to(DTYPES[dtype])
    if impl == "transformers":
        model = hf.to(DTYPES[dtype])

        def run():
            return model(pixel_values=pixels, grid_thw=grid, merge_sizes=merge).last_hidden_state
    else:
        model = ours.to(DTYPES[dtype])
        backend = "vl3fast" if impl == "vl3fast" else "reference"

        def run():
            return model(pixels, grid, merge, backend=backend)

    with torch.inference_mode():
        if not bench.disabled:
            run()  # warm-up: allocator, oneDNN primitive caches
        bench.pedantic(run, rounds=3, iterations=1)
    seconds = bench.stats.stats.median if bench.stats else float("nan")
    bench.extra_info.update(
        workload=workload, impl=impl, dtype=dtype, layers=LAYERS, patches=patches,
        tokens_per_s=patches / seconds, extrapolated_27_layer_s=seconds * FULL_LAYERS / LAYERS,
    )
