"""One swapped vision attention layer against the transformers module it replaces, alone: the swap's forward
(the module's own Linears around vl3fast.ops.rope2d_attention) and transformers' forward with the cos/sin of
the tower's own rotary module, same weights and inputs; the output and the gradients of the input and of every
weight by the rule of tolerance.py.  On packed segments that the towers' grids rarely or never produce: runs
of equal lengths, lone ones and empty ones (first, middle and last), for both layouts: Qwen2.5-VL's fused qkv
Linear (q, k, v reach the kernel as strided views) and VideoLLaMA3's q/k/v Linears.
Measured (1 thread): the worst tensor sits at 0.36 (Qwen2.5-VL) / 0.43 (VideoLLaMA3) of its limit; row/col
positions swapped, theta 1% off or the softmax scale 1% off exceed it 250x or more (every gradient but the
two the attention weights cannot change, the v and output-projection biases).
"""
from __future__ import annotations

import copy
import types

import pytest
import torch

from vl3fast.integrations import transformers_vision

from . import tiny_vlms as tv
from .tolerance import assert_all_rule

pytestmark = pytest.mark.usefixtures("one_thread")

CU_SEQLENS = [0, 0, 16, 32, 48, 48, 56, 64, 85, 85]  # empty, a run of 3, empty, a run of 2, a lone 21, empty


def _layer(family):
    """(first attention module of a tiny tower, the tower's rotary module, its RoPE theta)."""
    spec = transformers_vision.VISION_TOWERS[family]
    tower_cls, attention_cls = spec.classes()
    model = tv.build(family)
    tower = next(m for m in model.modules() if isinstance(m, tower_cls))
    attention = next(m for m in tower.modules() if isinstance(m, attention_cls))
    # transformers' eager attention: its SDPA wrapper cannot reshape the output of an empty segment.
    attention.config._attn_implementation = "eager"
    return attention, tower.rotary_pos_emb, transformers_vision._rope_theta(tower, attention.head_dim)


def _run(attention, x, cu_seqlens, **kwargs):
    """(output, {"input" and parameter names: gradient}) of one forward + backward against a fixed dout."""
    attention.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    out = attention(x, cu_seqlens, max_seqlen=21, **kwargs)
    out = out[0] if isinstance(out, tuple) else out  # VideoLLaMA3's returns (output, attention weights)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))  # the same values in every dtype
    out.backward(dout.to(out.dtype))
    grads = {n: p.grad.detach().clone() for n, p in attention.named_parameters()}
    return out.detach(), {"input": x.grad, **grads}


@pytest.mark.parametrize("family", ["qwen2_5_vl", "video_llama_3"])
def test_swapped_layer_matches_transformers(family, kernel_calls):
    attention, rotary, theta = _layer(family)
    T = CU_SEQLENS[-1]
    cu_seqlens = torch.tensor(CU_SEQLENS, dtype=torch.int32)
    pos_hw = torch.stack([torch.arange(T) // 5, torch.arange(T) % 5], 1).to(torch.int32)
    x = torch.randn(T, attention.num_heads * attention.head_dim, generator=torch.Generator().manual_seed(0))
    cos, sin = rotary(x, pos_hw)
    stock = _run(attention, x, cu_seqlens, position_embeddings=(cos, sin))
    exact = _run(copy.deepcopy(attention).double(), x.double(), cu_seqlens,
                 position_embeddings=(cos.double(), sin.double()))
    # What swap_vision_attention installs per module; the tower's hook would pass the positions.
    spec = transformers_vision.VISION_TOWERS[family]
    attention.forward = types.MethodType(transformers_vision._fused_forward(spec, theta), attention)
    ours = _run(attention, x, cu_seqlens, **{transformers_vision.POSITIONS_KWARG: pos_hw})
    assert len(kernel_calls) == 1
    assert_all_rule(ours, stock, exact)
