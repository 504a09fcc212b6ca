"""Helpers for training-run tests: tiny_cpu configs on the test data (fixtures `checkpoint_dir`, `data_dir`
of conftest.py), DeepSpeed JSONs at any ZeRO stage."""
from __future__ import annotations

import json
from pathlib import Path

from vl3fast.training.config import load_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "training" / "configs"
DS_DIR = REPO / "training" / "ds"


def ds_json(tmp: Path, stage: int, **extra) -> str:
    """training/ds/zero{stage}.json (zero0: zero1's file at stage 0), with extra top-level keys."""
    base = json.loads((DS_DIR / f"zero{max(stage, 1)}.json").read_text())
    base["zero_optimization"]["stage"] = stage
    base.update(extra)
    path = tmp / f"zero{stage}.json"
    path.write_text(json.dumps(base))
    return str(path)


def data_overrides(init, data_dir: Path) -> list[str]:
    return [f"model.init={init}", f"data.annotations=[{data_dir / 'train.jsonl'}]",
            f"data.data_folder={data_dir / 'media'}"]


def tiny_config(tmp: Path, name: str, init, data_dir: Path, *overrides: str, stage_config: str | None = None,
                zero: int | None = 2):
    """tiny_cpu.yaml (over a stage config when given) with the run in tmp/name; zero=None: plain torch."""
    config = CONFIGS / "tiny_cpu.yaml"
    if stage_config is not None:
        combined = tmp / f"{name}.yaml"
        combined.write_text(f"inherit: [{CONFIGS / stage_config}, {config}]\n")
        config = combined
    over = [*data_overrides(init, data_dir), f"run.out={tmp / name}", "run.progress=false"]
    over.append("deepspeed.enabled=false" if zero is None else f"deepspeed.config={ds_json(tmp, zero)}")
    return load_config(str(config), over + list(overrides))


def losses(result) -> list[float]:
    return [r["loss"] for r in result.records]
