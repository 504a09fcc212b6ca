"""Which parameters a stage trains, and with which learning rate (spec G); LoRA through peft.

The model has three modules with their own learning rate: ``vision`` (the encoder), ``projector`` and
``llm`` (embeddings, decoder layers, final norm, lm_head).  ``lr: null`` freezes a module.  With LoRA the
LoRA'd module's own weights are frozen and its adapters train with the module's learning rate; the other
modules train in full (or stay frozen) as their learning rates say ("non-LoRA trainables").
"""
from __future__ import annotations

import re

import torch.nn as nn

from .config import MODULE_GROUPS, ConfigError, LoraConfig

_PREFIXES = {"vision.": "vision", "projector.": "projector", "language_model.": "llm"}
LORA_MODULE_PATTERNS = {
    "llm": r"language_model\.model\.layers\.\d+\.(?:self_attn|mlp)\.(?:{})",
    "vision": r"vision\.layers\.\d+\.(?:self_attn|mlp)\.(?:{})",
}


def module_group(name: str) -> str:
    """The module ('vision', 'projector', 'llm') a parameter name belongs to."""
    for prefix, group in _PREFIXES.items():
        if name.startswith(prefix):
            return group
    raise ValueError(f"parameter {name!r} belongs to none of the modules {list(MODULE_GROUPS)}")


def is_lora_parameter(name: str) -> bool:
    return ".lora_" in name


def lora_groups(lora: LoraConfig) -> list[str]:
    return [g for g in ("llm", "vision") if lora.enabled and getattr(lora, g)]


def peft_lora_config(lora: LoraConfig, lr: dict):
    """The peft LoraConfig for the modules that get adapters (a module frozen by ``lr: null`` gets none)."""
    from peft import LoraConfig as PeftLoraConfig

    patterns = []
    for group in lora_groups(lora):
        if lr.get(group) is None:
            raise ConfigError(f"lora.{group} is true but train.lr.{group} is null: a frozen module cannot "
                              f"train adapters; give it a learning rate or set lora.{group}: false")
        targets = lora.llm_targets if group == "llm" else lora.vision_targets
        patterns.append(LORA_MODULE_PATTERNS[group].format("|".join(map(re.escape, targets))))
    return PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
                          target_modules="|".join(f"(?:{p})" for p in patterns))


def apply_lora(model: nn.Module, lora: LoraConfig, lr: dict) -> nn.Module:
    """Injects LoRA adapters in place (peft); returns the model.  No-op when LoRA is off."""
    if not lora_groups(lora):
        return model
    from peft import inject_adapter_in_model

    model = inject_adapter_in_model(peft_lora_config(lora, lr), model)
    if not any(is_lora_parameter(n) for n, _ in model.named_parameters()):
        raise ConfigError(f"LoRA matched no layer: targets {lora.llm_targets} / {lora.vision_targets}")
    return model


def freeze_and_group(model: nn.Module, lr: dict, lora: LoraConfig, weight_decay: float) -> list[dict]:
    """Sets requires_grad per the stage and returns the optimizer parameter groups (one per trained module,
    each with its ``name`` and ``lr``).  Frozen modules get no group."""
    adapted = set(lora_groups(lora))
    groups: dict[str, list] = {g: [] for g in MODULE_GROUPS}
    for name, param in model.named_parameters():
        group = module_group(name)
        if lr[group] is None:
            trainable = False
        elif group in adapted:
            trainable = is_lora_parameter(name)
        else:
            trainable = True
        param.requires_grad_(trainable)
        if trainable:
            groups[group].append(param)
    result = [{"name": g, "params": ps, "lr": lr[g], "weight_decay": weight_decay} for g, ps in groups.items() if ps]
    if not result:
        raise ConfigError(f"train.lr freezes every module ({lr}): nothing would train")
    return result


def trainable_summary(model: nn.Module) -> dict[str, dict[str, int]]:
    """Parameter counts per module: {group: {"trainable": n, "frozen": n}}."""
    out = {g: {"trainable": 0, "frozen": 0} for g in MODULE_GROUPS}
    for name, p in model.named_parameters():
        numel = p.ds_numel if hasattr(p, "ds_numel") else p.numel()
        out[module_group(name)]["trainable" if p.requires_grad else "frozen"] += numel
    return out


def unload_lora(model: nn.Module, *, merge: bool) -> nn.Module:
    """Replaces every LoRA layer by its base layer (in place), folding the adapter in first when ``merge``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer) and hasattr(module, "base_layer"):
            if merge:
                module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
    return model
