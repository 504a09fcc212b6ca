"""rope2d_attention: packed non-causal attention per cu_seqlens segment with VideoLLaMA3's 2D RoPE fused in.

The op `vl3fast::rope2d_attention` returns (out, lse); lse (float32 `[H, T]`, the log-sum-exp of the
scaled logits) is what the backward op `vl3fast::rope2d_attention_backward` recomputes the softmax from,
so no `[L, L]` matrix is ever stored.  Which kernel runs is decided in one place, `kernel_for` (the
dispatch table below): CPU tensors run the C++ kernel (csrc/cpu/kernels/attention.cpp); CUDA tensors run
the tensor-core kernel (csrc/cuda/attention_fwd.cu, attention_bwd.cu) for ATTENTION_CUDA_DTYPES x
ATTENTION_CUDA_HEAD_DIMS, read from the compiled core where that list is declared once
(csrc/include/vl3fast/attention_tc.h), and the simple CUDA kernel (csrc/cuda/attention_simple.cu: fp32
throughout, any head dim the CPU kernel takes) for everything else, float32 included.

The CUDA path never syncs with the host: cu_seqlens is checked on the device instead.  A malformed one
(not 0-first, non-decreasing, ending at T) makes every output NaN; max_seqlen is only a hint for the grid
size, and results do not depend on it.  With VL3FAST_CUDA_DEBUG=1 (checked mode) every launch is synced
and checked by name, outputs are NaN-filled first, and both device-side checks raise a ValueError naming
the argument.  The CUDA kernels compile but have not yet run on a GPU: unverified until
benchmarks/gpu/validate.sh passes.
"""
from __future__ import annotations

import math

import torch

from .._backend import core
from ._bridge import DTYPE_CODES, stream_of, tensor_ref
from ._checks import (
    check_has_values, check_int, check_real_number,
    FLOAT_DTYPES,
    HEAD_DIMS,
    HEAD_DIMS_TEXT,
    check_last_dim_contiguous,
    check_position_values,
    check_positions,
    check_same_device,
    check_tensor,
    check_theta,
)
from .inv_freq import inv_freq_on

__all__ = [
    "rope2d_attention", "ATTENTION_HEAD_DIMS", "ATTENTION_FAST_HEAD_DIMS", "ATTENTION_DTYPES",
    "ATTENTION_CUDA_DTYPES", "ATTENTION_CUDA_HEAD_DIMS", "ATTENTION_KERNELS", "kernel_for",
]

# The CPU kernel's fast paths, from the single declaration in the compiled core (csrc/cpu/attention_tiles.h;
# compile-time head-dim specializations).  Every head dim of the rope2d ops runs (HEAD_DIMS, from
# csrc/include/vl3fast/rope_math.h).
ATTENTION_DTYPES = FLOAT_DTYPES
ATTENTION_FAST_HEAD_DIMS = tuple(core.attention_cpu_configs()["fast_head_dims"])
ATTENTION_HEAD_DIMS = HEAD_DIMS
# The CUDA kernel's matrix, from the single declaration in the compiled core.
_CUDA_CONFIGS = core.attention_cuda_configs()
_DTYPE_BY_CODE = {code: dtype for dtype, code in DTYPE_CODES.items()}
ATTENTION_CUDA_DTYPES = tuple(_DTYPE_BY_CODE[c] for c in _CUDA_CONFIGS["dtypes"])
ATTENTION_CUDA_HEAD_DIMS = tuple(_CUDA_CONFIGS["head_dims"])


def _check_head_dim(head_dim: int) -> None:
    if head_dim not in ATTENTION_HEAD_DIMS:
        raise ValueError(
            f"q: head dim {head_dim} is not supported; supported: {HEAD_DIMS_TEXT} (2D RoPE splits "
            f"the head dim into row and column quarters), with fast paths for {ATTENTION_FAST_HEAD_DIMS}"
        )


# The dispatch table: kernel name -> what it serves.  `kernel_for` is the one decision; the op, the GPU
# smoke step (benchmarks/gpu/smoke.py) and the tests read it.
ATTENTION_KERNELS = {
    "cpu": "C++ kernel, every dtype and head dim (csrc/cpu/kernels/attention.cpp)",
    "cuda_tensor_core": "tensor-core kernel, ATTENTION_CUDA_DTYPES x ATTENTION_CUDA_HEAD_DIMS (csrc/cuda/attention_*.cu)",
    "cuda_simple": "simple fp32 CUDA kernel, every dtype and head dim (csrc/cuda/attention_simple.cu)",
}


def kernel_for(device_type: str, dtype: torch.dtype, head_dim: int) -> str:
    """The kernel (a key of ATTENTION_KERNELS) that serves tensors of this device type, dtype and head dim."""
    if device_type != "cuda":
        return "cpu"
    if dtype in ATTENTION_CUDA_DTYPES and head_dim in ATTENTION_CUDA_HEAD_DIMS:
        return "cuda_tensor_core"
    return "cuda_simple"


def _vector_aligned(t: torch.Tensor, kernel: str) -> torch.Tensor:
    """The tensor-core kernel copies v and dout rows in 16-byte vectors: copy views that are not aligned so."""
    if kernel == "cuda_tensor_core" and (t.data_ptr() % 16 or t.stride(0) % 8 or t.stride(1) % 8):
        return t.contiguous()
    return t


def _check_shapes(q, k, v, cu_seqlens, pos_hw, theta, scale, max_seqlen) -> None:
    """Checks that need no tensor values: run by the real and the fake implementation."""
    check_tensor("q", q, dtypes=ATTENTION_DTYPES, ndim=3)
    for name, t in (("k", k), ("v", v)):
        check_tensor(name, t, dtypes=ATTENTION_DTYPES, ndim=3)
        if t.shape != q.shape:
            raise ValueError(f"{name}: expected the shape of q {tuple(q.shape)} ([T, H, D]), got {tuple(t.shape)}")
        if t.dtype != q.dtype:
            raise TypeError(f"{name}: expected the dtype of q ({q.dtype}), got {t.dtype}")
    _check_head_dim(q.shape[-1])
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_last_dim_contiguous(name, t)
    check_tensor("cu_seqlens", cu_seqlens, dtypes=(torch.int32,), ndim=1)
    if cu_seqlens.shape[0] < 1:
        raise ValueError("cu_seqlens: expected [S + 1] with S >= 0 segments, got an empty tensor")
    check_positions(pos_hw, q.shape[0])
    check_same_device(q=q, k=k, v=v, cu_seqlens=cu_seqlens, pos_hw=pos_hw)
    check_theta(theta)
    if not (isinstance(scale, float) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale: expected a finite positive float, got {scale!r}")
    if max_seqlen < -1:
        raise ValueError(f"max_seqlen: expected a non-negative int or None, got {max_seqlen}")


def _check_values(pos_hw) -> None:
    """Checks that read tensor values: host tensors only, so a CUDA call never syncs here.  The cu_seqlens
    values (and max_seqlen against them) are checked once, by the core: before the CPU kernel, which trusts
    them (csrc/bindings/attention.cpp), and on the device by the CUDA kernels' block-table scan."""
    check_position_values(pos_hw)


def workspace_for(q: torch.Tensor, num_segments: int, backward: bool, kernel: str) -> torch.Tensor:
    """An uninitialised uint8 workspace of the size the named kernel needs for `q_THD` (kernels never allocate)."""
    T, H, D = q.shape
    device_index = q.device.index if q.device.type == "cuda" else -1
    nbytes = core.rope2d_attention_workspace_bytes(T, num_segments, H, D, backward, device_index, kernel)
    return torch.empty(nbytes, dtype=torch.uint8, device=q.device)


def run_forward(kernel: str, q, k, v, cu_seqlens, pos_hw, theta: float, scale: float, max_seqlen: int = -1,
                workspace: torch.Tensor | None = None):
    """(out, lse) from the named kernel (a key of ATTENTION_KERNELS), with no checks beyond the core's.

    The op calls it with `kernel_for(...)`; the GPU smoke step calls each kernel by name to compare them.
    `workspace` (uint8, at least `core.rope2d_attention_workspace_bytes(...)`) may be passed to read the
    kernel's intermediate results afterwards (vl3fast/ops/_attention_stages.py).
    """
    T, H, D = q.shape
    out = torch.empty((T, H, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((H, T), dtype=torch.float32, device=q.device)
    pos_hw = pos_hw.contiguous()  # keep references: the core only borrows the pointers
    cu_seqlens = cu_seqlens.contiguous()
    v = _vector_aligned(v, kernel)
    if workspace is None:
        workspace = workspace_for(q, cu_seqlens.shape[0] - 1, False, kernel)
    core.rope2d_attention_forward(
        tensor_ref(q), tensor_ref(k), tensor_ref(v), tensor_ref(cu_seqlens), tensor_ref(pos_hw),
        tensor_ref(inv_freq_on(D, theta, q.device)), tensor_ref(out), tensor_ref(lse), tensor_ref(workspace), scale,
        max_seqlen, stream_of(q), kernel,
    )
    return out, lse


def run_backward(kernel: str, dout, q, k, v, out, lse, cu_seqlens, pos_hw, theta: float, scale: float,
                 workspace: torch.Tensor | None = None):
    """(dq, dk, dv) from the named kernel; see run_forward."""
    T, H, D = q.shape
    dout = _vector_aligned(dout if dout.stride(-1) == 1 else dout.contiguous(), kernel)
    v = _vector_aligned(v, kernel)
    dq, dk, dv = (torch.empty((T, H, D), dtype=q.dtype, device=q.device) for _ in range(3))
    pos_hw = pos_hw.contiguous()
    cu_seqlens = cu_seqlens.contiguous()
    lse = lse.contiguous()
    if workspace is None:
        workspace = workspace_for(q, cu_seqlens.shape[0] - 1, True, kernel)
    core.rope2d_attention_backward(
        tensor_ref(q), tensor_ref(k), tensor_ref(v), tensor_ref(cu_seqlens), tensor_ref(pos_hw),
        tensor_ref(inv_freq_on(D, theta, q.device)), tensor_ref(out), tensor_ref(lse), tensor_ref(dout),
        tensor_ref(dq), tensor_ref(dk), tensor_ref(dv), tensor_ref(workspace), scale, -1, stream_of(q), kernel,
    )
    return dq, dk, dv


@torch.library.custom_op("vl3fast::rope2d_attention", mutates_args=())
def _rope2d_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, pos_hw: torch.Tensor,
    theta: float, scale: float, max_seqlen: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_shapes(q, k, v, cu_seqlens, pos_hw, theta, scale, max_seqlen)
    _check_values(pos_hw)
    kernel = kernel_for(q.device.type, q.dtype, q.shape[-1])
    return run_forward(kernel, q, k, v, cu_seqlens, pos_hw, theta, scale, max_seqlen)


@_rope2d_attention.register_fake
def _(q, k, v, cu_seqlens, pos_hw, theta, scale, max_seqlen):
    _check_shapes(q, k, v, cu_seqlens, pos_hw, theta, scale, max_seqlen)
    T, H, D = q.shape
    return q.new_empty((T, H, D)), q.new_empty((H, T), dtype=torch.float32)


@torch.library.custom_op("vl3fast::rope2d_attention_backward", mutates_args=())
def _rope2d_attention_backward(
    dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    cu_seqlens: torch.Tensor, pos_hw: torch.Tensor, theta: float, scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    kernel = kernel_for(q.device.type, q.dtype, q.shape[-1])
    return run_backward(kernel, dout, q, k, v, out, lse, cu_seqlens, pos_hw, theta, scale)


@_rope2d_attention_backward.register_fake
def _(dout, q, k, v, out, lse, cu_seqlens, pos_hw, theta, scale):
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)


def _setup_context(ctx, inputs, output):
    # By name, not position: robust to signature changes.
    args = dict(zip(("q", "k", "v", "cu_seqlens", "pos_hw", "theta", "scale", "max_seqlen"), inputs))
    out, lse = output
    ctx.save_for_backward(args["q"], args["k"], args["v"], out, lse, args["cu_seqlens"], args["pos_hw"])
    ctx.theta = args["theta"]
    ctx.scale = args["scale"]


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, cu_seqlens, pos_hw = ctx.saved_tensors
    if grad_out is None:
        return None, None, None, None, None, None, None, None
    # lse is an auxiliary output for the backward pass; a gradient flowing into it is not supported.
    dq, dk, dv = torch.ops.vl3fast.rope2d_attention_backward(
        grad_out, q, k, v, out, lse, cu_seqlens, pos_hw, ctx.theta, ctx.scale
    )
    return dq, dk, dv, None, None, None, None, None


_rope2d_attention.register_autograd(_backward, setup_context=_setup_context)


def rope2d_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, pos_hw: torch.Tensor, *,
    theta: float = 10000.0, scale: float | None = None, max_seqlen: int | None = None,
) -> torch.Tensor:
    """Packed non-causal attention inside each cu_seqlens segment, with 2D RoPE fused on q and k.

    Args:
        q, k, v: `[T, H, D]` float32/bfloat16/float16, same shape and dtype, last dim contiguous (token and
            head strides are free, so views of a fused qkv projection work).  D: any of ATTENTION_HEAD_DIMS
            (2D RoPE splits it in quarters); ATTENTION_FAST_HEAD_DIMS have compile-time fast paths.  On CUDA,
            bfloat16/float16 with head dims ATTENTION_CUDA_HEAD_DIMS (64, 72, 80, 96, 128) run on tensor
            cores, everything else (float32, other head dims) on the simple fp32 kernel (`kernel_for`).
        cu_seqlens: int32 `[S + 1]`, 0 first, non-decreasing, last == T; tokens attend only within their segment.
        pos_hw: int32 `[T, 2]` (row, col) per token, e.g. from `vl3fast.ops.rope2d_position_ids`.
        theta: RoPE base.  scale: softmax scale, default D**-0.5.
        max_seqlen: optional upper bound of the segment lengths (checked when given on the CPU; on CUDA it
            only sizes the launch grid, results do not depend on it, and VL3FAST_CUDA_DEBUG=1 checks it).

    Returns:
        out `[T, H, D]` in q's dtype.  Differentiable in q, k and v (fp32 accumulation throughout; the
        gradients of q and k are with respect to the un-rotated inputs).
    """
    # Python-level checks first: the custom op's schema would turn True into 1.0 and reject lists unnamed.
    for name, t in (("q", q), ("k", k), ("v", v), ("cu_seqlens", cu_seqlens), ("pos_hw", pos_hw)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        check_has_values(name, t)
    theta = check_theta(theta)
    if scale is None:
        scale = q.shape[-1] ** -0.5 if q.dim() == 3 and q.shape[-1] > 0 else 1.0
    else:
        scale = check_real_number("scale", scale)
    if max_seqlen is not None:
        max_seqlen = check_int("max_seqlen", max_seqlen, minimum=1)
    out, _ = torch.ops.vl3fast.rope2d_attention(
        q, k, v, cu_seqlens, pos_hw, float(theta), float(scale), -1 if max_seqlen is None else max_seqlen
    )
    return out
