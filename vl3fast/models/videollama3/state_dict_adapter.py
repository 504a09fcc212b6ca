"""Checkpoint key layouts <-> vl3fast's module names: the only place checkpoint renames live (spec F).

vl3fast names (the module tree of VideoLLaMA3ForCausalLM):
  vision.patch_embed.{weight [C, K], bias}       vision.layers.{i}.*      vision.post_layernorm.*
  projector.readout.{0,2}.*                      language_model.model.*   language_model.lm_head.weight
transformers-native (model_type video_llama_3):
  model.vision_model.embeddings.patch_embedding.{weight [C, 3, p, p], bias}
  model.vision_model.encoder.layers.{i}.*        model.vision_model.post_layernorm.*
  model.projector.readout.*                      model.language_model.*   lm_head.weight
official (videollama3_qwen2): as native with model.vision_encoder.*, model.mm_projector.*, and the LLM at
  model.{embed_tokens,layers,norm}.*.  The training codebase nests the encoder once more
  (model.vision_encoder.vision_encoder.*); that prefix is accepted on load too.
"""
from __future__ import annotations

import torch

_PREFIXES = {
    "native": {"vision": "model.vision_model.", "projector": "model.projector.", "llm": "model.language_model."},
    "official": {"vision": "model.vision_encoder.", "projector": "model.mm_projector.", "llm": "model."},
}
_PATCH = "embeddings.patch_embedding."
_ENCODER_LAYERS = "encoder.layers."


def _vision_from_ckpt(rest: str) -> str | None:
    if rest.startswith(_PATCH):
        return "vision.patch_embed." + rest[len(_PATCH):]
    if rest.startswith(_ENCODER_LAYERS):
        return "vision.layers." + rest[len(_ENCODER_LAYERS):]
    if rest.startswith("post_layernorm."):
        return "vision." + rest
    return None


def checkpoint_to_vl3fast_key(key: str, fmt: str) -> str | None:
    """The vl3fast name of one checkpoint key, or None when the key has no place in the model."""
    if fmt not in _PREFIXES:
        raise ValueError(f"unknown checkpoint format {fmt!r}; supported: {sorted(_PREFIXES)}")
    p = _PREFIXES[fmt]
    if key == "lm_head.weight":
        return "language_model.lm_head.weight"
    if key.startswith(p["vision"]):
        rest = key[len(p["vision"]):]
        if fmt == "official" and rest.startswith("vision_encoder."):
            rest = rest[len("vision_encoder."):]
        return _vision_from_ckpt(rest)
    if key.startswith(p["projector"]):
        return "projector." + key[len(p["projector"]):]
    if key.startswith(p["llm"]):
        rest = key[len(p["llm"]):]
        # official: everything under model.* that is not vision or projector is the LLM
        return "language_model.model." + rest
    return None


def vl3fast_to_native_key(name: str) -> str:
    if name.startswith("vision.patch_embed."):
        return "model.vision_model." + _PATCH + name[len("vision.patch_embed."):]
    if name.startswith("vision.layers."):
        return "model.vision_model." + _ENCODER_LAYERS + name[len("vision.layers."):]
    if name.startswith("vision."):
        return "model.vision_model." + name[len("vision."):]
    if name.startswith("projector."):
        return "model." + name
    if name == "language_model.lm_head.weight":
        return "lm_head.weight"
    if name.startswith("language_model.model."):
        return "model.language_model." + name[len("language_model.model."):]
    raise KeyError(f"no checkpoint name for parameter {name!r}")


def vl3fast_to_official_key(name: str) -> str:
    native = vl3fast_to_native_key(name)
    for old, new in (("model.vision_model.", "model.vision_encoder."), ("model.projector.", "model.mm_projector."),
                     ("model.language_model.", "model.")):
        if native.startswith(old):
            return new + native[len(old):]
    return native


def from_checkpoint(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Value transform on load: the Conv2d patch kernel [C, 3, p, p] is a Linear over the flattened patch;
    the (C, py, px) flattening order is the pixel_values row order, so a reshape is exact."""
    if name == "vision.patch_embed.weight" and tensor.dim() == 4:
        return tensor.reshape(tensor.shape[0], -1)
    return tensor


def to_checkpoint(name: str, tensor: torch.Tensor, patch_size: int, num_channels: int) -> torch.Tensor:
    if name == "vision.patch_embed.weight":
        return tensor.reshape(tensor.shape[0], num_channels, patch_size, patch_size)
    return tensor


def vision_state_from_transformers(hf_vision_state: dict) -> dict:
    """A transformers `VideoLlama3VisionModel` state dict -> a `VisionEncoder` state dict (for the swap from a
    loaded transformers model, the benchmarks and the parity tests)."""
    state = {}
    for key, value in hf_vision_state.items():
        name = checkpoint_to_vl3fast_key("model.vision_model." + key, "native")
        if name is None:
            raise ValueError(f"unexpected key in a transformers vision state dict: {key}")
        state[name.removeprefix("vision.")] = from_checkpoint(name, value)
    return state


_FUSED_QKV = ".self_attn.qkv."


def export_tensors(named_tensors, fmt: str = "native", *, patch_size: int = 14, num_channels: int = 3,
                   tie_word_embeddings: bool = False) -> dict:
    """Checkpoint tensors (keys of `fmt`: "native" or "official") from vl3fast names -> tensors as
    ``named_parameters()`` gives them.  The fused vision ``qkv`` is split into ``q_proj`` / ``k_proj`` /
    ``v_proj`` here, so a checkpoint written from parameters directly (DeepSpeed ZeRO-3's consolidated
    16-bit state dict and zero_to_fp32 walk named_parameters, never the module's state-dict hooks) has the
    released key layout.  Names already split (a ``state_dict()``) pass through.  A leading ``module.``
    (an engine wrapper) is dropped; the tied ``lm_head`` is left out when `tie_word_embeddings`."""
    to_key = {"native": vl3fast_to_native_key, "official": vl3fast_to_official_key}.get(fmt)
    if to_key is None:
        raise ValueError(f"unknown checkpoint format {fmt!r}; supported: ['native', 'official']")
    out = {}
    for name, tensor in dict(named_tensors).items():
        name = name.removeprefix("module.")
        if tie_word_embeddings and name == "language_model.lm_head.weight":
            continue
        if _FUSED_QKV in name:
            head, kind = name.split(_FUSED_QKV)
            if tensor.shape[0] % 3:
                raise ValueError(f"{name}: fused qkv of shape {tuple(tensor.shape)} is not 3 equal parts")
            for part, piece in zip(("q_proj", "k_proj", "v_proj"), tensor.detach().chunk(3, dim=0)):
                split = f"{head}.self_attn.{part}.{kind}"
                out[to_key(split)] = piece.contiguous()
            continue
        out[to_key(name)] = to_checkpoint(name, tensor.detach(), patch_size, num_channels)
    return out
