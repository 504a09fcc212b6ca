"""Every error path of video loading gives a named exception (a ValueError) that says what is wrong."""
from __future__ import annotations

import pytest

from vl3fast.processing import (
    CorruptMediaError, EmptyVideoError, MediaError, MediaNotFoundError, NotMediaError, UnsupportedCodecError,
    estimate_tokens, load_video, preprocess_videos, probe_video,
)

CASES = [
    # (file key, exception, message fragment)
    ("text", NotMediaError, "not a video file"),
    ("zero_bytes", NotMediaError, "empty file"),
    ("truncated", CorruptMediaError, "truncated"),
    ("truncated_faststart", CorruptMediaError, "truncated"),
    ("no_frames", EmptyVideoError, "no frames"),
    ("no_streams", EmptyVideoError, "no video stream"),
    ("unknown_codec", UnsupportedCodecError, "no decoder"),
]


@pytest.mark.parametrize("key,exc,fragment", CASES, ids=[c[0] for c in CASES])
def test_load_video_errors(broken, key, exc, fragment):
    with pytest.raises(exc, match=fragment) as info:
        load_video(broken[key])
    assert isinstance(info.value, ValueError) and isinstance(info.value, MediaError)
    assert broken[key] in str(info.value)  # names the file


@pytest.mark.parametrize("key,exc,fragment", [c for c in CASES if c[0] != "truncated_faststart"],
                         ids=[c[0] for c in CASES if c[0] != "truncated_faststart"])
def test_header_only_paths_fail_the_same_way(broken, key, exc, fragment):
    """probe/estimate read only headers; they report the same problem without decoding."""
    with pytest.raises(exc, match=fragment):
        probe_video(broken[key])
    with pytest.raises(exc, match=fragment):
        estimate_tokens(videos=[broken[key]])


def test_truncated_after_a_valid_header_fails_when_decoding(broken):
    """The faststart file keeps its index, so the header looks fine; decoding finds the gap."""
    info = probe_video(broken["truncated_faststart"])
    assert info.total_frames == 40
    with pytest.raises(CorruptMediaError, match="header claims 40 frames"):
        preprocess_videos(broken["truncated_faststart"], num_frames=40)
    # frames before the cut still decode
    assert len(load_video(broken["truncated_faststart"], indices=[0, 1, 2])) == 3


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.mp4"
    for fn in (load_video, probe_video, lambda p: estimate_tokens(videos=[p]), preprocess_videos):
        with pytest.raises(MediaNotFoundError, match="no such file") as info:
            fn(missing)
        assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(MediaNotFoundError, match="not a regular file"):
        load_video(tmp_path)


def test_bad_arguments(broken, videos):
    with pytest.raises(ValueError, match="threads"):
        load_video(videos["short_10fps"], threads=-1)
    with pytest.raises(ValueError, match="timeout"):
        load_video(videos["short_10fps"], timeout=0)
    with pytest.raises(TypeError, match=r"uint8 \[T, H, W, 3\]"):
        preprocess_videos(__import__("numpy").zeros((2, 8, 8), "uint8"))


def test_resized_video_is_not_preprocessed_twice(videos):
    small = load_video(videos["short_10fps"], resize_to=(28, 56))
    assert small.frames.shape == (4, 28, 56, 3)
    with pytest.raises(ValueError, match="resize_to"):
        preprocess_videos(small)
    with pytest.raises(ValueError, match="resize_to"):
        estimate_tokens(videos=[small])
