"""The PackedBatch contract: restarting positions, boundaries, shifted targets, the dummy item, host sizes."""
from __future__ import annotations

import pytest
import torch

from vl3fast.training import IGNORE_INDEX, NoSupervisedTokensError, collate


def test_packed_batch_contract(encoded):
    encs = [encoded[k] for k in ("img", "text", "vid", "mixed")]
    b = collate(encs)
    lens = [e.num_tokens for e in encs]
    assert b.input_ids.shape == (1, sum(lens)) and b.meta.seq_lens == tuple(lens)
    assert b.cu_seqlens.dtype == torch.int32 and b.cu_seqlens.tolist() == [0, *torch.tensor(lens).cumsum(0).tolist()]
    assert b.position_ids[0].tolist() == [p for n in lens for p in range(n)]
    assert b.meta.max_seqlen == max(lens) and b.meta.num_tokens == sum(lens)
    # targets: position t predicts token t + 1 of the same sample; never across a boundary
    labels = b.labels[0]
    assert all(labels[int(s)] == IGNORE_INDEX for s in b.cu_seqlens[:-1])
    want = [t for t in range(sum(lens) - 1) if labels[t + 1] != IGNORE_INDEX]
    assert b.loss_rows.tolist() == want
    assert b.loss_targets.tolist() == labels[1:][labels[1:] != IGNORE_INDEX].tolist()
    assert b.num_supervised == sum(e.num_supervised for e in encs) == len(want)
    # vision: every item in placeholder order, the worker's keep mask, host copies of the sizes
    assert b.grid_thw.tolist() == [g for e in encs for g in e.grid_thw.tolist()]
    assert torch.equal(b.pixel_values, torch.cat([e.pixel_values for e in encs]))
    assert torch.equal(b.keep_mask, torch.cat([e.keep_mask for e in encs]))
    assert b.meta.grid_thw == tuple(map(tuple, b.grid_thw.tolist())) and b.meta.num_patches == b.pixel_values.shape[0]
    assert b.meta.num_visual_tokens == int(b.keep_mask.sum()) == b.visual_rows.numel()
    assert not b.dummy and b.meta.sample_ids == ("img", "text", "vid", "mixed")
    ids = b.input_ids[0]
    assert bool(((ids[b.visual_rows] == 5) | (ids[b.visual_rows] == 6)).all())


def test_text_only_batch_carries_a_dummy_item(encoded):
    b = collate([encoded["text"], encoded["text2"]], dummy_merge_size=2)
    assert b.dummy and b.grid_thw.tolist() == [[1, 2, 2]] and b.pixel_values.shape == (4, 588)
    assert bool((b.pixel_values == 0).all()) and b.visual_rows.numel() == 0 and b.meta.num_visual_tokens == 0


def test_empty_plan_entry_is_a_padding_batch():
    b = collate([])
    assert b.meta.padding and b.dummy and b.num_supervised == 0 and b.input_ids.shape == (1, 1)


def test_batch_without_supervised_tokens_is_refused(encoded):
    e = encoded["text"]
    blank = type(e)(**{**e.__dict__, "labels": torch.full_like(e.labels, IGNORE_INDEX)})
    with pytest.raises(NoSupervisedTokensError, match=r"no token is supervised in the batch of samples \['text'\]"):
        collate([blank])


def test_to_moves_tensors_and_keeps_host_sizes(encoded):
    b = collate([encoded["img"]])
    moved = b.to("cpu", dtype=torch.bfloat16)
    assert moved.pixel_values.dtype == torch.bfloat16 and moved.meta is b.meta
    assert moved.input_ids.dtype == torch.long
