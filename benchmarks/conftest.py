"""Shared pytest-benchmark setup: every saved result records the machine, versions and commit.

Run: `make bench` (or `pytest benchmarks --benchmark-only --benchmark-json=benchmarks/results/<name>.json`).
Each benchmark module compares vl3fast against the reference path users run today, on the same
inputs in the same run, and stores tokens/sec (and derived GB/s or GFLOP/s) in `extra_info`.
"""
from __future__ import annotations

import os
import platform
import subprocess

import pytest
import torch

import vl3fast


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=os.path.dirname(__file__),
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment() -> dict:
    info = vl3fast.info()
    return {
        "vl3fast": info["version"],
        "commit": _git_commit(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_isa": info["cpu_isa"],
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }


@pytest.fixture
def bench(benchmark):
    """`benchmark` with the environment recorded in extra_info; use bench.extra_info for metrics."""
    benchmark.extra_info.update(environment())
    return benchmark


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["vl3fast_environment"] = environment()
