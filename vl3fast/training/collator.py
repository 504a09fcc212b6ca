"""`PackedBatch`: one rank's micro-batch, every sample of it concatenated into one row; `collate` builds it.

LLM side (one row of T tokens, samples back to back):
    input_ids      int64 [1, T]
    labels         int64 [1, T]     unshifted; -100 outside assistant turns and at each sample's first token
    position_ids   int64 [1, T]     0.. restarting at every sample (transformers' packed-sequence path on CPU)
    cu_seqlens     int32 [S + 1]    sample boundaries (varlen attention on GPU)
    loss_rows      int64 [n]        positions t whose next token is a target (t + 1 in the same sample)
    loss_targets   int64 [n]        those targets: lm_head runs on these n rows only
Vision side (every image and video frame of the batch, in placeholder order):
    pixel_values   float32 [P, 588]   grid_thw int64 [N, 3]   merge_sizes int64 [N]   is_video bool [N]
    keep_mask      bool [M]           DiffFP mask over all merged tokens (images all True), from the worker
    visual_rows    int64 [K]          positions of the K kept visual placeholders in the row, in feature order
    dummy          bool               True when the batch has no media: one zero [1, m, m] image is encoded and
                                      contributes x0 (ZeRO-3 ranks stay in lockstep)
Host-side sizes (python ints/lists, so no step needs a host sync): `meta` (`BatchMeta`); the vision sizes are
those of the batch's `vl3fast.ops.PackedGrid` (validated here, in the worker), which the model rebuilds from
`meta` without reading a tensor.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Sequence

import torch

from ..ops import PackedGrid
from .encode import IGNORE_INDEX, EncodedSample

PATCH_DIM = 588


class NoSupervisedTokensError(ValueError):
    """A batch (or an accumulation window) in which no token is supervised."""


@dataclass(frozen=True)
class BatchMeta:
    sample_ids: tuple[str, ...]
    sample_indices: tuple[int, ...]
    seq_lens: tuple[int, ...]           # LLM tokens per sample
    num_tokens: int
    num_supervised: int
    max_seqlen: int
    grid_thw: tuple[tuple[int, int, int], ...]
    merge_sizes: tuple[int, ...]
    num_patches: int
    num_visual_tokens: int              # kept merged tokens = placeholders in input_ids
    keep_counts: tuple[int, ...]        # kept merged tokens per item
    keep_list: tuple[bool, ...]         # keep_mask on the host
    padding: bool = False               # an empty micro-batch (plan filler): zero loss, dummy inputs


@dataclass
class PackedBatch:
    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    loss_rows: torch.Tensor
    loss_targets: torch.Tensor
    pixel_values: torch.Tensor
    grid_thw: torch.Tensor
    merge_sizes: torch.Tensor
    is_video: torch.Tensor
    keep_mask: torch.Tensor
    visual_rows: torch.Tensor
    dummy: bool
    meta: BatchMeta = field(repr=False)

    @property
    def num_supervised(self) -> int:
        return self.meta.num_supervised

    def to(self, device, non_blocking: bool = False, dtype: torch.dtype | None = None) -> "PackedBatch":
        """Tensors moved to `device` (pixel_values also cast to `dtype` when given); host sizes unchanged."""
        moved = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v.to(device, non_blocking=non_blocking)
                if dtype is not None and f.name == "pixel_values":
                    v = v.to(dtype)
            moved[f.name] = v
        return replace(self, **moved)

    def pin_memory(self) -> "PackedBatch":
        """DataLoader(pin_memory=True) calls this."""
        return replace(self, **{f.name: getattr(self, f.name).pin_memory() for f in fields(self)
                                if isinstance(getattr(self, f.name), torch.Tensor)})


def collate(samples: Sequence[EncodedSample], *, dummy_merge_size: int = 1, pad_token_id: int = 0) -> PackedBatch:
    """Packs encoded samples into one PackedBatch.  An empty list gives a padding batch (one pad token, no
    target, a dummy image) for a rank the pack plan left without samples.  Raises NoSupervisedTokensError
    when samples are given but none of their tokens is supervised."""
    padding = not samples
    ids, labels, pos, rows, targets, seq_lens, visual = [], [], [], [], [], [], []
    offset = 0
    for s in samples:
        n = s.num_tokens
        visual.append(s.visual_pos + offset)
        lab = s.labels.clone()
        lab[0] = IGNORE_INDEX  # a sample's first token is never predicted from the previous sample
        ids.append(s.input_ids)
        labels.append(lab)
        pos.append(torch.arange(n))
        sup = (lab[1:] != IGNORE_INDEX).nonzero().squeeze(1)
        rows.append(sup + offset)
        targets.append(lab[1:][sup])
        seq_lens.append(n)
        offset += n
    if padding:
        ids, labels, pos, seq_lens = [torch.tensor([pad_token_id])], [torch.tensor([IGNORE_INDEX])], [torch.zeros(1)], [1]
    input_ids = torch.cat(ids).long()[None]
    labels_1T = torch.cat(labels).long()[None]
    loss_rows = torch.cat(rows).long() if rows else torch.zeros(0, dtype=torch.long)
    loss_targets = torch.cat(targets).long() if targets else torch.zeros(0, dtype=torch.long)
    if not padding and loss_rows.numel() == 0:
        raise NoSupervisedTokensError(f"no token is supervised in the batch of samples "
                                      f"{[s.sample_id for s in samples]}; every sample needs an assistant turn")
    cu = torch.tensor([0] + seq_lens).cumsum(0).to(torch.int32)

    items = [s for s in samples if s.grid_thw.shape[0] > 0]
    dummy = not items
    if dummy:
        m = dummy_merge_size
        pixel_values = torch.zeros(m * m, PATCH_DIM)
        grid_thw, merge_sizes = torch.tensor([[1, m, m]]), torch.tensor([m])
        is_video, keep_mask = torch.tensor([False]), torch.ones(1, dtype=torch.bool)
    else:
        pixel_values = torch.cat([s.pixel_values for s in items])
        grid_thw = torch.cat([s.grid_thw for s in items]).long()
        merge_sizes = torch.cat([s.merge_sizes for s in items]).long()
        is_video = torch.cat([s.is_video for s in items])
        keep_mask = torch.cat([s.keep_mask for s in items])
    keep_list = tuple(bool(k) for k in keep_mask.tolist())
    grid = PackedGrid.from_items(grid_thw.tolist(), merge_sizes.tolist(), keep=keep_list)  # validated once, here
    meta = BatchMeta(
        sample_ids=tuple(s.sample_id for s in samples), sample_indices=tuple(s.index for s in samples),
        seq_lens=tuple(seq_lens), num_tokens=int(input_ids.shape[1]), num_supervised=int(loss_rows.numel()),
        max_seqlen=max(seq_lens), grid_thw=grid.grid_thw, merge_sizes=grid.merge_sizes, num_patches=grid.num_patches,
        num_visual_tokens=0 if dummy else grid.num_kept_tokens, keep_counts=grid.kept_per_item, keep_list=keep_list,
        padding=padding)
    visual_rows = torch.cat(visual).long() if visual else torch.zeros(0, dtype=torch.long)
    return PackedBatch(input_ids, labels_1T, torch.cat(pos).long()[None], cu, loss_rows, loss_targets,
                       pixel_values, grid_thw, merge_sizes, is_video, keep_mask, visual_rows, dummy, meta)
