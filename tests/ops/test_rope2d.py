"""apply_rope2d against transformers' VideoLLaMA3 rotation (forward and backward) and the reference."""
import pytest
import torch

import vl3fast
from vl3fast import reference

from ..conftest import hf_modeling

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# One unit in the last place of each dtype at magnitude ~1: the kernel rounds a float32 result once,
# transformers rounds a float32 result computed with a different (vectorized) sin/cos.
ULP = {torch.float32: 1e-6, torch.bfloat16: 2**-7, torch.float16: 2**-10}


def hf_rotate(x_THD, pos_hw, theta=10000.0):
    """transformers: VideoLlama3VisionRotaryEmbedding + apply_rotary_pos_emb_vision on x."""
    hf = hf_modeling()
    num_heads, head_dim = x_THD.shape[1], x_THD.shape[2]
    config = hf.VideoLlama3VisionConfig(hidden_size=num_heads * head_dim, num_attention_heads=num_heads)
    config.rope_parameters["rope_theta"] = theta
    rotary = hf.VideoLlama3VisionRotaryEmbedding(config)
    cos, sin = rotary(x_THD, pos_hw.long())
    out, _ = hf.apply_rotary_pos_emb_vision(x_THD, x_THD, cos, sin)
    return out


def positions(grid_thw=((1, 7, 9), (3, 6, 10)), merge_sizes=(1, 2)):
    pos_hw, _ = vl3fast.ops.rope2d_position_ids(torch.tensor(grid_thw), torch.tensor(merge_sizes))
    return pos_hw


def test_reference_is_transformers_bit_for_bit():
    pos_hw = positions()
    x = torch.randn(pos_hw.shape[0], 4, 72)
    assert torch.equal(reference.apply_rope2d(x, pos_hw), hf_rotate(x, pos_hw))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 72, 80, 128, 4, 256])
def test_forward_and_backward_match_transformers(dtype, head_dim):
    pos_hw = positions()
    x = torch.randn(pos_hw.shape[0], 3, head_dim, dtype=dtype)
    x_ours = x.clone().requires_grad_()
    x_hf = x.clone().requires_grad_()
    ours = vl3fast.ops.apply_rope2d(x_ours, pos_hw)
    theirs = hf_rotate(x_hf, pos_hw)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=ULP[dtype], atol=2 * ULP[dtype])
    grad = torch.randn_like(ours)
    ours.backward(grad)
    theirs.backward(grad)
    torch.testing.assert_close(x_ours.grad.float(), x_hf.grad.float(), rtol=ULP[dtype], atol=2 * ULP[dtype])


def test_large_positions_and_theta():
    pos_hw = torch.randint(0, 5000, (300, 2), dtype=torch.int32)
    x = torch.randn(300, 2, 72)
    torch.testing.assert_close(vl3fast.ops.apply_rope2d(x, pos_hw, 500.0), hf_rotate(x, pos_hw, 500.0), rtol=1e-5, atol=1e-5)


def test_strided_views_of_a_fused_qkv_projection():
    pos_hw = positions()
    T, H, D = pos_hw.shape[0], 4, 72
    qkv = torch.randn(T, 3 * H * D)
    q = qkv.view(T, 3, H, D)[:, 0]  # token stride 3*H*D, head stride D
    k_head_major = torch.randn(H, T, D).transpose(0, 1)  # token stride D, head stride T*D
    for view in (q, k_head_major):
        assert not view.is_contiguous()
        torch.testing.assert_close(vl3fast.ops.apply_rope2d(view, pos_hw), hf_rotate(view.contiguous(), pos_hw))


def test_inverse_undoes_rotation_and_nan_propagates():
    pos_hw = positions()
    x = torch.randn(pos_hw.shape[0], 2, 72)
    x[3, 1, 5] = float("nan")
    rotated = torch.ops.vl3fast.apply_rope2d(x, pos_hw, 10000.0, False)
    back = torch.ops.vl3fast.apply_rope2d(rotated, pos_hw, 10000.0, True)
    expected_nan = torch.zeros_like(x, dtype=torch.bool)
    expected_nan[3, 1, [5, 5 + 36]] = True  # a NaN spreads to its rotation partner, nowhere else
    assert torch.equal(torch.isnan(back), expected_nan)
    torch.testing.assert_close(back[~expected_nan], x[~expected_nan], rtol=1e-5, atol=1e-5)


def test_empty_input():
    out = vl3fast.ops.apply_rope2d(torch.zeros(0, 2, 8), torch.zeros(0, 2, dtype=torch.int32))
    assert out.shape == (0, 2, 8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck(dtype):
    pos_hw = positions()
    x = torch.randn(pos_hw.shape[0], 2, 72, dtype=dtype, requires_grad=True)
    torch.library.opcheck(torch.ops.vl3fast.apply_rope2d.default, (x, pos_hw, 10000.0, False))


def _x(T=6, H=2, D=8, dtype=torch.float32):
    return torch.randn(T, H, D, dtype=dtype)


def _pos(T=6):
    return torch.zeros(T, 2, dtype=torch.int32)


@pytest.mark.parametrize(
    "x, pos_hw, theta, error, match",
    [
        (_x(dtype=torch.float64), _pos(), 1e4, TypeError, "x: expected dtype in \\(float32, bfloat16, float16\\)"),
        (torch.zeros(6, 2, 8, dtype=torch.int32), _pos(), 1e4, TypeError, "x: expected dtype"),
        (torch.randn(6, 16), _pos(), 1e4, ValueError, "x: expected 3 dims"),
        (_x(D=70), _pos(), 1e4, ValueError, "multiple of 4"),
        (_x(D=260), _pos(), 1e4, ValueError, "multiple of 4 in \\[4, 256\\]"),
        (torch.randn(6, 8, 2).transpose(1, 2), _pos(), 1e4, ValueError, "last dim must be contiguous"),
        (_x(), _pos().long(), 1e4, TypeError, "pos_hw: expected dtype in \\(int32\\)"),
        (_x(), _pos(5), 1e4, ValueError, "pos_hw: expected shape \\[6, 2\\]"),
        (_x(), -_pos().add(1), 1e4, ValueError, "positions must be in \\[0, 2\\*\\*24\\)"),
        (_x(), _pos(), -1.0, ValueError, "theta: expected a positive finite float"),
        ("not a tensor", _pos(), 1e4, TypeError, "x: expected a torch.Tensor"),
    ],
)
def test_bad_input(x, pos_hw, theta, error, match):
    with pytest.raises(error, match=match):
        vl3fast.ops.apply_rope2d(x, pos_hw, theta)


@pytest.mark.cuda
@pytest.mark.skipif(not vl3fast.cuda_available(), reason=vl3fast.cuda_status()[1])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_cpu(dtype):
    pos_hw = positions()
    x = torch.randn(pos_hw.shape[0], 3, 72, dtype=dtype, requires_grad=True)
    x_cuda = x.detach().cuda().requires_grad_()
    out_cpu = vl3fast.ops.apply_rope2d(x, pos_hw)
    out_cuda = vl3fast.ops.apply_rope2d(x_cuda, pos_hw.cuda())
    torch.testing.assert_close(out_cuda.cpu().float(), out_cpu.float(), rtol=ULP[dtype], atol=2 * ULP[dtype])
    grad = torch.randn_like(out_cpu)
    out_cpu.backward(grad)
    out_cuda.backward(grad.cuda())
    torch.testing.assert_close(x_cuda.grad.cpu().float(), x.grad.float(), rtol=ULP[dtype], atol=2 * ULP[dtype])
    pos_cuda, cu_cuda = vl3fast.ops.rope2d_position_ids(torch.tensor([[2, 6, 4]]).cuda(), torch.tensor([2]).cuda())
    pos_ref, cu_ref = reference.rope2d_position_ids(torch.tensor([[2, 6, 4]]), torch.tensor([2]))
    assert torch.equal(pos_cuda.cpu(), pos_ref) and torch.equal(cu_cuda.cpu(), cu_ref)
