"""Fused 2D-RoPE vision attention inside transformers' VideoLLaMA3 and Qwen2-VL-family vision towers.

All four towers (VideoLLaMA3's SigLIP-NaViT, Qwen2-VL, Qwen2.5-VL, Qwen3-VL) compute the same axial 2D RoPE
as vl3fast (`[D/4 row | D/4 col]` frequencies, rotate_half over D) on patches laid out block-major per merge
block, and run attention per `cu_seqlens` segment.  The swap keeps every transformers module and weight and
replaces, per instance, two things:

- the tower gets a forward pre-hook that computes once per forward the integer patch positions in the
  order its attention layers see the tokens (Qwen2.5-VL: after its window reordering) and hands them down
  as the keyword argument `vl3fast_pos_hw`; the hook also passes transformers the positions and segments
  it would otherwise rebuild in a Python loop per item (same values: `position_ids`, `cu_seqlens`, and
  Qwen2.5-VL's `window_index` / `cu_window_seqlens`, computed by transformers' own helper);
- each attention module gets an instance-level `forward` that projects q, k, v with the module's own
  Linear layers and runs 2D-RoPE attention over the packed sequence with vl3fast's RoPE
  (`vl3fast.ops.rope2d_attention`: RoPE fused into vl3fast's varlen attention kernel, one call for all
  segments on every device: no Python rotary, no per-segment loop, no copies; on CPU it beats vl3fast's RoPE
  op + one torch SDPA per run of equal-length segments in bf16 and ties it in fp32: benchmarks/test_swapin.py
  and benchmarks/results/README.md, "Swap-in"),
  for the full-attention and the windowed layers alike (the tower passes each layer its own cu_seqlens).

Why a keyword argument and not state shared between the hook and the layers: these towers forward unknown
keyword arguments to every block and on to its attention, and gradient checkpointing binds them into each
checkpointed call.  A block recomputed in the backward pass, after its tower returned and possibly after
another tower call in the same step (VideoLLaMA3 encodes images and videos separately), sees the positions
of its own forward.  An attention module called without them (outside its tower), or on a device/dtype the
kernel does not cover, or with attention dropout in training, runs transformers' own forward: the swap
never changes results, only speed.
"""
from __future__ import annotations

import importlib
import types
import warnings
from dataclasses import dataclass

import torch

from ..ops import rope2d_attention, rope2d_position_ids
from ..ops.attention import ATTENTION_DTYPES, ATTENTION_HEAD_DIMS
from ..reference.rope import rope2d_inv_freq

__all__ = ["VisionTower", "VISION_TOWERS", "swap_vision_attention", "restore_vision_attention"]

POSITIONS_KWARG = "vl3fast_pos_hw"
_STATE_ATTR = "_vl3fast_vision_state"


@dataclass(frozen=True)
class VisionTower:
    """How one transformers family builds its vision tower (names are transformers'; checkpoints fix them)."""

    family: str             # transformers.models.<family>.modeling_<family>
    tower: str              # the vision model class
    attention: str          # its attention class
    fused_qkv: bool         # one `qkv` Linear + `proj` (Qwen) or q/k/v/out_proj (VideoLLaMA3)
    per_item_merge: bool    # merge sizes passed per item (VideoLLaMA3) or config.spatial_merge_size (Qwen)
    windowed: bool = False  # Qwen2.5-VL: tokens reordered into windows before the blocks

    def classes(self):
        module = importlib.import_module(f"transformers.models.{self.family}.modeling_{self.family}")
        return getattr(module, self.tower), getattr(module, self.attention)


VISION_TOWERS = {
    "video_llama_3": VisionTower("video_llama_3", "VideoLlama3VisionModel", "VideoLlama3VisionAttention",
                                 fused_qkv=False, per_item_merge=True),
    "qwen2_vl": VisionTower("qwen2_vl", "Qwen2VisionTransformerPretrainedModel", "VisionAttention",
                            fused_qkv=True, per_item_merge=False),
    "qwen2_5_vl": VisionTower("qwen2_5_vl", "Qwen2_5_VisionTransformerPretrainedModel", "Qwen2_5_VLVisionAttention",
                              fused_qkv=True, per_item_merge=False, windowed=True),
    "qwen3_vl": VisionTower("qwen3_vl", "Qwen3VLVisionModel", "Qwen3VLVisionAttention",
                            fused_qkv=True, per_item_merge=False),
    "qwen3_vl_moe": VisionTower("qwen3_vl_moe", "Qwen3VLMoeVisionModel", "Qwen3VLMoeVisionAttention",
                                fused_qkv=True, per_item_merge=False),
}


def _argument(args, kwargs, name, index):
    if name in kwargs:
        return kwargs[name]
    if len(args) > index:
        return args[index]
    raise TypeError(f"vl3fast vision swap-in: the vision tower was called without `{name}`")


def _positions_hook(spec: VisionTower):
    def hook(tower, args, kwargs):
        if kwargs.get(POSITIONS_KWARG) is not None:
            return None
        grid_thw = _argument(args, kwargs, "grid_thw", 1)
        if spec.per_item_merge:
            merge_sizes = _argument(args, kwargs, "merge_sizes", 2)
        else:
            merge_sizes = torch.full((len(grid_thw),), tower.spatial_merge_size, dtype=torch.int64,
                                     device=grid_thw.device if isinstance(grid_thw, torch.Tensor) else None)
        pos_hw = kwargs.get("position_ids")
        if pos_hw is None:
            pos_hw, cu_seqlens = rope2d_position_ids(grid_thw, merge_sizes)
            # transformers' rotary table takes the same (row, col) values; this skips its per-item loop.
            kwargs["position_ids"] = pos_hw
            kwargs.setdefault("cu_seqlens", cu_seqlens)
        pos_hw = pos_hw.to(torch.int32)
        if spec.windowed:
            from transformers.vision_utils import get_vision_window_index

            window_index, cu_window_seqlens = get_vision_window_index(
                grid_thw, spatial_merge_size=tower.spatial_merge_size, window_size=tower.window_size,
                patch_size=tower.patch_size, kwargs=kwargs,
            )
            kwargs["window_index"], kwargs["cu_window_seqlens"] = window_index, cu_window_seqlens
            # The tower permutes whole merge units (spatial_merge_size**2 consecutive patches) into windows.
            pos_hw = pos_hw.reshape(-1, tower.spatial_merge_unit, 2)[window_index.to(pos_hw.device)].reshape(-1, 2)
        kwargs[POSITIONS_KWARG] = pos_hw.contiguous()
        return args, kwargs

    return hook


def _kernel_covers(x: torch.Tensor, head_dim: int) -> bool:
    """Whether vl3fast's ops take activations like `x` (else transformers' path runs); on CUDA, which kernel
    then serves them is ops.attention.kernel_for."""
    return x.device.type in ("cpu", "cuda") and x.dtype in ATTENTION_DTYPES and head_dim in ATTENTION_HEAD_DIMS


def _fused_forward(spec: VisionTower, theta: float):
    warned = []

    def forward(self, hidden_states, cu_seqlens, position_embeddings=None, max_seqlen=None, **kwargs):
        pos_hw = kwargs.pop(POSITIONS_KWARG, None)
        dropout = self.training and getattr(self, "attention_dropout", 0.0) > 0
        if pos_hw is None or dropout or not _kernel_covers(hidden_states, self.head_dim):
            if dropout and not warned:
                warned.append(True)
                warnings.warn("vl3fast: attention dropout > 0 in training; transformers' vision attention runs")
            return type(self).forward(self, hidden_states, cu_seqlens, position_embeddings, max_seqlen, **kwargs)
        T, H, D = hidden_states.shape[0], self.num_heads, self.head_dim
        if spec.fused_qkv:
            q, k, v = self.qkv(hidden_states).view(T, 3, H, D).unbind(1)  # strided views: the kernel takes them
        else:
            q, k, v = (proj(hidden_states).view(T, H, D) for proj in (self.q_proj, self.k_proj, self.v_proj))
        out = rope2d_attention(
            q, k, v, cu_seqlens.to(torch.int32), pos_hw.to(q.device), theta=theta, scale=float(self.scaling),
            max_seqlen=max_seqlen if isinstance(max_seqlen, int) else None,
        ).reshape(T, H * D)
        if spec.fused_qkv:
            return self.proj(out)
        return self.out_proj(out), None

    return forward


def _rope_theta(tower: torch.nn.Module, head_dim: int) -> float:
    """The tower's RoPE base, after checking its table is the one the kernel computes (else positions
    could not be fused and the swap would change results)."""
    rope = tower.config.rope_parameters
    if rope.get("rope_type", "axial") != "axial":
        raise ValueError(f"model: vl3fast fuses the axial 2D RoPE only, got rope_type={rope['rope_type']!r}")
    theta = float(rope["rope_theta"])
    rotary = tower.rotary_pos_emb
    inv_freq = rotary.inv_freq
    expected = rope2d_inv_freq(head_dim, theta).to(inv_freq.dtype)
    if getattr(rotary, "attention_scaling", 1.0) != 1.0 or inv_freq.device.type == "meta" or not torch.equal(
        inv_freq.detach().cpu(), expected
    ):
        raise ValueError(
            f"model: {type(tower).__name__}.rotary_pos_emb is not the axial 2D RoPE of head dim {head_dim} and "
            f"theta {theta} (inv_freq or attention_scaling changed); vl3fast cannot fuse it"
        )
    return theta


def swap_vision_attention(model: torch.nn.Module, spec: VisionTower) -> int:
    """Puts the fused attention into every `spec` tower inside `model` (in place, idempotent).

    Returns the number of attention modules that run vl3fast.  Raises ValueError if `model` has no such tower.
    """
    tower_cls, attention_cls = spec.classes()
    towers = [m for m in model.modules() if isinstance(m, tower_cls)]
    if not towers:
        raise ValueError(f"model: no {spec.tower} inside {type(model).__name__}")
    swapped = 0
    for tower in towers:
        if _STATE_ATTR in tower.__dict__:
            swapped += len(tower.__dict__[_STATE_ATTR][1])
            continue
        attentions = [m for m in tower.modules() if isinstance(m, attention_cls)]
        theta = _rope_theta(tower, attentions[0].head_dim)
        handle = tower.register_forward_pre_hook(_positions_hook(spec), with_kwargs=True)
        for attention in attentions:
            attention.forward = types.MethodType(_fused_forward(spec, theta), attention)
        setattr(tower, _STATE_ATTR, (handle, attentions))
        swapped += len(attentions)
    return swapped


def restore_vision_attention(model: torch.nn.Module) -> None:
    """Undoes swap_vision_attention on every tower inside `model`: hooks removed, class forwards back."""
    for tower in list(model.modules()):
        state = tower.__dict__.get(_STATE_ATTR)
        if state is None:
            continue
        handle, attentions = state
        handle.remove()
        for attention in attentions:
            del attention.forward  # the instance attribute; the class's forward shows through again
        delattr(tower, _STATE_ATTR)
