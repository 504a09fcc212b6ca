"""`vllm serve` of an official-format checkpoint (`Videollama3Qwen2ForCausalLM`) with its own chat_template.json,
queried by the `openai` client: a chat with an image and a video gets vl3fast's prompt and answer.

A module of its own: one server per module, on a free 127.0.0.1 port, started and stopped with bounded waits.
"""
from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="the vLLM plugin tests run in .venv-vllm (make test-vllm)")
openai = pytest.importorskip("openai")

from ._server import running  # noqa: E402
from .test_serve import REQUEST_TIMEOUT_S, check_image_video_chat  # noqa: E402


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    with running(tiny["ckpt"]["official"], tiny["media_dir"], tmp_path_factory.mktemp("serve") / "server.log") as srv:
        yield srv


def test_official_chat_template_served(server, tiny):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", timeout=REQUEST_TIMEOUT_S, max_retries=0)
    check_image_video_chat(client, tiny)
    assert server.stop(timeout=120) == 0
