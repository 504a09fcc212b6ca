"""Test only: the CUDA tensor-core attention's intermediate results, as tensors, and their definitions.

A failure of the tensor-core kernel can then be placed: in the pre-pass (block table, the cos/sin table,
rotated k and q, delta) or in the main kernel (the dq accumulator it fills).  Used by the GPU smoke step
(benchmarks/gpu/smoke.py) and tests/ops/test_attention_cuda.py.  The workspace layout comes from the
compiled core (`_attn_tc_layout`, csrc/include/vl3fast/attention_tc.h), so these views cannot drift from it.
"""
from __future__ import annotations

import torch

from .._backend import core
from ._bridge import stream_of, tensor_ref
from .attention import run_backward, workspace_for
from .inv_freq import inv_freq_on


def _view(workspace: torch.Tensor, offset: int, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    n = 1
    for s in shape:
        n *= s
    nbytes = n * torch.empty((), dtype=dtype).element_size()
    return workspace[offset : offset + nbytes].view(dtype).view(shape)


def _regions(workspace: torch.Tensor, q: torch.Tensor, num_segments: int, backward: bool) -> dict:
    T, H, D = q.shape
    w = core._attn_tc_layout(T, num_segments, H, D, backward)
    dq = w["qk_dim"]
    views = {
        "status": _view(workspace, w["status"], torch.int32, (1,)),
        "block_start": _view(workspace, w["block_start"], torch.int32, (num_segments + 1,)),
        "cos_sin": _view(workspace, w["cos_sin"], torch.float32, (T, D // 2, 2)),
        "k_rot": _view(workspace, w["k_rot"], q.dtype, (H, T, dq)),
    }
    if backward:
        views["q_rot"] = _view(workspace, w["q_rot"], q.dtype, (H, T, dq))
        views["delta"] = _view(workspace, w["delta"], torch.float32, (H, T))
        views["dq_accum"] = _view(workspace, w["dq_accum"], torch.float32, (H, T, D))
    return views


def tensor_core_prepass(q, k, v, cu_seqlens, pos_hw, theta: float, scale: float, *, dout=None, out=None, lse=None,
                        max_seqlen: int = -1) -> dict[str, torch.Tensor]:
    """Runs only the tensor-core pre-passes (the backward's when dout/out/lse are given) on CUDA tensors and
    returns their outputs: status, block_start, cos_sin [T, D/2, (cos, sin)], k_rot [H, T, D_qk], and for the
    backward q_rot, delta [H, T] and the cleared dq accumulator [H, T, D]."""
    backward = dout is not None
    T, H, D = q.shape
    if not backward:
        out, lse, dout = torch.empty_like(q), torch.empty((H, T), dtype=torch.float32, device=q.device), q
    workspace = workspace_for(q, cu_seqlens.shape[0] - 1, backward, "cuda_tensor_core")
    cu_seqlens, pos_hw = cu_seqlens.contiguous(), pos_hw.contiguous()
    core._attn_tc_prepass(
        tensor_ref(q), tensor_ref(k), tensor_ref(v.contiguous()), tensor_ref(cu_seqlens), tensor_ref(pos_hw),
        tensor_ref(inv_freq_on(D, theta, q.device)), tensor_ref(out), tensor_ref(lse), tensor_ref(dout.contiguous()),
        tensor_ref(workspace), scale, max_seqlen, backward, stream_of(q),
    )
    return {name: t.clone() for name, t in _regions(workspace, q, cu_seqlens.shape[0] - 1, backward).items()}


def tensor_core_dq_accum(dout, q, k, v, out, lse, cu_seqlens, pos_hw, theta: float, scale: float) -> torch.Tensor:
    """The main backward kernel's fp32 dq accumulator [H, T, D] (unscaled dq of the rotated q), read from the
    workspace after a full backward."""
    workspace = workspace_for(q, cu_seqlens.shape[0] - 1, True, "cuda_tensor_core")
    run_backward("cuda_tensor_core", dout, q, k, v, out, lse, cu_seqlens, pos_hw, theta, scale, workspace=workspace)
    return _regions(workspace, q, cu_seqlens.shape[0] - 1, True)["dq_accum"].clone()


def expected_prepass(q, k, cu_seqlens, pos_hw, theta: float, *, dout=None, out=None) -> dict[str, torch.Tensor]:
    """What each pre-pass output must be, computed with torch on the same device (fp32 angles, rotation in
    fp32 rounded to the input dtype, pad channels zero; block_start counts 64-row blocks)."""
    T, H, D = q.shape
    dq_dim = core._attn_tc_layout(T, 1, H, D, False)["qk_dim"]
    block = core._attn_tc_layout(T, 1, H, D, False)["block_m"]
    inv_freq = inv_freq_on(D, theta, q.device)
    quarter = D // 4
    pos = pos_hw.float()
    angles = torch.cat([pos[:, :1] * inv_freq, pos[:, 1:] * inv_freq], 1)  # [T, D/2]: rows, then columns
    assert angles.shape[1] == 2 * quarter
    cos, sin = angles.cos(), angles.sin()

    def rotate(x):  # [T, H, D] -> [H, T, D_qk] in x's dtype
        a, b = x[..., : D // 2].float(), x[..., D // 2 :].float()
        c, s = cos[:, None], sin[:, None]
        r = torch.cat([a * c - b * s, b * c + a * s], -1).to(x.dtype)
        return torch.nn.functional.pad(r, (0, dq_dim - D)).transpose(0, 1)

    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    expected = {
        "status": torch.zeros(1, dtype=torch.int32, device=q.device),
        "block_start": torch.cat([torch.zeros(1, dtype=torch.long, device=q.device),
                                  ((lengths + block - 1) // block).cumsum(0)]).int(),
        "cos_sin": torch.stack([cos, sin], -1),
        "k_rot": rotate(k),
    }
    if dout is not None:
        expected["q_rot"] = rotate(q)
        expected["delta"] = (dout.float() * out.float()).sum(-1).transpose(0, 1)
        expected["dq_accum"] = torch.zeros(H, T, D, device=q.device)
    return expected


def check_prepass(stages: dict, q, k, cu_seqlens, pos_hw, theta: float, *, dout=None, out=None) -> list[str]:
    """Problems found in the pre-pass outputs (empty when all match): name, max error, first bad index."""
    problems = []
    for name, want in expected_prepass(q, k, cu_seqlens, pos_hw, theta, dout=dout, out=out).items():
        got = stages[name]
        if name == "block_start":  # the backward's table counts 64-key blocks: the same block size
            got = got.int()
        exact = name in ("status", "block_start", "dq_accum")
        # cos/sin: CUDA sincosf vs torch, a few ulp; rotated operands: one rounding of the 16-bit dtype.
        atol = 0.0 if exact else (2e-6 if name == "cos_sin" else (1e-5 if name == "delta" else 1e-2))
        err = (got.double() - want.double()).abs()
        bad = ~(err <= atol + (0 if exact else 1e-2) * want.double().abs())
        if bad.any():
            first = tuple(int(i) for i in bad.nonzero()[0])
            problems.append(f"{name}: max error {float(err.max()):.3g}, first bad index {first} "
                            f"(got {float(got[first]):.6g}, expected {float(want[first]):.6g})")
    return problems
