"""`max_item_tokens` / `max_video_tokens` bound what `plan_sizes` gives, over random and extreme sizes."""
from __future__ import annotations

import random

import pytest

from vl3fast.processing import ProcessingConfig
from vl3fast.processing.errors import MediaSizeError
from vl3fast.processing.resize import ItemShape, max_item_tokens, max_video_tokens, plan_sizes

CONFIGS = {"default": ProcessingConfig(), "small": ProcessingConfig(video_max_pixels=28 * 28 * 64,
                                                                     video_min_pixels=28 * 28 * 4,
                                                                     image_max_pixels=14 * 14 * 64,
                                                                     max_frames=16),
           "official": ProcessingConfig.official(max_tokens=2048)}


def _sizes(rng, n):
    out = [(1, 1), (1, 200), (200, 1), (14, 2800), (9000, 45), (27, 27), (28, 28), (4000, 4000)]
    while len(out) < n:
        h = int(10 ** rng.uniform(0, 3.7))
        w = int(min(max(h * 10 ** rng.uniform(-2.3, 2.3), 1), 9000))
        out.append((h, w))
    return out


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_bound_holds(name):
    config, rng = CONFIGS[name], random.Random(0)
    frame_counts = [None, 1, 2, 3, 7, config.max_frames if config.max_frames < 200 else 180]
    for h, w in _sizes(rng, 400):
        for t in frame_counts:
            try:
                plan = plan_sizes([ItemShape(h, w, t)], config)[0]
            except MediaSizeError:
                continue  # aspect ratio over the limit or below one block: refused, no tokens
            assert plan.num_tokens <= max_item_tokens(config, t), (h, w, t)
            if t is not None:
                assert plan.num_tokens <= max_video_tokens(config)


def test_bound_is_reached_closely():
    """The bound is not loose for the usual case (a small video scaled up to the per-frame minimum)."""
    config = ProcessingConfig()
    worst = max(plan_sizes([ItemShape(28, 28 * k, 180)], config)[0].num_tokens for k in range(1, 12))
    assert worst <= max_video_tokens(config) < 3 * worst
