"""PackedLoader: one PackedBatch per rank per step, every sample once per epoch, exact resume, bad input
refused before any step (or skipped and counted), and the loss normalisation helpers."""
from __future__ import annotations

import pytest
import torch

from vl3fast.training import (DataError, NoSupervisedTokensError, PackedLoader, global_supervised_count,
                              load_annotations, normalised_loss)

from ._fixtures import RECORDS, write_annotations


def loader(samples, processor, data_dir, **kw):
    kw = {"token_budget": 300, "seed": 1, "progress": False, **kw}
    return PackedLoader(samples, processor, data_dir / "media", **kw)


def test_ranks_cover_the_epoch_once(samples, processor, data_dir):
    seen = []
    for rank in range(2):
        ld = loader(samples, processor, data_dir, rank=rank, world_size=2)
        batches = list(ld)
        assert len(batches) == len(ld) and ld.epoch == 1 and ld.step == 0
        for b in batches:
            assert b.meta.num_tokens <= 300
            seen += list(b.meta.sample_ids)
    assert sorted(seen) == sorted(r["id"] for r in RECORDS)


def test_resume_gives_the_remaining_batches(samples, processor, data_dir):
    full = [b.meta.sample_ids for b in loader(samples, processor, data_dir, token_budget=200)]
    ld = loader(samples, processor, data_dir, token_budget=200)
    it = iter(ld)
    first = [next(it).meta.sample_ids for _ in range(2)]
    state = ld.state_dict()
    assert state["step"] == 2
    resumed = loader(samples, processor, data_dir, token_budget=200)
    resumed.load_state_dict(state)
    assert first + [b.meta.sample_ids for b in resumed] == full
    with pytest.raises(ValueError, match="seed=1 but this loader has seed=2"):
        loader(samples, processor, data_dir, token_budget=200, seed=2).load_state_dict(state)


def test_bad_samples_are_refused_before_any_step(processor, data_dir, tmp_path):
    records = RECORDS + [{"id": "gone", "image": "missing.png", "conversations": [
        {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}]}]
    samples, _ = load_annotations(write_annotations(tmp_path / "a.jsonl", records))
    with pytest.raises(DataError) as err:
        loader(samples, processor, data_dir, token_budget=150)
    text = str(err.value)
    assert "sample 'gone'" in text and "missing.png" in text
    assert "sample 'multi' has 156 tokens" in text  # over the 150-token budget
    ld = loader(samples, processor, data_dir, token_budget=150, on_error="skip")
    assert dict(ld.skipped) == {"missing media": ["gone"], "over budget": ["multi"]}
    report = ld.report()
    assert f"{len(records) - 2} of {len(records)} samples used, 2 skipped" in report
    assert "missing media: 1" in report and "over budget: 1" in report


def test_workers_build_the_same_batches(samples, processor, data_dir):
    a = list(loader(samples, processor, data_dir))
    b = list(loader(samples, processor, data_dir, num_workers=2))
    assert [x.meta for x in a] == [y.meta for y in b]
    assert all(torch.equal(x.pixel_values, y.pixel_values) for x, y in zip(a, b))


def test_normalisation():
    assert global_supervised_count([3, 4]) == 7
    with pytest.raises(NoSupervisedTokensError):
        global_supervised_count([0, 0])
    loss = normalised_loss(torch.tensor(14.0), 7, world_size=2, grad_accum=3)
    assert loss.item() == pytest.approx(14.0 * 6 / 7)


def test_truncation_that_leaves_nothing_is_refused_before_any_step(samples, processor, data_dir):
    with pytest.raises(DataError, match=r"sample 'text': truncation to max_length=30 leaves no supervised token"):
        loader(samples, processor, data_dir, max_length=30)
    ld = loader(samples, processor, data_dir, max_length=30, on_error="skip")
    assert set(ld.skipped) == {"nothing left after truncation"} and "text" in ld.skipped["nothing left after truncation"]
