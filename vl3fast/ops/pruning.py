"""Differential Frame Pruner (VideoLLaMA3 spec C): keep mask, sync-free compaction, report.

Shape letters: P pixel rows (patches), M merged tokens, F frames (an image counts as one frame).
Merged tokens are numbered item -> frame -> merged block, the order of the encoder's merged features
and of transformers' ``video_compression_mask``.

Exactness.  On float32 input ``frame_keep_mask`` is bit-identical to transformers'
``VideoLlama3VideoProcessor._get_compression_mask`` run by the same torch on the CPU: the kernels
compute ``d = 255 * mean|P_t - P_{t-1}|`` in float32 in torch's CPU summation order (cascade sum with
8-lane vectors under every x86 CPU capability of torch; see csrc/include/vl3fast/pruning.h), divide by K and scale by 255 in float32, and compare with the
threshold rounded to float32, as torch does.  So every decision matches, including differences within
an ulp of the threshold.  The guarantee covers x86 torch builds (capabilities AVX512, AVX2, DEFAULT);
the CUDA kernel uses the same (CPU) order, so a GPU run matches transformers run on the CPU, not
torch's own CUDA reduction.  bfloat16/float16 input is upcast to float32 per element (fp32
accumulation); the rounding of the input itself means decisions within that rounding of the
threshold may differ from a float32 run of the same video.

NaN/inf pixels: a NaN difference compares False, so such a token is dropped (unless ``min_tokens``
forces it), exactly as in transformers; no error is raised.

Grids.  Every function takes ``grid_thw, merge_sizes`` (tensors or nested lists) or one `PackedGrid`
(vl3fast/ops/packed_grid.py) in their place; the kernels read its item table.

Host syncs.  A tensor grid is read on the host once per call (free when it is on the CPU, as the
processors return it; one sync for CUDA tensors); a PackedGrid is read with none.  ``frame_keep_mask``
and ``keep_compaction`` launch kernels only: no sync.  ``prune_tokens`` and ``prune_patches`` make
exactly one device sync, at their very end, to read the kept counts and slice the fixed-size outputs;
none when they are given a PackedGrid built with the same keep mask (``PackedGrid.with_keep``), whose
host counts size the outputs.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .._backend import core
from ._bridge import stream_of, tensor_ref
from ._checks import FLOAT_DTYPES, check_has_values, check_int, check_real_number, check_tensor
from .packed_grid import PackedGrid, as_grid_tensors

__all__ = [
    "frame_keep_mask",
    "frame_token_diff",
    "keep_compaction",
    "prune_tokens",
    "prune_patches",
    "KeepIndices",
    "PrunedTokens",
    "PrunedPatches",
    "TORCH_SUM_LANES",
]

# Vector width (float lanes) of torch's CPU float32 sum, the order the kernels reproduce: torch registers
# its sum kernel without an AVX-512 variant, so on x86 its AVX512, AVX2 and DEFAULT capabilities all sum
# with 8-lane (32-byte) vectors (tests/ops/test_pruning.py checks this under each ATEN_CPU_CAPABILITY).
TORCH_SUM_LANES = 8


# ---- validation -----------------------------------------------------------------------------------


def packed_grid_for(data_name: str, data: torch.Tensor, grid_thw, merge_sizes=None) -> PackedGrid:
    """The PackedGrid of a call: given, or built from a grid that is host metadata (CPU, recommended) or
    lives on the data's device."""
    if isinstance(grid_thw, PackedGrid):
        if merge_sizes is not None:
            raise ValueError("merge_sizes: give either a PackedGrid or (grid_thw, merge_sizes), not both")
        return grid_thw
    grid_thw, merge_sizes = as_grid_tensors(grid_thw, merge_sizes)
    for name, t in (("grid_thw", grid_thw), ("merge_sizes", merge_sizes)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor or a nested list, got {type(t).__name__}")
    if grid_thw.device != merge_sizes.device:
        raise ValueError(
            f"grid_thw and merge_sizes must be on one device, got {grid_thw.device} and {merge_sizes.device}"
        )
    if grid_thw.device.type != "cpu" and grid_thw.device != data.device:
        raise ValueError(
            f"grid_thw must be a CPU tensor or on {data_name}'s device ({data.device}), got {grid_thw.device}"
        )
    return PackedGrid.from_grid(grid_thw, merge_sizes)


def _check_threshold(threshold) -> float:
    return check_real_number("threshold", threshold, allow_zero=True)


def _check_min_tokens(min_tokens, grid: PackedGrid) -> int:
    min_tokens = check_int("min_tokens", min_tokens)
    for i, it in enumerate(grid.items):
        if it.is_video and min_tokens > it.tokens_per_frame:
            raise ValueError(
                f"min_tokens = {min_tokens} exceeds the {it.tokens_per_frame} merged tokens per frame of video {i} "
                f"(grid {(it.t, it.h, it.w)}, m={it.merge})"
            )
    return min_tokens


def _check_table(item_table) -> None:
    check_tensor("item_table", item_table, dtypes=(torch.int64,), ndim=2)
    if item_table.shape[1] != 7:
        raise ValueError(f"item_table: expected [N, 7] (PackedGrid.item_table()), got {tuple(item_table.shape)}")


# ---- frame_keep_mask ------------------------------------------------------------------------------
# The ops take the PackedGrid's item table and host sizes (the public functions below build them), so
# their outputs have static sizes and no op reads the grid again.


@torch.library.custom_op("vl3fast::frame_keep_mask", mutates_args=())
def _frame_keep_mask_op(
    pixel_values: torch.Tensor, item_table: torch.Tensor, num_tokens: int, num_frames: int, max_frame_tokens: int,
    threshold: float, min_tokens: int, sum_lanes: int, with_diff: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    check_tensor("pixel_values", pixel_values, dtypes=FLOAT_DTYPES, ndim=2)
    _check_table(item_table)
    if sum_lanes not in (1, 8):
        raise ValueError(f"sum_lanes: expected 1 or 8, got {sum_lanes}")
    pixels = pixel_values.contiguous()  # a merged token must be one contiguous run of m*m rows
    keep = torch.empty(num_tokens, dtype=torch.bool, device=pixels.device)
    diff = torch.empty(num_tokens if with_diff else 0, dtype=torch.float32, device=pixels.device)
    core.frame_keep_mask(
        tensor_ref(pixels), tensor_ref(item_table), tensor_ref(keep), tensor_ref(diff), num_frames,
        max_frame_tokens, threshold, min_tokens, sum_lanes, with_diff, stream_of(pixels),
    )
    return keep, diff


@_frame_keep_mask_op.register_fake
def _(pixel_values, item_table, num_tokens, num_frames, max_frame_tokens, threshold, min_tokens, sum_lanes,
      with_diff):
    check_tensor("pixel_values", pixel_values, dtypes=FLOAT_DTYPES, ndim=2)
    _check_table(item_table)
    keep = pixel_values.new_empty((num_tokens,), dtype=torch.bool)
    diff = pixel_values.new_empty((num_tokens,) if with_diff else (0,), dtype=torch.float32)
    return keep, diff


def _keep_mask_call(pixel_values, grid_thw, merge_sizes, threshold, min_tokens, with_diff):
    check_tensor("pixel_values", pixel_values, dtypes=FLOAT_DTYPES, ndim=2)
    check_has_values("pixel_values", pixel_values)
    grid = packed_grid_for("pixel_values", pixel_values, grid_thw, merge_sizes)
    threshold = _check_threshold(threshold)
    min_tokens = _check_min_tokens(min_tokens, grid)
    if pixel_values.shape[0] != grid.num_patches:
        raise ValueError(
            f"pixel_values: {pixel_values.shape[0]} rows, but grid_thw describes sum(t*h*w) = {grid.num_patches} patches"
        )
    return torch.ops.vl3fast.frame_keep_mask(
        pixel_values, grid.item_table(pixel_values.device), grid.num_tokens, grid.num_frames, grid.max_frame_tokens,
        threshold, min_tokens, TORCH_SUM_LANES, with_diff,
    )


def frame_keep_mask(pixel_values, grid_thw, merge_sizes=None, *, threshold: float = 0.1,
                    min_tokens: int = 1) -> torch.Tensor:
    """VideoLLaMA3's Differential Frame Pruner keep mask, one entry per merged token.

    Args:
        pixel_values: ``[P, C]`` float32/bfloat16/float16 patch rows in VideoLLaMA3 order (spec A; C is
            3*14*14 for the released model).  Non-contiguous input is copied.
        grid_thw: int ``[N, 3]`` (t, h, w) per item in patches (tensor or nested list; CPU recommended),
            or a `PackedGrid` (then no merge_sizes).
        merge_sizes: int ``[N]`` merge size m per item.
        threshold: keep a token when ``255 * mean|P_t - P_{t-1}| > threshold`` (strict).
        min_tokens: a frame with fewer kept tokens keeps its first ``min_tokens`` (0 disables).

    Returns:
        keep_M: bool ``[M]``, M = sum t*(h/m)*(w/m).  Frame 0 of every video and single-frame items
        (images) are fully kept.  Identical to transformers on float32 input (see the module doc).
    """
    keep, _ = _keep_mask_call(pixel_values, grid_thw, merge_sizes, threshold, min_tokens, False)
    return keep


def frame_token_diff(pixel_values, grid_thw, merge_sizes=None, *, threshold: float = 0.1) -> torch.Tensor:
    """float32 ``[M]`` scores d = 255 * mean|P_t - P_{t-1}| behind the mask (bit-identical to transformers'
    ``pixel_diff``); tokens kept by rule (frame 0, images) get ``threshold + 1`` as in transformers."""
    _, diff = _keep_mask_call(pixel_values, grid_thw, merge_sizes, threshold, 0, True)
    return diff


# ---- compaction -----------------------------------------------------------------------------------


class KeepIndices(NamedTuple):
    """Fixed-size compaction of a keep mask (no host sync); entries past the kept counts are -1."""

    token_index: torch.Tensor     # int64 [M]: kept merged-token indices in order
    token_cu_seqlens: torch.Tensor  # int32 [F + 1]: kept merged tokens per frame, cumulative
    patch_index: torch.Tensor     # int64 [P]: kept pixel rows (m*m per kept token) in order
    patch_pos_hw: torch.Tensor    # int32 [P, 2]: original (row, col) of each kept pixel row
    patch_cu_seqlens: torch.Tensor  # int32 [F + 1]: kept patches per frame, cumulative
    num_kept: torch.Tensor        # int64 [2]: (kept merged tokens, kept patches)


@torch.library.custom_op("vl3fast::keep_compaction", mutates_args=())
def _keep_compaction_op(
    keep: torch.Tensor, item_table: torch.Tensor, num_patches: int, num_frames: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    check_tensor("keep", keep, dtypes=(torch.bool,), ndim=1)
    _check_table(item_table)
    dev = keep.device
    keep = keep.contiguous()
    token_index = torch.empty(keep.shape[0], dtype=torch.int64, device=dev)
    token_cu = torch.empty(num_frames + 1, dtype=torch.int32, device=dev)
    patch_index = torch.empty(num_patches, dtype=torch.int64, device=dev)
    patch_pos_hw = torch.empty((num_patches, 2), dtype=torch.int32, device=dev)
    patch_cu = torch.empty(num_frames + 1, dtype=torch.int32, device=dev)
    num_kept = torch.empty(2, dtype=torch.int64, device=dev)
    ws_bytes = core.keep_compaction_workspace_bytes(keep.shape[0], dev.index if dev.type == "cuda" else -1)
    workspace = torch.empty(ws_bytes, dtype=torch.uint8, device=dev)
    core.keep_compaction(
        tensor_ref(keep), tensor_ref(item_table), tensor_ref(token_index), tensor_ref(token_cu),
        tensor_ref(patch_index), tensor_ref(patch_pos_hw), tensor_ref(patch_cu), tensor_ref(num_kept),
        tensor_ref(workspace), stream_of(keep),
    )
    return token_index, token_cu, patch_index, patch_pos_hw, patch_cu, num_kept


@_keep_compaction_op.register_fake
def _(keep, item_table, num_patches, num_frames):
    check_tensor("keep", keep, dtypes=(torch.bool,), ndim=1)
    _check_table(item_table)
    m = keep.shape[0]
    return (
        keep.new_empty((m,), dtype=torch.int64),
        keep.new_empty((num_frames + 1,), dtype=torch.int32),
        keep.new_empty((num_patches,), dtype=torch.int64),
        keep.new_empty((num_patches, 2), dtype=torch.int32),
        keep.new_empty((num_frames + 1,), dtype=torch.int32),
        keep.new_empty((2,), dtype=torch.int64),
    )


def _compact(keep, grid_thw, merge_sizes) -> tuple[KeepIndices, PackedGrid]:
    check_tensor("keep", keep, dtypes=(torch.bool,), ndim=1)
    check_has_values("keep", keep)
    grid = packed_grid_for("keep", keep, grid_thw, merge_sizes)
    if keep.shape[0] != grid.num_tokens:
        raise ValueError(f"keep: {keep.shape[0]} entries, but grid_thw describes {grid.num_tokens} merged tokens")
    out = torch.ops.vl3fast.keep_compaction(keep, grid.item_table(keep.device), grid.num_patches, grid.num_frames)
    return KeepIndices(*out), grid


def keep_compaction(keep, grid_thw, merge_sizes=None) -> KeepIndices:
    """Gather indices, per-frame kept counts (as cu_seqlens) and kept-patch positions of a keep mask.

    Kernel launches only: no host sync (outputs have fixed sizes; ``num_kept`` stays on the device).
    Per-frame kept merged tokens: ``token_cu_seqlens.diff()``.
    """
    return _compact(keep, grid_thw, merge_sizes)[0]


class PrunedTokens(NamedTuple):
    features: torch.Tensor    # [M_kept, ...] the kept rows of the merged features
    token_index: torch.Tensor  # int64 [M_kept] their indices in the unpruned order
    cu_seqlens: torch.Tensor   # int32 [F + 1] kept merged tokens per frame, cumulative


def prune_tokens(features, keep, grid_thw, merge_sizes=None) -> PrunedTokens:
    """After the encoder (the released model's placement): ``features[keep]`` with indices and per-frame
    bounds.  ``features`` is ``[M, ...]`` in merged-token order.  One host sync, at the end (the kept
    count); none with a PackedGrid that carries this mask's counts (``with_keep``)."""
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"features: expected a torch.Tensor, got {type(features).__name__}")
    check_tensor("keep", keep, dtypes=(torch.bool,), ndim=1)
    check_has_values("features", features)
    if features.dim() < 1 or features.shape[0] != keep.shape[0]:
        raise ValueError(f"features: expected [M, ...] with M = {keep.shape[0]} rows (one per merged token of "
                         f"keep), got {tuple(features.shape)}")
    if features.device != keep.device:
        raise ValueError(f"features and keep must be on one device, got {features.device} and {keep.device}")
    idx, grid = _compact(keep, grid_thw, merge_sizes)
    n = grid.num_kept_tokens if grid.kept_per_frame is not None else int(idx.num_kept[0])  # the one host sync
    token_index = idx.token_index[:n]
    return PrunedTokens(features.index_select(0, token_index), token_index, idx.token_cu_seqlens)


class PrunedPatches(NamedTuple):
    pixel_values: torch.Tensor  # [P_kept, C] kept patch rows (m*m per kept merged token)
    pos_hw: torch.Tensor        # int32 [P_kept, 2] their original (row, col) RoPE positions
    cu_seqlens: torch.Tensor    # int32 [F + 1] one attention segment per frame
    max_seqlen: int             # longest segment
    patch_index: torch.Tensor   # int64 [P_kept] their rows in the unpruned pixel_values
    token_index: torch.Tensor   # int64 [M_kept] the kept merged tokens


def prune_patches(pixel_values, keep, grid_thw, merge_sizes=None) -> PrunedPatches:
    """Before the encoder (opt-in): drop the pixel rows of pruned merged tokens, keeping the true positions
    of the survivors and a per-frame ``cu_seqlens`` for varlen attention.  One host sync, at the end
    (kept counts and the longest segment, read together); none with a PackedGrid that carries this
    mask's counts (``with_keep``)."""
    check_tensor("pixel_values", pixel_values, dtypes=FLOAT_DTYPES, ndim=2)
    check_has_values("pixel_values", pixel_values)
    if isinstance(keep, torch.Tensor) and pixel_values.device != keep.device:
        raise ValueError(f"pixel_values and keep must be on one device, got {pixel_values.device} and {keep.device}")
    idx, grid = _compact(keep, grid_thw, merge_sizes)
    if pixel_values.shape[0] != grid.num_patches:
        raise ValueError(
            f"pixel_values: {pixel_values.shape[0]} rows, but grid_thw describes {grid.num_patches} patches"
        )
    if grid.kept_per_frame is not None:  # sizes known on the host
        n_tok, n_patch, max_seqlen = grid.num_kept_tokens, grid.num_kept_patches, grid.max_kept_frame_patches
    else:
        seg = idx.patch_cu_seqlens.diff()
        longest = seg.max() if seg.numel() else torch.zeros((), dtype=torch.int32, device=seg.device)
        n_tok, n_patch, max_seqlen = torch.cat([idx.num_kept, longest.reshape(1).to(torch.int64)]).tolist()  # one sync
    patch_index = idx.patch_index[:n_patch]
    return PrunedPatches(
        pixel_values.index_select(0, patch_index), idx.patch_pos_hw[:n_patch], idx.patch_cu_seqlens,
        int(max_seqlen), patch_index, idx.token_index[:n_tok],
    )
