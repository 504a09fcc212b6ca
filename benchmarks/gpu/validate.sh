#!/usr/bin/env bash
# GPU validation (DESIGN.md §7): on a bare CUDA machine with torch, build vl3fast, run every CUDA test
# and the GPU benchmarks, and write a JSON summary to OUTDIR, within 8 minutes (timeouts 240 + 120 + 100 s).
#   benchmarks/gpu/validate.sh OUTDIR
# Installs nothing from the network: needs torch, pybind11, cmake, ninja, setuptools, pytest,
# pytest-benchmark (and transformers for the reference tests) already present; baselines that are
# absent (flash-attn, ...) are skipped by the benchmarks, saying so.
set -uo pipefail
OUT=${1:?usage: benchmarks/gpu/validate.sh OUTDIR}
PY=${PYTHON:-python3}
cd "$(dirname "$0")/../.."
mkdir -p "$OUT"
START=$(date +%s)

echo "== build (CUDA required)"
VL3FAST_CUDA=1 timeout 240 "$PY" -m pip install -v --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1
BUILD_RC=$?
grep -E "ptxas info|spill" "$OUT/build.log" >"$OUT/ptxas.txt" || true
"$PY" benchmarks/gpu/ptxas_resources.py "$OUT/build.log" >"$OUT/cuda_resources.txt" 2>&1 || true

echo "== CUDA tests"
timeout 120 "$PY" -m pytest -q -m cuda tests -p no:cacheprovider --junitxml="$OUT/cuda_tests.xml" >"$OUT/cuda_tests.log" 2>&1
TEST_RC=$?

echo "== GPU benchmarks"
timeout 100 "$PY" -m pytest -q -m cuda benchmarks -p no:cacheprovider --benchmark-json="$OUT/gpu_benchmarks.json" \
  >"$OUT/gpu_benchmarks.log" 2>&1
BENCH_RC=$?

"$PY" - "$OUT" "$BUILD_RC" "$TEST_RC" "$BENCH_RC" "$START" <<'PYEOF'
import json, os, sys, time, xml.etree.ElementTree as ET
out, build_rc, test_rc, bench_rc, start = sys.argv[1], *map(int, sys.argv[2:6])
summary = {"build_rc": build_rc, "cuda_tests_rc": test_rc, "gpu_benchmarks_rc": bench_rc,
           "seconds": round(time.time() - start, 1)}
try:
    import vl3fast, torch
    summary["info"] = vl3fast.info()
    summary["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
except Exception as exc:  # the build may have failed; say so rather than crash
    summary["info_error"] = repr(exc)
xml_path = os.path.join(out, "cuda_tests.xml")
if os.path.exists(xml_path):
    suite = ET.parse(xml_path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    summary["cuda_tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    summary["cuda_test_failures"] = [c.get("classname") + "::" + c.get("name") for c in suite.iter("testcase")
                                     if c.find("failure") is not None or c.find("error") is not None]
bench_path = os.path.join(out, "gpu_benchmarks.json")
if os.path.exists(bench_path):
    data = json.load(open(bench_path))
    summary["benchmarks"] = [{"name": b["name"], "median_s": b["stats"]["median"], **b.get("extra_info", {})}
                             for b in data.get("benchmarks", [])]
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
print(json.dumps({k: v for k, v in summary.items() if k != "benchmarks"}, indent=2))
PYEOF
[ "$BUILD_RC" -eq 0 ] && [ "$TEST_RC" -eq 0 ]
