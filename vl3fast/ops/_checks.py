"""Argument validation shared by the ops: every message names the argument and what was expected.

Shape/dtype/device checks run in both the real and the fake (meta) implementations; checks that need
tensor values run only where the values are on the host, so they never add a device sync.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import torch

from .._backend import core

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
INT_DTYPES = (torch.int32, torch.int64)


def _names(dtypes: Iterable[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def check_tensor(name: str, t, *, dtypes: Sequence[torch.dtype], ndim: int | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name}: expected dtype in ({_names(dtypes)}), got {str(t.dtype).replace('torch.', '')}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dims, got shape {tuple(t.shape)}")
    if t.device.type not in ("cpu", "cuda", "meta"):  # meta: shape-only tracing runs the fake impls
        raise ValueError(f"{name}: expected a CPU or CUDA tensor, got device {t.device}")


def check_same_device(**tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all tensors must be on one device, got {listed}")


def check_last_dim_contiguous(name: str, t: torch.Tensor) -> None:
    if t.dim() > 0 and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(
            f"{name}: the last dim must be contiguous (stride 1), got strides {tuple(t.stride())}; "
            f"call .contiguous() first"
        )


# The head dims every rope2d op supports, from their one declaration in the compiled core
# (csrc/include/vl3fast/rope_math.h): 2D RoPE splits the head dim into row and column quarters.
_HEAD_DIM_RANGE = core.head_dim_range()
HEAD_DIMS = tuple(range(_HEAD_DIM_RANGE["min"], _HEAD_DIM_RANGE["max"] + 1, _HEAD_DIM_RANGE["multiple"]))
HEAD_DIMS_TEXT = f"multiples of {_HEAD_DIM_RANGE['multiple']} in [{HEAD_DIMS[0]}, {HEAD_DIMS[-1]}]"


def check_head_dim(name: str, head_dim: int) -> None:
    if head_dim not in HEAD_DIMS:
        raise ValueError(
            f"{name}: head dim must be a multiple of {_HEAD_DIM_RANGE['multiple']} in [{HEAD_DIMS[0]}, "
            f"{HEAD_DIMS[-1]}] (2D RoPE splits it into row and column quarters), got {head_dim}"
        )


def check_positions(pos_hw: torch.Tensor, num_tokens: int) -> None:
    check_tensor("pos_hw", pos_hw, dtypes=(torch.int32,), ndim=2)
    if pos_hw.shape[0] != num_tokens or pos_hw.shape[1] != 2:
        raise ValueError(f"pos_hw: expected shape [{num_tokens}, 2] (row, col per token), got {tuple(pos_hw.shape)}")


def check_position_values(pos_hw: torch.Tensor) -> None:
    """Positions must be in [0, 2**24) so that float32(position) is exact. Host tensors only (no sync)."""
    if pos_hw.device.type != "cpu" or pos_hw.numel() == 0:
        return
    lo, hi = int(pos_hw.min()), int(pos_hw.max())
    if lo < 0 or hi >= 1 << 24:
        raise ValueError(f"pos_hw: positions must be in [0, 2**24), got values in [{lo}, {hi}]")


def check_real_number(name: str, value, *, allow_zero: bool = False) -> float:
    """A finite positive (or >= 0) Python/NumPy real: never a bool, a string or a tensor (custom ops would
    silently turn True into 1.0 and a 0-dim tensor into its value)."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a float, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        what = "a finite float >= 0" if allow_zero else "a positive finite float"
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return value


def check_theta(theta: float) -> float:
    return check_real_number("theta", theta)


def check_int(name: str, value, *, minimum: int = 0) -> int:
    """A Python/NumPy integer >= minimum, never a bool or a float."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return int(value)


def check_has_values(name: str, t: torch.Tensor) -> None:
    """Public calls need real data: a meta tensor (shape only) is refused by name (fake impls still accept it)."""
    if t.device.type == "meta":
        raise ValueError(f"{name}: on the meta device, which holds no values; pass a CPU or CUDA tensor")


def int_tensor_from(name: str, value, ndim: int) -> torch.Tensor:
    """A tensor as given, or nested lists/tuples of Python ints as an int64 tensor of `ndim` dims. Floats, bools,
    strings, None and ragged lists are refused with the argument named (torch.as_tensor would truncate 1.5)."""
    import numbers

    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name}: expected a tensor or a nested list of ints, got {type(value).__name__}")

    def shape_of(v, depth):
        if depth == ndim:
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError(f"{name}: expected integers, got {type(v).__name__} {v!r}")
            return ()
        if not isinstance(v, (list, tuple)):
            raise ValueError(f"{name}: expected {ndim} nested levels of lists, got {type(v).__name__} {v!r}")
        shapes = {shape_of(x, depth + 1) for x in v}
        if len(shapes) > 1:
            raise ValueError(f"{name}: ragged nested list (rows of different lengths): {value!r}")
        return (len(v), *(shapes.pop() if shapes else ((0,) * (ndim - depth - 1))))

    shape = shape_of(value, 0)
    return torch.tensor(value, dtype=torch.int64).reshape(shape)


def check_grid(grid_thw: torch.Tensor, merge_sizes: torch.Tensor) -> None:
    """Shape/dtype checks of a visual grid; its values are checked by check_grid_rows() (PackedGrid)."""
    check_tensor("grid_thw", grid_thw, dtypes=INT_DTYPES, ndim=2)
    check_tensor("merge_sizes", merge_sizes, dtypes=INT_DTYPES, ndim=1)
    check_has_values("grid_thw", grid_thw)
    check_has_values("merge_sizes", merge_sizes)
    if grid_thw.shape[1] != 3:
        raise ValueError(f"grid_thw: expected shape [N, 3] (t, h, w per item), got {tuple(grid_thw.shape)}")
    if merge_sizes.shape[0] != grid_thw.shape[0]:
        raise ValueError(
            f"merge_sizes: expected one merge size per grid row ({grid_thw.shape[0]}), got {merge_sizes.shape[0]}"
        )


def check_grid_rows(rows) -> None:
    """Values of a grid read on the host, [(t, h, w, m)] per item."""
    for i, (t, h, w, m) in enumerate(rows):
        if min(t, h, w) <= 0:
            raise ValueError(f"grid_thw[{i}] = {(t, h, w)}: t, h and w must be positive")
        if m <= 0:
            raise ValueError(f"merge_sizes[{i}] = {m}: must be positive")
        if h % m or w % m:
            raise ValueError(f"grid_thw[{i}] = {(t, h, w)}: h and w must be divisible by merge_sizes[{i}] = {m}")
    total = sum(t * h * w for t, h, w, _ in rows)
    if total >= 1 << 31:
        raise ValueError(f"grid_thw: {total} patches in total; at most 2**31 - 1 are supported (int32 offsets)")
