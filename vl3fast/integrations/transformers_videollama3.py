"""Run a loaded transformers VideoLLaMA3's vision attention on vl3fast.ops.rope2d_attention, and undo it.

    model = VideoLlama3ForConditionalGeneration.from_pretrained(...)   # or VideoLlama3Model / VideoLlama3VisionModel
    use_vl3fast_attention(model)    # every VideoLlama3VisionAttention now runs the fused kernel
    ...
    restore_attention(model)        # back to transformers' own forward

How: per instance, no global monkey-patching.  Each `VideoLlama3VisionAttention` gets an instance-level
`forward` that projects q, k, v exactly as transformers does and calls the fused op (RoPE inside the
kernel, one call for the whole packed sequence: no rotate_half passes, no per-frame SDPA loop, no host
sync per layer).  The op needs integer (row, col) positions, while transformers hands the attention only
cos/sin tables; so each `VideoLlama3VisionModel` gets a forward pre-hook that computes pos_hw once per
forward from its `grid_thw` and `merge_sizes` (vl3fast.ops.rope2d_position_ids, the same block-major order
as transformers' get_vision_position_ids), or takes the `position_ids` the caller passed, and shares it
with that model's attention modules.  An attention module called outside its vision model's forward has
no positions and raises a RuntimeError rather than guessing.
"""
from __future__ import annotations

import types

import torch

from ..ops import rope2d_attention, rope2d_position_ids

__all__ = ["use_vl3fast_attention", "restore_attention"]

_STATE_ATTR = "_vl3fast_attention_state"


class _SharedPositions:
    """pos_hw of the vision forward in progress, shared by one vision model's attention modules."""

    def __init__(self):
        self.pos_hw: torch.Tensor | None = None


def _classes():
    from transformers.models.video_llama_3 import modeling_video_llama_3 as hf

    return hf.VideoLlama3VisionModel, hf.VideoLlama3VisionAttention


def _argument(args, kwargs, name, index):
    if name in kwargs:
        return kwargs[name]
    if len(args) > index:
        return args[index]
    raise RuntimeError(f"vl3fast attention swap-in: the vision model was called without `{name}`")


def _pre_hook(shared: _SharedPositions):
    def hook(module, args, kwargs):
        position_ids = kwargs.get("position_ids")
        if position_ids is not None:
            shared.pos_hw = position_ids.to(torch.int32).contiguous()
        else:
            grid_thw = _argument(args, kwargs, "grid_thw", 1)
            merge_sizes = _argument(args, kwargs, "merge_sizes", 2)
            shared.pos_hw, _ = rope2d_position_ids(grid_thw, merge_sizes)
        return None

    return hook


def _post_hook(shared: _SharedPositions):
    def hook(module, args, output):
        shared.pos_hw = None
        return None

    return hook


def _attention_forward(shared: _SharedPositions, theta: float):
    def forward(self, hidden_states, cu_seqlens, position_embeddings=None, max_seqlen=None, **kwargs):
        pos_hw = shared.pos_hw
        T = hidden_states.shape[0]
        if pos_hw is None or pos_hw.shape[0] != T:
            raise RuntimeError(
                "vl3fast attention swap-in: no patch positions for this call (the attention must run inside "
                "its VideoLlama3VisionModel's forward, whose pre-hook computes them from grid_thw); call "
                "vl3fast.integrations.transformers_videollama3.restore_attention(model) to use transformers' path"
            )
        if self.training and self.attention_dropout > 0:
            raise NotImplementedError("vl3fast rope2d_attention has no attention dropout; set attention_dropout=0")
        q = self.q_proj(hidden_states).view(T, self.num_heads, self.head_dim)
        k = self.k_proj(hidden_states).view(T, self.num_heads, self.head_dim)
        v = self.v_proj(hidden_states).view(T, self.num_heads, self.head_dim)
        out = rope2d_attention(
            q, k, v, cu_seqlens.to(torch.int32), pos_hw.to(hidden_states.device), theta=theta, scale=self.scaling,
            max_seqlen=max_seqlen if isinstance(max_seqlen, int) else None,
        )
        return self.out_proj(out.reshape(T, -1)), None

    return forward


def use_vl3fast_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Makes every VideoLlama3VisionAttention inside `model` run vl3fast.ops.rope2d_attention (in place).

    `model`: a transformers VideoLlama3ForConditionalGeneration, VideoLlama3Model or VideoLlama3VisionModel
    (anything containing VideoLlama3VisionModel instances).  Idempotent; returns `model`.
    """
    vision_cls, attention_cls = _classes()
    vision_models = [m for m in model.modules() if isinstance(m, vision_cls)]
    if not vision_models:
        raise ValueError(f"model: no VideoLlama3VisionModel found inside {type(model).__name__}")
    for vision in vision_models:
        if hasattr(vision, _STATE_ATTR):
            continue
        rope = vision.config.rope_parameters
        if rope.get("rope_type", "axial") != "axial":
            raise ValueError(f"model: vl3fast implements the axial 2D RoPE only, got rope_type={rope['rope_type']!r}")
        theta = float(rope["rope_theta"])
        shared = _SharedPositions()
        handles = [
            vision.register_forward_pre_hook(_pre_hook(shared), with_kwargs=True),
            vision.register_forward_hook(_post_hook(shared)),
        ]
        patched = []
        for module in vision.modules():
            if isinstance(module, attention_cls):
                module.forward = types.MethodType(_attention_forward(shared, theta), module)
                patched.append(module)
        setattr(vision, _STATE_ATTR, (handles, patched))
    return model


def restore_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Undoes use_vl3fast_attention: transformers' own attention forward again, hooks removed.  Returns `model`."""
    vision_cls, _ = _classes()
    for vision in [m for m in model.modules() if isinstance(m, vision_cls)]:
        state = getattr(vision, _STATE_ATTR, None)
        if state is None:
            continue
        handles, patched = state
        for handle in handles:
            handle.remove()
        for module in patched:
            del module.forward  # the instance attribute; the class's forward shows through again
        delattr(vision, _STATE_ATTR)
    return model
