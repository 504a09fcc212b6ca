"""rope2d_position_ids: per-patch (row, col) positions and per-frame cu_seqlens of a packed visual batch."""
from __future__ import annotations

import torch

from .._backend import core
from ._bridge import stream_of, tensor_ref
from ._checks import check_tensor
from .packed_grid import PackedGrid, as_grid_tensors, as_packed_grid

__all__ = ["rope2d_position_ids"]


@torch.library.custom_op("vl3fast::rope2d_position_ids", mutates_args=())
def _rope2d_position_ids(item_table: torch.Tensor, num_patches: int, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    _check_table(item_table)
    device = item_table.device
    pos_hw = torch.empty((num_patches, 2), dtype=torch.int32, device=device)
    cu_seqlens = torch.empty((num_frames + 1,), dtype=torch.int32, device=device)
    core.rope2d_position_ids(tensor_ref(item_table), tensor_ref(pos_hw), tensor_ref(cu_seqlens), stream_of(pos_hw))
    return pos_hw, cu_seqlens


@_rope2d_position_ids.register_fake
def _(item_table, num_patches, num_frames):
    _check_table(item_table)
    return (item_table.new_empty((num_patches, 2), dtype=torch.int32),
            item_table.new_empty((num_frames + 1,), dtype=torch.int32))


def _check_table(item_table) -> None:
    check_tensor("item_table", item_table, dtypes=(torch.int64,), ndim=2)
    if item_table.shape[1] != 7:
        raise ValueError(f"item_table: expected [N, 7] (PackedGrid.item_table()), got {tuple(item_table.shape)}")


def rope2d_position_ids(grid_thw, merge_sizes=None, *, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions and attention segments of a packed batch of images/videos.

    Args:
        grid_thw: int `[N, 3]` (t, h, w) per item, in patches before merging (tensor or nested list), or a
            `PackedGrid` (then no merge_sizes).
        merge_sizes: int `[N]` merge size m per item; h and w must be divisible by m.
        device: where the outputs go; default grid_thw's device (the CPU for lists and PackedGrids).

    Returns:
        pos_hw_T2: int32 `[T, 2]` (row, col) of every patch in merge-block order, repeated per frame;
        cu_seqlens_S1: int32 `[S + 1]`, one attention segment per frame, starting at 0.
    Reads a tensor grid once on the host (one sync for a CUDA grid); a PackedGrid is read with none.
    """
    if device is None:
        device = grid_thw.device if isinstance(grid_thw, torch.Tensor) else torch.device("cpu")
    if not isinstance(grid_thw, PackedGrid):
        grid_thw, merge_sizes = as_grid_tensors(grid_thw, merge_sizes)
    grid = as_packed_grid(grid_thw, merge_sizes)
    return torch.ops.vl3fast.rope2d_position_ids(grid.item_table(device), grid.num_patches, grid.num_frames)
