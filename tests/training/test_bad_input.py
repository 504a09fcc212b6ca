"""`vl3fast train` with bad input: an error naming the file, key or rank, exit 2, before the first step (no
process group, no run folder written)."""
from __future__ import annotations

import json

import pytest

from vl3fast.cli import main

from ._runs import CONFIGS, data_overrides, ds_json


@pytest.fixture
def train_cli(tmp_path, checkpoint_dir, data_dir, capsys):
    """Runs `vl3fast train --config tiny_cpu.yaml` with the test data and extra --set overrides; returns
    (exit code, stderr)."""

    def run(*overrides: str, config=CONFIGS / "tiny_cpu.yaml"):
        over = [*data_overrides(checkpoint_dir, data_dir), f"run.out={tmp_path / 'run'}", "run.progress=false",
                "train.max_steps=1", *overrides]
        rc = main(["train", "--config", str(config), *[a for o in over for a in ("--set", o)]])
        err = capsys.readouterr().err
        assert not (tmp_path / "run" / "metrics.jsonl").exists(), "a step ran"
        return rc, err

    return run


def test_unknown_key_and_wrong_type(train_cli, tmp_path):
    rc, err = train_cli("train.warmup=0.1")
    assert rc == 2 and "unknown key 'train.warmup'" in err and "--set train.warmup=0.1" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"inherit: {CONFIGS / 'tiny_cpu.yaml'}\nrun:\n  save_every: often\n")
    rc, err = train_cli(config=bad)
    assert rc == 2 and "bad.yaml: run.save_every must be int, got 'often'" in err


def test_missing_init_checkpoint_is_named(train_cli, tmp_path):
    missing = tmp_path / "stage2_export"
    rc, err = train_cli(f"model.init={missing}")
    assert rc == 2 and str(missing) in err and "does not exist" in err and "previous stage's export" in err


def test_annotation_that_fails_the_validator(train_cli, tmp_path, data_dir):
    ann = tmp_path / "bad.jsonl"
    ann.write_text(json.dumps({"id": "x", "image": ["a.png", "b.png"],
                               "conversations": [{"from": "human", "value": "<image>\nOne tag, two images"},
                                                 {"from": "gpt", "value": "No."}]}) + "\n")
    rc, err = train_cli(f"data.annotations=[{ann}]")
    assert rc == 2 and f"{ann}:1:" in err and "rank 0" in err


def test_missing_media_is_named(train_cli, tmp_path):
    ann = tmp_path / "gone.jsonl"
    ann.write_text(json.dumps({"id": "g", "image": "nope.png",
                               "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                 {"from": "gpt", "value": "It is 12."}]}) + "\n")
    rc, err = train_cli(f"data.annotations=[{ann}]")
    assert rc == 2 and "nope.png" in err and f"{ann}:1" in err


def test_deepspeed_config_that_disagrees(train_cli, tmp_path):
    ds = ds_json(tmp_path, 2, gradient_accumulation_steps=8)
    rc, err = train_cli(f"deepspeed.config={ds}")
    assert rc == 2 and "zero2.json: gradient_accumulation_steps is 8" in err and "tiny_cpu.yaml" in err
    ds = ds_json(tmp_path, 2, bf16={"enabled": True})
    rc, err = train_cli(f"deepspeed.config={ds}")
    assert rc == 2 and "bf16.enabled is True but the run trains in float32" in err


def test_existing_run_folder_needs_resume(train_cli, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "resolved.yaml").write_text("{}\n")
    rc, err = train_cli()
    assert rc == 2 and "already holds a run" in err and "--resume auto" in err
