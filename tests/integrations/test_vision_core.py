"""The swapped vision attention's core (vl3fast.integrations.transformers_vision_core): both implementations
against a float64 per-segment reference (transformers' rotary math), outputs and gradients, on a fused-qkv
strided layout with segments of mixed lengths, runs of equal ones and empty ones."""
from __future__ import annotations

import pytest
import torch

from vl3fast.integrations import transformers_vision_core as core
from vl3fast.reference.rope import rope2d_inv_freq

pytestmark = pytest.mark.usefixtures("one_thread")

THETA = 10000.0


def test_equal_length_runs():
    assert core.equal_length_runs([0, 4, 8, 8, 12, 14, 16, 16]) == [(0, 4, 3), (12, 2, 2)]
    assert core.equal_length_runs([0, 0]) == []
    assert core.equal_length_runs([0, 3, 7]) == [(0, 3, 1), (3, 4, 1)]


def test_path_for_each_device():
    assert core.path_for("cpu") == "fused"
    assert core.path_for("cuda") == "fused"


def _reference(q, k, v, cu, pos, scale):
    """float64, per segment, rotate_half RoPE as transformers' vision towers compute it."""
    D = q.shape[-1]
    inv = rope2d_inv_freq(D, THETA).double()
    freqs = torch.cat([pos[:, :1].double() * inv, pos[:, 1:].double() * inv], -1)
    cos, sin = torch.cat([freqs, freqs], -1).cos()[:, None], torch.cat([freqs, freqs], -1).sin()[:, None]

    def rope(x):
        a, b = x.chunk(2, -1)
        return x * cos + torch.cat([-b, a], -1) * sin

    q, k = rope(q), rope(k)
    outs = []
    for s, e in zip(cu[:-1], cu[1:]):
        att = torch.einsum("ihd,jhd->hij", q[s:e], k[s:e]) * scale
        outs.append(torch.einsum("hij,jhd->ihd", att.softmax(-1), v[s:e]))
    return torch.cat(outs)


@pytest.mark.parametrize("path", core.ATTENTION_PATHS)
def test_both_paths_match_the_reference(path, monkeypatch):
    monkeypatch.setattr(core, "path_for", lambda device_type: path)
    H, D = 2, 80
    cu = [0, 16, 32, 48, 48, 56, 64, 85, 85]  # a run of 3, an empty segment, a run of 2, a lone one, empty at the end
    T = cu[-1]
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(T, 3, H, D, generator=g, requires_grad=True)
    pos = torch.stack([torch.arange(T) // 5, torch.arange(T) % 5], 1).to(torch.int32)
    dout = torch.randn(T, H, D, generator=g)
    scale = D ** -0.5
    q, k, v = qkv.unbind(1)  # strided views of one fused projection, as Qwen's towers produce them
    out = core.packed_rope2d_attention(q, k, v, torch.tensor(cu, dtype=torch.int32), pos, theta=THETA, scale=scale)
    out.backward(dout)
    exact_qkv = qkv.detach().double().requires_grad_()
    exact = _reference(*exact_qkv.unbind(1), cu, pos, scale)
    exact.backward(dout.double())
    torch.testing.assert_close(out.double(), exact.detach(), rtol=0, atol=2e-5)
    torch.testing.assert_close(qkv.grad.double(), exact_qkv.grad, rtol=0, atol=2e-5)
