"""The attention core of the swapped vision attention: 2D-RoPE attention over packed `cu_seqlens` segments.

Two exact implementations of `softmax(rope(q) rope(k)^T * scale) v` per segment, both differentiable:

- `fused`: `vl3fast.ops.rope2d_attention`, RoPE inside the kernel, one call for the whole packed sequence;
- `rope_then_sdpa`: `vl3fast.ops.apply_rope2d` rotates q and k (one pass each way, no float copies, no
  `rotate_half`/`cat`), then torch's `scaled_dot_product_attention` runs once per run of consecutive
  equal-length segments on zero-copy `[n, H, L, D]` views of the packed tensors.  Against transformers'
  sdpa path this drops its Python-side rotary (a dozen elementwise passes forward and backward), its
  per-segment `torch.split` loop (one SDPA call per window or frame) and the `cat` + `contiguous` copies
  after it; the attention arithmetic is the same torch kernel.

`path_for` is the one decision: `fused` on every device.  On CPU it wins or ties at every segment length
the towers use (benchmarks/test_swapin.py::test_attention_core_cpu, the cores alone on given q, k, v, 4096
tokens, 16 heads x 80, fwd+bwd, 1 thread, process CPU time, median of 2 rounds, AMD EPYC with AVX512-BF16,
load 3.5-6, commit d4613d6 = main with 268e926's bf16 forward), fused / rope_then_sdpa in ms:
bf16 (Trainer bf16=True): L=64 (Qwen2.5-VL windows) 131 / 244; L=256 (video frames) 282 / 399;
L=1024 921 / 1003; L=4096 3786 / 3947 (1.86x, 1.42x, 1.09x, 1.04x);
fp32: L=64 141 / 132; L=256 274 / 281; L=1024 981 / 1072; L=4096 4556 / 4295 (0.94x, 1.03x, 1.09x, 0.94x:
a tie at this load; the whole module, Linears included, 1.00x, 1.02x, 0.97x, 1.00x).
`rope_then_sdpa` (which the CPU ran before the fused kernel's fp32 rewrite and bf16 forward: at L=4096 the
old kernel's fp32 fwd+bwd took 13.4 s against its 6.6 s) stays as the measured alternative that the
benchmark and the tests run; if a kernel change makes it win again, this is the line to change.  On CUDA
the fused kernel is one varlen launch with no host sync (torch would need the per-run loop there too).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops import apply_rope2d, rope2d_attention

__all__ = ["ATTENTION_PATHS", "path_for", "packed_rope2d_attention", "equal_length_runs"]

ATTENTION_PATHS = ("fused", "rope_then_sdpa")


def path_for(device_type: str) -> str:
    """The implementation (one of ATTENTION_PATHS) that serves the swapped vision attention on this device:
    the fused kernel everywhere (the numbers are in the module docstring)."""
    return "fused"


def equal_length_runs(cu_seqlens: list[int]) -> list[tuple[int, int, int]]:
    """`(first token, segment length, number of segments)` per run of consecutive equal-length segments;
    empty segments are dropped (they attend to nothing and produce no rows)."""
    runs: list[tuple[int, int, int]] = []
    for start, end in zip(cu_seqlens[:-1], cu_seqlens[1:]):
        length = end - start
        if length == 0:
            continue
        if runs and runs[-1][1] == length and runs[-1][0] + runs[-1][1] * runs[-1][2] == start:
            first, _, count = runs[-1]
            runs[-1] = (first, length, count + 1)
        else:
            runs.append((start, length, 1))
    return runs


def _rope_then_sdpa(q_THD, k_THD, v_THD, cu_seqlens, pos_hw, theta: float, scale: float) -> torch.Tensor:
    T, H, D = q_THD.shape
    q_THD, k_THD = apply_rope2d(q_THD, pos_hw, theta), apply_rope2d(k_THD, pos_hw, theta)
    outs = []
    for start, length, count in equal_length_runs(cu_seqlens.tolist()):
        rows = slice(start, start + length * count)
        q, k, v = (t[rows].view(count, length, H, D).transpose(1, 2) for t in (q_THD, k_THD, v_THD))
        out_nHLD = F.scaled_dot_product_attention(q, k, v, scale=scale)
        outs.append(out_nHLD.transpose(1, 2).reshape(length * count, H, D))
    if not outs:
        return q_THD.new_zeros(T, H, D)
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def packed_rope2d_attention(q_THD, k_THD, v_THD, cu_seqlens, pos_hw, *, theta: float, scale: float,
                            max_seqlen: int | None = None) -> torch.Tensor:
    """`out_THD` of 2D-RoPE attention per `cu_seqlens` (int32 `[S + 1]`) segment at integer positions
    `pos_hw` (int32 `[T, 2]`); q, k, v may be strided views with a contiguous last dim (a fused qkv)."""
    if path_for(q_THD.device.type) == "fused":
        return rope2d_attention(q_THD, k_THD, v_THD, cu_seqlens, pos_hw, theta=theta, scale=scale,
                                max_seqlen=max_seqlen)
    return _rope_then_sdpa(q_THD, k_THD, v_THD, cu_seqlens, pos_hw, theta, scale)
