"""Videos: decoding, sampling and preprocessing against transformers' VideoLLaMA3 video processor."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vl3fast.reference as ref_ops
from vl3fast.processing import (
    ProcessingConfig, TokenBudgetError, estimate_tokens, load_video, preprocess_videos, probe_video,
)
from vl3fast.processing import decode as decode_module
from vl3fast.processing import video_file as video_file_module

from ._media import hf_load_video

PARITY = ["h264_bframes", "h264_gop250", "mpeg4_30fps", "short_10fps", "ntsc_29_97", "long_max_frames"]


@pytest.mark.parametrize("name", PARITY)
@pytest.mark.parametrize("fps", [1.0, 2.0])
def test_decoded_frames_match_transformers_loader(videos, hf_video_processor, name, fps):
    frames, md = hf_load_video(videos[name], hf_video_processor, fps=fps)
    ours = load_video(videos[name], fps=fps)
    assert ours.indices.tolist() == np.asarray(md.frames_indices).tolist()
    assert ours.info.total_frames == md.total_num_frames and ours.info.fps == md.fps
    assert ours.frames.shape == frames.shape and ours.frames.dtype == np.uint8
    assert np.array_equal(ours.frames, frames)
    # transformers divides int32 tensors, giving float32 seconds; ours are float64
    assert ours.timestamps == pytest.approx([float(t) for t in md.timestamps], rel=1e-6)


def test_long_video_hits_max_frames(videos):
    info = probe_video(videos["long_max_frames"])
    assert info.total_frames == 400 and info.duration == 200.0
    v = load_video(videos["long_max_frames"], fps=1.0, max_frames=180)
    assert len(v) == 180 and v.timestamps[-1] >= 0.95 * info.duration - 2


@pytest.mark.parametrize("name", ["h264_bframes", "mpeg4_30fps", "vp9_webm", "long_max_frames"])
def test_seek_threads_and_sequential_agree(videos, name):
    base = load_video(videos[name], fps=3.0, seek=False, threads=1)
    for kw in (dict(seek=True, threads=1), dict(seek=True, threads=0), dict(seek=False, threads=2)):
        other = load_video(videos[name], fps=3.0, **kw)
        assert other.indices.tolist() == base.indices.tolist()
        assert np.array_equal(other.frames, base.frames), kw


def test_explicit_indices_and_every_decoded_frame(videos):
    """Frame k of `load_video` is the k-th frame PyAV decodes from the start (transformers' numbering)."""
    import av

    with av.open(videos["h264_bframes"]) as c:
        every = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    picks = [0, 1, 2, 11, 12, 13, 40, 71]
    v = load_video(videos["h264_bframes"], indices=picks)
    for k, i in enumerate(picks):
        assert np.array_equal(v.frames[k], every[i]), i
    # sparse picks make the decoder skip non-reference B-frames; the picked ones must be unaffected
    for step, offset in ((2, 1), (3, 2), (5, 4), (7, 3)):
        picks = list(range(offset, 72, step))
        v = load_video(videos["h264_bframes"], indices=picks)
        assert all(np.array_equal(v.frames[k], every[i]) for k, i in enumerate(picks)), (step, offset)
    with pytest.raises(ValueError, match="increasing"):
        load_video(videos["h264_bframes"], indices=[5, 3])
    with pytest.raises(ValueError, match="increasing"):
        load_video(videos["h264_bframes"], indices=[72])


def test_num_frames_takes_precedence_over_default_fps(videos):
    v = load_video(videos["h264_bframes"], num_frames=6)
    assert v.indices.tolist() == [0, 12, 24, 36, 48, 60]
    out = preprocess_videos(videos["h264_bframes"], num_frames=6)
    assert out.grid_thw[0, 0].item() == 6
    assert estimate_tokens(videos=videos["h264_bframes"], num_frames=6).items[0].num_frames == 6


def test_webm_without_frame_count(videos):
    info = probe_video(videos["vp9_webm"])  # Matroska keeps no count: counted from packets
    assert info.total_frames == 40 and info.fps == 25.0 and info.codec == "vp9"
    assert len(load_video(videos["vp9_webm"], num_frames=8, fps=None)) == 8


@pytest.mark.parametrize("names", [["h264_bframes"], ["mpeg4_30fps"], ["short_10fps"], ["long_max_frames"],
                                   ["ntsc_29_97", "h264_gop250", "mpeg4_30fps"]])
def test_preprocess_matches_transformers_video_processor(videos, hf_video_processor, names):
    """Pixel values, grids, merge sizes and the DiffFP compression mask, from the same frames."""
    decoded = [hf_load_video(videos[n], hf_video_processor, fps=1.0)[0] for n in names]
    ref = hf_video_processor(decoded, return_tensors="pt")
    from_frames = preprocess_videos([load_video(videos[n]) for n in names])
    from_paths = preprocess_videos([videos[n] for n in names])  # resized as decoded
    for ours in (from_frames, from_paths):
        torch.testing.assert_close(ours.pixel_values, ref["pixel_values_videos"], rtol=0, atol=0)
        assert torch.equal(ours.grid_thw, ref["video_grid_thw"])
        assert torch.equal(ours.merge_sizes, ref["video_merge_sizes"])
        keep = ref_ops.frame_keep_mask(ours.pixel_values, ours.grid_thw, ours.merge_sizes)
        assert torch.equal(keep, ref["video_compression_mask"])
        assert sum(ours.num_tokens) == ref["video_compression_mask"].numel()
    est = estimate_tokens(videos=[videos[n] for n in names])
    assert [it.tokens for it in est.items] == from_paths.num_tokens
    assert [list(it.timestamps) for it in est.items] == from_paths.timestamps
    assert from_paths.timestamps == [load_video(videos[n]).timestamps for n in names]


def test_preprocess_raw_frame_arrays(videos, hf_video_processor):
    frames, _ = hf_load_video(videos["mpeg4_30fps"], hf_video_processor, fps=2.0)
    ref = hf_video_processor(frames, return_tensors="pt")
    for arr in (frames, torch.from_numpy(frames)):
        ours = preprocess_videos(arr, video_fps=2.0)
        torch.testing.assert_close(ours.pixel_values, ref["pixel_values_videos"], rtol=0, atol=0)
        assert torch.equal(ours.grid_thw, ref["video_grid_thw"])
        assert ours.timestamps == [[k / 2.0 for k in range(len(frames))]]
    # non-default settings are passed through the same way
    ref2 = hf_video_processor(frames, size={"shortest_edge": 3136, "longest_edge": 28 * 28 * 4096}, merge_size=1,
                              return_tensors="pt")
    ours2 = preprocess_videos(frames, video_min_pixels=3136, video_max_pixels=28 * 28 * 4096, video_merge_size=1)
    torch.testing.assert_close(ours2.pixel_values, ref2["pixel_values_videos"], rtol=0, atol=0)
    assert torch.equal(ours2.grid_thw, ref2["video_grid_thw"]) and ours2.merge_sizes.tolist() == [1]


def test_official_rule_video(videos):
    cfg = ProcessingConfig.official(max_tokens=64)
    out = preprocess_videos(videos["h264_bframes"], cfg)  # 3 s at 1 fps -> min_frames = 4 frames
    assert out.grid_thw[0, 0].item() == 4
    assert out.num_tokens[0] == estimate_tokens(videos=videos["h264_bframes"], config=cfg).visual_tokens
    assert out.num_tokens[0] // 4 >= 16  # min_tokens per frame after the shared budget of 64


def test_budget_fails_before_decoding(videos, monkeypatch):
    est = estimate_tokens(videos=videos["long_max_frames"])
    with pytest.raises(TokenBudgetError, match=f"{est.visual_tokens} visual tokens exceed max_visual_tokens=10"):
        estimate_tokens(videos=videos["long_max_frames"], max_visual_tokens=10)

    def no_decoding(*a, **k):
        raise AssertionError("decoded although the budget was exceeded")

    monkeypatch.setattr("vl3fast.processing.preprocess.decode_frames", no_decoding)
    with pytest.raises(TokenBudgetError, match="long_max_frames.mp4: 180 x"):
        preprocess_videos(videos["long_max_frames"], max_visual_tokens=10)
    assert estimate_tokens(videos=videos["long_max_frames"], max_visual_tokens=est.visual_tokens).visual_tokens \
        == est.visual_tokens


def test_progress_bar(videos, capsys):
    load_video(videos["short_10fps"], progress=True)
    assert "decoding short_10fps.mp4" in capsys.readouterr().err
    load_video(videos["short_10fps"], progress=False)
    assert "decoding" not in capsys.readouterr().err


def test_timeout_when_the_decoder_hangs(videos, monkeypatch):
    """A decoder stuck inside FFmpeg (simulated by a sleep) fails at the deadline instead of hanging."""
    import threading
    import time

    release = threading.Event()
    real = decode_module._decode_sampled

    def stuck(*args, **kwargs):
        release.wait(5)  # blocks without checking the cancel flag, like C code would
        return real(*args, **kwargs)

    monkeypatch.setattr(decode_module, "_decode_sampled", stuck)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="did not finish within timeout=0.3 s"):
        load_video(videos["short_10fps"], timeout=0.3)
    assert time.monotonic() - start < 2.0
    release.set()


@pytest.mark.parametrize("timeout", [1e-6, 1e-4, 1e-3])
def test_tiny_timeout_is_a_timeout_not_corruption(videos, timeout):
    from vl3fast.processing import DecodeTimeoutError

    with pytest.raises(DecodeTimeoutError):
        load_video(videos["long_max_frames"], timeout=timeout)


def test_a_video_file_is_opened_once_per_call(videos, monkeypatch):
    """Probe, packet index and decode share one container (they used to open the file three times)."""
    opened, real = [], video_file_module._open_container

    def counting(path, timeout):
        opened.append(path)
        return real(path, timeout)

    monkeypatch.setattr(video_file_module, "_open_container", counting)
    preprocess_videos(videos["h264_bframes"], num_frames=4)
    assert len(opened) == 1
    load_video(videos["h264_bframes"], num_frames=4)
    assert len(opened) == 2
