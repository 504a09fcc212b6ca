"""Images: loading (RGB, EXIF, alpha) and parity with transformers' VideoLlama3ImageProcessor."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vl3fast.processing import (
    CorruptMediaError, MediaNotFoundError, MediaSizeError, NotMediaError, ProcessingConfig, TokenBudgetError,
    estimate_tokens, load_image, preprocess_images,
)


def _noise_image(h, w, seed, mode="RGB"):
    rng = np.random.default_rng(seed)
    smooth = np.linspace(0, 255, w)[None, :, None] * np.linspace(0.2, 1, h)[:, None, None]
    arr = np.clip(smooth + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB").convert(mode)


# odd sizes; tiny (min_pixels path), large (max_pixels path), extreme-but-allowed aspect ratios
SIZES = [(37, 53), (401, 299), (5, 9), (14, 14), (1, 150), (113, 1517), (1001, 1203), (333, 65)]


def _assert_same(ours, ref, prefix=""):
    assert ours.pixel_values.dtype == torch.float32
    assert ours.grid_thw.dtype == torch.int64 and ours.merge_sizes.dtype == torch.int64
    torch.testing.assert_close(ours.pixel_values, ref[f"pixel_values{prefix}"], rtol=0, atol=0)
    assert torch.equal(ours.grid_thw, ref[f"{'image' if not prefix else 'video'}_grid_thw"])


@pytest.mark.parametrize("h,w", SIZES)
def test_single_image_parity(hf_image_processor, h, w):
    image = _noise_image(h, w, seed=h * 7 + w)
    ref = hf_image_processor(images=image, return_tensors="pt")
    ours = preprocess_images(image)
    torch.testing.assert_close(ours.pixel_values, ref["pixel_values"], rtol=0, atol=0)
    assert torch.equal(ours.grid_thw, ref["image_grid_thw"])
    assert torch.equal(ours.merge_sizes, ref["image_merge_sizes"])
    assert ours.num_tokens == [estimate_tokens(images=[image]).visual_tokens]


def test_batch_of_images_parity_and_merge_size_2(hf_image_processor):
    images = [_noise_image(h, w, seed=i) for i, (h, w) in enumerate(SIZES[:5])] + [_noise_image(37, 53, 0)]
    ref = hf_image_processor(images=images, return_tensors="pt")
    ours = preprocess_images(images)
    torch.testing.assert_close(ours.pixel_values, ref["pixel_values"], rtol=0, atol=0)
    assert torch.equal(ours.grid_thw, ref["image_grid_thw"]) and torch.equal(ours.merge_sizes, ref["image_merge_sizes"])
    ref2 = hf_image_processor(images=images, merge_size=2, return_tensors="pt")
    ours2 = preprocess_images(images, image_merge_size=2)
    torch.testing.assert_close(ours2.pixel_values, ref2["pixel_values"], rtol=0, atol=0)
    assert torch.equal(ours2.grid_thw, ref2["image_grid_thw"]) and torch.equal(ours2.merge_sizes, ref2["image_merge_sizes"])
    assert sum(ours2.num_tokens) == estimate_tokens(images=images, image_merge_size=2).visual_tokens


def test_merge_block_order():
    """Rows are frame -> merge block (row-major) -> in-block (r, c); a patch's value tells where it came from."""
    p, m = 14, 2
    gh, gw = 4, 6
    arr = np.zeros((gh * p, gw * p, 3), np.uint8)
    for r in range(gh):
        for c in range(gw):
            arr[r * p:(r + 1) * p, c * p:(c + 1) * p] = r * gw + c
    out = preprocess_images(arr, image_merge_size=m, image_min_pixels=0)
    assert out.grid_thw.tolist() == [[1, gh, gw]]
    ids = torch.round(out.pixel_values[:, 0] * 127.5 + 127.5).long().tolist()
    expected = [(br * m + r) * gw + bc * m + c for br in range(gh // m) for bc in range(gw // m)
                for r in range(m) for c in range(m)]
    assert ids == expected
    # each row is (C, py, px): channel 0 first
    assert out.pixel_values.shape == (gh * gw, 3 * p * p)


def test_load_image_applies_exif_orientation(tmp_path):
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[:10, :10] = (255, 0, 0)  # red block top-left as stored
    image = Image.fromarray(arr)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    loaded = load_image(tmp_path / "rot.jpg")
    assert loaded.mode == "RGB" and loaded.size == (40, 60)  # (W, H): portrait after rotation
    px = np.asarray(loaded)
    assert px[:10, -10:, 0].mean() > 200 and px[:10, :10, 0].mean() < 50  # now top-right
    est = estimate_tokens(images=[tmp_path / "rot.jpg"])
    assert (est.items[0].height, est.items[0].width) == (60, 40)
    assert est.visual_tokens == preprocess_images(tmp_path / "rot.jpg").num_tokens[0]


def test_load_image_alpha_and_gray_match_transformers(tmp_path, hf_image_processor):
    rgba = np.random.default_rng(3).integers(0, 256, (31, 45, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    _noise_image(31, 45, 4, mode="L").save(tmp_path / "g.png")
    _noise_image(31, 45, 5, mode="P").save(tmp_path / "p.png")
    for name in ("a.png", "g.png", "p.png"):
        raw = Image.open(tmp_path / name)
        ours = preprocess_images(tmp_path / name)
        ref = hf_image_processor(images=raw, return_tensors="pt")  # transformers converts itself
        torch.testing.assert_close(ours.pixel_values, ref["pixel_values"], rtol=0, atol=0)
        assert load_image(tmp_path / name).mode == "RGB"


def test_image_errors(tmp_path):
    with pytest.raises(MediaNotFoundError, match="no such file") as e:
        load_image(tmp_path / "missing.png")
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, ValueError)
    (tmp_path / "t.png").write_text("not an image")
    with pytest.raises(NotMediaError, match="not an image"):
        load_image(tmp_path / "t.png")
    with pytest.raises(NotMediaError):
        estimate_tokens(images=[tmp_path / "t.png"])
    _noise_image(64, 64, 1).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptMediaError, match="truncated or corrupt"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(MediaSizeError, match="aspect ratio"):
        preprocess_images(np.zeros((2, 500, 3), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        preprocess_images(np.zeros((20, 20, 3), np.float32))
    with pytest.raises(TokenBudgetError, match="max_visual_tokens=100"):
        preprocess_images(_noise_image(401, 299, 0), max_visual_tokens=100)


def test_official_rule_on_images():
    cfg = ProcessingConfig.official()
    out = preprocess_images(_noise_image(1080, 1920, 0), cfg)
    assert out.grid_thw.tolist() == [[1, 77, 137]] and out.num_tokens == [10549]
    assert out.pixel_values.shape == (10549, 588)


def test_pil_backend_variant_is_within_one_level():
    """`AutoImageProcessor` defaults to the torchvision class we match bit for bit; the PIL variant
    (`backend="pil"`) resizes with Pillow: same grids, pixels within two uint8 levels (2/127.5)."""
    mod = pytest.importorskip("transformers.models.video_llama_3.image_processing_pil_video_llama_3")
    pil = mod.VideoLlama3ImageProcessorPil()
    for h, w in [(401, 299), (37, 53), (1001, 1203)]:
        image = _noise_image(h, w, seed=h)
        ref = pil(images=image, return_tensors="pt")
        ours = preprocess_images(image)
        assert torch.equal(ours.grid_thw, ref["image_grid_thw"])
        diff = (torch.as_tensor(ref["pixel_values"]) - ours.pixel_values).abs().max().item()
        assert 0 < diff <= 2 / 127.5 + 1e-6


@pytest.mark.parametrize("shape", [(1, 28, 14, 3), (2, 14, 14, 3), (3, 42, 14, 3)])
def test_patchify_one_patch_wide(shape):
    """A frame one patch wide made `.to(float32)` keep a strided layout that `.view` rejected."""
    from vl3fast.processing import ProcessingConfig, normalize_patchify

    x = torch.arange(np.prod(shape), dtype=torch.int64).remainder(256).to(torch.uint8).view(shape)
    out = normalize_patchify(x.permute(0, 3, 1, 2), 1, ProcessingConfig())
    t, h, w, _ = shape
    assert out.shape == (t * (h // 14) * (w // 14), 588) and out.is_contiguous()
    ref = (x.permute(0, 3, 1, 2).float() - 127.5) / 127.5  # one patch per row: rows are (t, r), (C, py, px)
    expected = ref.reshape(t, 3, h // 14, 14, 14).permute(0, 2, 1, 3, 4).reshape(-1, 588)
    assert torch.equal(out, expected)
