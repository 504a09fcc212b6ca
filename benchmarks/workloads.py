"""The shared benchmark workloads, defined once (DESIGN.md §6): name -> (grid_thw, merge_sizes), in 14-pixel
patches.  Every benchmark that reports one of these names runs exactly these inputs' shapes.

- video16x336: 16 frames of 336x336 -> 24x24 patches, m=2: 16 segments of 576 patches (9216);
- mixed5: five images, m=1, patch grids 32x32 (448x448), 24x36 (336x504), 16x16 (224x224), 48x28 (672x392),
  58x42 (812x588): segments of 1024, 864, 256, 1344, 2436 patches (5924);
- image896: one 896x896 image, 64x64 patches, m=1: one segment of 4096 patches;
- video48x448 / video180x448: 48 / 180 frames of 448x448 -> 32x32 patches, m=2 (pruning).
"""
from __future__ import annotations

from vl3fast.ops import PackedGrid

WORKLOADS: dict[str, tuple[list[list[int]], list[int]]] = {
    "video16x336": ([[16, 24, 24]], [2]),
    "mixed5": ([[1, 32, 32], [1, 24, 36], [1, 16, 16], [1, 48, 28], [1, 58, 42]], [1, 1, 1, 1, 1]),
    "image896": ([[1, 64, 64]], [1]),
    "video48x448": ([[48, 32, 32]], [2]),
    "video180x448": ([[180, 32, 32]], [2]),
}


def packed_grid(name: str) -> PackedGrid:
    """The workload's PackedGrid (sizes, offsets, cu_seqlens)."""
    grid_thw, merge_sizes = WORKLOADS[name]
    return PackedGrid.from_items(grid_thw, merge_sizes)
