"""Where the vision tower's training time goes, transformers' stock path against apply_vl3fast: torch.profiler
over one forward + backward of the tower (the models and workloads of benchmarks/test_swapin.py), self CPU
time grouped into the Linear layers' GEMMs, the patch-embedding convolution, the attention kernels,
vl3fast's RoPE op and everything else (elementwise: RMSNorm/LayerNorm, activations, transformers' Python
rotary, residual adds, copies).  The GEMMs and the convolution are the same work in both paths: their share
of the stock time bounds what any attention swap can gain (Amdahl).

Run: python benchmarks/profile_swapin.py [--family qwen2_5_vl|video_llama_3] [--workload image_video16]
         [--layers N] [--dtype fp32|bf16] [--json out.json]      (1 thread; not collected by pytest)
bf16 = the tower under the CPU bf16 autocast that Trainer(bf16=True) uses (test_swapin.autocast).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(__file__))
from conftest import environment  # noqa: E402
from profile_vision_encoder import categorize  # noqa: E402
import test_swapin as bench  # noqa: E402

import vl3fast  # noqa: E402
from tests.integrations import tiny_vlms as tv  # noqa: E402

CATEGORIES = {
    "matmul (Linear fwd+bwd)": ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear"),
    "patch-embed conv": ("aten::convolution", "aten::convolution_backward"),
    "attention kernel": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                         "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
                         "vl3fast::rope2d_attention", "vl3fast::rope2d_attention_backward",
                         # a torch.library op's autograd forward node is named after its generated Function
                         "GeneratedBackwardFor_vl3fast_rope2d_attention*"),
    "vl3fast RoPE op": ("vl3fast::apply_rope2d", "GeneratedBackwardFor_vl3fast_apply_rope2d*"),
}
# What both paths run identically (the swap keeps the Linear layers and the patch embedding): the Amdahl bound.
SAME_WORK = ("matmul (Linear fwd+bwd)", "patch-embed conv")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--family", default="qwen2_5_vl", choices=["qwen2_5_vl", "video_llama_3"])
    p.add_argument("--workload", default="image_video16", choices=sorted(bench.WORKLOADS))
    p.add_argument("--layers", type=int, help="vision layers (default: test_swapin's)")
    p.add_argument("--dtype", default="bf16" if bench.BF16 else "fp32", choices=["fp32", "bf16"],
                   help="fp32, or bf16 autocast (default: VL3FAST_BENCH_DTYPE)")
    p.add_argument("--json")
    p.add_argument("--top", type=int, default=0, help="also print the top-N ops per path")
    args = p.parse_args()
    torch.set_num_threads(1)
    bench.BF16 = args.dtype == "bf16"  # test_swapin.autocast reads it at call time
    if args.layers:
        bench.LAYERS[args.family] = args.layers
    model = bench.build(args.family)
    batch = tv.padded_batch(args.family, model.config, bench.samples(args.family, args.workload))
    results = {}
    for path in ("stock", "vl3fast"):
        (vl3fast.apply_vl3fast if path == "vl3fast" else vl3fast.unapply_vl3fast)(model)
        bench.tower_call(args.family, model, batch)  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0, c0 = time.perf_counter(), time.process_time()
            bench.tower_call(args.family, model, batch)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        cats = categorize(prof, CATEGORIES, regions=())
        total = sum(cats.values())
        results[path] = {"wall_s": wall, "cpu_s": cpu, "self_total_s": total, "categories_s": cats}
        # The profiler's self times are wall-clock: on a loaded machine read the shares, not the seconds.
        print(f"\n{path} {args.family} {args.workload} layers={bench.LAYERS[args.family]} {args.dtype}: "
              f"wall {wall:.2f} s, CPU {cpu:.2f} s, profiled self time {total:.2f} s, load {os.getloadavg()[0]:.1f}")
        for cat, s in cats.items():
            print(f"  {cat:26s} {s:8.3f} s  {100 * s / total:5.1f}%")
        if args.top:
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    stock = results["stock"]
    same_work = sum(stock["categories_s"].get(cat, 0.0) for cat in SAME_WORK)
    results["amdahl"] = {"same_work_s": same_work, "same_work_share": same_work / stock["self_total_s"],
                         "tower_speedup_bound": stock["self_total_s"] / same_work,
                         "measured_speedup_cpu": stock["cpu_s"] / results["vl3fast"]["cpu_s"]}
    print(f"\nAmdahl: {' + '.join(SAME_WORK)} = {same_work:.2f} s = {100 * same_work / stock['self_total_s']:.1f}% of "
          f"stock, the same work on both paths: tower <= {results['amdahl']['tower_speedup_bound']:.3f}x even if all "
          f"else were free; this profile's CPU times (one call each, not paired): "
          f"{results['amdahl']['measured_speedup_cpu']:.3f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": environment(), "family": args.family, "workload": args.workload,
                       "layers": bench.LAYERS[args.family], "dtype": args.dtype, "threads": 1,
                       "load_average": os.getloadavg(), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
