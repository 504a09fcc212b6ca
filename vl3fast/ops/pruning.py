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

Host syncs.  Every call reads ``grid_thw``/``merge_sizes`` on the host (free when they are CPU
tensors, as the processors return them; one sync for CUDA tensors).  ``frame_keep_mask`` and
``keep_compaction`` launch kernels only: no sync.  ``prune_tokens`` and ``prune_patches`` make exactly
one device sync, at their very end, to read the kept counts and slice the fixed-size outputs.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .._backend import core
from ._bridge import stream_of, tensor_ref
from ._checks import FLOAT_DTYPES, check_grid, check_tensor, grid_values

__all__ = [
    "frame_keep_mask",
    "frame_token_diff",
    "keep_compaction",
    "prune_tokens",
    "prune_patches",
    "pruning_report",
    "torch_sum_lanes",
    "KeepIndices",
    "PrunedTokens",
    "PrunedPatches",
    "PruningReport",
]


def torch_sum_lanes() -> int:
    """Vector width (float lanes) of torch's CPU float32 sum; the order we reproduce.

    torch registers its sum kernel without an AVX-512 variant, so on x86 its AVX512, AVX2 and
    DEFAULT capabilities all sum with 8-lane (32-byte) vectors (tests/ops/test_pruning.py checks this
    under each ATEN_CPU_CAPABILITY)."""
    return 8


# ---- validation and the item table ----------------------------------------------------------------


def _as_grid(grid_thw, merge_sizes):
    if not isinstance(grid_thw, torch.Tensor):
        grid_thw = torch.as_tensor(grid_thw, dtype=torch.int64).reshape(-1, 3)
    if not isinstance(merge_sizes, torch.Tensor):
        merge_sizes = torch.as_tensor(merge_sizes, dtype=torch.int64).reshape(-1)
    return grid_thw, merge_sizes


def _check_grid_device(data_name: str, data: torch.Tensor, grid_thw: torch.Tensor, merge_sizes: torch.Tensor) -> None:
    """The grid is host metadata (CPU, recommended) or lives on the data's device; nothing else."""
    if grid_thw.device != merge_sizes.device:
        raise ValueError(
            f"grid_thw and merge_sizes must be on one device, got {grid_thw.device} and {merge_sizes.device}"
        )
    if grid_thw.device.type != "cpu" and grid_thw.device != data.device:
        raise ValueError(
            f"grid_thw must be a CPU tensor or on {data_name}'s device ({data.device}), got {grid_thw.device}"
        )


def _check_threshold(threshold) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold: expected a float, got {type(threshold).__name__}")
    threshold = float(threshold)
    if math.isnan(threshold) or threshold < 0 or math.isinf(threshold):
        raise ValueError(f"threshold: expected a finite float >= 0, got {threshold!r}")
    return threshold


def _check_min_tokens(min_tokens, rows) -> int:
    if isinstance(min_tokens, bool) or not isinstance(min_tokens, int):
        raise TypeError(f"min_tokens: expected an int, got {type(min_tokens).__name__}")
    if min_tokens < 0:
        raise ValueError(f"min_tokens: expected >= 0, got {min_tokens}")
    for i, (t, h, w, m) in enumerate(rows):
        n = (h // m) * (w // m)
        if t > 1 and min_tokens > n:
            raise ValueError(
                f"min_tokens = {min_tokens} exceeds the {n} merged tokens per frame of video {i} (grid {(t, h, w)}, m={m})"
            )
    return min_tokens


class _Grid(NamedTuple):
    rows: list
    table: torch.Tensor  # int64 [N, 7] on the data device (pruning.h PruneField)
    num_patches: int
    num_tokens: int
    num_frames: int
    max_frame_tokens: int


def _grid(grid_thw, merge_sizes, device) -> _Grid:
    rows = grid_values(grid_thw, merge_sizes)
    table, patch, frame, token, max_n = [], 0, 0, 0, 0
    for t, h, w, m in rows:
        n = (h // m) * (w // m)
        table.append((t, h, w, m, patch, frame, token))
        patch += t * h * w
        frame += t
        token += t * n
        max_n = max(max_n, n)
    table_t = torch.tensor(table, dtype=torch.int64).reshape(len(rows), 7).to(device, non_blocking=True)
    return _Grid(rows, table_t, patch, token, frame, max_n)


def _check_pixels(pixel_values, grid_thw, merge_sizes) -> None:
    check_tensor("pixel_values", pixel_values, dtypes=FLOAT_DTYPES, ndim=2)
    check_grid(grid_thw, merge_sizes)
    _check_grid_device("pixel_values", pixel_values, grid_thw, merge_sizes)


def _check_keep(keep, grid_thw, merge_sizes) -> None:
    check_tensor("keep", keep, dtypes=(torch.bool,), ndim=1)
    check_grid(grid_thw, merge_sizes)
    _check_grid_device("keep", keep, grid_thw, merge_sizes)


# ---- frame_keep_mask ------------------------------------------------------------------------------


@torch.library.custom_op("vl3fast::frame_keep_mask", mutates_args=())
def _frame_keep_mask_op(
    pixel_values: torch.Tensor, grid_thw: torch.Tensor, merge_sizes: torch.Tensor,
    threshold: float, min_tokens: int, sum_lanes: int, with_diff: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_pixels(pixel_values, grid_thw, merge_sizes)
    threshold = _check_threshold(threshold)
    g = _grid(grid_thw, merge_sizes, pixel_values.device)
    min_tokens = _check_min_tokens(min_tokens, g.rows)
    if pixel_values.shape[0] != g.num_patches:
        raise ValueError(
            f"pixel_values: {pixel_values.shape[0]} rows, but grid_thw describes sum(t*h*w) = {g.num_patches} patches"
        )
    if sum_lanes not in (1, 8):
        raise ValueError(f"sum_lanes: expected 1 or 8, got {sum_lanes}")
    pixels = pixel_values.contiguous()  # a merged token must be one contiguous run of m*m rows
    keep = torch.empty(g.num_tokens, dtype=torch.bool, device=pixels.device)
    diff = torch.empty(g.num_tokens if with_diff else 0, dtype=torch.float32, device=pixels.device)
    core.frame_keep_mask(
        tensor_ref(pixels), tensor_ref(g.table), tensor_ref(keep), tensor_ref(diff), g.num_frames,
        g.max_frame_tokens, threshold, min_tokens, sum_lanes, with_diff, stream_of(pixels),
    )
    return keep, diff


@_frame_keep_mask_op.register_fake
def _(pixel_values, grid_thw, merge_sizes, threshold, min_tokens, sum_lanes, with_diff):
    _check_pixels(pixel_values, grid_thw, merge_sizes)
    m = torch.library.get_ctx().new_dynamic_size()  # M depends on the grid's values
    keep = pixel_values.new_empty((m,), dtype=torch.bool)
    diff = pixel_values.new_empty((m,) if with_diff else (0,), dtype=torch.float32)
    return keep, diff


def frame_keep_mask(pixel_values, grid_thw, merge_sizes, *, threshold: float = 0.1, min_tokens: int = 1) -> torch.Tensor:
    """VideoLLaMA3's Differential Frame Pruner keep mask, one entry per merged token.

    Args:
        pixel_values: ``[P, C]`` float32/bfloat16/float16 patch rows in VideoLLaMA3 order (spec A; C is
            3*14*14 for the released model).  Non-contiguous input is copied.
        grid_thw: int ``[N, 3]`` (t, h, w) per item in patches (tensor or nested list; CPU recommended).
        merge_sizes: int ``[N]`` merge size m per item.
        threshold: keep a token when ``255 * mean|P_t - P_{t-1}| > threshold`` (strict).
        min_tokens: a frame with fewer kept tokens keeps its first ``min_tokens`` (0 disables).

    Returns:
        keep_M: bool ``[M]``, M = sum t*(h/m)*(w/m).  Frame 0 of every video and single-frame items
        (images) are fully kept.  Identical to transformers on float32 input (see the module doc).
    """
    grid_thw, merge_sizes = _as_grid(grid_thw, merge_sizes)
    keep, _ = torch.ops.vl3fast.frame_keep_mask(
        pixel_values, grid_thw, merge_sizes, threshold, min_tokens, torch_sum_lanes(), False
    )
    return keep


def frame_token_diff(pixel_values, grid_thw, merge_sizes, *, threshold: float = 0.1) -> torch.Tensor:
    """float32 ``[M]`` scores d = 255 * mean|P_t - P_{t-1}| behind the mask (bit-identical to transformers'
    ``pixel_diff``); tokens kept by rule (frame 0, images) get ``threshold + 1`` as in transformers."""
    grid_thw, merge_sizes = _as_grid(grid_thw, merge_sizes)
    _, diff = torch.ops.vl3fast.frame_keep_mask(
        pixel_values, grid_thw, merge_sizes, threshold, 0, torch_sum_lanes(), True
    )
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
    keep: torch.Tensor, grid_thw: torch.Tensor, merge_sizes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_keep(keep, grid_thw, merge_sizes)
    dev = keep.device
    g = _grid(grid_thw, merge_sizes, dev)
    if keep.shape[0] != g.num_tokens:
        raise ValueError(f"keep: {keep.shape[0]} entries, but grid_thw describes {g.num_tokens} merged tokens")
    keep = keep.contiguous()
    token_index = torch.empty(g.num_tokens, dtype=torch.int64, device=dev)
    token_cu = torch.empty(g.num_frames + 1, dtype=torch.int32, device=dev)
    patch_index = torch.empty(g.num_patches, dtype=torch.int64, device=dev)
    patch_pos_hw = torch.empty((g.num_patches, 2), dtype=torch.int32, device=dev)
    patch_cu = torch.empty(g.num_frames + 1, dtype=torch.int32, device=dev)
    num_kept = torch.empty(2, dtype=torch.int64, device=dev)
    ws_bytes = core.keep_compaction_workspace_bytes(g.num_tokens, dev.index if dev.type == "cuda" else -1)
    workspace = torch.empty(ws_bytes, dtype=torch.uint8, device=dev)
    core.keep_compaction(
        tensor_ref(keep), tensor_ref(g.table), tensor_ref(token_index), tensor_ref(token_cu), tensor_ref(patch_index),
        tensor_ref(patch_pos_hw), tensor_ref(patch_cu), tensor_ref(num_kept), tensor_ref(workspace), stream_of(keep),
    )
    return token_index, token_cu, patch_index, patch_pos_hw, patch_cu, num_kept


@_keep_compaction_op.register_fake
def _(keep, grid_thw, merge_sizes):
    _check_keep(keep, grid_thw, merge_sizes)
    ctx = torch.library.get_ctx()
    frames1, patches = ctx.new_dynamic_size(min=1), ctx.new_dynamic_size()
    m = keep.shape[0]
    return (
        keep.new_empty((m,), dtype=torch.int64),
        keep.new_empty((frames1,), dtype=torch.int32),
        keep.new_empty((patches,), dtype=torch.int64),
        keep.new_empty((patches, 2), dtype=torch.int32),
        keep.new_empty((frames1,), dtype=torch.int32),
        keep.new_empty((2,), dtype=torch.int64),
    )


def keep_compaction(keep, grid_thw, merge_sizes) -> KeepIndices:
    """Gather indices, per-frame kept counts (as cu_seqlens) and kept-patch positions of a keep mask.

    Kernel launches only: no host sync (outputs have fixed sizes; ``num_kept`` stays on the device).
    Per-frame kept merged tokens: ``token_cu_seqlens.diff()``.
    """
    grid_thw, merge_sizes = _as_grid(grid_thw, merge_sizes)
    return KeepIndices(*torch.ops.vl3fast.keep_compaction(keep, grid_thw, merge_sizes))


class PrunedTokens(NamedTuple):
    features: torch.Tensor    # [M_kept, ...] the kept rows of the merged features
    token_index: torch.Tensor  # int64 [M_kept] their indices in the unpruned order
    cu_seqlens: torch.Tensor   # int32 [F + 1] kept merged tokens per frame, cumulative


def prune_tokens(features, keep, grid_thw, merge_sizes) -> PrunedTokens:
    """After the encoder (the released model's placement): ``features[keep]`` with indices and per-frame
    bounds.  ``features`` is ``[M, ...]`` in merged-token order.  One host sync, at the end (the kept
    count)."""
    grid_thw, merge_sizes = _as_grid(grid_thw, merge_sizes)
    if not isinstance(features, torch.Tensor) or features.dim() < 1 or features.shape[0] != keep.shape[0]:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"features: expected [M, ...] with M = {keep.shape[0]} rows (one per merged token), got {shape}")
    if features.device != keep.device:
        raise ValueError(f"features and keep must be on one device, got {features.device} and {keep.device}")
    idx = keep_compaction(keep, grid_thw, merge_sizes)
    n = int(idx.num_kept[0])  # the one host sync
    token_index = idx.token_index[:n]
    return PrunedTokens(features.index_select(0, token_index), token_index, idx.token_cu_seqlens)


class PrunedPatches(NamedTuple):
    pixel_values: torch.Tensor  # [P_kept, C] kept patch rows (m*m per kept merged token)
    pos_hw: torch.Tensor        # int32 [P_kept, 2] their original (row, col) RoPE positions
    cu_seqlens: torch.Tensor    # int32 [F + 1] one attention segment per frame
    max_seqlen: int             # longest segment
    patch_index: torch.Tensor   # int64 [P_kept] their rows in the unpruned pixel_values
    token_index: torch.Tensor   # int64 [M_kept] the kept merged tokens


def prune_patches(pixel_values, keep, grid_thw, merge_sizes) -> PrunedPatches:
    """Before the encoder (opt-in): drop the pixel rows of pruned merged tokens, keeping the true positions
    of the survivors and a per-frame ``cu_seqlens`` for varlen attention.  One host sync, at the end
    (kept counts and the longest segment, read together)."""
    grid_thw, merge_sizes = _as_grid(grid_thw, merge_sizes)
    check_tensor("pixel_values", pixel_values, dtypes=FLOAT_DTYPES, ndim=2)
    if pixel_values.device != keep.device:
        raise ValueError(f"pixel_values and keep must be on one device, got {pixel_values.device} and {keep.device}")
    idx = keep_compaction(keep, grid_thw, merge_sizes)
    if pixel_values.shape[0] != idx.patch_index.shape[0]:
        raise ValueError(
            f"pixel_values: {pixel_values.shape[0]} rows, but grid_thw describes {idx.patch_index.shape[0]} patches"
        )
    seg = idx.patch_cu_seqlens.diff()
    longest = seg.max() if seg.numel() else torch.zeros((), dtype=torch.int32, device=seg.device)
    n_tok, n_patch, max_seqlen = torch.cat([idx.num_kept, longest.reshape(1).to(torch.int64)]).tolist()  # one sync
    patch_index = idx.patch_index[:n_patch]
    return PrunedPatches(
        pixel_values.index_select(0, patch_index), idx.patch_pos_hw[:n_patch], idx.patch_cu_seqlens,
        int(max_seqlen), patch_index, idx.token_index[:n_tok],
    )


# ---- report ---------------------------------------------------------------------------------------


class PruningReport:
    """Merged tokens before and after pruning, per item and per frame.  ``print(report)`` shows a table.

    Attributes: ``items`` (list of dicts: index, kind, grid, merge, frames, tokens_before, tokens_after,
    per_frame_after), ``tokens_before``, ``tokens_after``.
    """

    def __init__(self, items: list):
        self.items = items
        self.tokens_before = sum(it["tokens_before"] for it in items)
        self.tokens_after = sum(it["tokens_after"] for it in items)

    @property
    def kept_fraction(self) -> float:
        return self.tokens_after / self.tokens_before if self.tokens_before else 1.0

    def __str__(self) -> str:
        head = f"{'item':>4}  {'kind':<5}  {'grid t,h,w':<13} {'m':>2}  {'before':>8}  {'after':>8}  {'kept':>6}  per-frame kept"
        lines = ["Frame pruning report (merged tokens)", head, "-" * len(head)]
        for it in self.items:
            t, h, w = it["grid"]
            per = it["per_frame_after"]
            shown = " ".join(str(c) for c in per[:12]) + (" ..." if len(per) > 12 else "")
            frac = it["tokens_after"] / it["tokens_before"] if it["tokens_before"] else 1.0
            lines.append(
                f"{it['index']:>4}  {it['kind']:<5}  {f'{t},{h},{w}':<13} {it['merge']:>2}  {it['tokens_before']:>8}"
                f"  {it['tokens_after']:>8}  {frac:>6.1%}  {shown}"
            )
        lines.append("-" * len(head))
        lines.append(
            f"{'all':>4}  {'':<5}  {'':<13} {'':>2}  {self.tokens_before:>8}  {self.tokens_after:>8}  {self.kept_fraction:>6.1%}"
        )
        return "\n".join(lines)

    __repr__ = __str__


def pruning_report(keep, grid_thw, merge_sizes) -> PruningReport:
    """Per-item and per-frame token counts of a keep mask (reads the mask on the host: a sync on CUDA)."""
    grid_thw, merge_sizes = _as_grid(grid_thw, merge_sizes)
    idx = keep_compaction(keep, grid_thw, merge_sizes)
    per_frame = idx.token_cu_seqlens.diff().tolist()
    items, frame = [], 0
    for i, (t, h, w, m) in enumerate(grid_values(grid_thw, merge_sizes)):
        n = (h // m) * (w // m)
        counts = per_frame[frame : frame + t]
        frame += t
        items.append({
            "index": i, "kind": "video" if t > 1 else "image", "grid": (t, h, w), "merge": m, "frames": t,
            "tokens_before": t * n, "tokens_after": sum(counts), "per_frame_after": counts,
        })
    return PruningReport(items)
