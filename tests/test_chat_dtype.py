"""`vl3fast chat`'s device and dtype choice: bfloat16 by default on CUDA, float32 on the CPU, said on stderr."""
from __future__ import annotations

import pytest
import torch

from vl3fast.chat import resolve_device_dtype, run_chat
from vl3fast.cli import build_parser


def _args(*extra):
    return build_parser().parse_args(["chat", "--model", "ckpt", "--image", "a.png", "what?", *extra])


@pytest.mark.parametrize(("extra", "device", "dtype"), [
    (["--device", "cuda"], "cuda", torch.bfloat16),
    (["--device", "cuda:1"], "cuda:1", torch.bfloat16),
    (["--device", "cpu"], "cpu", torch.float32),
    (["--device", "cuda", "--dtype", "float32"], "cuda", torch.float32),
    (["--device", "cuda", "--dtype", "auto"], "cuda", "auto"),
])
def test_cli_arguments_resolve(extra, device, dtype):
    args = _args(*extra)
    got_device, got_dtype, note = resolve_device_dtype(args.device, args.dtype)
    assert (got_device, got_dtype) == (device, dtype)
    assert str(dtype).removeprefix("torch.") in note


@pytest.mark.parametrize("usable", [True, False])
def test_default_device_follows_vl3fast_cuda_not_torch(monkeypatch, usable):
    """A CPU-only build on a GPU machine chats on the CPU instead of failing after the model load."""
    import vl3fast.chat

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(vl3fast.chat, "cuda_available", lambda: usable)
    assert resolve_device_dtype(None, None)[0] == ("cuda" if usable else "cpu")


def test_unknown_dtype_is_a_value_error():
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        resolve_device_dtype("cpu", "int8")


class _Loaded(Exception):
    pass


def test_run_chat_loads_the_model_in_bfloat16_on_cuda_and_says_so(monkeypatch, capsys):
    """The real run_chat path up to the model load (stubbed: no GPU here), with the CLI's arguments."""
    import vl3fast.models
    import vl3fast.processing

    seen = {}

    def fake_model(model_dir, *, dtype, device):
        seen.update(dtype=dtype, device=device)
        raise _Loaded

    monkeypatch.setattr(vl3fast.processing.VideoLLaMA3Processor, "from_pretrained", staticmethod(lambda d: None))
    monkeypatch.setattr(vl3fast.models.VideoLLaMA3ForCausalLM, "from_pretrained", staticmethod(fake_model))
    args = _args("--device", "cuda")
    with pytest.raises(_Loaded):
        run_chat(args.model, args.question, images=args.image, device=args.device, dtype=args.dtype)
    assert seen == {"dtype": torch.bfloat16, "device": "cuda"}
    assert "dtype bfloat16 (the default on CUDA" in capsys.readouterr().err
