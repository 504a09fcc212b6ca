"""`run.tensorboard: true` writes the same scalars as metrics.jsonl, per step, into RUN/tensorboard (read back with
TensorBoard's own event reader)."""
from __future__ import annotations

import json

import pytest

from ._runs import tiny_config

pytest.importorskip("tensorboard")


def test_tensorboard_scalars_equal_the_metrics_lines(tmp_path, checkpoint_dir, data_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vl3fast.training.trainer import train

    cfg = tiny_config(tmp_path, "run", checkpoint_dir, data_dir, "run.tensorboard=true", "train.max_steps=2",
                      "run.save_every=0", "run.save_at_end=false", zero=None)
    train(cfg)
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if s.strip()]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/tokens_per_s", "train/supervised_tokens_per_s", "train/vision_patches_per_s",
            "train/peak_memory_bytes"} <= tags, tags
    assert {f"lr/{group}" for group in lines[0]["lr"]} <= tags, tags
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [r["step"] for r in lines] == [1, 2]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in lines], rel=1e-6)  # stored as float32
    for group, lr in lines[-1]["lr"].items():
        assert events.Scalars(f"lr/{group}")[-1].value == pytest.approx(lr, rel=1e-6)
