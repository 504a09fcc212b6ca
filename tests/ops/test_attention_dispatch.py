"""The attention dispatch table (vl3fast.ops.attention.kernel_for): which kernel serves which tensors.

No GPU here, so the CUDA rows are checked through the table itself, and the op's use of the table by
routing a host call to a CUDA kernel name, which the compiled core must refuse by name.
"""
from __future__ import annotations

import pytest
import torch

from vl3fast.ops import attention as attn
from vl3fast.ops.attention import (
    ATTENTION_CUDA_DTYPES, ATTENTION_CUDA_HEAD_DIMS, ATTENTION_DTYPES, ATTENTION_HEAD_DIMS, ATTENTION_KERNELS,
    kernel_for, rope2d_attention,
)

from .test_attention import _packed


def test_float32_on_cuda_goes_to_the_simple_kernel_for_every_head_dim():
    for head_dim in ATTENTION_HEAD_DIMS:
        assert kernel_for("cuda", torch.float32, head_dim) == "cuda_simple"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_16_bit_on_cuda_uses_tensor_cores_where_compiled_and_the_simple_kernel_elsewhere(dtype):
    assert dtype in ATTENTION_CUDA_DTYPES
    for head_dim in ATTENTION_HEAD_DIMS:
        expected = "cuda_tensor_core" if head_dim in ATTENTION_CUDA_HEAD_DIMS else "cuda_simple"
        assert kernel_for("cuda", dtype, head_dim) == expected
    assert kernel_for("cuda", dtype, 72) == "cuda_tensor_core" and kernel_for("cuda", dtype, 48) == "cuda_simple"


def test_host_tensors_always_run_the_cpu_kernel_and_every_name_is_in_the_table():
    for dtype in ATTENTION_DTYPES:
        for head_dim in (4, 72, 256):
            assert kernel_for("cpu", dtype, head_dim) == "cpu"
            assert kernel_for("cuda", dtype, head_dim) in ATTENTION_KERNELS


def test_the_op_runs_what_the_table_says(monkeypatch):
    """Forward and backward ask kernel_for; a CUDA kernel name on host tensors is refused by the core."""
    q, k, v, cu, pos = _packed([5, 9], 2, 8, torch.float32)
    calls = []

    def fake(device_type, dtype, head_dim):
        calls.append((device_type, dtype, head_dim))
        return "cuda_simple"

    monkeypatch.setattr(attn, "kernel_for", fake)
    with pytest.raises(ValueError, match="kernel 'cuda_simple' cannot run host tensors"):
        rope2d_attention(q, k, v, cu, pos)
    assert calls == [("cpu", torch.float32, 8)]
    monkeypatch.undo()
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = rope2d_attention(*leaves, cu, pos)  # the real table: the CPU kernel, forward and backward
    out.sum().backward()
    assert all(t.grad is not None and t.grad.isfinite().all() for t in leaves)


def test_cuda_workspace_sizes_follow_the_kernel():
    from vl3fast._backend import core

    tc = core.rope2d_attention_workspace_bytes(1000, 4, 2, 72, True, 0, "cuda_tensor_core")
    simple = core.rope2d_attention_workspace_bytes(1000, 4, 2, 72, True, 0, "cuda_simple")
    assert simple < tc  # no rotated copies of q and k, no dq accumulator
