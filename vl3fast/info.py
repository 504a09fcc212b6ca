"""What this installation is: version, compiled backends, the CPU ISA in use, visible GPUs."""
from __future__ import annotations

import platform

from ._backend import compiled_info, cuda_build, cuda_status
from ._version import __version__


def info() -> dict:
    """Returns a dict describing the build and the machine (also printed by `vl3fast info`)."""
    import torch

    core = compiled_info()
    usable, reason = cuda_status()
    cuda = cuda_build()
    return {
        "version": __version__,
        "core_version": core["version"],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_isas_compiled": list(core["cpu_isas_compiled"]),
        "cpu_isa": core["cpu_isa"],
        "cpu_attention_bf16": core["cpu_attention_bf16"],
        "cuda_compiled": bool(core["cuda_compiled"]),
        "cuda_archs": cuda["sass"],  # SASS: these GPUs run the kernels as compiled
        "cuda_ptx": cuda["ptx"],  # PTX: newer GPUs JIT-compile it (with a driver as new as the toolkit)
        "cuda_runtime_version": cuda["runtime_version"],
        "cuda_driver_min": cuda["driver_min"],  # the static CUDA runtime refuses older drivers
        "gpu_available": usable,
        "gpu_status": reason,
    }


def format_info(d: dict) -> str:
    width = max(len(k) for k in d)
    lines = []
    for key, value in d.items():
        if isinstance(value, list):
            value = ", ".join(value) if value else "-"
        lines.append(f"{key:<{width}}  {value}")
    return "\n".join(lines)
