"""VideoLLaMA3-only names kept for existing code; `vl3fast.apply_vl3fast` is the entry point for all models.

    use_vl3fast_attention(model)    # = the attention part of apply_vl3fast(model, packing=False)
    restore_attention(model)        # back to transformers' own forward

See transformers_vision.py for how the swap works.
"""
from __future__ import annotations

import torch

from .transformers_vision import VISION_TOWERS, restore_vision_attention, swap_vision_attention

__all__ = ["use_vl3fast_attention", "restore_attention"]


def use_vl3fast_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Makes every VideoLlama3VisionAttention inside `model` run vl3fast.ops.rope2d_attention (in place).

    `model`: anything containing VideoLlama3VisionModel instances.  Idempotent; returns `model`.
    """
    swap_vision_attention(model, VISION_TOWERS["video_llama_3"])
    return model


def restore_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Undoes use_vl3fast_attention: transformers' own attention forward again, hooks removed.  Returns `model`."""
    restore_vision_attention(model)
    return model
