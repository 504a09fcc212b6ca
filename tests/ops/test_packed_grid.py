"""PackedGrid: sizes and offsets against a direct count, the item table the kernels read, validation once,
and the keep-mask counts that let the prune ops size their outputs without a sync."""
from __future__ import annotations

import pytest
import torch

from vl3fast import ops, reference
from vl3fast.ops import PackedGrid
from vl3fast.ops.packed_grid import ITEM_TABLE_COLUMNS


def _direct(grid_thw, merges):
    """Per-frame patches and merged tokens written out frame by frame."""
    patches, tokens = [], []
    for (t, h, w), m in zip(grid_thw, merges):
        for _ in range(t):
            patches.append(h * w)
            tokens.append((h // m) * (w // m))
    return patches, tokens


def test_sizes_offsets_and_table(grid):
    grid_thw, merges = grid
    g = PackedGrid.from_grid(grid_thw, merges)
    rows, ms = grid_thw.tolist(), merges.tolist()
    patches, tokens = _direct(rows, ms)
    assert g.num_items == len(g) == len(rows) and g.num_frames == len(patches)
    assert g.frame_patches == tuple(patches) and g.frame_tokens == tuple(tokens)
    assert g.num_patches == sum(patches) and g.num_tokens == sum(tokens)
    assert g.max_frame_patches == max(patches) and g.max_frame_tokens == max(tokens)
    assert g.tokens_per_item == tuple(t * (h // m) * (w // m) for (t, h, w), m in zip(rows, ms))
    assert g.patch_offsets[-1] == g.num_patches and g.token_offsets[-1] == g.num_tokens
    assert list(g.frame_item) == [i for i, (t, _, _) in enumerate(rows) for _ in range(t)]
    _, ref_cu = reference.rope2d_position_ids(grid_thw, merges)
    assert torch.equal(g.cu_seqlens(), ref_cu)
    table = g.item_table()
    assert table.dtype == torch.int64 and table.shape == (len(rows), len(ITEM_TABLE_COLUMNS))
    col = {name: table[:, i].tolist() for i, name in enumerate(ITEM_TABLE_COLUMNS)}
    assert [list(r) for r in zip(col["t"], col["h"], col["w"])] == rows and col["merge"] == ms
    assert col["patch_offset"] == list(g.patch_offsets[:-1]) and col["token_offset"] == list(g.token_offsets[:-1])
    assert col["frame_offset"] == list(g.frame_offsets[:-1])
    assert g.item_table() is table  # cached per device
    assert g == PackedGrid.from_items(rows, ms) and hash(g) == hash(PackedGrid.from_items(rows, ms))
    assert torch.equal(g.grid_tensors()[0], grid_thw) and torch.equal(g.grid_tensors()[1], merges)


def test_ops_accept_a_packed_grid(grid):
    """The same outputs from a PackedGrid as from the tensors (both go through the one item table)."""
    grid_thw, merges = grid
    g = PackedGrid.from_grid(grid_thw, merges)
    for a, b in zip(ops.rope2d_position_ids(g), ops.rope2d_position_ids(grid_thw, merges)):
        assert torch.equal(a, b)
    px = torch.rand(g.num_patches, 12)
    keep = ops.frame_keep_mask(px, g)
    assert torch.equal(keep, ops.frame_keep_mask(px, grid_thw, merges))
    for a, b in zip(ops.keep_compaction(keep, g), ops.keep_compaction(keep, grid_thw, merges)):
        assert torch.equal(a, b)


def test_keep_counts_size_the_prune_ops_without_a_sync():
    grid_thw, merges = [[4, 4, 6], [1, 2, 2], [3, 2, 4]], [2, 1, 2]
    g = PackedGrid.from_grid(grid_thw, merges)
    px = torch.rand(g.num_patches, 12)
    px[g.patch_offsets[2]:] = px[g.patch_offsets[2]:g.patch_offsets[2] + 8].repeat(3, 1)  # a static video
    keep = ops.frame_keep_mask(px, g)
    assert not bool(keep.all())
    kg = g.with_keep(keep)
    per_frame = [int(part.sum()) for part in keep.split(list(g.frame_tokens))]
    assert kg.kept_per_frame == tuple(per_frame) and kg.num_kept_tokens == int(keep.sum())
    assert kg.kept_per_item == tuple(sum(per_frame[g.frame_slice(i)]) for i in range(3))
    assert kg.num_kept_patches == sum(k * m * m for k, m in zip(per_frame, g.frame_merge))
    assert kg == PackedGrid.from_grid(grid_thw, merges, keep=keep) == PackedGrid.from_items(
        grid_thw, merges, keep=keep.tolist())
    with_counts, without = ops.prune_patches(px, keep, kg), ops.prune_patches(px, keep, g)
    for a, b in zip(with_counts, without):
        assert (a == b) if isinstance(a, int) else torch.equal(a, b)
    assert torch.equal(kg.kept_cu_seqlens(), without.cu_seqlens)
    assert without.max_seqlen == kg.max_kept_frame_patches
    feats = torch.randn(g.num_tokens, 5)
    assert torch.equal(ops.prune_tokens(feats, keep, kg).features, feats[keep])
    report = ops.pruning_report(keep, kg)
    assert [it["per_frame_after"] for it in report.items] == [per_frame[g.frame_slice(i)] for i in range(3)]
    assert str(report) == str(ops.pruning_report(keep, grid_thw, merges))


def test_empty_and_immutable():
    g = PackedGrid.from_grid(torch.zeros(0, 3, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))
    assert (g.num_items, g.num_patches, g.num_tokens, g.num_frames, g.max_frame_patches) == (0, 0, 0, 0, 0)
    assert g.item_table().shape == (0, 7) and g.cu_seqlens().tolist() == [0]
    with pytest.raises(AttributeError, match="immutable"):
        g.num_items = 3
    with pytest.raises(ValueError, match="kept_per_frame"):
        PackedGrid([(2, 2, 2, 1)], [1, 5])


@pytest.mark.parametrize("grid_thw, merges, keep, match", [
    ([[1, 4, 4]], [0], None, r"merge_sizes\[0\] = 0"),
    ([[1, 5, 4]], [2], None, "divisible by merge_sizes"),
    ([[1, 4, 4], [1, 2, 2]], [1], None, "one merge size per grid row"),
    ([[2, 4, 4]], [2], [True] * 7, "keep has 7 entries but the grid has 8 merged tokens"),
])
def test_validated_once_with_named_errors(grid_thw, merges, keep, match):
    for build in (lambda: PackedGrid.from_grid(torch.tensor(grid_thw), torch.tensor(merges),
                                               keep=None if keep is None else torch.tensor(keep)),
                  lambda: PackedGrid.from_items(grid_thw, merges, keep=keep)):
        with pytest.raises(ValueError, match=match):
            build()


def test_grid_or_tensors_not_both():
    g = PackedGrid.from_items([[1, 2, 2]], [1])
    with pytest.raises(ValueError, match="not both"):
        ops.rope2d_position_ids(g, [1])
    with pytest.raises(ValueError, match="not both"):
        ops.frame_keep_mask(torch.zeros(4, 3), g, [1])
