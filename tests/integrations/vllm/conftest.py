"""Fixtures for the vLLM plugin tests (run in .venv-vllm by `make test-vllm`; skipped where vllm is absent)."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # offline engine in-process: faster, one core

MAX_NEW_TOKENS = 8
QUESTION = "What is shown in this video?"


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    from ._tiny import build_checkpoints, build_media

    root = tmp_path_factory.mktemp("vllm_tiny")
    return {"ckpt": build_checkpoints(str(root / "ckpt")), "media": build_media(str(root / "media")),
            "media_dir": str(root / "media")}


def conversation(n_images: int = 0, video: bool = False, question: str = QUESTION) -> list[dict]:
    blocks = [{"type": "image"}] * n_images + ([{"type": "video"}] if video else [])
    return [{"role": "user", "content": blocks + [{"type": "text", "text": question}]}]


def vl3_reference(ckpt: str, images=(), video=None, **settings) -> dict:
    """What vl3fast alone gives: the prompt, its input ids, and greedy ids from VideoLLaMA3ForCausalLM.generate."""
    import torch

    from vl3fast.models import VideoLLaMA3ForCausalLM
    from vl3fast.processing import VideoLLaMA3Processor

    compress = settings.pop("use_token_compression", None)
    proc = VideoLLaMA3Processor.from_pretrained(ckpt)
    prompt = proc.apply_chat_template(conversation(len(images), video is not None), add_generation_prompt=True)
    inputs = proc(text=prompt, images=list(images) or None, videos=[video] if video else None,
                  use_token_compression=compress, **settings)
    model = _vl3_model(ckpt)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, pad_token_id=0)
    n = inputs["input_ids"].shape[1]
    return {"prompt": prompt, "input_ids": inputs["input_ids"][0].tolist(), "ids": out[0, n:].tolist(),
            "inputs": inputs}


_MODELS: dict = {}


def _vl3_model(ckpt: str):
    from vl3fast.models import VideoLLaMA3ForCausalLM

    if ckpt not in _MODELS:
        _MODELS[ckpt] = VideoLLaMA3ForCausalLM.from_pretrained(ckpt)
    return _MODELS[ckpt]


def greedy():
    from vllm import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS, ignore_eos=True)


def make_llm(ckpt: str, media_dir: str, **kwargs):
    from vllm import LLM

    return LLM(model=ckpt, dtype="float32", enforce_eager=True, max_model_len=2048, max_num_seqs=8,
               limit_mm_per_prompt={"image": 2, "video": 1}, allowed_local_media_path=media_dir,
               allowed_media_domains=["127.0.0.1"], seed=0, **kwargs)
