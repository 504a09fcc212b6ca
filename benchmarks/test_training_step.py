"""A training step on a mixed batch: vl3fast packed vs transformers' VideoLlama3ForConditionalGeneration padded
(the baseline users train with today).  Workload and paths: benchmarks/training_step.py.

Reported (extra_info, and printed): tokens/s over all real tokens and over supervised tokens for both paths, the
baseline's padding fraction, peak RSS of each path's process, and the ratios vl3fast / transformers.  Target on
CPU (issue #12): >= 1.5x supervised tokens/s with no higher peak memory.  Each path runs in its own process (its
own peak RSS); the two alternate for ROUNDS rounds and the per-step medians are compared, in wall time and in
process CPU time (the steadier measure on a shared machine).
With --benchmark-disable (make test) the tiny shape runs one step per path in this process, as a smoke test of
the code.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROUNDS, STEPS = 2, 3


def _launch(path: str, root: Path, out: Path) -> dict:
    """One worker process (benchmarks/training_step.py); its JSON result."""
    cmd = [sys.executable, "-m", "benchmarks.training_step", "--path", path, "--shape", "realistic", "--steps",
           str(STEPS), "--root", str(root), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run(cmd, check=True, cwd=REPO, env=env, timeout=1800)
    return json.loads(out.read_text())


def summarize(runs: dict[str, list[dict]]) -> dict:
    out = {}
    for path, rs in runs.items():
        step = statistics.median(s for r in rs for s in r["step_seconds"])
        cpu = statistics.median(s for r in rs for s in r["step_cpu_seconds"])
        r0 = rs[0]
        out[path] = {"step_s": step, "step_cpu_s": cpu, "tokens_per_s": r0["tokens"] / step,
                     "supervised_tokens_per_s": r0["supervised_tokens"] / step,
                     "supervised_tokens_per_cpu_s": r0["supervised_tokens"] / cpu,
                     "peak_rss_gib": max(r["peak_rss_bytes"] for r in rs) / 2**30,
                     "padding_fraction": 1 - r0["tokens"] / r0["padded_tokens"]}
    v, t = out["vl3fast"], out["transformers"]
    out["ratio"] = {"supervised_tokens_per_s": v["supervised_tokens_per_s"] / t["supervised_tokens_per_s"],
                    "supervised_tokens_per_cpu_s": v["supervised_tokens_per_cpu_s"] / t["supervised_tokens_per_cpu_s"],
                    "peak_rss": v["peak_rss_gib"] / t["peak_rss_gib"]}
    return out


def test_training_step_packed_vs_padded(bench, tmp_path, request):
    if request.config.getoption("benchmark_disable"):
        from benchmarks.training_step import run, workload

        work = workload(tmp_path, "tiny")
        for path in ("vl3fast", "transformers"):
            r = run(path, "tiny", 1, tmp_path, work)
            assert len(r["step_seconds"]) == 1 and r["supervised_tokens"] > 0
            assert all(x == x for x in r["losses"])  # finite
        return
    runs = {"vl3fast": [], "transformers": []}

    _launch("prepare", tmp_path, tmp_path / "prepare.json")

    def all_rounds():
        for k in range(ROUNDS):
            for path in ("transformers", "vl3fast"):
                runs[path].append(_launch(path, tmp_path, tmp_path / f"{path}-{k}.json"))

    bench.pedantic(all_rounds, rounds=1, iterations=1)
    result = summarize(runs)
    bench.extra_info.update(result)
    print("\ntraining step (realistic width, mixed batch): " + json.dumps(result, indent=1))
