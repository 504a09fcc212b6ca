"""PruningReport: merged tokens before and after frame pruning, per item and per frame (``vl3fast bench``)."""
from __future__ import annotations

from .packed_grid import PackedGrid
from .pruning import keep_compaction, packed_grid_for

__all__ = ["PruningReport", "pruning_report"]


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


def pruning_report(keep, grid_thw, merge_sizes=None) -> PruningReport:
    """Per-item and per-frame token counts of a keep mask (reads the mask's counts on the host: a sync on CUDA,
    none with a PackedGrid built with this mask, ``PackedGrid.with_keep``)."""
    grid = packed_grid_for("keep", keep, grid_thw, merge_sizes)
    if grid.kept_per_frame is None:
        grid = PackedGrid(grid.items, keep_compaction(keep, grid).token_cu_seqlens.diff().tolist())
    items = []
    for i, it in enumerate(grid.items):
        counts = list(grid.kept_per_frame[grid.frame_slice(i)])
        items.append({
            "index": i, "kind": "video" if it.is_video else "image", "grid": (it.t, it.h, it.w), "merge": it.merge,
            "frames": it.t, "tokens_before": it.num_tokens, "tokens_after": grid.kept_per_item[i],
            "per_frame_after": counts,
        })
    return PruningReport(items)
