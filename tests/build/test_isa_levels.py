"""Every compiled CPU ISA level gives the same results, for every op (forward and backward).

op_checks.py runs once per level (VL3FAST_CPU_ISA), each run checked against vl3fast.reference; then the
levels are compared with each other: integer outputs exactly, floats within a few ulp of their dtype
(levels differ only in FMA contraction and summation order).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

import vl3fast

OP_CHECKS = Path(__file__).with_name("op_checks.py")
ULPS = {torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}


def run_level(level: str, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "VL3FAST_CPU_ISA": level}
    return subprocess.run([sys.executable, str(OP_CHECKS), "--save", str(out)], capture_output=True, text=True,
                          env=env, timeout=600)


def test_every_isa_level_gives_the_same_results(tmp_path):
    results = {}
    for level in vl3fast.info()["cpu_isas_compiled"]:
        proc = run_level(level, tmp_path / f"{level}.pt")
        if proc.returncode != 0 and "this CPU lacks it" in proc.stderr:
            continue
        assert proc.returncode == 0, f"{level}: {proc.stdout[-1000:]}{proc.stderr[-2000:]}"
        results[level] = torch.load(tmp_path / f"{level}.pt")
    assert "generic" in results and len(results) >= 2, f"only {list(results)} ran on this CPU"
    base = results.pop("generic")
    for level, got in results.items():
        assert got.keys() == base.keys()
        for key, tensors in base.items():
            for i, (a, b) in enumerate(zip(tensors, got[key])):
                where = f"{level} vs generic, {key} output {i}"
                if a.is_floating_point():
                    scale = max(a.abs().max().item(), 1.0)
                    err = (a.double() - b.double()).abs().max().item()
                    assert err <= ULPS[a.dtype] * scale, f"{where}: max diff {err:.3e}"
                else:
                    assert torch.equal(a, b), where
