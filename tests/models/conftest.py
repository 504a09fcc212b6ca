"""Fixtures for the model tests: tiny random transformers VideoLLaMA3 checkpoints on disk."""
from __future__ import annotations

import pytest

from .tiny_vl3 import build_hf_model, write_official


@pytest.fixture(scope="module", params=[(72, True), (64, False)], ids=["hd72-tied", "hd64-untied"])
def checkpoints(request, tmp_path_factory):
    """(transformers model, {"native": dir, "official": dir}) for vision head dims 72 (tied LLM embeddings)
    and 64 (untied)."""
    head_dim, tie = request.param
    hf = build_hf_model(head_dim, tie)
    root = tmp_path_factory.mktemp(f"vl3_hd{head_dim}")
    dirs = {"native": str(root / "native"), "official": str(root / "official")}
    hf.save_pretrained(dirs["native"])
    write_official(dirs["native"], dirs["official"])
    return hf, dirs
