"""The compiled core's ELF: what it needs at load time, against the manylinux policy the release declares.

These read the _C that this test session imports (the editable build, or an installed wheel).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from vl3fast._backend import core

from .elf import (
    declared_policy, defined_versions, exported_symbols, highest, needed, policy, required_versions, undefined_unversioned,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF checks: Linux only")

SO = Path(core.__file__)
# glibc's own libraries, the two GCC runtimes every manylinux policy allows, and OpenMP (torch brings it).
ALLOWED_NEEDED = {"libc.so.6", "libm.so.6", "ld-linux-x86-64.so.2", "libpthread.so.0", "libdl.so.2", "librt.so.1",
                  "libstdc++.so.6", "libgcc_s.so.1", "libgomp.so.1"}


def test_needs_no_torch_and_no_cuda_library():
    libs = needed(SO)
    assert set(libs) <= ALLOWED_NEEDED, f"{SO.name} needs {sorted(set(libs) - ALLOWED_NEEDED)} beyond {sorted(ALLOWED_NEEDED)}"
    assert not [lib for lib in libs if any(word in lib for word in ("torch", "c10", "cuda", "python"))], libs


def test_symbol_versions_within_the_declared_manylinux_policy():
    name = declared_policy()
    allowed = policy(name)
    required = required_versions(SO)
    checked = {lib: vs for lib, vs in required.items() if lib in allowed["libs"]}
    too_new = {lib: sorted(vs - allowed["versions"]) for lib, vs in checked.items() if vs - allowed["versions"]}
    assert not too_new, f"{SO.name} needs symbol versions newer than {name} allows: {too_new}"
    everything = set().union(*required.values())
    glibc, glibcxx = highest(everything, "GLIBC"), highest(everything, "GLIBCXX")
    assert glibc is not None and glibc in allowed["versions"], glibc
    assert glibcxx is None or glibcxx in allowed["versions"], glibcxx  # None: libstdc++ linked in (CMakeLists.txt)
    print(f"{SO.name}: highest GLIBC {glibc}, GLIBCXX {glibcxx}, policy {name}")


def test_every_library_symbol_is_bound_to_a_version():
    """An unversioned reference to a library symbol means it was missing from the glibc linked against
    (the stubs of VL3FAST_GLIBC, setup.py): the module would fail to load on that glibc.  Weak references
    and the interpreter's own symbols (resolved from the python process) are fine."""
    loose = [name for name, weak in undefined_unversioned(SO) if not weak and not name.startswith(("Py", "_Py"))]
    assert not loose, f"{SO.name} references {loose} without a symbol version"


def test_openmp_versions_are_provided_by_torchs_libgomp():
    """_C binds to the libgomp torch loaded, so every GOMP/OMP version it needs must be in torch's copy."""
    torch_gomp = Path(torch.__file__).parent / "lib" / "libgomp.so.1"
    if not torch_gomp.exists():
        pytest.skip(f"this torch ({torch.__version__}) bundles no libgomp; the system's is used")
    wanted = required_versions(SO).get("libgomp.so.1", set())
    assert wanted, "_C should use OpenMP"
    missing = wanted - defined_versions(torch_gomp)
    assert not missing, f"torch {torch.__version__}'s libgomp lacks {sorted(missing)}"


def test_exports_only_the_module_entry_point():
    # A private, statically linked libstdc++ must not leak symbols that could interpose on other modules.
    assert exported_symbols(SO) == ["PyInit__C"]
