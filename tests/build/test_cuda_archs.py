"""The GPU code inside _C is what vl3fast.info() and the README state: SASS per target GPU, compute_80 PTX.

Read with cuobjdump (the PyPI `nvidia-cuda-cuobjdump` wheel, or a CUDA toolkit's).  Needs no GPU.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

import vl3fast
from vl3fast._backend import core

# The release targets (CMakeLists.txt's VL3FAST_CUDA_ARCHS default, README "Install"): A100, H100, B200,
# RTX 50xx as SASS, and PTX that later GPUs JIT-compile.
DEFAULT_SASS = ["sm_80", "sm_90a", "sm_100", "sm_120"]
DEFAULT_PTX = ["compute_80"]

INFO = vl3fast.info()
pytestmark = pytest.mark.skipif(not INFO["cuda_compiled"], reason="vl3fast was built without its CUDA backend")


def cuobjdump() -> str:
    found = shutil.which("cuobjdump")
    if found:
        return found
    for base in sys.path:  # site-packages/nvidia/cu*/bin/cuobjdump from nvidia-cuda-cuobjdump
        hits = sorted(glob.glob(os.path.join(base, "nvidia", "*", "bin", "cuobjdump")))
        if hits:
            return hits[-1]
    pytest.fail("cuobjdump not found: pip install nvidia-cuda-cuobjdump (requirements-dev.txt)")


def embedded() -> tuple[list[str], list[str]]:
    out = subprocess.run([cuobjdump(), "--list-elf", "--list-ptx", core.__file__], capture_output=True, text=True,
                         check=True, timeout=300).stdout
    sass = {m for m in re.findall(r"^ELF file\s+\d+:\s+\S*?\.(sm_\w+?)\.cubin$", out, re.M)}
    ptx = {"compute_" + m for m in re.findall(r"^PTX file\s+\d+:\s+\S*?\.sm_(\w+?)\.ptx$", out, re.M)}
    assert sass or ptx, f"cuobjdump found no GPU code:\n{out}"
    return sorted(sass), sorted(ptx)


def test_embedded_sass_and_ptx_are_what_info_states():
    sass, ptx = embedded()
    assert sass == sorted(INFO["cuda_archs"]) and ptx == sorted(INFO["cuda_ptx"]), (sass, ptx, INFO)


@pytest.mark.skipif(bool(os.environ.get("VL3FAST_CUDA_ARCHS")), reason="VL3FAST_CUDA_ARCHS overrides the default")
def test_default_build_has_the_release_targets():
    assert embedded() == (sorted(DEFAULT_SASS), sorted(DEFAULT_PTX))


def test_info_reports_the_driver_floor():
    major = int(INFO["cuda_runtime_version"].split(".")[0])
    assert INFO["cuda_driver_min"] == {12: "525.60.13", 13: "580.65.06"}[major], INFO
