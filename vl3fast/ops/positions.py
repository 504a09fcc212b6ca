"""rope2d_position_ids: per-patch (row, col) positions and per-frame cu_seqlens of a packed visual batch."""
from __future__ import annotations

import torch

from .._backend import core
from ._bridge import stream_of, tensor_ref
from ._checks import check_grid, grid_values

__all__ = ["rope2d_position_ids"]


@torch.library.custom_op("vl3fast::rope2d_position_ids", mutates_args=())
def _rope2d_position_ids(grid_thw: torch.Tensor, merge_sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows = grid_values(grid_thw, merge_sizes)
    table, token_offset, frame_offset = [], 0, 0
    for t, h, w, m in rows:
        table.append((t, h, w, m, token_offset, frame_offset))
        token_offset += t * h * w
        frame_offset += t
    device = grid_thw.device
    item_table = torch.tensor(table, dtype=torch.int64).reshape(len(rows), 6).to(device, non_blocking=True)
    pos_hw = torch.empty((token_offset, 2), dtype=torch.int32, device=device)
    cu_seqlens = torch.empty((frame_offset + 1,), dtype=torch.int32, device=device)
    core.rope2d_position_ids(tensor_ref(item_table), tensor_ref(pos_hw), tensor_ref(cu_seqlens), stream_of(pos_hw))
    return pos_hw, cu_seqlens


@_rope2d_position_ids.register_fake
def _(grid_thw, merge_sizes):
    check_grid(grid_thw, merge_sizes)
    ctx = torch.library.get_ctx()
    # Sizes depend on the grid's values: T tokens and S + 1 segment bounds (S + 1 >= 1).
    num_tokens, num_bounds = ctx.new_dynamic_size(), ctx.new_dynamic_size(min=1)
    return (
        grid_thw.new_empty((num_tokens, 2), dtype=torch.int32),
        grid_thw.new_empty((num_bounds,), dtype=torch.int32),
    )


def rope2d_position_ids(grid_thw, merge_sizes) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions and attention segments of a packed batch of images/videos.

    Args:
        grid_thw: int `[N, 3]` (t, h, w) per item, in patches before merging (tensor or nested list).
        merge_sizes: int `[N]` merge size m per item; h and w must be divisible by m.

    Returns:
        pos_hw_T2: int32 `[T, 2]` (row, col) of every patch in merge-block order, repeated per frame;
        cu_seqlens_S1: int32 `[S + 1]`, one attention segment per frame, starting at 0.
    Both live on grid_thw's device.  Reads the grid once on the host (one sync for a CUDA grid).
    """
    grid_thw = torch.as_tensor(grid_thw, dtype=torch.int64) if not isinstance(grid_thw, torch.Tensor) else grid_thw
    merge_sizes = (
        torch.as_tensor(merge_sizes, dtype=torch.int64) if not isinstance(merge_sizes, torch.Tensor) else merge_sizes
    )
    if grid_thw.dim() == 2 and grid_thw.shape[0] == 0:
        grid_thw = grid_thw.reshape(0, 3)
    return torch.ops.vl3fast.rope2d_position_ids(grid_thw, merge_sizes)
