"""The official checkpoint format (`Videollama3Qwen2ForCausalLM`) served offline: same answer as vl3fast.

A module of its own: two in-process engines in one module would share (and on teardown destroy) vLLM's
process-wide parallel state.
"""
from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="the vLLM plugin tests run in .venv-vllm (make test-vllm)")

from .conftest import greedy, make_llm  # noqa: E402
from .test_offline import CASES, check_chat, proc, reference, request  # noqa: E402,F401


@pytest.fixture(scope="module")
def official_llm(tiny):
    return make_llm(tiny["ckpt"]["official"], tiny["media_dir"])


def test_official_format_same_answer(official_llm, tiny, proc):
    """The official checkpoint format loads through the same weights mapper and answers identically."""
    for name in ("pruned_video", "image"):
        out = official_llm.generate(request(tiny, CASES[name], proc), greedy(), use_tqdm=False)[0]
        assert list(out.outputs[0].token_ids) == reference(tiny, CASES[name])["ids"]


def test_official_chat_template(official_llm, tiny):
    """The official checkpoint's own chat_template.json (one `<image>` per decoded frame, which vLLM cannot
    render before decoding) becomes vl3fast's equivalent template: the same prompt and answer as vl3fast."""
    check_chat(official_llm, tiny)
