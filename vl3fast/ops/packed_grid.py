"""PackedGrid: the one host-side description of a packed batch of images and video frames.

A packed visual batch is items (images, videos) -> frames (an image is one frame) -> merged blocks ->
patches, in VideoLLaMA3's order (spec A; ``csrc/include/vl3fast/packed_grid.h``).  Everything that needs
to know where an item, a frame or a merged token lies reads it here: the ops (position ids, the keep mask,
its compaction), the vision encoder, the processor's placeholder expansion, the pruning report and the
training packer.  The grid is read and validated once, when the PackedGrid is built.

Shape letters: N items, F frames, P patches (pixel rows), M merged tokens (P = sum over items of
t*h*w, M = sum of t*(h/m)*(w/m)).

Example::

    grid = PackedGrid.from_grid([[1, 4, 6], [3, 4, 4]], [1, 2])  # an image and a 3-frame video
    grid.num_patches, grid.num_tokens, grid.num_frames      # 72, 36, 4
    grid.tokens_per_item                                    # (24, 12)
    grid.cu_seqlens()                                       # tensor([0, 24, 40, 56, 72], dtype=int32)
    grid = grid.with_keep(keep_M)                           # per-frame kept counts of a keep mask
    grid.kept_per_item                                      # merged tokens left per item

All attributes are Python ints and tuples, so code that holds a PackedGrid needs no host sync to size its
outputs; only `from_grid` / `with_keep` read tensors (one ``.tolist()``, a sync when they are on a GPU).
"""
from __future__ import annotations

from itertools import accumulate
from typing import NamedTuple, Sequence

import torch

from ._checks import check_grid, check_grid_rows

__all__ = ["GridItem", "PackedGrid", "as_packed_grid"]

# Columns of PackedGrid.item_table(), as csrc/include/vl3fast/packed_grid.h's GridField reads them.
ITEM_TABLE_COLUMNS = ("t", "h", "w", "merge", "patch_offset", "frame_offset", "token_offset")


class GridItem(NamedTuple):
    """One image (t == 1) or video: t frames of h x w patches, merged m x m into tokens."""

    t: int
    h: int
    w: int
    merge: int

    @property
    def patches_per_frame(self) -> int:
        return self.h * self.w

    @property
    def tokens_per_frame(self) -> int:
        return (self.h // self.merge) * (self.w // self.merge)

    @property
    def num_patches(self) -> int:
        return self.t * self.h * self.w

    @property
    def num_tokens(self) -> int:
        return self.t * self.tokens_per_frame

    @property
    def is_video(self) -> bool:
        return self.t > 1


def _offsets(counts: Sequence[int]) -> tuple[int, ...]:
    return (0, *accumulate(counts))


class PackedGrid:
    """Items, frames, per-item and per-frame patch and merged-token counts, offsets and ``cu_seqlens`` of a
    packed visual batch, plus the item table the C++ kernels read.  Immutable; build with `from_grid` (grid
    tensors or nested lists) or `from_items` (host values), optionally with a keep mask (`with_keep`).

    Per item (length N): ``items``, ``grid_thw``, ``merge_sizes``, ``patches_per_item``, ``tokens_per_item``,
    ``patch_offsets`` / ``token_offsets`` / ``frame_offsets`` (length N + 1, starting at 0).
    Per frame (length F): ``frame_item``, ``frame_merge``, ``frame_patches`` (h*w), ``frame_tokens``.
    Totals: ``num_items``, ``num_frames``, ``num_patches``, ``num_tokens``, ``max_frame_patches`` (the
    longest attention segment), ``max_frame_tokens``.
    With a keep mask: ``kept_per_frame``, ``kept_per_item``, ``num_kept_tokens``, ``num_kept_patches``,
    ``kept_frame_patches`` and ``max_kept_frame_patches``; all None without one.
    """

    __slots__ = (
        "items", "grid_thw", "merge_sizes", "patches_per_item", "tokens_per_item", "patch_offsets",
        "token_offsets", "frame_offsets", "frame_item", "frame_merge", "frame_patches", "frame_tokens",
        "num_items", "num_frames", "num_patches", "num_tokens", "max_frame_patches", "max_frame_tokens",
        "kept_per_frame", "kept_per_item", "num_kept_tokens", "num_kept_patches", "kept_frame_patches",
        "max_kept_frame_patches", "_tables",
    )

    def __init__(self, items: Sequence[GridItem], kept_per_frame: Sequence[int] | None = None):
        """Host values that are already valid (use `from_items` / `from_grid` to validate them)."""
        items = tuple(GridItem(*it) for it in items)
        set_ = object.__setattr__
        set_(self, "items", items)
        set_(self, "grid_thw", tuple((it.t, it.h, it.w) for it in items))
        set_(self, "merge_sizes", tuple(it.merge for it in items))
        set_(self, "patches_per_item", tuple(it.num_patches for it in items))
        set_(self, "tokens_per_item", tuple(it.num_tokens for it in items))
        set_(self, "patch_offsets", _offsets(self.patches_per_item))
        set_(self, "token_offsets", _offsets(self.tokens_per_item))
        set_(self, "frame_offsets", _offsets(it.t for it in items))
        set_(self, "frame_item", tuple(i for i, it in enumerate(items) for _ in range(it.t)))
        set_(self, "frame_merge", tuple(items[i].merge for i in self.frame_item))
        set_(self, "frame_patches", tuple(items[i].patches_per_frame for i in self.frame_item))
        set_(self, "frame_tokens", tuple(items[i].tokens_per_frame for i in self.frame_item))
        set_(self, "num_items", len(items))
        set_(self, "num_frames", self.frame_offsets[-1])
        set_(self, "num_patches", self.patch_offsets[-1])
        set_(self, "num_tokens", self.token_offsets[-1])
        set_(self, "max_frame_patches", max(self.frame_patches, default=0))
        set_(self, "max_frame_tokens", max(self.frame_tokens, default=0))
        set_(self, "_tables", {})
        if kept_per_frame is None:
            for name in ("kept_per_frame", "kept_per_item", "num_kept_tokens", "num_kept_patches",
                         "kept_frame_patches", "max_kept_frame_patches"):
                set_(self, name, None)
            return
        kept = tuple(int(k) for k in kept_per_frame)
        if len(kept) != self.num_frames or any(not 0 <= k <= n for k, n in zip(kept, self.frame_tokens)):
            raise ValueError(f"kept_per_frame: expected {self.num_frames} counts, each within its frame's merged "
                             f"tokens {list(self.frame_tokens)}, got {list(kept)}")
        set_(self, "kept_per_frame", kept)
        set_(self, "kept_per_item", tuple(sum(kept[self.frame_slice(i)]) for i in range(self.num_items)))
        set_(self, "kept_frame_patches", tuple(k * m * m for k, m in zip(kept, self.frame_merge)))
        set_(self, "num_kept_tokens", sum(kept))
        set_(self, "num_kept_patches", sum(self.kept_frame_patches))
        set_(self, "max_kept_frame_patches", max(self.kept_frame_patches, default=0))

    def __setattr__(self, name, value):
        raise AttributeError("PackedGrid is immutable")

    # ---- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_items(cls, grid_thw: Sequence[Sequence[int]], merge_sizes: Sequence[int], *,
                   keep: Sequence[bool] | None = None) -> "PackedGrid":
        """From host values: ``grid_thw`` ``[(t, h, w)]`` and ``merge_sizes`` ``[m]`` per item (validated), and
        optionally a host keep mask (one bool per merged token)."""
        grid_thw, merge_sizes = [tuple(int(v) for v in g) for g in grid_thw], [int(m) for m in merge_sizes]
        if any(len(g) != 3 for g in grid_thw):
            raise ValueError(f"grid_thw: expected shape [N, 3] (t, h, w per item), got {grid_thw}")
        if len(merge_sizes) != len(grid_thw):
            raise ValueError(f"merge_sizes: expected one merge size per grid row ({len(grid_thw)}), "
                             f"got {len(merge_sizes)}")
        rows = [(*g, m) for g, m in zip(grid_thw, merge_sizes)]
        check_grid_rows(rows)
        grid = cls([GridItem(*r) for r in rows])
        return grid if keep is None else grid._kept_from_host(list(keep), "keep")

    @classmethod
    def from_grid(cls, grid_thw, merge_sizes, *, keep: torch.Tensor | None = None,
                  keep_name: str = "keep") -> "PackedGrid":
        """From ``grid_thw`` int ``[N, 3]`` and ``merge_sizes`` int ``[N]`` (tensors or nested lists), validated;
        with ``keep`` (bool ``[M]``) also its per-frame kept counts.  One ``.tolist()`` reads grid, merge sizes
        and mask together: the one host sync of a visual forward when they are on a GPU."""
        grid_thw, merge_sizes = as_grid_tensors(grid_thw, merge_sizes)
        check_grid(grid_thw, merge_sizes)
        n = grid_thw.shape[0]
        parts = [grid_thw.reshape(-1).long(), merge_sizes.reshape(-1).long().to(grid_thw.device)]
        if keep is not None:
            parts.append(keep.reshape(-1).long().to(grid_thw.device))
        host = torch.cat(parts).tolist() if n or keep is not None else []
        rows = [(*host[3 * i:3 * i + 3], host[3 * n + i]) for i in range(n)]
        check_grid_rows(rows)
        grid = cls([GridItem(*r) for r in rows])
        return grid if keep is None else grid._kept_from_host(host[4 * n:], keep_name)

    def with_keep(self, keep, *, keep_name: str = "keep") -> "PackedGrid":
        """This grid with the per-frame kept counts of ``keep`` (bool ``[M]`` tensor, or host bools)."""
        host = keep.reshape(-1).tolist() if isinstance(keep, torch.Tensor) else list(keep)
        return self._kept_from_host(host, keep_name)

    def _kept_from_host(self, keep: list, keep_name: str) -> "PackedGrid":
        if len(keep) != self.num_tokens:
            raise ValueError(f"{keep_name} has {len(keep)} entries but the grid has {self.num_tokens} merged tokens")
        ends = _offsets(self.frame_tokens)
        return PackedGrid(self.items, [sum(map(bool, keep[a:b])) for a, b in zip(ends, ends[1:])])

    # ---- tensors ------------------------------------------------------------------------------------------------
    def item_table(self, device=None) -> torch.Tensor:
        """int64 ``[N, 7]`` (`ITEM_TABLE_COLUMNS`): the one table the C++ position and pruning kernels read.
        Built on the host and copied to ``device`` without a sync; cached per device."""
        device = torch.device("cpu" if device is None else device)
        table = self._tables.get(device)
        if table is None:
            rows = [(*it, p, f, k) for it, p, f, k in
                    zip(self.items, self.patch_offsets, self.frame_offsets, self.token_offsets)]
            table = torch.tensor(rows, dtype=torch.int64).reshape(self.num_items, len(ITEM_TABLE_COLUMNS))
            table = table.to(device, non_blocking=True)
            self._tables[device] = table
        return table

    def cu_seqlens(self, device=None) -> torch.Tensor:
        """int32 ``[F + 1]``: one attention segment per frame, in patches (what the encoder attends over)."""
        return torch.tensor(_offsets(self.frame_patches), dtype=torch.int32).to(device or "cpu", non_blocking=True)

    def kept_cu_seqlens(self, device=None) -> torch.Tensor:
        """int32 ``[F + 1]``: the segments of the kept patches (needs a keep mask, `with_keep`)."""
        if self.kept_frame_patches is None:
            raise ValueError("kept_cu_seqlens needs a keep mask: build the grid with keep= or call with_keep()")
        return torch.tensor(_offsets(self.kept_frame_patches), dtype=torch.int32).to(device or "cpu",
                                                                                      non_blocking=True)

    def grid_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(grid_thw int64 ``[N, 3]``, merge_sizes int64 ``[N]``) on the CPU, as the processors return them."""
        return (torch.tensor(self.grid_thw, dtype=torch.int64).reshape(self.num_items, 3),
                torch.tensor(self.merge_sizes, dtype=torch.int64))

    # ---- misc ---------------------------------------------------------------------------------------------------
    def frame_slice(self, item: int) -> slice:
        """The frames of item ``item`` in the per-frame tuples (``frame_tokens[grid.frame_slice(i)]``)."""
        return slice(self.frame_offsets[item], self.frame_offsets[item + 1])

    def __len__(self) -> int:
        return self.num_items

    def __eq__(self, other) -> bool:
        return (isinstance(other, PackedGrid) and self.items == other.items
                and self.kept_per_frame == other.kept_per_frame)

    def __hash__(self) -> int:
        return hash((self.items, self.kept_per_frame))

    def __repr__(self) -> str:
        kept = "" if self.kept_per_frame is None else f", kept_tokens={self.num_kept_tokens}"
        return (f"PackedGrid(items={[tuple(it) for it in self.items]}, patches={self.num_patches}, "
                f"tokens={self.num_tokens}, frames={self.num_frames}{kept})")


def as_grid_tensors(grid_thw, merge_sizes) -> tuple[torch.Tensor, torch.Tensor]:
    """Nested lists become int64 tensors (``[N, 3]`` and ``[N]``); tensors pass through unchanged."""
    if not isinstance(grid_thw, torch.Tensor):
        grid_thw = torch.as_tensor(grid_thw, dtype=torch.int64).reshape(-1, 3)
    elif grid_thw.dim() == 2 and grid_thw.shape[0] == 0:
        grid_thw = grid_thw.reshape(0, 3)
    if not isinstance(merge_sizes, torch.Tensor):
        merge_sizes = torch.as_tensor(merge_sizes, dtype=torch.int64).reshape(-1)
    return grid_thw, merge_sizes


def as_packed_grid(grid_thw, merge_sizes=None) -> PackedGrid:
    """``grid_thw`` itself when it is a PackedGrid (then ``merge_sizes`` must be None), else
    `PackedGrid.from_grid`."""
    if isinstance(grid_thw, PackedGrid):
        if merge_sizes is not None:
            raise ValueError("merge_sizes: give either a PackedGrid or (grid_thw, merge_sizes), not both")
        return grid_thw
    if merge_sizes is None:
        raise ValueError("merge_sizes: required with grid_thw (or pass a PackedGrid)")
    return PackedGrid.from_grid(grid_thw, merge_sizes)
