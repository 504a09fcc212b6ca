"""Builds vl3fast._C by driving CMakeLists.txt with Ninja.

Environment:
  VL3FAST_CUDA=0|1      force the CUDA kernels off / on (default: on when nvcc is found)
  VL3FAST_CUDA_ARCHS    CUDA architectures (CMake syntax); default: CMakeLists.txt's VL3FAST_CUDA_ARCHS
  VL3FAST_BUILD_DIR     CMake build directory (default build/cmake-<python tag>, kept between builds
                        so that an editable reinstall only recompiles what changed)
  VL3FAST_BUILD_JOBS    parallel compile jobs (default: ninja's choice)
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
VERSION = re.search(r'__version__ = "([^"]+)"', (ROOT / "vl3fast" / "_version.py").read_text()).group(1)


def cuda_mode() -> str:
    value = os.environ.get("VL3FAST_CUDA", "").strip().lower()
    modes = {"": "AUTO", "auto": "AUTO", "1": "ON", "on": "ON", "true": "ON", "0": "OFF", "off": "OFF", "false": "OFF"}
    if value not in modes:
        raise SystemExit(f"VL3FAST_CUDA={value!r}: expected 0, 1 or unset")
    return modes[value]


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import ninja
        import pybind11

        build_dir = Path(os.environ.get("VL3FAST_BUILD_DIR", ROOT / "build" / f"cmake-{sys.implementation.cache_tag}"))
        build_dir.mkdir(parents=True, exist_ok=True)
        configure = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja",
            # The ninja path is passed every time: a cached path from a deleted isolated build env breaks reuse.
            f"-DCMAKE_MAKE_PROGRAM={Path(ninja.BIN_DIR) / 'ninja'}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DVL3FAST_CUDA={cuda_mode()}",
            # Unset, the cached value is dropped so that CMakeLists.txt's default (the one place it is set) applies.
            f"-DVL3FAST_CUDA_ARCHS={os.environ['VL3FAST_CUDA_ARCHS']}" if os.environ.get("VL3FAST_CUDA_ARCHS")
            else "-UVL3FAST_CUDA_ARCHS",
            f"-DVL3FAST_VERSION={VERSION}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        subprocess.run(configure, check=True)
        build = ["cmake", "--build", str(build_dir)]
        if os.environ.get("VL3FAST_BUILD_JOBS"):
            build += ["--parallel", os.environ["VL3FAST_BUILD_JOBS"]]
        subprocess.run(build, check=True)
        built = sorted(build_dir.glob("_C*.so")) + sorted(build_dir.glob("_C*.pyd"))
        if not built:
            raise RuntimeError(f"CMake finished but no _C module was found in {build_dir}")
        target = Path(self.get_ext_fullpath(ext.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built[0], target)


setup(
    version=VERSION,
    ext_modules=[Extension("vl3fast._C", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
)
