"""Loads the compiled core and answers what it can do.

Only this module and vl3fast/ops/ touch vl3fast._C (DESIGN.md §3).
"""
from __future__ import annotations

import functools

try:
    from . import _C
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "vl3fast's compiled core (vl3fast._C) is missing or does not load. Reinstall with "
        "`pip install --no-build-isolation -e .` (or `make build`) and read the build log. "
        f"Original error: {exc}"
    ) from exc

__all__ = ["core", "cuda_status", "cuda_available", "compiled_info"]

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
