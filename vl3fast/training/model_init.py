"""The model a run starts from: the ``init`` checkpoint (the previous stage's export), or random weights of a
preset shape (smoke tests), checked against the preset before any weight is read."""
from __future__ import annotations

import os
import shutil

import torch

from ..models.videollama3 import VideoLLaMA3Config, VideoLLaMA3ForCausalLM
from ..models.videollama3 import checkpoint as ckpt_files
from .config import Config, ConfigError, origin_of

# Weight and config files are the model's; everything else in a checkpoint folder (tokenizer, chat template,
# processor configs, generation config) is copied along so an exported folder works with `vl3fast chat`.
_MODEL_FILES = {"config.json", ckpt_files.SAFE_INDEX, ckpt_files.BIN_INDEX}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")

# Architecture fields that must agree between model.preset and the init checkpoint (vocabulary and token ids
# may differ: they follow the tokenizer).
_SHAPE_FIELDS = {"vision": ("hidden_size", "intermediate_size", "num_attention_heads", "patch_size"),
                 "text": ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")}


def resolve_dtype(cfg: Config, device: torch.device) -> torch.dtype:
    name = cfg.model.dtype
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in ("float32", "bfloat16"):
        raise ConfigError(f"{origin_of(cfg)}: model.dtype must be auto, float32 or bfloat16, got {name!r}")
    return getattr(torch, name)


def _check_preset(cfg: Config, config: VideoLLaMA3Config, where: str) -> None:
    try:
        preset = VideoLLaMA3Config.from_name(cfg.model.preset)
    except ValueError as err:
        raise ConfigError(f"{origin_of(cfg)}: model.preset: {err}") from None
    diffs = [f"{part}.{f} {getattr(getattr(preset, part), f)} vs {getattr(getattr(config, part), f)}"
             for part, fields in _SHAPE_FIELDS.items() for f in fields
             if getattr(getattr(preset, part), f) != getattr(getattr(config, part), f)]
    if diffs:
        raise ConfigError(f"{origin_of(cfg)}: model.preset {cfg.model.preset!r} does not match {where} (preset vs "
                          f"checkpoint): {'; '.join(diffs)}")


def build_model(cfg: Config, device: torch.device, dtype: torch.dtype) -> tuple[VideoLLaMA3ForCausalLM, str | None]:
    """(model in train mode, the folder with its tokenizer / processor files or None)."""
    m = cfg.model
    processor_dir = m.processor or m.init
    if m.init is not None:
        if m.random_init:
            raise ConfigError(f"{origin_of(cfg)}: model.init and model.random_init are both set; choose one")
        if not os.path.isfile(os.path.join(m.init, "config.json")):
            raise ConfigError(f"{origin_of(cfg)}: model.init {m.init!r} is not a checkpoint folder (no config.json)"
                              + ("; it does not exist" if not os.path.exists(m.init) else "")
                              + ": each stage starts from the previous stage's export (vl3fast ckpt export)")
        if m.text_layers is not None or m.vision_layers is not None:
            raise ConfigError(f"{origin_of(cfg)}: model.text_layers / vision_layers only apply with random_init")
        config = VideoLLaMA3Config.from_dict(ckpt_files.read_config(m.init))
        _check_preset(cfg, config, f"the init checkpoint {m.init}")
        model = VideoLLaMA3ForCausalLM.from_pretrained(m.init, dtype=dtype, device=device,
                                                       attn_backend=m.attn_backend)
    elif m.random_init:
        try:
            config = VideoLLaMA3Config.from_name(m.preset)
        except ValueError as err:
            raise ConfigError(f"{origin_of(cfg)}: model.preset: {err}") from None
        if m.text_layers is not None:
            config.text.num_hidden_layers = m.text_layers
        if m.vision_layers is not None:
            config.vision.num_hidden_layers = m.vision_layers
        with torch.device(device):
            model = VideoLLaMA3ForCausalLM(config, attn_backend=m.attn_backend).to(dtype)
    else:
        raise ConfigError(f"{origin_of(cfg)}: model.init is not set: give the checkpoint folder to start from "
                          "(the previous stage's export), or model.random_init: true for random weights")
    if m.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if processor_dir is not None and not os.path.isdir(processor_dir):
        raise ConfigError(f"{origin_of(cfg)}: model.processor {processor_dir!r} is not a folder")
    return model.train(), processor_dir


def copy_processor_files(src: str, dst: str) -> list[str]:
    """Copies tokenizer / processor / template / generation files (not weights, not config.json)."""
    os.makedirs(dst, exist_ok=True)
    copied = []
    for name in sorted(os.listdir(src)):
        path = os.path.join(src, name)
        if not os.path.isfile(path) or name in _MODEL_FILES or name.endswith(_WEIGHT_SUFFIXES):
            continue
        shutil.copy2(path, os.path.join(dst, name))
        copied.append(name)
    return copied
