"""vl3fast's kernels as torch.library custom ops (fake implementations and autograd included).

Each op validates its arguments (ValueError/TypeError naming the argument), allocates its outputs
and calls the compiled core for the tensors' device.  Oracles live in vl3fast.reference.
A packed visual batch is described once by a `PackedGrid` (packed_grid.py); every op that takes
``grid_thw, merge_sizes`` also takes a PackedGrid in their place.
"""
from .attention import rope2d_attention
from .packed_grid import GridItem, PackedGrid
from .positions import rope2d_position_ids
from .pruning import (
    KeepIndices,
    PrunedPatches,
    PrunedTokens,
    frame_keep_mask,
    frame_token_diff,
    keep_compaction,
    prune_patches,
    prune_tokens,
)
from .pruning_report import PruningReport, pruning_report
from .rope2d import apply_rope2d
from .varlen import varlen_attention

__all__ = [
    "PackedGrid",
    "GridItem",
    "rope2d_position_ids",
    "apply_rope2d",
    "rope2d_attention",
    "varlen_attention",
    "frame_keep_mask",
    "frame_token_diff",
    "keep_compaction",
    "prune_tokens",
    "prune_patches",
    "pruning_report",
    "KeepIndices",
    "PrunedTokens",
    "PrunedPatches",
    "PruningReport",
]
