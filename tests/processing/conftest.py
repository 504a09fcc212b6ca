"""Synthetic media for the processing tests, written once per session with PyAV and Pillow."""
from __future__ import annotations

import pytest

av = pytest.importorskip("av")
pytest.importorskip("PIL")
pytest.importorskip("torchvision")

from ._media import VFR_TIMES, write_video  # noqa: E402


# name -> (writer kwargs, file name). Sizes are even (yuv420p); several fps, durations and codecs.
VIDEO_SPECS = {
    "h264_bframes": (dict(width=158, height=94, fps=24, frames=72, gop=12, bframes=3), "h264_bframes.mp4"),
    "h264_gop250": (dict(width=96, height=54, fps=30, frames=150), "h264_gop250.mp4"),
    "mpeg4_30fps": (dict(width=130, height=98, fps=30, frames=95, codec="mpeg4", gop=15), "mpeg4_30fps.mp4"),
    "short_10fps": (dict(width=64, height=48, fps=10, frames=5), "short_10fps.mp4"),
    "long_max_frames": (dict(width=48, height=32, fps=2, frames=400, gop=6), "long_max_frames.mp4"),
}


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def videos(media_dir) -> dict[str, str]:
    from fractions import Fraction

    out = {name: write_video(media_dir / fname, **kw) for name, (kw, fname) in VIDEO_SPECS.items()}
    out["ntsc_29_97"] = write_video(media_dir / "ntsc.mp4", width=80, height=60, fps=Fraction(30000, 1001),
                                    frames=61, gop=20)
    out["vp9_webm"] = write_video(media_dir / "vp9.webm", width=64, height=48, fps=25, frames=40,
                                  codec="libvpx-vp9")
    return out


@pytest.fixture(scope="session")
def broken(media_dir, videos) -> dict[str, str]:
    """Files for the error paths."""
    d = media_dir
    out = {}
    data = open(videos["h264_bframes"], "rb").read()  # moov at the end: cutting loses the index
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    out["truncated"] = str(d / "truncated.mp4")
    fast = write_video(d / "faststart.mp4", width=64, height=48, fps=10, frames=40, gop=5,
                       container_options={"movflags": "faststart"})
    data = open(fast, "rb").read()  # moov first: the header survives, the frames do not
    (d / "truncated_faststart.mp4").write_bytes(data[: int(len(data) * 0.4)])
    out["truncated_faststart"] = str(d / "truncated_faststart.mp4")
    (d / "notes.mp4").write_text("this is not a video\n" * 20)
    out["text"] = str(d / "notes.mp4")
    (d / "zero_bytes.mp4").write_bytes(b"")
    out["zero_bytes"] = str(d / "zero_bytes.mp4")
    # an AVI with a video stream and no frames
    c = av.open(str(d / "no_frames.avi"), "w")
    s = c.add_stream("mpeg4", rate=10)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    c.start_encoding()
    c.close()
    out["no_frames"] = str(d / "no_frames.avi")
    # an MP4 with no streams at all
    c = av.open(str(d / "no_streams.mp4"), "w")
    s = c.add_stream("libx264", rate=10)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    c.start_encoding()
    c.close()
    out["no_streams"] = str(d / "no_streams.mp4")
    # an AVI whose codec FourCC no FFmpeg decoder knows
    avi = write_video(d / "mpeg4.avi", width=64, height=48, fps=10, frames=5, codec="mpeg4")
    raw = open(avi, "rb").read()
    assert raw.count(b"FMP4") == 2
    (d / "unknown_codec.avi").write_bytes(raw.replace(b"FMP4", b"QQQQ"))
    out["unknown_codec"] = str(d / "unknown_codec.avi")
    return out


@pytest.fixture(scope="session")
def clips(media_dir) -> dict[str, str]:
    """Valid media the video functions handle specially: display-matrix rotations and a mirror, a variable
    frame rate, an aspect ratio over 200, still images (also one named .mp4) and an animated GIF."""
    import numpy as np
    from PIL import Image

    d = media_dir
    out = {f"rot{r}": write_video(d / f"rot{r}.mp4", width=64, height=48, fps=10, frames=6, rotation=r)
           for r in (-90, 90, 180)}
    # a mirrored (selfie-camera) display matrix
    out["hflip"] = write_video(d / "hflip.mp4", width=64, height=48, fps=10, frames=3, rotation=0, hflip=True)
    out["vfr"] = write_video(d / "vfr.mp4", width=64, height=48, fps=10, frames=0, times=VFR_TIMES,
                             bframes=2)
    out["thin"] = write_video(d / "thin.mp4", width=1000, height=4, fps=10, frames=3)
    rgb = np.random.default_rng(0).integers(0, 255, (40, 60, 3), np.uint8)
    for ext in ("png", "jpg", "webp"):
        Image.fromarray(rgb).save(d / f"still.{ext}")
        out[ext] = str(d / f"still.{ext}")
    (d / "png_named.mp4").write_bytes((d / "still.png").read_bytes())
    out["png_named_mp4"] = str(d / "png_named.mp4")
    frames = [Image.fromarray(np.full((40, 60, 3), v, np.uint8)) for v in (10, 120, 240)]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    out["gif"] = str(d / "anim.gif")
    return out


@pytest.fixture(scope="session")
def hf_video_processor():
    from transformers.models.video_llama_3.video_processing_video_llama_3 import VideoLlama3VideoProcessor

    return VideoLlama3VideoProcessor()


@pytest.fixture(scope="session")
def hf_image_processor():
    """The class `AutoImageProcessor` picks by default for video_llama_3 (the torchvision backend)."""
    from transformers.models.video_llama_3.image_processing_video_llama_3 import VideoLlama3ImageProcessor

    return VideoLlama3ImageProcessor()
