"""Shared test helpers: seeded randomness, grids that break kernels, and transformers' reference code."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# Grids (t, h, w) with merge sizes: odd sizes, single-frame videos, one large item beside tiny ones.
GRID_CASES = {
    "image_m1": ([[1, 7, 9]], [1]),
    "video_m2": ([[3, 6, 10]], [2]),
    "mixed": ([[1, 5, 3], [4, 8, 6], [1, 1, 1], [2, 2, 14]], [1, 2, 1, 2]),
    "long_beside_tiny": ([[1, 32, 32]] + [[1, 1, 2]] * 20, [1] + [1] * 20),
}


@pytest.fixture(params=sorted(GRID_CASES))
def grid(request):
    g, m = GRID_CASES[request.param]
    return torch.tensor(g, dtype=torch.int64), torch.tensor(m, dtype=torch.int64)


def hf_modeling():
    """transformers' VideoLLaMA3 modeling module (the external reference)."""
    from transformers.models.video_llama_3 import modeling_video_llama_3

    return modeling_video_llama_3
