"""Loads the compiled core and answers what it can do.

Only this module and vl3fast/ops/ touch vl3fast._C (DESIGN.md §3).
"""
from __future__ import annotations

import functools

# torch first: _C needs libgomp.so.1 and torch's wheels bundle one (torch/lib/libgomp.so.1).  Loaded
# after torch, _C binds to that copy, so the process has one OpenMP runtime and a slim image without
# the system's libgomp1 still imports vl3fast; the wheel does not bundle its own (auditwheel --exclude).
import torch  # noqa: F401  (import order only)

try:
    from . import _C
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "vl3fast's compiled core (vl3fast._C) is missing or does not load. Reinstall with "
        "`pip install --no-build-isolation -e .` (or `make build`) and read the build log. "
        f"Original error: {exc}"
    ) from exc

__all__ = ["core", "cuda_status", "cuda_available", "compiled_info", "cuda_build"]

core = _C


@functools.lru_cache(maxsize=None)
def cuda_status() -> tuple[bool, str]:
    """(usable, reason): whether vl3fast's CUDA kernels can run here, and why not when they cannot."""
    info = _C.info()
    if not info["cuda_compiled"]:
        return False, "vl3fast was built without its CUDA backend (no nvcc at build time, or VL3FAST_CUDA=0)"
    count, error = _C.cuda_device_count()
    if count < 0:
        return False, f"CUDA runtime unavailable: {error}"
    if count == 0:
        return False, "no CUDA device is visible"
    return True, f"{count} CUDA device(s) visible"


def cuda_available() -> bool:
    return cuda_status()[0]


def compiled_info() -> dict:
    return dict(_C.info())


# The oldest Linux driver the statically linked CUDA runtime of each major version runs on (NVIDIA's CUDA
# release notes, "minor version compatibility"): any 13.x runtime needs R580, any 12.x runtime R525.
# SASS loads on these drivers; JIT-compiling the PTX needs a driver at least as new as the toolkit.
CUDA_DRIVER_FLOOR = {13: "580.65.06", 12: "525.60.13", 11: "450.80.02"}


def cuda_build() -> dict:
    """What the CUDA part of _C was built for: SASS and PTX targets, runtime version, minimum driver.

    The targets come from CMAKE_CUDA_ARCHITECTURES as compiled in ("80-real,90a-real,80-virtual"):
    "-real" is SASS only, "-virtual" PTX only, a bare number both (CMake's meaning).
    """
    core = _C.info()
    sass, ptx = [], []
    for arch in filter(None, core["cuda_archs"].split(",")):
        number, _, kind = arch.partition("-")
        if kind in ("", "real"):
            sass.append(f"sm_{number}")
        if kind in ("", "virtual"):
            ptx.append(f"compute_{number}")
    version = core["cuda_runtime_version"]  # e.g. 13000 for 13.0; 0 when built without CUDA
    return {
        "sass": sass,
        "ptx": ptx,
        "runtime_version": f"{version // 1000}.{(version % 1000) // 10}" if version else "",
        "driver_min": CUDA_DRIVER_FLOOR.get(version // 1000, "unknown") if version else "",
    }
