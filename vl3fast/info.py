"""What this installation is: version, compiled backends, the CPU ISA in use, visible GPUs."""
from __future__ import annotations

import platform

from ._backend import compiled_info, cuda_status
from ._version import __version__


def info() -> dict:
    """Returns a dict describing the build and the machine (also printed by `vl3fast info`)."""
    import torch

    core = compiled_info()
    usable, reason = cuda_status()
    archs = [a for a in core["cuda_archs"].split(",") if a]
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
        "cuda_archs": [f"sm_{a}" for a in archs],
        "cuda_runtime_version": _format_cuda_version(core["cuda_runtime_version"]),
        "gpu_available": usable,
        "gpu_status": reason,
    }


def _format_cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}" if v else ""


def format_info(d: dict) -> str:
    width = max(len(k) for k in d)
    lines = []
    for key, value in d.items():
        if isinstance(value, list):
            value = ", ".join(value) if value else "-"
        lines.append(f"{key:<{width}}  {value}")
    return "\n".join(lines)
