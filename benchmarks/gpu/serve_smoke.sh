#!/usr/bin/env bash
# Serving smoke run on one GPU (issue #17): `vllm serve` (the official CUDA vllm, in the tested range) with
# the vl3fast plugin on a tiny random VideoLLaMA3 checkpoint in bf16; one streamed video request, then 32
# concurrent ones, reporting requests/s and the median time to first token, and a clean shutdown.
#   benchmarks/gpu/serve_smoke.sh OUTDIR
# UNVERIFIED: written without a GPU; it has never run on one.
# Needs an environment with vllm (>=0.32,<0.33, CUDA build), vl3fast installed with its CUDA kernels, openai.
set -uo pipefail
OUT=${1:?usage: benchmarks/gpu/serve_smoke.sh OUTDIR}
PY=${PYTHON:-python3}
cd "$(dirname "$0")/../.."
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

"$PY" -c "import vllm, vl3fast, openai; print('vllm', vllm.__version__, '| vl3fast', vl3fast.__version__)" || {
  echo "needs vllm, vl3fast and openai in $PY's environment"; exit 1; }

timeout 900 "$PY" - "$OUT" <<'PYEOF'
import concurrent.futures, json, statistics, sys, time
from pathlib import Path

import openai

from tests.integrations.vllm._server import Server
from tests.integrations.vllm._tiny import build_checkpoints, build_media

out = Path(sys.argv[1])
ckpt = build_checkpoints(str(out / "ckpt"))["native"]
media = build_media(str(out / "media"))
server = Server(ckpt, str(out / "media"), out / "server.log", dtype="bfloat16")
server.wait_ready()
client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", timeout=300, max_retries=0)
messages = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": Path(media["clip"]).as_uri()}},
                                         {"type": "text", "text": "What is shown?"}]}]


def one():
    start, first = time.perf_counter(), None
    for chunk in client.chat.completions.create(model="vl3", messages=messages, max_tokens=16, temperature=0,
                                                stream=True, extra_body={"ignore_eos": True}):
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
    return first


one()
start = time.perf_counter()
with concurrent.futures.ThreadPoolExecutor(32) as pool:
    ttfts = list(pool.map(lambda _: one(), range(32)))
result = {"requests_per_s": 32 / (time.perf_counter() - start), "ttft_median_s": statistics.median(ttfts),
          "exit_status": server.stop()}
print(json.dumps(result, indent=2))
(out / "serve_smoke.json").write_text(json.dumps(result, indent=2))
sys.exit(0 if result["exit_status"] == 0 else 1)
PYEOF
