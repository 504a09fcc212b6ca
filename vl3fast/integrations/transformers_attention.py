"""vl3fast's varlen attention as a transformers attention implementation: `attn_implementation="vl3fast_flash"`.

transformers' registry (`AttentionInterface`) hands a registered function q, k, v `[B, H, S, D]` with
RoPE already applied, and passes the packed segment bounds (`cu_seq_lens_q/k`) only to implementations
whose name contains "flash"; other names get one call per segment.  So the name contains "flash", and the
function runs `vl3fast.ops.varlen_attention` (the RoPE-free entry point) once per packed sequence.  This
path works for any vision tower that calls the registry, but pays for the RoPE pass transformers does
before the call; `vl3fast.apply_vl3fast` keeps RoPE fused in the kernel and is the faster choice for the
towers it knows.

The kernel is non-causal (vision attention).  A causal call (an LLM layer) raises, naming the per-sub-config
form that selects it for the vision tower only:

    register_vl3fast_attention()
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        path, attn_implementation={"vision_config": "vl3fast_flash", "text_config": "sdpa"})
"""
from __future__ import annotations

import torch

from ..ops import varlen_attention

__all__ = ["ATTENTION_NAME", "register_vl3fast_attention", "vl3fast_flash_attention_forward"]

ATTENTION_NAME = "vl3fast_flash"


def _segments(cu_q, cu_k, batch: int, length: int, device) -> torch.Tensor:
    if cu_q is None and cu_k is None:
        return torch.arange(0, (batch + 1) * length, length, dtype=torch.int32, device=device)
    if cu_q is None or cu_k is None or (cu_q is not cu_k and not torch.equal(cu_q, cu_k)):
        raise NotImplementedError("vl3fast_flash: cu_seq_lens_q and cu_seq_lens_k must be equal (self-attention)")
    if batch != 1:
        raise ValueError(f"query: packed input (cu_seq_lens given) must have batch size 1, got {batch}")
    return cu_q.to(torch.int32)


def vl3fast_flash_attention_forward(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
    cu_seq_lens_q: torch.Tensor | None = None, cu_seq_lens_k: torch.Tensor | None = None,
    max_length_q: int | None = None, max_length_k: int | None = None, is_causal: bool | None = None, **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: q/k/v `[B, H, S, D]` -> (out `[B, S, H, D]`, None)."""
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
    if causal:
        raise NotImplementedError(
            "vl3fast_flash is non-causal vision attention; select it for the vision tower only, e.g. "
            "attn_implementation={'vision_config': 'vl3fast_flash', 'text_config': 'sdpa'}"
        )
    if attention_mask is not None:
        raise NotImplementedError("vl3fast_flash: attention masks are not supported; pass packed cu_seq_lens instead")
    if dropout and module.training:
        raise NotImplementedError(f"vl3fast_flash: attention dropout is not supported (got {dropout})")
    B, H, S, D = query.shape
    groups = H // key.shape[1]
    if groups > 1:  # grouped-query attention: each k/v head serves `groups` query heads
        key, value = (t.repeat_interleave(groups, dim=1) for t in (key, value))
    cu_seqlens = _segments(cu_seq_lens_q, cu_seq_lens_k, B, S, query.device)
    q, k, v = (t.transpose(1, 2).reshape(B * S, H, D) for t in (query, key, value))
    out = varlen_attention(
        q, k, v, cu_seqlens, scale=None if scaling is None else float(scaling),
        max_seqlen=max_length_q if isinstance(max_length_q, int) else None,
    )
    return out.view(B, S, H, D), None


def register_vl3fast_attention() -> str:
    """Registers `vl3fast_flash` with transformers (idempotent) and returns the name."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import flash_attention_mask

    AttentionInterface.register(ATTENTION_NAME, vl3fast_flash_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, flash_attention_mask)
    return ATTENTION_NAME
