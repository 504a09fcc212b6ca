"""Paired CPU attention timings for a shared, loaded machine: every round times vl3fast and each peer back
to back (same inputs and implementations as benchmarks/test_attention.py), so drifting load hits all of
them alike; prints one markdown row per (workload, dtype, mode) with median times and the medians of the
per-round ratios, plus the ISA level, CPU and load average.

    PYTHONPATH=. python benchmarks/attention_paired.py --workloads video16x336,mixed5,image896 \
        --dtypes fp32,bf16 --modes fwd,fwd_bwd --rounds 3 [--dense image896] [--json out.json]

Fraction of the FMA peak (one core): `OMP_NUM_THREADS=1 ... --clock cpu --fma-peak 118.2` times each call
by the CPU time of the calling thread (one-threaded kernels run on it), so time that other jobs take the
core from us does not count, and adds the fastest round's GFLOP/s and its fraction of the given per-core
peak (benchmarks/fma_peak.cpp measures it).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vl3fast  # noqa: E402
from test_attention import IMPLS, _attention_flops, _inputs, _prerotated, _runner  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor()


def _clock(kind: str):
    if kind == "wall":
        return time.perf_counter
    if torch.get_num_threads() != 1:
        raise SystemExit("--clock cpu times the calling thread only: run with OMP_NUM_THREADS=1")
    return time.thread_time


def measure(workload: str, dtype: torch.dtype, mode: str, rounds: int, dense: bool, clock=time.perf_counter,
            fma_peak: float | None = None) -> dict:
    q, k, v, cu, pos, grad = _inputs(workload, dtype, requires_grad=(mode == "fwd_bwd"))
    qr, kr = _prerotated(q, k, pos, mode == "fwd_bwd")
    runs = {"vl3fast": _runner(IMPLS["vl3fast"], q, k, v, cu, pos, grad, mode),
            "reference": _runner(IMPLS["reference"], q, k, v, cu, pos, grad, mode),
            "sdpa": _runner(IMPLS["sdpa"], qr, kr, v, cu, pos, grad, mode)}
    if dense:
        runs["dense_mask"] = _runner(IMPLS["dense_mask"], q, k, v, cu, pos, grad, mode)
    for run in runs.values():  # warm-up
        run()
    times = {name: [] for name in runs}
    for r in range(rounds):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for name in order:
            t0 = clock()
            runs[name]()
            times[name].append(clock() - t0)
    ours = times["vl3fast"]
    result = {
        "workload": workload, "dtype": str(dtype).removeprefix("torch."), "mode": mode, "rounds": rounds,
        "median_ms": {n: statistics.median(t) * 1e3 for n, t in times.items()},
        "speedup": {n: statistics.median(a / b for a, b in zip(t, ours)) for n, t in times.items() if n != "vl3fast"},
        "vl3fast_gflops": _attention_flops(cu, mode) / statistics.median(ours) / 1e9,
        "best_gflops": {n: _attention_flops(cu, mode) / min(t) / 1e9 for n, t in times.items()},
        "load_average": list(os.getloadavg()),
    }
    if fma_peak:
        result["fraction_of_fma_peak"] = {n: g / fma_peak for n, g in result["best_gflops"].items()}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default="video16x336,mixed5,image896")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--modes", default="fwd,fwd_bwd")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dense", default="image896", help="workloads that also time the dense-mask peer")
    ap.add_argument("--json", default=None)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: the calling thread's CPU time (needs OMP_NUM_THREADS=1)")
    ap.add_argument("--fma-peak", type=float, default=None, help="GFLOP/s per core (benchmarks/fma_peak.cpp)")
    args = ap.parse_args()
    clock = _clock(args.clock)
    peak_cols = " vl3fast best GFLOP/s | % FMA peak | sdpa % FMA peak |" if args.fma_peak else ""
    info = vl3fast.info()
    header = {"cpu": _cpu_model(), "cpu_isa": info["cpu_isa"], "cpu_attention_bf16": info["cpu_attention_bf16"],
              "threads": torch.get_num_threads(), "torch": torch.__version__, "load_average": list(os.getloadavg()),
              "clock": args.clock, "fma_peak_gflops_per_core": args.fma_peak}
    print(json.dumps(header))
    print("| workload | dtype | mode | vl3fast ms | x reference | x sdpa | x dense_mask | vl3fast GFLOP/s | load |"
          + peak_cols)
    print("|---|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if args.fma_peak else ""))
    rows = []
    for workload in args.workloads.split(","):
        for dname in args.dtypes.split(","):
            for mode in args.modes.split(","):
                r = measure(workload, DTYPES[dname], mode, args.rounds, workload in args.dense.split(","), clock,
                            args.fma_peak)
                rows.append(r)
                s = r["speedup"]
                dense = f"{s['dense_mask']:.2f}" if "dense_mask" in s else "not run"
                peak = ""
                if args.fma_peak:
                    f = r["fraction_of_fma_peak"]
                    peak = f" {r['best_gflops']['vl3fast']:.1f} | {100 * f['vl3fast']:.0f}% | {100 * f['sdpa']:.0f}% |"
                print(f"| {workload} | {dname} | {mode} | {r['median_ms']['vl3fast']:.0f} | {s['reference']:.2f} | "
                      f"{s['sdpa']:.2f} | {dense} | {r['vl3fast_gflops']:.0f} | {r['load_average'][0]:.1f} |" + peak,
                      flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": header, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
