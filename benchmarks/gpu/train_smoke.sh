#!/usr/bin/env bash
# Training smoke run on one GPU (issue #13): a VideoLLaMA3-2B-shaped model (full widths and vocabulary, random
# weights, 8 LLM and 4 vision layers), bf16, the stage-3 recipe (DiffFP on), 20 optimizer steps on synthetic
# images/videos; reports tokens/s/GPU and MFU (formula: vl3fast/training/metrics.py).  Within 5 minutes.
#   benchmarks/gpu/train_smoke.sh OUTDIR
# UNVERIFIED: written without a GPU; it has never run on one.
# Installs nothing from the network.  Without deepspeed it runs the plain torch engine and says so.
set -uo pipefail
OUT=${1:?usage: benchmarks/gpu/train_smoke.sh OUTDIR}
PY=${PYTHON:-python3}
cd "$(dirname "$0")/../.."
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

if ! "$PY" -c "import vl3fast._C" 2>/dev/null; then
  echo "== build (CUDA)"
  VL3FAST_CUDA=1 timeout 240 "$PY" -m pip install -v --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1 || {
    echo "build failed: $OUT/build.log"; exit 1; }
fi

echo "== workload"
timeout 120 "$PY" - "$OUT" <<'PYEOF' || exit 1
import json, sys
from tests.training._workload import build
w = build(sys.argv[1] + "/work", "2b", copies=200, text_layers=8, vision_layers=4)
json.dump(w, open(sys.argv[1] + "/workload.json", "w"))
PYEOF
INIT=$("$PY" -c "import json,sys; print(json.load(open('$OUT/workload.json'))['init'])")
ANN=$("$PY" -c "import json,sys; print(json.load(open('$OUT/workload.json'))['annotations'])")
MEDIA=$("$PY" -c "import json,sys; print(json.load(open('$OUT/workload.json'))['media'])")

ENGINE=(--set deepspeed.config=training/ds/zero1.json)
if ! "$PY" -c "import deepspeed" 2>/dev/null; then
  echo "deepspeed is not installed: plain torch engine (pure bf16 AdamW, no fp32 master weights)"
  ENGINE=(--set deepspeed.enabled=false)
fi

echo "== train (20 steps)"
rm -rf "$OUT/run"
timeout 240 "$PY" -m vl3fast train --config training/configs/stage3.yaml \
  --set model.init="$INIT" --set data.annotations="[$ANN]" --set data.data_folder="$MEDIA" \
  --set model.dtype=bfloat16 --set data.max_tokens=4096 --set data.num_workers=4 \
  --set train.max_steps=20 --set train.gradient_accumulation_steps=1 --set run.out="$OUT/run" \
  --set run.save_at_end=false --set run.save_every=0 --set run.progress=false "${ENGINE[@]}" \
  >"$OUT/train.log" 2>&1
RC=$?
tail -20 "$OUT/train.log"

"$PY" - "$OUT" "$RC" <<'PYEOF'
import json, sys
out, rc = sys.argv[1], int(sys.argv[2])
result = {"train_rc": rc}
try:
    lines = [json.loads(l) for l in open(f"{out}/run/metrics.jsonl") if l.strip()]
    steady = lines[5:] or lines  # the first steps include CUDA/allocator warm-up
    secs = sum(r["seconds"] for r in steady)
    result.update(steps=len(lines), tokens_per_s_per_gpu=sum(r["tokens"] for r in steady) / secs,
                  supervised_tokens_per_s_per_gpu=sum(r["supervised_tokens"] for r in steady) / secs,
                  mfu=sum(r["mfu"] or 0 for r in steady) / len(steady),
                  peak_memory_gib=max(r["peak_memory_bytes"] for r in lines) / 2**30,
                  loss_first=lines[0]["loss"], loss_last=lines[-1]["loss"])
    result["summary"] = json.load(open(f"{out}/run/summary.json"))
except Exception as exc:  # a failed run: say why instead of crashing
    result["error"] = repr(exc)
json.dump(result, open(f"{out}/train_smoke.json", "w"), indent=2)
print(json.dumps({k: v for k, v in result.items() if k != "summary"}, indent=2))
PYEOF
exit $RC
