"""Helpers for training-run tests: tiny_cpu configs with test overrides, in-process runs, parameter snapshots."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from vl3fast.training.config import load_config
from vl3fast.training.trainer import train

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


def tiny_init(directory: Path, seed: int = 0) -> str:
    """A tiny random VideoLLaMA3 checkpoint folder (weights + config + tokenizer/processor files), written by
    the real save code, as a stage's ``model.init``."""
    from vl3fast.models.videollama3 import VideoLLaMA3Config, VideoLLaMA3ForCausalLM

    from tests.models.tiny_vl3 import randomize_
    from tests.processing._tokenizer import save_hf_processor

    torch.manual_seed(seed)
    model = VideoLLaMA3ForCausalLM(VideoLLaMA3Config.from_name("tiny"))
    randomize_(model, seed)
    model.save_pretrained(str(directory))
    save_hf_processor(directory)
    return str(directory)


def tiny_config(tmp: Path, name: str, *overrides: str, stage_config: str | None = None, zero: int | None = 2,
                init: str | None = None):
    """tiny_cpu.yaml (over a stage config when given) with the run in tmp/name; zero=None: plain torch."""
    config = CONFIGS / "tiny_cpu.yaml"
    if stage_config is not None:
        combined = tmp / f"{name}.yaml"
        combined.write_text(f"inherit: [{CONFIGS / stage_config}, {config}]\n")
        config = combined
    if init is None:
        init = str(tmp / "init") if (tmp / "init" / "config.json").is_file() else tiny_init(tmp / "init")
    over = [f"run.out={tmp / name}", f"model.init={init}", "run.progress=false"]
    over.append("deepspeed.enabled=false" if zero is None else f"deepspeed.config={ds_json(tmp, zero)}")
    return load_config(str(config), over + list(overrides))


def run_inprocess(cfg, *, steps: int, resume=None):
    from ._synthetic import SyntheticData, loss_fn  # TEMPORARY: until the packed loader lands

    return train(cfg, resume=resume, data=SyntheticData(0, 1, steps, gas=cfg.train.gradient_accumulation_steps),
                 loss_fn=loss_fn)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def losses(result) -> list[float]:
    return [r["loss"] for r in result.records]
