"""`vllm serve CKPT_DIR` with the plugin, queried by the official `openai` client on 127.0.0.1.

One server for the module, started and stopped here on a free local port with bounded waits.
"""
from __future__ import annotations

import base64
import concurrent.futures
import functools
import http.server
import re
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("vllm", reason="the vLLM plugin tests run in .venv-vllm (make test-vllm)")
openai = pytest.importorskip("openai")

from ._chat import file_url, image_video_messages, image_video_reference  # noqa: E402
from ._server import running  # noqa: E402
from .conftest import MAX_NEW_TOKENS, QUESTION, vl3_reference  # noqa: E402

REQUEST_TIMEOUT_S = 300
CONCURRENT = 16


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    with running(tiny["ckpt"]["native"], tiny["media_dir"], tmp_path_factory.mktemp("serve") / "server.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", timeout=REQUEST_TIMEOUT_S, max_retries=0)


@pytest.fixture(scope="module")
def media_http(tiny):
    """The media directory over HTTP on 127.0.0.1 (for http:// video URLs)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=tiny["media_dir"])
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def video_message(url: str, question: str = QUESTION) -> list[dict]:
    return [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                         {"type": "text", "text": question}]}]


def chat(client, url: str, stream: bool = False, **mm_kwargs):
    extra = {"ignore_eos": True}
    if mm_kwargs:
        extra["mm_processor_kwargs"] = mm_kwargs
    return client.chat.completions.create(model="vl3", messages=video_message(url), max_tokens=MAX_NEW_TOKENS,
                                          temperature=0.0, stream=stream, extra_body=extra,
                                          **({"stream_options": {"include_usage": True}} if stream else {}))


@pytest.fixture(scope="module")
def reference(tiny):
    """vl3fast's own answer for the clip (greedy ids decoded as the server detokenizes)."""
    from vl3fast.processing import VideoLLaMA3Processor

    ref = vl3_reference(tiny["ckpt"]["native"], video=tiny["media"]["clip"])
    tok = VideoLLaMA3Processor.from_pretrained(tiny["ckpt"]["native"]).tokenizer
    ref["text"] = tok.decode(ref["ids"], skip_special_tokens=True)
    return ref


def test_streamed_chat_equals_offline_answer(client, tiny, reference):
    chunks, usage = [], None
    for chunk in chat(client, file_url(tiny["media"]["clip"]), stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            chunks.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert "".join(chunks) == reference["text"]
    assert usage.prompt_tokens == len(reference["input_ids"])
    assert usage.completion_tokens == MAX_NEW_TOKENS


def check_image_video_chat(client, tiny) -> None:
    """A chat with an image and a video, rendered by the checkpoint's chat template in the server: vl3fast's
    prompt (usage.prompt_tokens) and answer; with `add_system_prompt`, vl3fast's prompt with the system turn."""
    ref = image_video_reference(tiny)
    out = client.chat.completions.create(model="vl3", messages=image_video_messages(tiny), max_tokens=MAX_NEW_TOKENS,
                                         temperature=0.0, extra_body={"ignore_eos": True})
    assert out.choices[0].message.content == ref["text"]
    assert out.usage.prompt_tokens == len(ref["input_ids"])
    out = client.chat.completions.create(model="vl3", messages=image_video_messages(tiny), max_tokens=1,
                                         extra_body={"chat_template_kwargs": {"add_system_prompt": True}})
    assert out.usage.prompt_tokens == len(ref["system_input_ids"])


def test_chat_with_image_and_video(client, tiny):
    check_image_video_chat(client, tiny)


def test_prompt_tokens_equal_vl3fast_estimate(client, tiny, reference):
    """usage.prompt_tokens == vl3fast's estimate: the header-only estimate with pruning off, and
    `vl3fast tokens --pruned` (the kept tokens) with pruning on."""
    from vl3fast.processing import VideoLLaMA3Processor

    clip, ckpt = tiny["media"]["clip"], tiny["ckpt"]["native"]
    unpruned = chat(client, file_url(clip), use_token_compression=False)
    est = VideoLLaMA3Processor.from_pretrained(ckpt).estimate_tokens(text=reference["prompt"], videos=[clip])
    assert unpruned.usage.prompt_tokens == est.total_tokens

    out = subprocess.run([sys.executable, "-m", "vl3fast", "tokens", clip, "--model", ckpt, "--pruned",
                          "--prompt", reference["prompt"]], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    total = int(re.search(r"total tokens after pruning: (\d+)", out.stdout).group(1))
    assert chat(client, file_url(clip)).usage.prompt_tokens == total == len(reference["input_ids"])


def test_http_and_data_urls(client, tiny, reference, media_http):
    assert chat(client, media_http + "/clip.mp4").choices[0].message.content == reference["text"]
    data = base64.b64encode(open(tiny["media"]["clip"], "rb").read()).decode()
    assert chat(client, f"data:video/mp4;base64,{data}").choices[0].message.content == reference["text"]


BAD = {
    "corrupt": (lambda m: file_url(m["corrupt"]), {}, r"video 0 .*(truncated|corrupt)"),
    "missing": (lambda m: file_url(m["missing"]), {}, r"no such media file"),
    "no_frames": (lambda m: file_url(m["no_frames"]), {}, r"no frames|has no video stream"),
    "over_budget": (lambda m: file_url(m["clip"]), {"video_min_pixels": 28 * 28 * 200},
                    r"visual tokens exceed max_visual_tokens=\d+"),
    "fps_zero": (lambda m: file_url(m["clip"]), {"fps": 0}, r"fps must be > 0"),
    "unknown_scheme": (lambda m: "ftp://127.0.0.1/clip.mp4", {}, r"unsupported media source scheme 'ftp'"),
    "url_not_allowed": (lambda m: "http://localhost:9/clip.mp4", {}, r"allowed domains"),
    "outside_media_dir": (lambda m: "file:///etc/hostname", {}, r"allowed-local-media-path"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_a_4xx_and_the_server_keeps_serving(client, server, tiny, reference, name):
    url_of, kwargs, pattern = BAD[name]
    with pytest.raises(openai.APIStatusError) as info:
        chat(client, url_of(tiny["media"]), **kwargs)
    assert 400 <= info.value.status_code < 500, info.value
    assert re.search(pattern, str(info.value.message)), info.value.message
    assert server.healthy()
    assert chat(client, file_url(tiny["media"]["clip"])).choices[0].message.content == reference["text"]


def test_more_videos_than_the_limit_is_a_4xx(client, server, tiny):
    url = file_url(tiny["media"]["clip"])
    content = [{"type": "video_url", "video_url": {"url": url}}] * 2 + [{"type": "text", "text": QUESTION}]
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="vl3", messages=[{"role": "user", "content": content}], max_tokens=2)
    assert 400 <= info.value.status_code < 500 and "At most 1 video" in info.value.message
    assert server.healthy()


def test_concurrent_requests(client, tiny, reference):
    url = file_url(tiny["media"]["clip"])
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(CONCURRENT) as pool:
        answers = list(pool.map(lambda _: chat(client, url).choices[0].message.content, range(CONCURRENT)))
    assert time.monotonic() - start < REQUEST_TIMEOUT_S
    assert answers == [reference["text"]] * CONCURRENT


def test_clean_shutdown(server, client):
    """Last in the module: SIGTERM stops the server (API process and engine) with exit status 0."""
    assert server.stop(timeout=120) == 0
    with pytest.raises(openai.APIConnectionError):
        client.models.list()
