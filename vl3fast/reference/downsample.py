"""Reference m x m spatial downsample of encoder outputs (spec B)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def downsample(x_PC: torch.Tensor, grid_thw: torch.Tensor, merge_sizes: torch.Tensor) -> torch.Tensor:
    """`[P, C]` patch features in merge-block order -> `[M, C]` merged tokens in raster order.

    Bilinear resize by 1/m (align_corners=False), as VideoLLaMA3 does; for m in {1, 2} this is exactly
    the mean over each m x m block.
    """
    outputs = []
    start = 0
    for (t, h, w), m in zip(grid_thw.tolist(), merge_sizes.tolist()):
        item = x_PC[start : start + t * h * w]
        start += t * h * w
        c = item.shape[-1]
        # merge-block order -> raster image [t, C, h, w]
        image = item.view(t, h // m, w // m, m, m, c).permute(0, 1, 3, 2, 4, 5).reshape(t, h, w, c).permute(0, 3, 1, 2)
        pooled = F.interpolate(image, size=(h // m, w // m), mode="bilinear", align_corners=False)
        outputs.append(pooled.permute(0, 2, 3, 1).reshape(-1, c))
    if not outputs:
        return x_PC.new_zeros((0, x_PC.shape[-1]))
    return torch.cat(outputs)
