"""Pure-PyTorch oracles: the semantics every vl3fast kernel is tested and benchmarked against.

Written for clarity, not speed, and checked side by side against transformers' VideoLLaMA3 code
(tests/reference/).  Floating-point functions compute in float32, or float64 when given float64.
"""
from .attention import packed_attention, rope2d_attention, rope2d_attention_dense_mask
from .downsample import downsample
from .positions import rope2d_position_ids
from .pruning import frame_keep_mask
from .rope import apply_rope2d, rope2d_cos_sin, rope2d_inv_freq

__all__ = [
    "rope2d_position_ids",
    "rope2d_inv_freq",
    "rope2d_cos_sin",
    "apply_rope2d",
    "packed_attention",
    "rope2d_attention",
    "rope2d_attention_dense_mask",
    "frame_keep_mask",
    "downsample",
]
