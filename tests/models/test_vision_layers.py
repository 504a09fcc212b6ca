"""Vision-encoder building blocks: the fused q/k/v projection keeps the checkpoint's keys, and bf16 linears on
CPUs without native bf16 GEMMs (fp32 GEMM of the upcast operands) are bf16 linears."""
from __future__ import annotations

import pytest
import torch

from vl3fast.models.videollama3 import VideoLLaMA3Config
from vl3fast.models.videollama3 import vision
from vl3fast.models.videollama3.vision import VisionEncoder


def test_fused_qkv_keeps_checkpoint_keys_and_writes_through():
    cfg = VideoLLaMA3Config.from_name("tiny").vision
    enc = VisionEncoder(cfg)
    keys = set(enc.state_dict())
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        assert f"layers.0.self_attn.{name}.weight" in keys and f"layers.0.self_attn.{name}.bias" in keys
    assert not any(".qkv." in k for k in keys)
    state = {k: torch.randn_like(v) for k, v in enc.state_dict().items()}
    enc.load_state_dict(state, strict=True)
    attn = enc.layers[1].self_attn
    c = cfg.hidden_size
    torch.testing.assert_close(attn.qkv.weight[c:2 * c], state["layers.1.self_attn.k_proj.weight"], rtol=0, atol=0)
    torch.testing.assert_close(attn.qkv.bias[2 * c:], state["layers.1.self_attn.v_proj.bias"], rtol=0, atol=0)
    for k, v in enc.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    # from_pretrained copies into the state-dict tensors: they must be views of the fused parameter
    with torch.no_grad():
        enc.state_dict(keep_vars=True)["layers.0.self_attn.v_proj.weight"].fill_(7.0)
    assert bool((enc.layers[0].self_attn.qkv.weight[2 * c:] == 7).all())
    partial = {k: v for k, v in state.items() if k != "layers.0.self_attn.k_proj.weight"}
    missing, unexpected = enc.load_state_dict(partial, strict=False)
    assert "layers.0.self_attn.qkv.weight" in missing
    assert {"layers.0.self_attn.q_proj.weight", "layers.0.self_attn.v_proj.weight"} <= set(unexpected)


@pytest.mark.parametrize("upcast", [True, False])
def test_bf16_linear_paths_are_bf16_linears(upcast, monkeypatch):
    monkeypatch.setattr(vision, "UPCAST_CPU_HALF_GEMM", upcast)
    g = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(96, 80).to(torch.bfloat16)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(80, 96, generator=g))
        layer.bias.copy_(torch.randn(80, generator=g))
    x = torch.randn(33, 96, generator=g).to(torch.bfloat16)
    exact = torch.nn.functional.linear(x.double(), layer.weight.double(), layer.bias.double())
    got = vision.linear(x, layer)
    assert got.dtype == torch.bfloat16
    # one bf16 rounding of the fp32-accumulated result: within half a bf16 ulp (2**-8 relative) + fp32 noise
    assert bool(((got.double() - exact).abs() <= exact.abs() * 2.0 ** -8 + 1e-3).all())
