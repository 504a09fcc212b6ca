"""Padding-free (packed) LLM batches for transformers' VideoLLaMA3 and Qwen2-VL-family models.

A packed batch puts several samples end to end in one row, with no attention mask and `position_ids`
restarting at 0 at each sample (transformers' `DataCollatorWithFlattening` convention, and the one of
vl3fast.training's collator).  transformers then builds a block-diagonal causal mask from the restarts
(`masking_utils.find_packed_sequence_indices`, on CPU and with SDPA/eager) or hands flash attention the
segment bounds.  Two things stop that from working out of the box, and the forward pre-hook installed here
on the multimodal model (per instance) fixes both, only when the batch is packed:

- `use_cache` defaults to the config's True, a cache is created, and transformers looks for packed
  sequences only without a cache: the samples would attend to each other.  The hook sets use_cache=False.
- Qwen2-VL / Qwen2.5-VL / Qwen3-VL rotate the LLM with 3D multimodal RoPE positions, which the model
  computes (`get_rope_index`) only when no position_ids are given, and then for the whole row as one
  sequence.  The hook computes them per sample with the model's own `get_rope_index` (the samples as the
  rows of a padded batch, so images and videos are consumed in order) and passes the `[4, B, T]` tensor
  transformers expects for packed input: the restarting text positions first (for the mask), then the
  three mrope rows.

A batch that is not packed (a padded batch with an attention mask, generation with a cache, positions
that never restart) passes through untouched.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass

import torch

__all__ = ["PackedModel", "PACKED_MODELS", "enable_packing", "disable_packing", "packed_sequence_ids"]

_STATE_ATTR = "_vl3fast_packing_state"


@dataclass(frozen=True)
class PackedModel:
    family: str   # transformers.models.<family>.modeling_<family>
    model: str    # the multimodal model class (the one holding the vision tower and the LLM)
    mrope: bool   # 3D multimodal RoPE positions (Qwen family) or 1D (VideoLLaMA3's Qwen2 LLM)

    def model_class(self):
        module = importlib.import_module(f"transformers.models.{self.family}.modeling_{self.family}")
        return getattr(module, self.model)


PACKED_MODELS = {
    "video_llama_3": PackedModel("video_llama_3", "VideoLlama3Model", mrope=False),
    "qwen2_vl": PackedModel("qwen2_vl", "Qwen2VLModel", mrope=True),
    "qwen2_5_vl": PackedModel("qwen2_5_vl", "Qwen2_5_VLModel", mrope=True),
    "qwen3_vl": PackedModel("qwen3_vl", "Qwen3VLModel", mrope=True),
    "qwen3_vl_moe": PackedModel("qwen3_vl_moe", "Qwen3VLMoeModel", mrope=True),
}


def packed_sequence_ids(position_ids_BT: torch.Tensor) -> torch.Tensor | None:
    """`[B, T]` sample index within each row (a sample starts where positions do not step by 1), or None
    when no row holds more than one sample.  The same rule as transformers' find_packed_sequence_indices."""
    from transformers.masking_utils import find_packed_sequence_indices

    return find_packed_sequence_indices(position_ids_BT)


def _mm_token_type_ids(model, input_ids: torch.Tensor) -> torch.Tensor:
    """text 0, image 1, video 2: what the processor emits as mm_token_type_ids, from the placeholder ids."""
    config = model.config
    types = torch.zeros_like(input_ids, dtype=torch.int32)
    types[input_ids == config.image_token_id] = 1
    types[input_ids == config.video_token_id] = 2
    return types


def packed_mrope_position_ids(model, kwargs: dict, text_positions_BT: torch.Tensor, sample_ids_BT: torch.Tensor):
    """`[4, B, T]`: the packed text positions, then the model's 3D RoPE positions computed per sample."""
    input_ids = kwargs.get("input_ids")
    if input_ids is None:
        raise ValueError(
            "input_ids: a packed batch (position_ids restarting per sample) of a Qwen-VL model needs input_ids "
            "to compute each sample's 3D RoPE positions; pass input_ids, or position_ids of shape [4, B, T]"
        )
    token_types = kwargs.get("mm_token_type_ids")
    if token_types is None:
        token_types = _mm_token_type_ids(model, input_ids)
    # One padded row per sample, in packing order, so that get_rope_index walks the grids in order.
    B, T = input_ids.shape
    offsets = torch.cat([sample_ids_BT.new_zeros(1), (sample_ids_BT[:-1, -1] + 1).cumsum(0)]) if B > 1 else None
    flat_ids = (sample_ids_BT + offsets[:, None] if B > 1 else sample_ids_BT).reshape(-1)
    lengths = torch.bincount(flat_ids)
    S, L = lengths.numel(), int(lengths.max())
    # column within its sample: position in the flattened row minus the sample's start
    starts = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)[:-1]])
    column = torch.arange(B * T, device=input_ids.device) - starts[flat_ids]
    rows_ids = input_ids.new_zeros(S, L)
    rows_types = token_types.new_zeros(S, L)
    rows_mask = torch.zeros(S, L, dtype=torch.long, device=input_ids.device)
    rows_ids[flat_ids, column] = input_ids.reshape(-1)
    rows_types[flat_ids, column] = token_types.reshape(-1)
    rows_mask[flat_ids, column] = 1
    rope_kwargs = dict(
        input_ids=rows_ids, mm_token_type_ids=rows_types, image_grid_thw=kwargs.get("image_grid_thw"),
        video_grid_thw=kwargs.get("video_grid_thw"), attention_mask=rows_mask,
    )
    if "second_per_grid_ts" in inspect.signature(model.get_rope_index).parameters:
        rope_kwargs["second_per_grid_ts"] = kwargs.get("second_per_grid_ts")
    mrope_3SL, _ = model.get_rope_index(**rope_kwargs)
    mrope_3N = mrope_3SL[:, flat_ids, column]
    return torch.cat([text_positions_BT[None].to(mrope_3N.dtype), mrope_3N.reshape(3, B, T)], dim=0)


def _packing_hook(spec: PackedModel):
    def hook(model, args, kwargs):
        position_ids = kwargs.get("position_ids")
        if position_ids is None or position_ids.ndim != 2 or kwargs.get("attention_mask") is not None:
            return None
        if kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None:
            return None
        sample_ids = packed_sequence_ids(position_ids)
        if sample_ids is None:
            return None
        kwargs["use_cache"] = False
        if spec.mrope:
            kwargs["position_ids"] = packed_mrope_position_ids(model, kwargs, position_ids, sample_ids)
        return args, kwargs

    return hook


def enable_packing(model: torch.nn.Module, spec: PackedModel) -> int:
    """Installs the packed-batch pre-hook on every `spec` model inside `model` (idempotent); returns the count."""
    cls = spec.model_class()
    targets = [m for m in model.modules() if isinstance(m, cls)]
    for target in targets:
        if _STATE_ATTR not in target.__dict__:
            target.__dict__[_STATE_ATTR] = target.register_forward_pre_hook(_packing_hook(spec), with_kwargs=True)
    return len(targets)


def disable_packing(model: torch.nn.Module) -> None:
    for module in list(model.modules()):
        handle = module.__dict__.pop(_STATE_ATTR, None)
        if handle is not None:
            handle.remove()
