"""apply_rope2d: VideoLLaMA3's 2D rotary embedding on packed [T, H, D] tensors, forward and backward."""
from __future__ import annotations

import torch

from .._backend import core
from ._bridge import stream_of, tensor_ref
from ._checks import (
    FLOAT_DTYPES,
    check_has_values,
    check_head_dim,
    check_last_dim_contiguous,
    check_position_values,
    check_positions,
    check_same_device,
    check_tensor,
    check_theta,
)
from .inv_freq import inv_freq_on

__all__ = ["apply_rope2d"]


def _check(x: torch.Tensor, pos_hw: torch.Tensor, theta: float) -> None:
    check_tensor("x", x, dtypes=FLOAT_DTYPES, ndim=3)
    check_head_dim("x", x.shape[-1])
    check_last_dim_contiguous("x", x)
    check_positions(pos_hw, x.shape[0])
    check_same_device(x=x, pos_hw=pos_hw)
    check_theta(theta)


@torch.library.custom_op("vl3fast::apply_rope2d", mutates_args=())
def _apply_rope2d(x: torch.Tensor, pos_hw: torch.Tensor, theta: float, inverse: bool) -> torch.Tensor:
    _check(x, pos_hw, theta)
    check_position_values(pos_hw)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    pos_hw = pos_hw.contiguous()  # keep a reference: the core only borrows the pointer
    core.apply_rope2d(
        tensor_ref(x), tensor_ref(pos_hw), tensor_ref(inv_freq_on(x.shape[-1], float(theta), x.device)),
        tensor_ref(out), inverse, stream_of(x),
    )
    return out


@_apply_rope2d.register_fake
def _(x, pos_hw, theta, inverse):
    _check(x, pos_hw, theta)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _setup_context(ctx, inputs, output):
    # By name, not position, as in ops/attention.py: robust to signature changes.
    args = dict(zip(("x", "pos_hw", "theta", "inverse"), inputs))
    ctx.save_for_backward(args["pos_hw"])
    ctx.theta = args["theta"]
    ctx.inverse = args["inverse"]


def _backward(ctx, grad_out):
    (pos_hw,) = ctx.saved_tensors
    # The rotation is orthogonal: its adjoint is the rotation by the opposite angle.
    grad_x = torch.ops.vl3fast.apply_rope2d(grad_out.contiguous(), pos_hw, ctx.theta, not ctx.inverse)
    return grad_x, None, None, None


_apply_rope2d.register_autograd(_backward, setup_context=_setup_context)


def apply_rope2d(x: torch.Tensor, pos_hw: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Rotates `x_THD` by VideoLLaMA3's 2D RoPE at `pos_hw_T2` (row, col per token).

    Rotary dim D/2 split into D/4 row and D/4 column frequencies, `rotate_half` over the full D, angles
    in float32 (spec A).  fp32/bf16/fp16 in, same dtype out; differentiable in x.  Heads may be strided
    (e.g. a view of a fused qkv projection) as long as the last dim is contiguous.
    """
    for name, t in (("x", x), ("pos_hw", pos_hw)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        check_has_values(name, t)
    theta = check_theta(theta)  # before the op: its schema would turn True into 1.0
    _check(x, pos_hw, theta)  # also inside the op; here first so non-tensors get a named TypeError
    return torch.ops.vl3fast.apply_rope2d(x, pos_hw, theta, False)
