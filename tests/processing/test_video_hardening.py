"""Video defects found by the bad-input sweep (issue #11): still images given as videos, sampling and resize
arguments out of range, size errors without the file name, display-matrix rotation, variable frame rate
timestamps, and memory held by timed-out decodes."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from vl3fast.processing import (
    ImageNotVideoError, MediaError, MediaSizeError, NotMediaError, ProcessingConfig, estimate_tokens, load_video,
    preprocess_videos, probe_video, resize_frames, sample_frame_indices,
)
from vl3fast.processing.image import MAX_PIXELS_ENV
from vl3fast.processing.prompt import decoded_stamps

from ._media import VFR_TIMES, hf_load_video

VIDEO_CALLS = {
    "load_video": load_video,
    "probe_video": probe_video,
    "estimate_tokens": lambda p: estimate_tokens(videos=[p]),
    "preprocess_videos": preprocess_videos,
}


def _raw_frames(path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as c:
        return [(f.to_ndarray(format="rgb24"), f.rotation) for f in c.decode(video=0)]


@pytest.mark.parametrize("kind", ["png", "jpg", "webp", "png_named_mp4"])
@pytest.mark.parametrize("call", list(VIDEO_CALLS))
def test_still_image_given_as_video_is_named(clips, kind, call):
    """transformers' PyAV loader divides by a frame count of 0 on these; vl3fast used to load a PNG as a
    one-frame video and call a JPEG corrupt."""
    with pytest.raises(ImageNotVideoError, match="still image") as info:
        VIDEO_CALLS[call](clips[kind])
    assert isinstance(info.value, NotMediaError) and isinstance(info.value, MediaError)
    assert clips[kind] in str(info.value) and "images=" in str(info.value)


def test_animated_gif_is_a_video_as_in_transformers(clips, hf_video_processor):
    frames, md = hf_load_video(clips["gif"], hf_video_processor, fps=1.0)
    ours = load_video(clips["gif"])
    assert ours.indices.tolist() == np.asarray(md.frames_indices).tolist() == [0, 1, 2]
    assert np.array_equal(ours.frames, frames)


@pytest.mark.parametrize("fps", [0, -1, -0.5, float("nan"), float("inf")])
def test_fps_out_of_range_is_refused(videos, fps):
    with pytest.raises(ValueError, match="fps must be > 0"):
        load_video(videos["h264_bframes"], fps=fps)  # used to give min_frames=4 frames
    with pytest.raises(ValueError, match="fps must be > 0"):
        sample_frame_indices(72, 24.0, fps=fps)
    with pytest.raises(ValueError, match="fps must be > 0"):
        preprocess_videos(videos["h264_bframes"], fps=fps)


def test_sampling_argument_types_are_named(videos):
    with pytest.raises(TypeError, match="fps must be a number"):
        load_video(videos["h264_bframes"], fps=True)
    with pytest.raises(ValueError, match="num_frames must be >= 1"):
        load_video(videos["h264_bframes"], num_frames=0)  # used to say "fps and num_frames are mutually exclusive"
    with pytest.raises(TypeError, match="max_frames must be an int"):
        sample_frame_indices(72, 24.0, max_frames=2.5)
    with pytest.raises(ValueError, match="min_frames"):
        ProcessingConfig(min_frames=0)


@pytest.mark.parametrize("size,exc", [((0, 0), ValueError), ((0, 56), ValueError), ((-28, 56), ValueError),
                                      ((28.0, 56), TypeError), ((28,), TypeError), ("28x56", TypeError)])
def test_resize_to_out_of_range_is_refused(videos, size, exc):
    with pytest.raises(exc, match="resize_to") as info:
        load_video(videos["short_10fps"], resize_to=size)  # (0, 0) used to be torch's RuntimeError
    assert not isinstance(info.value, RuntimeError) or isinstance(info.value, exc)


def test_size_errors_name_the_file(clips):
    for call in (preprocess_videos, lambda p: estimate_tokens(videos=[p])):
        with pytest.raises(MediaSizeError, match="aspect ratio") as info:
            call(clips["thin"])
        assert clips["thin"] in str(info.value)  # preprocess_videos named only the base name


def test_frame_pixel_cap_applies_to_videos(videos, monkeypatch):
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    for call in VIDEO_CALLS.values():
        with pytest.raises(MediaSizeError, match=MAX_PIXELS_ENV) as info:
            call(videos["short_10fps"])
        assert videos["short_10fps"] in str(info.value)


@pytest.mark.parametrize("name,quarter_turns,mirror", [("rot-90", 3, False), ("rot90", 1, False),
                                                       ("rot180", 2, False), ("hflip", 0, True)])
def test_display_matrix_rotation_is_applied(clips, name, quarter_turns, mirror):
    """Frames come out as FFmpeg's command line shows them: -90 (a phone's portrait video) turns the coded
    landscape frames a quarter clockwise.  FFmpeg's own reading of the matrix (PyAV's per-frame
    `VideoFrame.rotation`, counterclockwise) agrees with the header parse."""
    raw = _raw_frames(clips[name])
    expected = [np.rot90(f, quarter_turns) for f, _ in raw]
    if mirror:
        expected = [np.fliplr(f) for f, _ in raw]
    if not mirror:
        assert all((rot // 90) % 4 == quarter_turns for _, rot in raw)
    info = probe_video(clips[name])
    assert (info.height, info.width) == expected[0].shape[:2]
    v = load_video(clips[name], indices=list(range(len(raw))))
    assert v.frames.shape[1:3] == expected[0].shape[:2]
    assert all(np.array_equal(a, b) for a, b in zip(v.frames, expected))
    # resized while decoding == resizing the displayed frames
    import torch

    small = load_video(clips[name], indices=[0, 1], resize_to=(28, 42))
    ref = resize_frames(torch.from_numpy(np.stack(expected[:2]).copy()).permute(0, 3, 1, 2), 28, 42)
    assert torch.equal(torch.from_numpy(small.frames).permute(0, 3, 1, 2), ref)
    # planning, decoding and the estimate agree on the displayed size
    out = preprocess_videos(clips[name], num_frames=2)
    est = estimate_tokens(videos=[clips[name]], num_frames=2)
    assert out.grid_thw[0].tolist() == list(est.items[0].grid_thw)
    assert (est.items[0].height, est.items[0].width) == expected[0].shape[:2]


@pytest.mark.parametrize("kw", [dict(), dict(seek=False), dict(threads=1), dict(resize_to=(28, 28))])
def test_vfr_timestamps_come_from_the_frames_pts(clips, kw):
    info = probe_video(clips["vfr"])
    assert info.total_frames == 30 and abs(info.fps - 100 / 31) < 1e-9
    v = load_video(clips["vfr"], num_frames=6, **kw)
    assert v.indices.tolist() == [0, 5, 10, 15, 20, 25]
    expected = [VFR_TIMES[i] for i in v.indices]  # index / fps said 7.75 s for the frame at 7.0 s
    assert v.timestamps == pytest.approx(expected, abs=1e-9)
    assert preprocess_videos(clips["vfr"], num_frames=6).timestamps[0] == pytest.approx(expected, abs=1e-9)
    # the estimate reads the same times from the packets, without decoding
    assert estimate_tokens(videos=[clips["vfr"]], num_frames=6).items[0].timestamps == tuple(v.timestamps)


def test_constant_rate_timestamps_stay_index_over_fps(videos):
    """The pts agree with index / fps to within half a frame, and then transformers' values are kept (so
    prompts are token-identical to transformers')."""
    for name in ("h264_bframes", "ntsc_29_97", "vp9_webm"):
        v = load_video(videos[name], fps=2.0)
        assert v.timestamps == [float(i) / v.info.fps for i in v.indices]


def test_vfr_prompt_labels(clips):
    v = load_video(clips["vfr"], num_frames=6)
    assert decoded_stamps(v.indices, v.info.fps, v.timestamps) == ["0.0", "0.5", "1.0", "1.5", "2.0", "7.0"]
    cfr = [0.0, 0.5, 1.0]
    assert decoded_stamps([0, 12, 24], 24.0, cfr) == ["0.0", "0.5", "1.0"]


_RSS_SCRIPT = textwrap.dedent("""
    import sys, threading, time
    sys.path.insert(0, sys.argv[1])
    from _media import write_video
    from vl3fast.processing import DecodeTimeoutError, load_video, decode

    path = write_video(sys.argv[2], width=640, height=480, fps=30, frames=40, gop=8)
    real = decode._FrameSink.store

    def slow_store(self, k, frame):  # a slow decoder: the deadline falls after a few frames are written
        real(self, k, frame)
        time.sleep(0.01)

    decode._FrameSink.store = slow_store

    def rss_mb():
        with open("/proc/self/status") as f:
            return int(next(l for l in f if l.startswith("VmRSS")).split()[1]) / 1024

    def timeouts(n):
        for _ in range(n):
            try:
                load_video(path, indices=list(range(40)), timeout=0.08, threads=1)
            except DecodeTimeoutError:
                pass
            else:
                raise SystemExit("a 40-frame decode finished within 0.08 s: the slowed store did not apply")

    def settle():  # the last abandoned worker stops at its next frame (allow for a loaded machine)
        end = time.monotonic() + 10
        while threading.active_count() > 1 and time.monotonic() < end:
            time.sleep(0.05)

    timeouts(10)  # warm-up: allocator arenas, FFmpeg's tables
    settle()
    base = rss_mb()
    timeouts(int(sys.argv[3]))
    settle()
    print(round(rss_mb() - base, 1), threading.active_count())
""")


def test_rss_stays_flat_over_decode_timeouts(tmp_path):
    """Each timed-out decode used to leave its worker's traceback in a reference cycle with the decoder, the
    container and the written frames, freed only by a full GC: RSS rose by ~96 MB over 400 timeouts of the
    sweep, and by 72-97 MB over the 100 here. Now it stays within the allocator's noise."""
    script = tmp_path / "rss.py"
    script.write_text(_RSS_SCRIPT)
    here = os.path.dirname(__file__)
    res = subprocess.run([sys.executable, str(script), here, str(tmp_path / "clip.mp4"), "100"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    growth_mb, threads = res.stdout.split()
    assert int(threads) == 1, "abandoned decode workers are still running"
    # measured: +0.5 MB now; +22 to +154 MB before the fix (60-150 timeouts, depending on when a full GC ran)
    assert float(growth_mb) < 20, f"RSS grew by {growth_mb} MB over 100 decode timeouts"
