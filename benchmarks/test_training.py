"""Training throughput on CPU: DeepSpeed ZeRO-0 and ZeRO-2 with 2 processes (torchrun, gloo) against the plain
torch engine in one process, on the same packed data, for tiny_cpu and the realistic-width model (the vision
encoder at full width and a Qwen2 LLM at 1536 hidden, 2 layers each).

Each run is `vl3fast train` itself (the recipe users run), one thread per process.  Steps/s, tokens/s and
supervised tokens/s come from the runs' metrics.jsonl, leaving out the first 2 steps (warm-up).  A 2-process
step does twice the work of a 1-process step (one packed micro-batch per rank), so the overhead of DeepSpeed
(engine, ZeRO partitioning, gloo collectives) is stated per rank:
    overhead = 1 - (tokens/s of the run / processes) / tokens/s of plain torch in one process.
The runs launch processes (about 20 s each to import DeepSpeed), so they run only with benchmarks enabled:
`pytest benchmarks/test_training.py --benchmark-only`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")

REPO = Path(__file__).resolve().parents[1]
STEPS, WARMUP = 8, 2


def _run(work: dict, out: Path, *, procs: int, zero: int | None, threads: int) -> dict:
    overrides = [f"model.init={work['init']}", f"model.preset={work['preset']}", f"data.annotations=[{work['annotations']}]",
                 f"data.data_folder={work['media']}", f"run.out={out}", f"train.max_steps={STEPS}",
                 "run.save_every=0", "run.save_at_end=false", "run.progress=false", f"run.threads={threads}",
                 "train.gradient_accumulation_steps=1"]
    if zero is None:
        overrides.append("deepspeed.enabled=false")
    else:
        ds = json.loads((REPO / "training/ds/zero2.json").read_text())
        ds["zero_optimization"]["stage"] = zero
        (out.parent / f"zero{zero}.json").write_text(json.dumps(ds))
        overrides.append(f"deepspeed.config={out.parent / f'zero{zero}.json'}")
    args = ["--config", str(REPO / "training/configs/tiny_cpu.yaml")] + [a for o in overrides for a in ("--set", o)]
    if procs == 1:
        cmd = [sys.executable, "-m", "vl3fast.training", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
               "-m", "vl3fast.training", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, env=env, timeout=900, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steady = lines[WARMUP:]
    seconds = sum(r["seconds"] for r in steady)
    return {"steps_per_s": len(steady) / seconds, "tokens_per_s": sum(r["tokens"] for r in steady) / seconds,
            "supervised_tokens_per_s": sum(r["supervised_tokens"] for r in steady) / seconds,
            "peak_memory_gib": max(r["peak_memory_bytes"] for r in lines) / 2**30}


@pytest.mark.parametrize("shape", ["tiny", "realistic"])
def test_training_throughput(bench, tmp_path_factory, shape, request):
    if request.config.getoption("benchmark_disable"):
        pytest.skip("6 training launches (minutes): run with --benchmark-only; tests/training covers correctness")
    from tests.training._workload import build

    root = tmp_path_factory.mktemp(f"train_bench_{shape}")
    work = {**build(root, shape, copies=16), "preset": "tiny" if shape == "tiny" else "2b"}
    results = {}

    def run_all():
        results["torch_1proc"] = _run(work, root / "torch", procs=1, zero=None, threads=1)
        results["zero0_2proc"] = _run(work, root / "zero0", procs=2, zero=0, threads=1)
        results["zero2_2proc"] = _run(work, root / "zero2", procs=2, zero=2, threads=1)

    bench.pedantic(run_all, rounds=1, iterations=1)
    base = results["torch_1proc"]["tokens_per_s"]
    for name, r in results.items():
        r["overhead_per_rank_vs_torch"] = 1 - r["tokens_per_s"] / (2 if "2proc" in name else 1) / base
        bench.extra_info[name] = r
    print(f"\n{shape}: " + "; ".join(f"{n}: {r['steps_per_s']:.2f} steps/s, {r['tokens_per_s']:.0f} tok/s, "
                                      f"overhead per rank {100 * r['overhead_per_rank_vs_torch']:+.0f}%" for n, r in results.items()))
