"""Reference Differential Frame Pruner keep mask (spec C), bit-exact with transformers on fp32 input."""
from __future__ import annotations

import torch


def frame_keep_mask(pixel_values, grid_thw, merge_sizes, *, threshold: float = 0.1, min_tokens: int = 1):
    """keep `[M]` bool, one entry per merged token of every item in order.

    Per video item (t > 1): d[t, j] = 255 * mean |P[t, j] - P[t-1, j]| over the merged token's m*m
    patches; frame 0 is kept; keep = d > threshold; a frame with fewer than `min_tokens` kept tokens
    keeps its first `min_tokens`.  Single-frame items keep everything.  Reduced-precision input is
    upcast to float32 first.
    """
    pixels = pixel_values.float() if pixel_values.dtype in (torch.bfloat16, torch.float16) else pixel_values
    masks = []
    start = 0
    for (t, h, w), m in zip(grid_thw.tolist(), merge_sizes.tolist()):
        item = pixels[start : start + t * h * w]
        start += t * h * w
        tokens = (h // m) * (w // m)
        if t == 1:
            masks.append(torch.ones(tokens, dtype=torch.bool, device=pixels.device))
            continue
        item = item.view(t, tokens, -1)
        diff = (item[1:] - item[:-1]).abs().mean(dim=-1) * 255
        diff = torch.cat([torch.full_like(diff[:1], threshold + 1), diff], dim=0)
        keep = diff > threshold
        starved = torch.nonzero(keep.sum(dim=1) < min_tokens)[:, 0]
        keep[starved, :min_tokens] = True
        masks.append(keep.flatten())
    if not masks:
        return torch.zeros(0, dtype=torch.bool, device=pixels.device)
    return torch.cat(masks)
