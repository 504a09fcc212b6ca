"""Reference position ids and segments for a packed visual batch (spec A, "2D RoPE" and "Packing")."""
from __future__ import annotations

import torch


def rope2d_position_ids(grid_thw: torch.Tensor, merge_sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns pos_hw int32 `[T, 2]` in merge-block order repeated per frame, cu_seqlens int32 `[S + 1]`."""
    positions, lengths = [], []
    for (t, h, w), m in zip(grid_thw.tolist(), merge_sizes.tolist()):
        rows = torch.arange(h).view(h // m, m, 1, 1).expand(h // m, m, w // m, m)
        cols = torch.arange(w).view(1, 1, w // m, m).expand(h // m, m, w // m, m)
        # (h/m, m, w/m, m) -> (h/m, w/m, m, m): blocks row-major, then row-major inside a block.
        block_major = torch.stack([rows, cols], dim=-1).permute(0, 2, 1, 3, 4).reshape(h * w, 2)
        positions.append(block_major.repeat(t, 1))
        lengths += [h * w] * t
    pos_hw = torch.cat(positions).to(torch.int32) if positions else torch.zeros((0, 2), dtype=torch.int32)
    cu_seqlens = torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0).to(torch.int32)
    return pos_hw.to(grid_thw.device), cu_seqlens.to(grid_thw.device)
