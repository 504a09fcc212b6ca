"""Frame sampling and the resize rules against transformers and the spec's checked numbers."""
from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from vl3fast.processing import (
    EmptyVideoError, MediaSizeError, ProcessingConfig, estimate_tokens, official_resize, plan_sizes, ItemShape,
    sample_frame_indices, smart_resize,
)

hf_video = pytest.importorskip("transformers.models.video_llama_3.video_processing_video_llama_3")
from transformers.video_utils import VideoMetadata  # noqa: E402


def _hf_indices(processor, total, video_fps, **kw):
    md = VideoMetadata(total_num_frames=total, fps=video_fps)
    return processor.sample_frames(md, **kw).numpy().astype(np.int64)


TOTALS = [1, 2, 3, 4, 5, 7, 10, 29, 30, 31, 59, 61, 100, 299, 300, 301, 997, 1799, 5400, 10007]
VIDEO_FPS = [1.0, 7.5, 10.0, 23.976023976023978, 24.0, 25.0, 29.97002997002997, 30.0, 59.94, 60.0]


@pytest.mark.parametrize("fps", [0.5, 1.0, 2.0, 3.0])
@pytest.mark.parametrize("min_frames,max_frames", [(4, 180), (1, 16), (8, 8), (4, 768)])
def test_fps_sampling_matches_transformers(hf_video_processor, fps, min_frames, max_frames):
    for total, vfps in itertools.product(TOTALS, VIDEO_FPS):
        ours = sample_frame_indices(total, vfps, fps=fps, min_frames=min_frames, max_frames=max_frames)
        ref = _hf_indices(hf_video_processor, total, vfps, fps=fps, min_frames=min_frames, max_frames=max_frames)
        assert ours.tolist() == ref.tolist(), (total, vfps)
        assert ours.dtype == np.int64


def test_num_frames_sampling_matches_transformers(hf_video_processor):
    rng = random.Random(0)
    for _ in range(300):
        total = rng.randint(1, 5000)
        n = rng.randint(1, total)
        ours = sample_frame_indices(total, 30.0, fps=None, num_frames=n)
        ref = _hf_indices(hf_video_processor, total, 30.0, num_frames=n)
        assert ours.tolist() == ref.tolist(), (total, n)


def test_sampling_spans_the_whole_video():
    """User need 3: sampled timestamps cover >= 95% of the duration, also when max_frames applies."""
    for total, vfps in [(5400, 30.0), (108000, 30.0), (301, 29.97)]:
        idx = sample_frame_indices(total, vfps, fps=1.0, max_frames=180)
        assert len(idx) == min(180, math.floor(total / vfps))
        assert (idx[-1] + total / len(idx)) / total >= 0.95
        assert (np.diff(idx) > 0).all()


def test_sampling_without_fps_keeps_every_frame():
    assert sample_frame_indices(7, 30.0, fps=None).tolist() == list(range(7))


def test_sampling_errors():
    with pytest.raises(ValueError, match="mutually exclusive"):
        sample_frame_indices(100, 30.0, fps=1.0, num_frames=5)
    with pytest.raises(ValueError, match="num_frames=200"):
        sample_frame_indices(100, 30.0, fps=None, num_frames=200)
    with pytest.raises(EmptyVideoError):
        sample_frame_indices(0, 30.0)
    with pytest.raises(ValueError, match="frame rate"):
        sample_frame_indices(100, None, fps=1.0)


def test_smart_resize_matches_transformers():
    rng = random.Random(1)
    sizes = [(1, 1), (1, 200), (200, 1), (13, 27), (28, 28), (1080, 1920), (1920, 1080), (4000, 3000), (7, 1399)]
    sizes += [(rng.randint(1, 3000), rng.randint(1, 3000)) for _ in range(400)]
    settings = [(14, 56 * 56, 28 * 28 * 1280), (28, 128 * 28 * 28, 28 * 28 * 768 // 10), (28, 0, 28 * 28 * 768 // 180),
                (28, 3136, 12845056), (14, 16 * 196, 16384 * 196)]
    checked = 0
    for (h, w), (factor, lo, hi) in itertools.product(sizes, settings):
        try:
            ref = hf_video.smart_resize(h, w, factor=factor, min_pixels=lo, max_pixels=hi)
        except ValueError:
            with pytest.raises(MediaSizeError):
                smart_resize(h, w, factor, lo, hi)
            continue
        if min(ref) == 0:  # transformers returns a zero side here; we refuse it
            with pytest.raises(MediaSizeError):
                smart_resize(h, w, factor, lo, hi)
            continue
        assert smart_resize(h, w, factor, lo, hi) == ref, (h, w, factor, lo, hi)
        checked += 1
    assert checked > 1500


def test_official_rule_checked_numbers():
    """Spec D: sora.png 1920x1080 at m=1 -> 1078x1918 = 10549 tokens; a 1080p 180-frame video at m=2
    -> 196x336 per frame = 84 tokens/frame, 15120 in total."""
    assert official_resize(1080, 1920, 14, 16, 16384, num_items=1) == (1078, 1918)
    cfg = ProcessingConfig.official()
    (plan,) = plan_sizes([ItemShape(1080, 1920)], cfg)
    assert plan.grid_thw == (1, 77, 137) and plan.num_tokens == 10549
    (plan,) = plan_sizes([ItemShape(1080, 1920, 180)], cfg)
    assert (plan.resized_height, plan.resized_width) == (196, 336)
    assert plan.tokens_per_frame == 84 and plan.num_tokens == 15120
    est = estimate_tokens(images=[(1080, 1920)], videos=[(180, 1080, 1920)], config=cfg)
    assert [it.tokens for it in est.items] == [10549, 15120]
    # the same video under transformers' class defaults (602112 pixels shared by all frames):
    # 3345 pixels a frame, floored to one 28x56 block pair = 2 tokens per frame
    (hf_plan,) = plan_sizes([ItemShape(1080, 1920, 180)], ProcessingConfig())
    assert (hf_plan.resized_height, hf_plan.resized_width) == (28, 56) and hf_plan.num_tokens == 360


def test_official_rule_shares_the_budget_and_checks_min_after_max():
    cfg = ProcessingConfig.official(max_tokens=1000, min_tokens=16)
    one = plan_sizes([ItemShape(1000, 1000)], cfg)[0]
    two = plan_sizes([ItemShape(1000, 1000), ItemShape(1000, 1000)], cfg)
    assert one.num_tokens <= 1000 and all(p.num_tokens <= 500 for p in two)
    assert two[0].num_tokens < one.num_tokens
    # a 10-frame budget of 20 tokens is 2 tokens per frame after the max step; the min step lifts it
    cfg = ProcessingConfig.official(max_tokens=20, min_tokens=16, video_merge_size=2)
    (plan,) = plan_sizes([ItemShape(500, 500, 10)], cfg)
    assert plan.tokens_per_frame >= 16
    # transformers' rule skips the minimum once the maximum triggered
    (plan,) = plan_sizes([ItemShape(500, 500, 10)], ProcessingConfig(video_max_pixels=10 * 28 * 28 * 2))
    assert plan.tokens_per_frame == 1


def test_official_rule_refuses_mixed_merge_sizes():
    with pytest.raises(ValueError, match="one merge size"):
        plan_sizes([ItemShape(100, 100), ItemShape(100, 100, 4)], ProcessingConfig.official())


@pytest.mark.parametrize("rule", ["hf", "official"])
@pytest.mark.parametrize("h,w", [(1, 201), (1000, 4), (3, 700)])
def test_absurd_aspect_ratio(rule, h, w):
    with pytest.raises(MediaSizeError, match="aspect ratio"):
        plan_sizes([ItemShape(h, w)], ProcessingConfig(resize_rule=rule))


def test_config_validation():
    with pytest.raises(ValueError, match="resize_rule"):
        ProcessingConfig(resize_rule="nearest")
    with pytest.raises(ValueError, match="min_frames"):
        ProcessingConfig(min_frames=10, max_frames=5)
    with pytest.raises(ValueError, match="fps"):
        ProcessingConfig(fps=0)
    with pytest.raises(TypeError, match="unknown processing setting"):
        estimate_tokens(images=[(10, 10)], max_pixel=5)
