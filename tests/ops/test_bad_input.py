"""Every public argument of vl3fast.ops with a wrong Python type, dtype, device (meta), rank, shape or range.

Each case expects a ValueError or TypeError whose message names the argument, raised before any kernel runs.
The table is the list of what is guaranteed (README "Bad input and robustness").
"""
from __future__ import annotations

import pytest
import torch

import vl3fast.ops as ops

GRID = [[1, 4, 6], [3, 4, 4]]
MERGE = [1, 2]
P = 24 + 48  # patches
M = 24 + 12  # merged tokens


def _valid(op: str) -> dict:
    grid, merge = torch.tensor(GRID), torch.tensor(MERGE)
    if op == "rope2d_position_ids":
        return dict(grid_thw=grid, merge_sizes=merge)
    if op == "apply_rope2d":
        return dict(x=torch.randn(P, 2, 8), pos_hw=torch.zeros(P, 2, dtype=torch.int32), theta=10000.0)
    if op == "rope2d_attention":
        pos, cu = ops.rope2d_position_ids(grid, merge)
        return dict(q=torch.randn(P, 2, 8), k=torch.randn(P, 2, 8), v=torch.randn(P, 2, 8), cu_seqlens=cu,
                    pos_hw=pos, theta=10000.0, scale=None, max_seqlen=None)
    if op in ("frame_keep_mask", "frame_token_diff"):
        extra = dict(min_tokens=1) if op == "frame_keep_mask" else {}
        return dict(pixel_values=torch.randn(P, 12), grid_thw=grid, merge_sizes=merge, threshold=0.1, **extra)
    if op == "keep_compaction":
        return dict(keep=torch.ones(M, dtype=torch.bool), grid_thw=grid, merge_sizes=merge)
    if op == "prune_tokens":
        return dict(features=torch.randn(M, 5), keep=torch.ones(M, dtype=torch.bool), grid_thw=grid, merge_sizes=merge)
    if op == "prune_patches":
        return dict(pixel_values=torch.randn(P, 12), keep=torch.ones(M, dtype=torch.bool), grid_thw=grid,
                    merge_sizes=merge)
    raise AssertionError(op)


META = torch.device("meta")
GRID_OPS = ("rope2d_position_ids", "frame_keep_mask", "frame_token_diff", "keep_compaction", "prune_tokens",
            "prune_patches")

# (op, argument, bad value or a function of the valid arguments, expected exception)
CASES: list[tuple] = []
for op in GRID_OPS:
    CASES += [
        (op, "grid_thw", None, TypeError),
        (op, "grid_thw", "1,4,6", TypeError),
        (op, "grid_thw", [[1.5, 4, 6], [3, 4, 4]], TypeError),
        (op, "grid_thw", [[1, 4, 6], [3, 4]], ValueError),
        (op, "grid_thw", [[True, 4, 6], [3, 4, 4]], TypeError),
        (op, "grid_thw", torch.tensor(GRID, dtype=torch.float32), TypeError),
        (op, "grid_thw", torch.tensor(GRID, device=META), ValueError),
        (op, "grid_thw", torch.tensor([1, 4, 6]), ValueError),
        (op, "grid_thw", torch.tensor([[1, 4, 6, 1], [3, 4, 4, 1]]), ValueError),
        (op, "grid_thw", torch.tensor([[0, 4, 6], [3, 4, 4]]), ValueError),
        (op, "grid_thw", torch.tensor([[1, 4, 6], [3, 3, 4]]), ValueError),  # h not divisible by merge 2
        (op, "grid_thw", torch.tensor([[1, 1, 2**31 - 1], [1, 2, 2]], dtype=torch.int32), ValueError),
        (op, "merge_sizes", "2", TypeError),
        (op, "merge_sizes", [1.0, 2.0], TypeError),
        (op, "merge_sizes", torch.tensor(MERGE, dtype=torch.float32), TypeError),
        (op, "merge_sizes", torch.tensor(MERGE, device=META), ValueError),
        (op, "merge_sizes", torch.tensor([1]), ValueError),
        (op, "merge_sizes", torch.tensor([[1, 2]]), ValueError),
        (op, "merge_sizes", torch.tensor([1, 0]), ValueError),
    ]
CASES += [
    ("apply_rope2d", "x", [[1.0]], TypeError),
    ("apply_rope2d", "x", torch.zeros(P, 2, 8, dtype=torch.int32), TypeError),
    ("apply_rope2d", "x", torch.randn(P, 2, 8, device=META), ValueError),
    ("apply_rope2d", "x", torch.randn(P, 16), ValueError),
    ("apply_rope2d", "x", torch.randn(P, 2, 6), ValueError),
    ("apply_rope2d", "x", torch.randn(P, 2, 8)[..., ::2].repeat(1, 1, 2)[..., ::2], ValueError),
    ("apply_rope2d", "pos_hw", [[0, 0]] * P, TypeError),
    ("apply_rope2d", "pos_hw", torch.zeros(P, 2, dtype=torch.int64), TypeError),
    ("apply_rope2d", "pos_hw", torch.zeros(P, 2, dtype=torch.int32, device=META), ValueError),
    ("apply_rope2d", "pos_hw", torch.zeros(P, 3, dtype=torch.int32), ValueError),
    ("apply_rope2d", "pos_hw", torch.zeros(P - 1, 2, dtype=torch.int32), ValueError),
    ("apply_rope2d", "pos_hw", torch.full((P, 2), -1, dtype=torch.int32), ValueError),
    ("apply_rope2d", "theta", True, TypeError),
    ("apply_rope2d", "theta", "1e4", TypeError),
    ("apply_rope2d", "theta", -1.0, ValueError),
    ("apply_rope2d", "theta", float("inf"), ValueError),
]
for arg in ("q", "k", "v"):
    CASES += [
        ("rope2d_attention", arg, [[1.0]], TypeError),
        ("rope2d_attention", arg, torch.zeros(P, 2, 8, dtype=torch.int32), TypeError),
        ("rope2d_attention", arg, torch.randn(P, 2, 8, device=META), ValueError),
        ("rope2d_attention", arg, torch.randn(P, 16), ValueError),
        ("rope2d_attention", arg, torch.randn(P, 3, 8), ValueError),
        ("rope2d_attention", arg, torch.randn(P - 1, 2, 8), ValueError),
        ("rope2d_attention", arg, torch.randn(P, 2, 16)[..., ::2], ValueError),
        ("rope2d_attention", arg, torch.randn(P, 2, 8, dtype=torch.float64), TypeError),
    ]
CASES += [
    ("rope2d_attention", "q", torch.randn(P, 2, 6), ValueError),
    ("rope2d_attention", "q", torch.randn(P, 2, 260), ValueError),
    ("rope2d_attention", "cu_seqlens", [0, 24, 40, 56, 72], TypeError),
    ("rope2d_attention", "cu_seqlens", torch.tensor([0, 24, 40, 56, 72], dtype=torch.int64), TypeError),
    ("rope2d_attention", "cu_seqlens", torch.tensor([0, 24, 40, 56, 72], dtype=torch.int32, device=META), ValueError),
    ("rope2d_attention", "cu_seqlens", torch.tensor([[0, 72]], dtype=torch.int32), ValueError),
    ("rope2d_attention", "cu_seqlens", torch.tensor([1, 72], dtype=torch.int32), ValueError),
    ("rope2d_attention", "cu_seqlens", torch.tensor([0, 40, 24, 72], dtype=torch.int32), ValueError),
    ("rope2d_attention", "cu_seqlens", torch.tensor([0, 70], dtype=torch.int32), ValueError),
    ("rope2d_attention", "pos_hw", [[0, 0]] * P, TypeError),
    ("rope2d_attention", "pos_hw", torch.zeros(P, 2, dtype=torch.int64), TypeError),
    ("rope2d_attention", "pos_hw", torch.zeros(P, 2, dtype=torch.int32, device=META), ValueError),
    ("rope2d_attention", "pos_hw", torch.zeros(P, 1, dtype=torch.int32), ValueError),
    ("rope2d_attention", "pos_hw", torch.full((P, 2), 2**24, dtype=torch.int32), ValueError),
    ("rope2d_attention", "theta", True, TypeError),
    ("rope2d_attention", "theta", "1e4", TypeError),
    ("rope2d_attention", "theta", 0.0, ValueError),
    ("rope2d_attention", "scale", True, TypeError),
    ("rope2d_attention", "scale", "0.1", TypeError),
    ("rope2d_attention", "scale", float("nan"), ValueError),
    ("rope2d_attention", "scale", 0.0, ValueError),
    ("rope2d_attention", "max_seqlen", 2.5, TypeError),
    ("rope2d_attention", "max_seqlen", True, TypeError),
    ("rope2d_attention", "max_seqlen", 0, ValueError),
    ("rope2d_attention", "max_seqlen", 10, ValueError),  # below the longest segment (24)
]
for op in ("frame_keep_mask", "frame_token_diff", "prune_patches"):
    CASES += [
        (op, "pixel_values", [[0.0] * 12] * P, TypeError),
        (op, "pixel_values", torch.zeros(P, 12, dtype=torch.int32), TypeError),
        (op, "pixel_values", torch.randn(P, 12, device=META), ValueError),
        (op, "pixel_values", torch.randn(P), ValueError),
        (op, "pixel_values", torch.randn(P - 1, 12), ValueError),
    ]
for op in ("frame_keep_mask", "frame_token_diff"):
    CASES += [
        (op, "threshold", True, TypeError),
        (op, "threshold", "0.1", TypeError),
        (op, "threshold", torch.tensor(0.1), TypeError),
        (op, "threshold", -0.5, ValueError),
        (op, "threshold", float("nan"), ValueError),
        (op, "threshold", float("inf"), ValueError),
    ]
CASES += [
    ("frame_keep_mask", "min_tokens", True, TypeError),
    ("frame_keep_mask", "min_tokens", 1.0, TypeError),
    ("frame_keep_mask", "min_tokens", -1, ValueError),
    ("frame_keep_mask", "min_tokens", 5, ValueError),  # more than the video's 4 merged tokens per frame
]
for op in ("keep_compaction", "prune_tokens", "prune_patches"):
    CASES += [
        (op, "keep", [True] * M, TypeError),
        (op, "keep", torch.ones(M, dtype=torch.int64), TypeError),
        (op, "keep", torch.ones(M, dtype=torch.bool, device=META), ValueError),
        (op, "keep", torch.ones(M, 1, dtype=torch.bool), ValueError),
        (op, "keep", torch.ones(M - 1, dtype=torch.bool), ValueError),
    ]
CASES += [
    ("prune_tokens", "features", [[0.0]] * M, TypeError),
    ("prune_tokens", "features", torch.randn(M - 1, 5), ValueError),
    ("prune_tokens", "features", torch.tensor(1.0), ValueError),
    ("prune_tokens", "features", torch.randn(M, 5, device=META), ValueError),
]


def _id(case) -> str:
    op, arg, bad, exc = case
    if isinstance(bad, torch.Tensor):
        what = f"{str(bad.dtype).replace('torch.', '')}{list(bad.shape)}{'-meta' if bad.is_meta else ''}"
    else:
        what = repr(bad)[:24]
    return f"{op}-{arg}-{what}"


@pytest.mark.parametrize("op,arg,bad,exc", CASES, ids=[_id(c) for c in CASES])
def test_bad_argument_is_named(op, arg, bad, exc):
    kwargs = _valid(op)
    kwargs[arg] = bad
    fn = getattr(ops, op)
    with pytest.raises((TypeError, ValueError)) as info:
        fn(**kwargs)
    assert isinstance(info.value, exc), f"{type(info.value).__name__}: {info.value}"
    assert arg in str(info.value), f"the message does not name {arg!r}: {info.value}"


@pytest.mark.parametrize("op", ["rope2d_position_ids", "apply_rope2d", "rope2d_attention", "frame_keep_mask",
                                "frame_token_diff", "keep_compaction", "prune_tokens", "prune_patches"])
def test_valid_arguments_pass(op):
    """The table's base arguments are valid: every failure above is caused by the one bad argument."""
    getattr(ops, op)(**_valid(op))
