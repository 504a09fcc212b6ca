"""Where a vision-encoder layer's time goes: torch.profiler over vl3fast's VisionEncoder and transformers'
VideoLlama3VisionModel (sdpa), same random weights and inputs, grouped into matmul / LayerNorm / GELU /
attention / RoPE / downsample / copies+casts / other (self CPU time of the leaf ops).

Run: python benchmarks/profile_vision_encoder.py [--workload video16x336] [--layers 1] [--json out.json]
(not collected by pytest; the timings in test_vision_encoder.py are the benchmark, this is the explanation).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import contextmanager

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, os.path.dirname(__file__))
from conftest import environment  # noqa: E402
from test_vision_encoder import WORKLOADS, build_encoders  # noqa: E402

CATEGORIES = {
    "matmul": ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear"),
    "layernorm": ("aten::native_layer_norm", "aten::layer_norm"),
    "gelu": ("aten::gelu", "aten::gelu_"),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math",
                  "vl3fast::rope2d_attention"),
    "copies/casts": ("aten::copy_", "aten::_to_copy", "aten::contiguous", "aten::clone", "aten::cat",
                     "aten::to", "aten::empty_like"),
    "residual/bias adds": ("aten::add", "aten::add_"),
}
REGIONS = ("rope", "downsample", "patch_embed")  # record_function labels that own everything beneath them


@contextmanager
def label_regions(ours):
    """record_function labels (restored after): transformers' RoPE application, patch embedding (Conv2d) and
    downsample; vl3fast's patch-embedding GEMM (its RoPE is inside the attention op, its downsample is
    counted by op)."""
    import transformers.models.video_llama_3.modeling_video_llama_3 as m

    from vl3fast.models.videollama3 import vision

    saved = (m.apply_rotary_pos_emb_vision, m.VideoLlama3VisionModel.pixel_unshuffle,
             m.VideoLlama3VisionEmbeddings.forward, vision.linear)

    def labelled(name, fn):
        def wrapper(*a, **k):
            with record_function(name):
                return fn(*a, **k)
        return wrapper

    def linear(x, layer):
        return labelled("patch_embed", saved[3])(x, layer) if layer is ours.patch_embed else saved[3](x, layer)

    m.apply_rotary_pos_emb_vision = labelled("rope", saved[0])
    m.VideoLlama3VisionModel.pixel_unshuffle = labelled("downsample", saved[1])
    m.VideoLlama3VisionEmbeddings.forward = labelled("patch_embed", saved[2])
    vision.linear = linear
    try:
        yield
    finally:
        (m.apply_rotary_pos_emb_vision, m.VideoLlama3VisionModel.pixel_unshuffle,
         m.VideoLlama3VisionEmbeddings.forward, vision.linear) = saved


def categorize(prof, categories: dict | None = None, regions=REGIONS) -> dict[str, float]:
    """Self CPU seconds per category (default CATEGORIES; a name ending in "*" matches as a prefix).  A leaf
    op counts for its outermost labelled region or categorized ancestor (so the bias copy inside aten::addmm
    is matmul time, and everything under "rope" is RoPE)."""
    totals: dict[str, float] = {}
    categories = CATEGORIES if categories is None else categories
    lookup = {name: cat for cat, names in categories.items() for name in names if not name.endswith("*")}
    prefixes = [(name[:-1], cat) for cat, names in categories.items() for name in names if name.endswith("*")]

    def category(name):
        return lookup.get(name) or next((cat for prefix, cat in prefixes if name.startswith(prefix)), None)

    for ev in prof.events():
        if ev.self_cpu_time_total <= 0:
            continue
        region, node = None, ev
        while node is not None:
            if node.name in regions:
                region = node.name
            elif category(node.name):
                region = category(node.name)
            node = node.cpu_parent
        if region is None:
            region = "attention" if ev.name.startswith("vl3fast::") else "other"
        totals[region] = totals.get(region, 0.0) + ev.self_cpu_time_total / 1e6
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workload", default="video16x336", choices=sorted(WORKLOADS))
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--json")
    p.add_argument("--top", type=int, default=0, help="also print the top-N ops per case")
    args = p.parse_args()
    hf, ours = build_encoders(args.layers)
    grid_list, merge_list = WORKLOADS[args.workload]
    grid, merge = torch.tensor(grid_list), torch.tensor(merge_list)
    patches = int(grid.prod(1).sum())
    results = {}
    for dname in args.dtypes.split(","):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dname]
        pixels = (torch.rand(patches, 588, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(dtype)
        runs = {
            "transformers": lambda: hf.to(dtype)(pixel_values=pixels, grid_thw=grid, merge_sizes=merge),
            "vl3fast": lambda: ours.to(dtype)(pixels, grid, merge, backend="vl3fast"),
        }
        for impl, run in runs.items():
            with torch.inference_mode(), label_regions(ours):
                run()  # warm-up
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    with record_function("forward"):
                        run()
            cats = categorize(prof)
            total = sum(cats.values())
            results[f"{impl}/{dname}"] = {"total_s": total, "categories_s": cats}
            print(f"\n{impl} {dname} {args.workload} layers={args.layers}: {total:.3f} s (profiled self time)")
            for cat, s in cats.items():
                print(f"  {cat:22s} {s:8.3f} s  {100 * s / total:5.1f}%")
            if args.top:
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": environment(), "workload": args.workload, "layers": args.layers,
                       "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
