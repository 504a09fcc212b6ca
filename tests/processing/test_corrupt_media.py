"""The corrupt-media suite (issue #11): every damaged, mislabelled or adversarial file given to the video and
image functions fails with a `MediaError` subclass naming the file, within its timeout; the valid but
unusual files (rotated, variable frame rate, animated, a video with an image's extension) load correctly.
Cases already covered by `test_errors.py` (no streams, no frames, unknown codec) and by
`test_image_hardening.py` (bomb headers, truncated images) are not repeated."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

from vl3fast.processing import (
    CorruptMediaError, EmptyVideoError, ImageNotVideoError, MediaError, MediaNotFoundError, NotMediaError,
    estimate_tokens, load_image, load_video, preprocess_images, preprocess_videos, probe_video,
)

from ._media import VFR_TIMES, write_video

TIMEOUT_S = 10.0
SLACK_S = 5.0  # a loaded CI machine; a hang would be far past it
VIDEO_CALLS = {
    "load_video": lambda p: load_video(p, timeout=TIMEOUT_S),
    "probe_video": lambda p: probe_video(p, timeout=TIMEOUT_S),
    "estimate_tokens": lambda p: estimate_tokens(videos=[p], timeout=TIMEOUT_S),
    "preprocess_videos": lambda p: preprocess_videos(p, timeout=TIMEOUT_S),
}
DECODING_CALLS = ("load_video", "preprocess_videos")  # the others read headers only
IMAGE_CALLS = {
    "load_image": load_image,
    "estimate_tokens": lambda p: estimate_tokens(images=[p]),
    "preprocess_images": preprocess_images,
}


@pytest.fixture(scope="module")
def bad(tmp_path_factory, videos, clips) -> dict[str, str]:
    d = tmp_path_factory.mktemp("corrupt")
    rng = np.random.default_rng(11)
    out = {}

    def put(name, data: bytes):
        (d / name).write_bytes(data)
        out[name] = str(d / name)

    put("zero_bytes.mp4", b"")
    put("zero_bytes.png", b"")
    put("random.mp4", rng.bytes(4096))
    put("random.jpg", rng.bytes(4096))
    put("ftyp_then_random.mp4", b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + rng.bytes(4096))
    put("text.png", b"not an image\n" * 30)
    put("text.mp4", b"not a video\n" * 30)
    put("png_named.mp4", open(clips["png"], "rb").read())
    put("mp4_named.png", open(videos["short_10fps"], "rb").read())
    import av

    c = av.open(str(d / "audio_only.mp4"), "w")  # a wrong "video": sound only
    s = c.add_stream("aac", rate=8000)
    for i in range(4):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 8000, i * 1024
        for packet in s.encode(frame):
            c.mux(packet)
    for packet in s.encode():
        c.mux(packet)
    c.close()
    out["audio_only.mp4"] = str(d / "audio_only.mp4")
    (d / "folder.mp4").mkdir()
    out["folder.mp4"] = str(d / "folder.mp4")
    os.mkfifo(d / "fifo.mp4")  # opening it for reading would block forever
    out["fifo.mp4"] = str(d / "fifo.mp4")
    os.mkfifo(d / "fifo.png")
    out["fifo.png"] = str(d / "fifo.png")
    return out


VIDEO_FAILURES = [
    # (file, expected error); every call fails
    ("zero_bytes.mp4", NotMediaError),
    ("random.mp4", NotMediaError),
    ("ftyp_then_random.mp4", CorruptMediaError),
    ("text.mp4", NotMediaError),
    ("png_named.mp4", ImageNotVideoError),
    ("audio_only.mp4", EmptyVideoError),
    ("folder.mp4", MediaNotFoundError),
    ("fifo.mp4", MediaNotFoundError),
]


def _timed(call, path):
    start = time.monotonic()
    try:
        return call(path), None
    except Exception as e:  # noqa: BLE001 - the test inspects what was raised
        return None, e
    finally:
        assert time.monotonic() - start < TIMEOUT_S + SLACK_S, f"{path} took past its timeout"


@pytest.mark.parametrize("call", list(VIDEO_CALLS))
@pytest.mark.parametrize("name,exc", VIDEO_FAILURES, ids=[c[0] for c in VIDEO_FAILURES])
def test_bad_files_given_as_videos(bad, name, exc, call):
    _, err = _timed(VIDEO_CALLS[call], bad[name])
    assert isinstance(err, exc), f"{call}({name}) raised {type(err).__name__}: {err}"
    assert isinstance(err, MediaError) and bad[name] in str(err)


IMAGE_FAILURES = [
    ("zero_bytes.png", NotMediaError),
    ("random.jpg", NotMediaError),
    ("text.png", NotMediaError),
    ("mp4_named.png", NotMediaError),
    ("folder.mp4", MediaNotFoundError),
    ("fifo.png", MediaNotFoundError),
]


@pytest.mark.parametrize("call", list(IMAGE_CALLS))
@pytest.mark.parametrize("name,exc", IMAGE_FAILURES, ids=[c[0] for c in IMAGE_FAILURES])
def test_bad_files_given_as_images(bad, name, exc, call):
    _, err = _timed(IMAGE_CALLS[call], bad[name])
    assert isinstance(err, exc), f"{call}({name}) raised {type(err).__name__}: {err}"
    assert isinstance(err, MediaError) and bad[name] in str(err)


@pytest.fixture(scope="module")
def intact(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("intact")
    return {
        "moov_last.mp4": write_video(d / "moov_last.mp4", width=64, height=48, fps=10, frames=40, gop=5),
        "faststart.mp4": write_video(d / "faststart.mp4", width=64, height=48, fps=10, frames=40, gop=5,
                                     container_options={"movflags": "faststart"}),
        "vp9.webm": write_video(d / "vp9.webm", width=64, height=48, fps=10, frames=40, codec="libvpx-vp9"),
    }


CUTS = [0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.97]


@pytest.mark.parametrize("source", ["moov_last.mp4", "faststart.mp4", "vp9.webm"])
def test_truncated_videos_fail_named_or_give_the_intact_frames(intact, tmp_path, source):
    """Cut at several points, a video either fails with a MediaError naming it, within the timeout, or (the
    sampled frames all lie before the cut; a Matroska file, whose header holds no frame count, is just
    shorter) returns exactly the frames of the intact file at the same indices. Never wrong pixels."""
    data = open(intact[source], "rb").read()
    full = load_video(intact[source], fps=None)  # every frame
    failed = {}
    for cut in CUTS:
        path = str(tmp_path / f"cut{int(cut * 1000)}_{source}")
        with open(path, "wb") as f:
            f.write(data[: int(len(data) * cut)])
        for call in ("load_video", "preprocess_videos"):
            result, err = _timed(VIDEO_CALLS[call], path)
            if err is not None:
                assert isinstance(err, MediaError) and path in str(err), f"{call} at {cut}: {err!r}"
                failed[cut] = type(err).__name__
            elif call == "load_video":
                assert np.array_equal(result.frames, full.frames[result.indices]), f"wrong frames at cut {cut}"
    if source != "vp9.webm":  # an MP4 header claims its frame count: a cut before the sampled frames fails
        assert all(cut in failed for cut in CUTS[:5]), failed
    else:
        assert CUTS[0] in failed


def test_rotated_clip_loads_as_displayed(clips):
    v, err = _timed(VIDEO_CALLS["load_video"], clips["rot-90"])
    assert err is None and v.frames.shape[1:3] == (64, 48)  # coded 48x64 landscape, shown portrait
    assert probe_video(clips["rot-90"]).rotation == 270


def test_vfr_clip_loads_with_pts_timestamps(clips):
    v, err = _timed(lambda p: load_video(p, num_frames=6, timeout=TIMEOUT_S), clips["vfr"])
    assert err is None and v.timestamps == pytest.approx([VFR_TIMES[i] for i in v.indices], abs=1e-9)


def test_animated_image(clips):
    """As a video: every frame (FFmpeg's GIF demuxer, as transformers' loader); as an image: the first."""
    v, err = _timed(VIDEO_CALLS["load_video"], clips["gif"])
    assert err is None and len(v) == 3 and [int(f.mean()) for f in v.frames] == [10, 120, 240]
    image, err = _timed(load_image, clips["gif"])
    assert err is None and abs(int(np.asarray(image).mean()) - 10) <= 2


def test_video_with_an_image_extension_is_read_by_content(bad, videos):
    a = load_video(bad["mp4_named.png"])
    b = load_video(videos["short_10fps"])
    assert np.array_equal(a.frames, b.frames)
