"""benchmarks/gpu/: the first-GPU-run tooling, exercised on the CPU so its own bugs show before a GPU does.

- validate.sh --dry-run prints the plan: every step, its budget (sum under 7 minutes), the files it returns;
- the smoke step (benchmarks/gpu/smoke.py) runs end to end on CPU tensors against the CPU kernel, and
  locates a planted bad element at its (token, head, channel), and names a kernel fault.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
VALIDATE = ROOT / "benchmarks" / "gpu" / "validate.sh"
SMOKE = ROOT / "benchmarks" / "gpu" / "smoke.py"


def _smoke_module():
    spec = importlib.util.spec_from_file_location("gpu_smoke", SMOKE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_validate_dry_run_prints_the_plan_and_budgets():
    run = subprocess.run(["bash", str(VALIDATE), "--dry-run"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    steps = dict(re.findall(r"^  (\w+)\s+(\d+) s  ", run.stdout, re.M))
    assert list(steps)[:5] == ["build", "smoke", "memcheck", "racecheck", "initcheck"]
    assert {"tests_attention", "tests_pruning", "tests_rope_positions", "benchmarks", "total"} <= set(steps)
    total = int(steps.pop("total"))
    assert total == sum(int(b) for b in steps.values()) and total <= 420
    text = run.stdout
    assert f"VL3FAST_BUILD_JOBS={len(os.sched_getaffinity(0))}" in text  # -j = nproc
    assert "CUDA_LAUNCH_BLOCKING=1" in text and "--tool memcheck" in text
    assert text.count("--continue-on-collection-errors") == 4 and text.count("--timeout 30") == 4
    assert "--head-dims 72 128 --dtypes bfloat16 float16 --lengths 1 2 63 64 65 130 1000" in text
    files = text.split("files in OUTDIR:")[1].split()
    assert len(files) <= 6 and "summary.json" in files and "validate.log" in files


def test_smoke_runs_end_to_end_on_cpu_tensors(tmp_path):
    out = tmp_path / "smoke.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run([sys.executable, str(SMOKE), "--device", "cpu", "--head-dims", "8", "--dtypes", "bfloat16",
                          "--lengths", "1", "2", "63", "64", "65", "--json", str(out)],
                         capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    record = json.loads(out.read_text())
    assert record["ok"] and record["error"] is None and len(record["configs"]) == 1
    cpu = record["configs"][0]["kernels"]["cpu"]
    assert set(cpu) == {"out", "lse", "dq", "dk", "dv"}
    assert all(c["first_bad"] is None and c["nan"] == 0 and c["max_err"] <= c["tol"] for c in cpu.values())
    assert "smoke: PASS" in run.stdout and "dv  vs fp64" in run.stdout


def test_smoke_locates_the_first_bad_element(monkeypatch):
    smoke = _smoke_module()
    real = smoke.run_kernel

    def run_kernel(name, *args):
        results = real("cpu", *args)
        if name == "broken":
            results["out"][70, 1, 3] += 0.5
            results["dk"][5, 0, 2] = float("nan")
            results["lse"][1, 9] -= 1.0
        return results

    monkeypatch.setattr(smoke, "run_kernel", run_kernel)
    record = smoke.check_config("cpu", torch.bfloat16, 8, [1, 63, 65], kernels=["broken"], log=lambda s: None)
    assert not record["ok"]
    broken = record["kernels"]["broken"]
    assert broken["out"]["first_bad"] == (70, 1, 3)
    assert broken["dk"]["first_bad"] == (5, 0, 2) and broken["dk"]["nan"] == 1
    assert broken["lse"]["first_bad"] == (9, 1)  # lse is [H, T]: reported as (token, head)
    assert broken["dq"]["first_bad"] is None and record["kernels"]["cpu"]["out"]["first_bad"] is None
    assert record["pairs"]["broken vs cpu"]["out"]["first_bad"] == (70, 1, 3)


def test_smoke_stops_at_a_fault_and_names_it(monkeypatch, tmp_path, capsys):
    smoke = _smoke_module()

    def fault(*args, **kwargs):
        raise RuntimeError("vl3fast CUDA error in attn_fwd_kernel<bfloat16, 72> (VL3FAST_CUDA_DEBUG: synchronised "
                           "after the launch): an illegal memory access was encountered")

    monkeypatch.setattr(smoke, "check_config", fault)
    out = tmp_path / "smoke.json"
    assert smoke.main(["--device", "cpu", "--head-dims", "72", "128", "--json", str(out)]) == 1
    record = json.loads(out.read_text())
    assert not record["ok"] and "attn_fwd_kernel<bfloat16, 72>" in record["error"]
    assert record["error"].startswith("bfloat16 D=72")  # stopped at the first configuration
    assert "smoke: FAILED" in capsys.readouterr().out
    assert os.environ["VL3FAST_CUDA_DEBUG"] == "1"  # the smoke step runs in checked mode
    monkeypatch.delenv("VL3FAST_CUDA_DEBUG")


@pytest.mark.parametrize("tool", ["memcheck", "racecheck", "initcheck"])
def test_sanitizer_steps_run_the_smoke_script(tool):
    run = subprocess.run(["bash", str(VALIDATE), "--dry-run"], capture_output=True, text=True, timeout=60)
    line = next(line for line in run.stdout.splitlines() if line.strip().startswith(tool + " "))
    assert f"compute-sanitizer --tool {tool}" in line and "--error-exitcode 1" in line and "smoke.py" in line
