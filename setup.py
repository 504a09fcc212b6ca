"""Builds vl3fast._C by driving CMakeLists.txt with Ninja.

Environment:
  VL3FAST_CUDA=0|1      force the CUDA kernels off / on (default: on when nvcc is found)
  VL3FAST_CUDA_ARCHS    CUDA architectures (CMake syntax); default: CMakeLists.txt's VL3FAST_CUDA_ARCHS
  VL3FAST_BUILD_DIR     CMake build directory (default build/cmake-<python tag>, kept between builds
                        so that an editable reinstall only recompiles what changed)
  VL3FAST_BUILD_JOBS    parallel compile jobs (default: ninja's choice)
  VL3FAST_PORTABLE_LINK=0  link libstdc++ dynamically (default 1: statically, see CMakeLists.txt)
  VL3FAST_GLIBC         oldest glibc _C must load on (default 2.28, manylinux_2_28); "native" links
                        against this machine's glibc.  Needs the `ziglang` package (requirements-dev.txt),
                        which makes that glibc's stub libraries; without it the native glibc is used.
"""
import os
import platform
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


def glibc_stubs() -> str:
    """A directory of link-time stubs of glibc VL3FAST_GLIBC (libc.so, libpthread.so, ...), or "".

    Linked against them, _C's references to glibc bind to the symbol versions that glibc has (for
    example pthread_once@GLIBC_2.2.5 in libpthread, where glibc 2.34+ would give pthread_once@GLIBC_2.34
    in libc), so a module built on a new distribution loads on the old one.  zig generates the stubs
    from its glibc symbol tables; nothing of zig is linked in.
    """
    version = os.environ.get("VL3FAST_GLIBC", "2.28").strip()
    if version == "native" or not sys.platform.startswith("linux") or platform.machine() != "x86_64":
        return ""
    try:
        import ziglang  # noqa: F401
    except ImportError:
        print(f"vl3fast: `ziglang` is not installed: linking against this machine's glibc, not {version}")
        return ""
    out = ROOT / "build" / f"glibc-{version}"  # shared by all build dirs of this tree
    if (out / "libc_nonshared.a").exists():  # written last
        return str(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = ROOT / "build" / "zig-cache"
    (out / "probe.c").write_text("int vl3fast_probe(void) { return 0; }\n")
    subprocess.run(
        [sys.executable, "-m", "ziglang", "cc", "-target", f"x86_64-linux-gnu.{version}", "-shared",
         "-o", str(out / "probe.so"), str(out / "probe.c")],
        check=True, env={**os.environ, "ZIG_GLOBAL_CACHE_DIR": str(cache), "ZIG_LOCAL_CACHE_DIR": str(cache)},
    )
    made = sorted(cache.glob("o/*/libc.so.6"), key=lambda p: p.stat().st_mtime)
    if not made:
        raise RuntimeError(f"zig made no glibc {version} stubs under {cache}")
    stubs = made[-1].parent
    for soname in ("libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1"):
        shutil.copy2(stubs / soname, out / soname)
        link = out / (soname.split(".so")[0] + ".so")  # libc.so -> libc.so.6: what -lc finds
        link.unlink(missing_ok=True)
        link.symlink_to(soname)
    shutil.copy2(stubs / "libld.so.2", out / "ld-linux-x86-64.so.2")
    # libc.so is a linker script naming libc_nonshared.a too (atexit and friends): the system's copy.
    nonshared = subprocess.run(["gcc", "-print-file-name=libc_nonshared.a"], capture_output=True, text=True)
    shutil.copy2(nonshared.stdout.strip(), out / "libc_nonshared.a")
    return str(out)


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
            f"-DVL3FAST_GLIBC_STUBS={glibc_stubs()}",
            f"-DVL3FAST_PORTABLE_LINK={'OFF' if os.environ.get('VL3FAST_PORTABLE_LINK') == '0' else 'ON'}",
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
