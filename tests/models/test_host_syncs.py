"""The vision forward (encoder + pruning + projector) makes at most one host sync, in both pruning placements.

CPU has no syncs to observe, so this counts the calls that *would* block on a device: under a
TorchDispatchMode, every op whose result needs device values on the host (`_local_scalar_dense` behind
.item()/bool()/int(), nonzero, masked_select, is_nonzero, equal, repeat_interleave without output_size,
boolean-mask indexing), plus Tensor.tolist() and Tensor.cpu()/numpy() made by the model code itself.  Calls
made inside an op's own implementation (e.g. vl3fast's CPU-only argument checks, skipped for device tensors)
run with the mode switched off and are not counted.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vl3fast.models.videollama3 import VideoLLaMA3Config, VideoLLaMA3ForCausalLM

from .tiny_vl3 import PROMPTS

aten = torch.ops.aten
ALWAYS_SYNC = {aten._local_scalar_dense, aten.nonzero, aten.masked_select, aten.is_nonzero, aten.equal,
               aten.unique_consecutive, aten._unique2, aten.unique_dim}
HOST_READS = ("tolist", "cpu", "numpy")


class SyncCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls: list[str] = []
        self._inside = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet in ALWAYS_SYNC:
            self.calls.append(str(func))
        elif packet is aten.repeat_interleave and kwargs.get("output_size") is None and (
                len(args) < 3 or args[-1] is None):
            self.calls.append(f"{func} without output_size")
        elif packet in (aten.index, aten.index_put, aten.index_put_) and any(
                isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in (args[1] or ())):
            self.calls.append(f"{func} with a boolean mask")
        self._inside += 1
        try:
            return func(*args, **kwargs)
        finally:
            self._inside -= 1

    def __enter__(self):
        self._saved = {name: getattr(torch.Tensor, name) for name in HOST_READS}
        counter = self

        def wrap(name):
            original = self._saved[name]

            def method(tensor, *a, **k):
                if not counter._inside:
                    counter.calls.append(f"Tensor.{name}")
                return original(tensor, *a, **k)
            return method

        for name in HOST_READS:
            setattr(torch.Tensor, name, wrap(name))
        return super().__enter__()

    def __exit__(self, *exc):
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        return super().__exit__(*exc)


def test_counter_sees_syncs():
    """The counter must see each kind of sync it claims to, or the tests below prove nothing."""
    x = torch.arange(6.0)
    cases = {
        "item": lambda: x.sum().item(), "bool": lambda: bool(x.sum() > 0), "int": lambda: int(x[0]),
        "tolist": lambda: x.tolist(), "nonzero": lambda: x.nonzero(), "mask-index": lambda: x[x > 2],
        "masked_select": lambda: x.masked_select(x > 2), "repeat_interleave": lambda: torch.repeat_interleave(
            torch.tensor([1, 2])), "cpu": lambda: x.cpu(),
    }
    for name, fn in cases.items():
        with SyncCounter() as counter:
            fn()
        assert len(counter.calls) >= 1, name
    with SyncCounter() as counter:  # and none for sync-free work
        torch.nonzero_static(x > 2, size=3)
        x.repeat_interleave(torch.tensor([1] * 6), output_size=6)
        x.index_select(0, torch.tensor([1, 2]))
    assert counter.calls == []


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VideoLLaMA3ForCausalLM(VideoLLaMA3Config.from_name("tiny"), attn_backend="vl3fast").eval()


@pytest.mark.parametrize("pruning", ["after", "before"])
@pytest.mark.parametrize("prompt", ["image", "multi_image", "pruned_video"])
def test_vision_forward_makes_at_most_one_host_sync(model, prompt, pruning):
    p = PROMPTS[prompt]()
    if "pixel_values_videos" in p:
        args = (p["pixel_values_videos"], p["video_grid_thw"], p["video_merge_sizes"], p["video_compression_mask"])
        assert not bool(args[-1].all())  # some tokens really are pruned
    else:
        args = (p["pixel_values"], p["image_grid_thw"], p["image_merge_sizes"], None)
    model.pruning = pruning
    try:
        with torch.no_grad(), SyncCounter() as counter:
            feats = model.get_visual_features(*args)
    finally:
        model.pruning = "after"
    expected = int(args[-1].sum()) if args[-1] is not None else None
    if expected is not None:
        assert feats.shape[0] == expected
    assert len(counter.calls) <= 1, counter.calls
