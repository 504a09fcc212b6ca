#!/usr/bin/env bash
# GPU validation (DESIGN.md §7), rebuilt for a 15-minute GPU loan: on a bare CUDA machine (torch, nvcc, cmake,
# ninja, pybind11, pytest, pytest-timeout, compute-sanitizer preinstalled, no network) build vl3fast, run the
# smoke step, the sanitizers, the CUDA tests per kernel family and the GPU benchmarks, in at most 7 minutes.
#   benchmarks/gpu/validate.sh OUTDIR      run everything, write OUTDIR/{validate.log,summary.json,...}
#   benchmarks/gpu/validate.sh --dry-run   print the plan and the step budgets, run nothing
# Every step is its own process with its own time budget (a fault or a hang in one cannot hide the others),
# and its output goes to ONE combined log as it happens, so a timeout kill loses nothing.  At most 4 files
# come back: validate.log, summary.json, gpu_benchmarks.json, cuda_resources.txt (a run returns at most 6).
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
JOBS=$(nproc 2>/dev/null || echo 4)
# The smoke step's configuration (issue #16): head dims 72 and 128, bf16 and fp16, these segment lengths.
SMOKE="benchmarks/gpu/smoke.py --head-dims 72 128 --dtypes bfloat16 float16 --lengths 1 2 63 64 65 130 1000"
# One small configuration for racecheck and initcheck (each instruments every shared/global access).
SMALL="benchmarks/gpu/smoke.py --head-dims 72 --dtypes bfloat16 --lengths 1 65 130"
PYTEST="-p no:cacheprovider --continue-on-collection-errors -q -rfE"
# Under the sanitizers torch's caching allocator is off, so every allocation is its own checked block.
SAN="PYTORCH_NO_CUDA_MEMORY_CACHING=1"

if [ "${1:-}" = "--dry-run" ]; then
  DRY=1 OUT=OUTDIR WORK=WORKDIR TIMEOUT="-p timeout --timeout 30"
else
  DRY=0
  OUT=${1:?usage: benchmarks/gpu/validate.sh OUTDIR | --dry-run}
  mkdir -p "$OUT"
  OUT=$(cd "$OUT" && pwd)
  WORK=$(mktemp -d)  # junit files, the smoke record, the build log: folded into summary.json, never returned
  TIMEOUT=""  # per-test limit, so a hang costs 30 s and the step's other results survive
  if "$PY" -c "import pytest_timeout" 2>/dev/null; then TIMEOUT="-p timeout --timeout 30"; fi
fi

# name | budget (s) | command.  The budgets sum to 405 s (6:45), under the 7-minute limit.
STEPS=(
  "build|130|VL3FAST_CUDA=1 VL3FAST_BUILD_JOBS=$JOBS $PY -m pip install -v --no-build-isolation --no-deps -e ."
  "smoke|35|CUDA_LAUNCH_BLOCKING=1 $PY $SMOKE --json $WORK/smoke.json"
  "memcheck|60|$SAN compute-sanitizer --tool memcheck --error-exitcode 1 --print-limit 20 $PY $SMOKE"
  "racecheck|30|$SAN compute-sanitizer --tool racecheck --racecheck-report hazard --error-exitcode 1 --print-limit 20 $PY $SMALL"
  "initcheck|25|$SAN compute-sanitizer --tool initcheck --error-exitcode 1 --print-limit 20 $PY $SMALL"
  "tests_attention|45|$PY -m pytest $PYTEST $TIMEOUT -m cuda tests/ops/test_attention_cuda.py --junitxml=$WORK/attention.xml"
  "tests_pruning|20|$PY -m pytest $PYTEST $TIMEOUT -m cuda tests/ops/test_pruning_cuda.py tests/ops/test_pruning.py --junitxml=$WORK/pruning.xml"
  "tests_rope_positions|20|$PY -m pytest $PYTEST $TIMEOUT -m cuda tests/ops/test_rope2d.py tests/ops/test_positions.py --junitxml=$WORK/rope_positions.xml"
  "benchmarks|40|$PY -m pytest $PYTEST $TIMEOUT -m cuda benchmarks --benchmark-json=$OUT/gpu_benchmarks.json"
)

if [ "$DRY" = 1 ]; then
  echo "validate.sh plan (build -j $JOBS; every step its own process, killed at its budget; one combined log):"
  total=0
  for step in "${STEPS[@]}"; do
    IFS='|' read -r name budget cmd <<<"$step"
    printf '  %-21s %4s s  %s\n' "$name" "$budget" "$cmd"
    total=$((total + budget))
  done
  printf '  %-21s %4s s  (limit 420 s = 7 min)\n' "total" "$total"
  echo "  then: cuda_resources.txt (ptxas table from the build log) and summary.json (steps, smoke, tests, benchmarks)"
  echo "  files in OUTDIR: validate.log summary.json gpu_benchmarks.json cuda_resources.txt"
  exit 0
fi

LOG="$OUT/validate.log"
: >"$LOG"
START=$(date +%s)
echo "validate.sh $(date -u +%FT%TZ) on $(hostname), $JOBS cores; pytest-timeout: ${TIMEOUT:-absent}" >>"$LOG"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >>"$LOG" 2>&1 || true

RESULTS=""
for step in "${STEPS[@]}"; do
  IFS='|' read -r name budget cmd <<<"$step"
  echo "== $name (budget $budget s): $cmd" | tee -a "$LOG"
  t0=$(date +%s)
  if [ "$name" = "build" ]; then
    timeout -k 5 "$budget" bash -c "$cmd" >"$WORK/build.log" 2>&1
    rc=$?
    # errors, warnings, non-zero spills (the per-kernel table goes to cuda_resources.txt)
    grep -E "error|warning|[1-9][0-9]* bytes spill|Successfully installed" "$WORK/build.log" | tail -n 200 >>"$LOG"
  else
    timeout -k 5 "$budget" bash -c "$cmd" >>"$LOG" 2>&1
    rc=$?
  fi
  dt=$(($(date +%s) - t0))
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && echo "== $name: TIMEOUT after $budget s" | tee -a "$LOG"
  echo "== $name: rc $rc in $dt s" | tee -a "$LOG"
  RESULTS="$RESULTS$name $rc $dt $budget;"
  if [ "$name" = "build" ] && [ "$rc" -ne 0 ]; then
    tail -n 60 "$WORK/build.log" >>"$LOG"
    echo "== build failed: nothing else can run" | tee -a "$LOG"
    break
  fi
done
"$PY" benchmarks/gpu/ptxas_resources.py "$WORK/build.log" >"$OUT/cuda_resources.txt" 2>&1 || true

"$PY" - "$OUT" "$WORK" "$START" "$RESULTS" <<'PYEOF' 2>&1 | tee -a "$LOG"
import json, os, sys, time, xml.etree.ElementTree as ET
out, work, start, results = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
steps = {}
for entry in filter(None, results.split(";")):
    name, rc, dt, budget = entry.split()
    steps[name] = {"rc": int(rc), "seconds": int(dt), "budget_s": int(budget), "timed_out": rc in ("124", "137")}
summary = {"ok": bool(steps) and all(s["rc"] == 0 for s in steps.values()), "steps": steps,
           "seconds": round(time.time() - start, 1)}
try:
    import torch, vl3fast
    summary["info"] = vl3fast.info()
    summary["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
except Exception as exc:  # the build may have failed; say so rather than crash
    summary["info_error"] = repr(exc)
smoke = os.path.join(work, "smoke.json")
if os.path.exists(smoke):
    summary["smoke"] = json.load(open(smoke))
for family in ("attention", "pruning", "rope_positions"):
    path = os.path.join(work, family + ".xml")
    if not os.path.exists(path):
        continue
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    summary.setdefault("tests", {})[family] = {
        **{k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")},
        "failed": [c.get("classname") + "::" + c.get("name") for c in suite.iter("testcase")
                   if c.find("failure") is not None or c.find("error") is not None]}
bench = os.path.join(out, "gpu_benchmarks.json")
if os.path.exists(bench):
    data = json.load(open(bench))
    summary["benchmarks"] = [{"name": b["name"], "median_s": b["stats"]["median"], **b.get("extra_info", {})}
                             for b in data.get("benchmarks", [])]
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
print(json.dumps({k: v for k, v in summary.items() if k in ("ok", "steps", "seconds", "tests")}, indent=1))
PYEOF
rm -rf "$WORK"
echo "validate.sh: $(($(date +%s) - START)) s; files: $(ls "$OUT" | tr '\n' ' ')" | tee -a "$LOG"
"$PY" -c "import json,sys; sys.exit(0 if json.load(open('$OUT/summary.json'))['ok'] else 1)"
