"""Training configuration: inheritance, overrides, schema errors that name key and file, the shipped recipes."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from vl3fast.training.config import ConfigError, load_config, write_resolved
from vl3fast.training.engine import lr_multiplier, resolve_ds_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "training" / "configs"
DS = REPO / "training" / "ds"

# spec videollama3.md §G: trained modules and learning rates per stage (None = frozen)
STAGE_LR = {
    "stage1": {"vision": 1e-5, "projector": 1e-3, "llm": None},
    "stage2": {"vision": 2e-6, "projector": 1e-5, "llm": 1e-5},
    "stage3": {"vision": 2e-6, "projector": 1e-5, "llm": 1e-5},
    "stage4": {"vision": 2e-6, "projector": 1e-5, "llm": 1e-5},
}


@pytest.mark.parametrize("stage", sorted(STAGE_LR))
def test_stage_configs_follow_the_recipe(stage):
    cfg = load_config(str(CONFIGS / f"{stage}.yaml"))
    assert cfg.train.lr == STAGE_LR[stage]
    assert cfg.train.stage == stage
    assert cfg.data.pruning == (stage in ("stage3", "stage4"))
    assert cfg.data.image_merge_size == (2 if stage == "stage4" else 1)
    assert cfg.data.video_merge_size == 2
    assert (cfg.train.weight_decay, cfg.train.warmup_ratio, cfg.train.epochs) == (0.0, 0.03, 1)
    assert cfg.model.preset == "2b" and cfg.deepspeed.config == str(DS / "zero1.json")
    assert cfg.sources[0] == str(CONFIGS / "base_2b.yaml") and cfg.sources[-1] == str(CONFIGS / f"{stage}.yaml")


def test_each_stage_starts_from_the_previous_export():
    for prev, stage in (("stage1", "stage2"), ("stage2", "stage3"), ("stage3", "stage4")):
        before, after = load_config(str(CONFIGS / f"{prev}.yaml")), load_config(str(CONFIGS / f"{stage}.yaml"))
        assert after.model.init == os.path.join(before.run.out, "export")


def test_other_shipped_configs_load():
    seven = load_config(str(CONFIGS / "base_7b.yaml"))
    assert seven.model.preset == "7b" and seven.deepspeed.config == str(DS / "zero2.json")
    lora = load_config(str(CONFIGS / "finetune_lora.yaml"))
    assert lora.lora.enabled and lora.lora.llm and not lora.lora.vision and lora.train.lr["vision"] is None
    tiny = load_config(str(CONFIGS / "tiny_cpu.yaml"))
    assert tiny.model.preset == "tiny" and tiny.model.dtype == "float32"
    for name in ("zero1", "zero2", "zero3", "zero3_offload"):
        cfg = load_config(str(CONFIGS / "tiny_cpu.yaml"), [f"deepspeed.config={DS / name}.json"])
        ds = resolve_ds_config(cfg, world_size=2, dtype=torch.float32)
        assert ds["zero_optimization"]["stage"] == int(name[4]) and ds["train_batch_size"] == 4


def test_overrides_and_resolved_yaml_round_trip(tmp_path):
    cfg = load_config(str(CONFIGS / "stage3.yaml"),
                      ["train.lr.llm=null", "train.max_steps=7", "data.annotations=[a.jsonl, b.json]",
                       f"run.out={tmp_path}/run", "train.lr.vision=3e-6"])
    assert cfg.train.lr == {"vision": 3e-6, "projector": 1e-5, "llm": None}
    assert cfg.train.max_steps == 7
    assert cfg.data.annotations == [os.path.join(os.getcwd(), "a.jsonl"), os.path.join(os.getcwd(), "b.json")]
    write_resolved(cfg, str(tmp_path / "resolved.yaml"))
    again = load_config(str(tmp_path / "resolved.yaml"))
    assert again.to_dict() == cfg.to_dict()


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_unknown_key_names_key_and_file(tmp_path):
    bad = _write(tmp_path / "bad.yaml", f"inherit: {CONFIGS / 'stage2.yaml'}\ntrain:\n  learning_rate: 1.0e-5\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'train\.learning_rate'; allowed under train"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"--set trian\.seed=1: unknown key 'trian'"):
        load_config(str(CONFIGS / "stage2.yaml"), ["trian.seed=1"])
    with pytest.raises(ConfigError, match=r"unknown module\(s\) \['mm_projector'\] in train\.lr"):
        load_config(str(CONFIGS / "stage2.yaml"), ["train.lr.mm_projector=1.0"])


def test_wrong_type_names_key_file_and_type(tmp_path):
    bad = _write(tmp_path / "typo.yaml", f"inherit: {CONFIGS / 'stage2.yaml'}\ntrain:\n  gradient_accumulation_steps: two\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml: train\.gradient_accumulation_steps must be int, got 'two'"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"--set data\.pruning=3: data\.pruning must be bool"):
        load_config(str(CONFIGS / "stage2.yaml"), ["data.pruning=3"])
    with pytest.raises(ConfigError, match=r"train\.lr\.llm must be float or null, got 'fast'"):
        load_config(str(CONFIGS / "stage2.yaml"), ["train.lr.llm=fast"])
    missing = _write(tmp_path / "partial.yaml", "train:\n  lr: {vision: 1.0e-5}\n")
    with pytest.raises(ConfigError, match=r"partial\.yaml: train\.lr must give every module.*\['projector', 'llm'\]"):
        load_config(missing)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))
    loop = _write(tmp_path / "loop.yaml", "inherit: loop.yaml\n")
    with pytest.raises(ConfigError, match="inheritance cycle"):
        load_config(loop)


def test_yaml_1_1_exponent_strings_are_floats(tmp_path):
    path = _write(tmp_path / "e.yaml", f"inherit: {CONFIGS / 'stage2.yaml'}\ntrain:\n  lr: {{vision: 1e-5}}\n")
    assert load_config(path).train.lr["vision"] == 1e-5


def test_deepspeed_config_that_disagrees_is_an_error(tmp_path):
    cfg = load_config(str(CONFIGS / "tiny_cpu.yaml"))
    ds = resolve_ds_config(cfg, world_size=2, dtype=torch.float32)
    assert (ds["train_batch_size"], ds["gradient_accumulation_steps"], ds["train_micro_batch_size_per_gpu"]) == (4, 2, 1)
    assert ds["bf16"]["enabled"] is False and ds["gradient_clipping"] == 1.0
    cases = {
        "gradient_accumulation_steps": (4, r"gradient_accumulation_steps is 4 but the training config"),
        "train_batch_size": (64, r"train_batch_size is 64 but"),
        "train_micro_batch_size_per_gpu": (2, r"train_micro_batch_size_per_gpu is 2"),
        "gradient_clipping": (0.5, r"gradient_clipping is 0.5 but .*\(train.max_grad_norm\)"),
        "bf16": ({"enabled": True}, r"bf16.enabled is True but the run trains in float32"),
        "optimizer": ({"type": "Adam"}, r"remove 'optimizer'"),
    }
    for key, (value, message) in cases.items():
        base = json.loads((DS / "zero2.json").read_text())
        base[key] = value
        path = _write(tmp_path / f"{key}.json", json.dumps(base))
        bad = load_config(str(CONFIGS / "tiny_cpu.yaml"), [f"deepspeed.config={path}"])
        with pytest.raises(ConfigError, match=rf"{key}\.json: {message}"):
            resolve_ds_config(bad, world_size=2, dtype=torch.float32)


def test_schedule_warms_up_then_decays():
    total = 100  # ceil(3% of 100) = 3 warm-up updates
    lrs = [lr_multiplier(s, total, 0.03) for s in range(total)]
    assert lrs[:4] == [1 / 3, 2 / 3, 1.0, 1.0]
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:])) and 0 < lrs[-1] < 1e-3
    assert lr_multiplier(0, 1, 0.03) == 1.0  # a one-step run updates at full rate
