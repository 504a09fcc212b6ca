"""rope2d_position_ids: exact against the reference and transformers; bad grids raise before any kernel."""
import pytest
import torch
from transformers import vision_utils

import vl3fast
from vl3fast import reference


def test_matches_reference_and_transformers(grid):
    grid_thw, merge_sizes = grid
    pos_hw, cu_seqlens = vl3fast.ops.rope2d_position_ids(grid_thw, merge_sizes)
    ref_pos, ref_cu = reference.rope2d_position_ids(grid_thw, merge_sizes)
    hf_pos = vision_utils.get_vision_position_ids(grid_thw, merge_sizes)
    hf_cu = vision_utils.get_vision_cu_seqlens(grid_thw)
    assert pos_hw.dtype == torch.int32 and cu_seqlens.dtype == torch.int32
    assert torch.equal(pos_hw, ref_pos)
    assert torch.equal(pos_hw.long(), hf_pos.long())
    assert torch.equal(cu_seqlens.long(), hf_cu.long())
    assert torch.equal(cu_seqlens, ref_cu)


def test_accepts_lists_and_int32():
    a = vl3fast.ops.rope2d_position_ids([[2, 4, 4]], [2])
    b = vl3fast.ops.rope2d_position_ids(torch.tensor([[2, 4, 4]], dtype=torch.int32), torch.tensor([2], dtype=torch.int32))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_empty_batch():
    pos_hw, cu_seqlens = vl3fast.ops.rope2d_position_ids(torch.zeros((0, 3), dtype=torch.int64), torch.zeros(0, dtype=torch.int64))
    assert pos_hw.shape == (0, 2) and cu_seqlens.tolist() == [0]


@pytest.mark.parametrize(
    "grid_thw, merge_sizes, error, match",
    [
        ([[1, 4, 4]], [0], ValueError, "merge_sizes\\[0\\] = 0"),
        ([[0, 4, 4]], [1], ValueError, "must be positive"),
        ([[1, -2, 4]], [1], ValueError, "must be positive"),
        ([[1, 5, 4]], [2], ValueError, "divisible by merge_sizes"),
        ([[1, 4, 4], [1, 2, 2]], [1], ValueError, "one merge size per grid row"),
        ([[1, 4]], [1], ValueError, "\\[N, 3\\]"),
        ([1, 4, 4], [1], ValueError, "grid_thw: expected 2 dims"),
        ([[1.0, 4.0, 4.0]], [1], TypeError, "grid_thw: expected dtype"),
        ([[1, 65536, 65536]], [1], ValueError, "2\\*\\*31"),
    ],
)
def test_bad_grids(grid_thw, merge_sizes, error, match):
    with pytest.raises(error, match=match):
        vl3fast.ops.rope2d_position_ids(torch.tensor(grid_thw), torch.tensor(merge_sizes))


def test_opcheck(grid):
    g = vl3fast.ops.PackedGrid.from_grid(*grid)
    torch.library.opcheck(torch.ops.vl3fast.rope2d_position_ids.default, (g.item_table(), g.num_patches, g.num_frames))
