"""The official checkpoint format (`Videollama3Qwen2ForCausalLM`) served offline: same answer as vl3fast.

A module of its own: two in-process engines in one module would share (and on teardown destroy) vLLM's
process-wide parallel state.
"""
from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="the vLLM plugin tests run in .venv-vllm (make test-vllm)")

from .conftest import greedy, make_llm  # noqa: E402
from .test_offline import CASES, proc, reference, request  # noqa: E402,F401


def test_official_format_same_answer(tiny, proc):
    """The official checkpoint format loads through the same weights mapper and answers identically."""
    llm = make_llm(tiny["ckpt"]["official"], tiny["media_dir"])
    for name in ("pruned_video", "image"):
        out = llm.generate(request(tiny, CASES[name], proc), greedy(), use_tqdm=False)[0]
        assert list(out.outputs[0].token_ids) == reference(tiny, CASES[name])["ids"]
