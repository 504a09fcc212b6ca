"""Decode + preprocess throughput for a synthetic 1080p clip sampled at 1 fps: vl3fast against
transformers' VideoLLaMA3 video processor, same file, same run.

transformers path: `transformers.video_utils.load_video(path, backend="pyav", sample_indices_fn=
processor.sample_frames)` (its own PyAV loader; the processor's default torchcodec backend is not
installed and torchvision's video decoding was removed in 0.26) then `VideoLlama3VideoProcessor`.
vl3fast path: `vl3fast.processing.preprocess_videos(path)`. Both give bit-identical pixel values
(asserted here). Metric: sampled frames per second, end to end (open, decode, resize, normalize,
patchify).

Clip: H.264 (libx264 veryfast, B-frames, keyframe every 2 s), 30 fps, 10 s by default;
VL3FAST_BENCH_FULL=1 adds a 60 s clip. Clips are cached under ~/.cache/vl3fast/bench.
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")
pytest.importorskip("torchvision")
torch = pytest.importorskip("torch")

from vl3fast.processing import estimate_tokens, preprocess_videos  # noqa: E402

CACHE = Path(os.environ.get("VL3FAST_BENCH_CACHE", Path.home() / ".cache" / "vl3fast" / "bench"))
CLIPS = {"1080p_10s": 10}
if os.environ.get("VL3FAST_BENCH_FULL") == "1":
    CLIPS["1080p_60s"] = 60
_results: dict = {}


def _write_clip(path: Path, seconds: int, fps: int = 30, width: int = 1920, height: int = 1080) -> None:
    """Moving gradients written straight as yuv420p planes (no RGB conversion: fast to make)."""
    tmp = path.with_suffix(".part.mp4")
    container = av.open(str(tmp), "w")
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.codec_context.gop_size = 2 * fps
    stream.options = {"preset": "veryfast"}
    yy, xx = np.mgrid[0:height, 0:width]
    y_base = ((xx // 4 + yy // 3) % 256).astype(np.uint8)
    uv_base = ((np.mgrid[0:height // 2, 0:width // 2][1] // 2) % 256).astype(np.uint8)
    for i in range(seconds * fps):
        y = np.roll(y_base, 3 * i, axis=1)
        y[height // 3: height // 2, (5 * i) % width: (5 * i) % width + 200] = 235  # a moving bar
        u = np.roll(uv_base, i, axis=0)
        v = np.roll(uv_base, -2 * i, axis=1)
        planes = np.concatenate([y, u.reshape(height // 4, width), v.reshape(height // 4, width)])
        frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    tmp.rename(path)


@pytest.fixture(scope="module", params=list(CLIPS))
def clip(request):
    seconds = CLIPS[request.param]
    path = CACHE / f"synthetic_{request.param}_gop2s_v1.mp4"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        _write_clip(path, seconds)
    return request.param, str(path)


@pytest.fixture(scope="module")
def hf_processor():
    mod = pytest.importorskip("transformers.models.video_llama_3.video_processing_video_llama_3")
    return mod.VideoLlama3VideoProcessor()


def _transformers(path, processor):
    from transformers.video_utils import load_video

    frames, _ = load_video(path, backend="pyav", sample_indices_fn=partial(processor.sample_frames, fps=1.0))
    return processor(frames, return_tensors="pt")["pixel_values_videos"]


def _vl3fast(path):
    return preprocess_videos(path, fps=1.0).pixel_values


@pytest.fixture(scope="module")
def expected(clip, hf_processor):
    return _transformers(clip[1], hf_processor)


def test_paired_speedup(bench, clip, hf_processor, expected):
    """Both pipelines alternately in every round, so a machine shared with other work loads them
    alike; the speedup is the median of the per-round ratios."""
    import time

    name, path = clip
    times = {"transformers": [], "vl3fast": []}

    def pair():
        t0 = time.perf_counter()
        a = _transformers(path, hf_processor)
        t1 = time.perf_counter()
        b = _vl3fast(path)
        t2 = time.perf_counter()
        times["transformers"].append(t1 - t0)
        times["vl3fast"].append(t2 - t1)
        return a, b

    bench.group = f"processing-{name}-paired"
    a, b = bench.pedantic(pair, rounds=5, iterations=1, warmup_rounds=0)
    assert torch.equal(a, expected) and torch.equal(b, expected)
    frames = estimate_tokens(videos=[path], fps=1.0).items[0].num_frames
    ratios = [t / v for t, v in zip(times["transformers"], times["vl3fast"])]
    bench.extra_info.update({
        "clip": name, "sampled_frames": frames,
        "transformers_median_s": float(np.median(times["transformers"])),
        "vl3fast_median_s": float(np.median(times["vl3fast"])),
        "transformers_frames_per_s": frames / float(np.median(times["transformers"])),
        "vl3fast_frames_per_s": frames / float(np.median(times["vl3fast"])),
        "speedup_median_of_pairs": float(np.median(ratios)),
        "speedup_min_of_pairs": float(min(ratios)),
    })


@pytest.mark.parametrize("impl", ["transformers", "vl3fast"])
def test_decode_preprocess_1fps(bench, clip, hf_processor, expected, impl):
    name, path = clip
    fn = partial(_transformers, path, hf_processor) if impl == "transformers" else partial(_vl3fast, path)
    bench.group = f"processing-{name}"
    out = bench.pedantic(fn, rounds=5, iterations=1, warmup_rounds=1)
    assert torch.equal(out, expected)  # the same model input
    (item,) = estimate_tokens(videos=[path], fps=1.0).items
    frames = item.num_frames
    bench.extra_info.update({"clip": name, "sampled_frames": frames, "grid_thw": list(item.grid_thw),
                             "visual_tokens": item.tokens, "impl": impl})
    if bench.stats is not None:
        median = bench.stats.stats.median
        bench.extra_info["frames_per_s"] = frames / median
        _results[(name, impl)] = median
        if impl == "vl3fast" and (name, "transformers") in _results:
            bench.extra_info["speedup_vs_transformers"] = _results[(name, "transformers")] / median
