"""apply_vl3fast / unapply_vl3fast: vl3fast inside an existing transformers training or inference run.

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path)   # or VideoLLaMA3, Qwen2-VL, Qwen3-VL
    model = get_peft_model(model, lora_config)                          # optional, before or after
    vl3fast.apply_vl3fast(model)                                        # before Trainer(...) / deepspeed.initialize
    trainer = Trainer(model=model, data_collator=..., ...)

Apply it to the model object before it is handed to `Trainer(...)`, `deepspeed.initialize` or DDP: it
installs per-instance hooks and attention forwards on the transformers modules, which those wrappers then
carry along (ZeRO-3 gathers each Linear's weights in that Linear's own forward, which the swapped
attention calls as modules).  Nothing global is patched, so other models in the process are unaffected,
and `unapply_vl3fast(model)` restores transformers' code exactly (bit-identical outputs).

What it changes, dispatched on `config.model_type`:
- attention=True: the vision tower's attention runs vl3fast's fused 2D-RoPE kernel
  (transformers_vision.py); it also registers the `vl3fast_flash` attention implementation
  (transformers_attention.py) for `attn_implementation=` selection.
- packing=True: padding-free batches (position_ids restarting per sample, no attention mask) are handled
  exactly: no cross-sample attention, per-sample 3D RoPE positions for the Qwen family
  (transformers_packing.py).  A vision tower alone has no LLM: nothing to do there.
"""
from __future__ import annotations

import torch

from .transformers_attention import register_vl3fast_attention
from .transformers_packing import PACKED_MODELS, disable_packing, enable_packing
from .transformers_vision import VISION_TOWERS, restore_vision_attention, swap_vision_attention

__all__ = ["apply_vl3fast", "unapply_vl3fast", "SUPPORTED_MODEL_TYPES"]

# config.model_type -> family, for the multimodal models and their vision towers alone.
_FAMILY_OF = {
    model_type: family
    for family in VISION_TOWERS
    for model_type in (family, f"{family}_vision")
}
SUPPORTED_MODEL_TYPES = tuple(_FAMILY_OF)
_APPLIED_ATTR = "_vl3fast_applied"
_WRAPPERS = ("DeepSpeedEngine", "DistributedDataParallel", "FullyShardedDataParallel", "DataParallel")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft wrapper; refuses the training wrappers it must precede."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module (a transformers model), got {type(model).__name__}")
    if type(model).__name__ in _WRAPPERS:
        raise TypeError(
            f"model: got a {type(model).__name__}; call vl3fast.apply_vl3fast on the transformers model before "
            "deepspeed.initialize / Trainer(...) / DDP wrap it"
        )
    while type(model).__module__.startswith("peft.") and hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def _family(model: torch.nn.Module) -> str:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    family = _FAMILY_OF.get(model_type)
    if family is None:
        raise ValueError(
            f"model: vl3fast.apply_vl3fast does not support {type(model).__name__} (config.model_type="
            f"{model_type!r}); supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return family


def apply_vl3fast(model: torch.nn.Module, *, attention: bool = True, packing: bool = True) -> torch.nn.Module:
    """Puts vl3fast into a transformers VideoLLaMA3 or Qwen2-VL / Qwen2.5-VL / Qwen3-VL model, in place.

    Args:
        model: a `*ForConditionalGeneration`, the `*Model` inside it, or the vision model alone (e.g.
            `VideoLlama3VisionModel`), possibly wrapped by peft.  Not a DeepSpeed engine, DDP or FSDP
            wrapper: apply first, then wrap.
        attention: run the vision attention on vl3fast's fused 2D-RoPE kernel.
        packing: handle padding-free packed batches exactly (see the module docstring).

    Returns `model`.  Calling it again with other options re-applies; unapply_vl3fast undoes it.
    Raises ValueError naming the supported `config.model_type` values for any other model.
    """
    base = _unwrap(model)
    family = _family(base)
    options = {"attention": bool(attention), "packing": bool(packing)}
    previous = base.__dict__.get(_APPLIED_ATTR)
    if previous == options:
        return model
    if previous is not None:
        unapply_vl3fast(base)
    if attention:
        register_vl3fast_attention()
        swap_vision_attention(base, VISION_TOWERS[family])
    if packing:
        enable_packing(base, PACKED_MODELS[family])
    base.__dict__[_APPLIED_ATTR] = options
    return model


def unapply_vl3fast(model: torch.nn.Module) -> torch.nn.Module:
    """Removes everything apply_vl3fast installed on `model` (transformers' own code runs again); returns it."""
    base = _unwrap(model)
    restore_vision_attention(base)
    disable_packing(base)
    base.__dict__.pop(_APPLIED_ATTR, None)
    return model
