"""torch.Tensor -> vl3fast._C.TensorRef, and the CUDA stream to launch on.

The compiled core never sees torch: it gets pointers, sizes and strides (DESIGN.md §3).
"""
from __future__ import annotations

import torch

from .._backend import core

# Must match enum class DType in csrc/include/vl3fast/dtype.h.
DTYPE_CODES = {
    torch.float32: 0,
    torch.bfloat16: 1,
    torch.float16: 2,
    torch.int32: 3,
    torch.int64: 4,
    torch.bool: 5,
    torch.uint8: 6,
}


def tensor_ref(t: torch.Tensor):
    """A non-owning view of `t` for the compiled core; `t` must stay alive during the call."""
    if t.device.type not in ("cpu", "cuda"):
        raise ValueError(f"vl3fast supports CPU and CUDA tensors, got device {t.device}")
    return core.TensorRef(
        t.data_ptr(), DTYPE_CODES[t.dtype], list(t.shape), list(t.stride()),
        t.device.index if t.device.type == "cuda" else -1,
    )


def stream_of(t: torch.Tensor) -> int:
    """The current torch CUDA stream of `t`'s device as an integer handle (0 for CPU tensors)."""
    if t.device.type != "cuda":
        return 0
    return torch.cuda.current_stream(t.device).cuda_stream
