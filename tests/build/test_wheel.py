"""The release artifacts, built for real: `make wheel`'s repaired wheel, installed into fresh virtual
environments with two different torches, and a wheel built from the sdist.

Slow (run by `make test`).  The wheel is built once per session with the same CMake build dir as the
editable install, so nothing is recompiled; each fresh venv installs its torch from this machine's local
wheels (the two venvs are made in parallel; torch 2.14.1 brings about 5 GB of CUDA libraries).
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .elf import ROOT, declared_policy, policy_glibc

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux wheels")]

OP_CHECKS = Path(__file__).with_name("op_checks.py")
# The oldest torch these machines hold (a small CPU wheel) and the one the project pins (a CUDA build).
TORCHES = ["2.13.0", "2.14.1"]


def run(cmd, *, timeout=900, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def clean_env() -> dict:
    """The environment without this checkout on sys.path, so that only the installed wheel is imported."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """`make repaired-wheel` (the body of `make wheel`) into a temporary dist dir."""
    dist = tmp_path_factory.mktemp("dist")
    run(["make", "--no-print-directory", "-C", ROOT, "repaired-wheel", f"PY={sys.executable}", f"WHEEL_DIR={dist}"])
    wheels = sorted(dist.glob("vl3fast-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="session")
def venvs(wheel, tmp_path_factory):
    """One fresh venv per torch in TORCHES, with that torch and then the wheel installed (in parallel)."""
    root = tmp_path_factory.mktemp("venvs")

    def make(version: str) -> dict:
        env_dir = root / f"torch-{version}"
        run([sys.executable, "-m", "venv", env_dir])
        py = env_dir / "bin" / "python"
        run([py, "-m", "pip", "install", "--quiet", f"torch=={version}"], env=clean_env(), timeout=1500)
        log = run([py, "-m", "pip", "install", wheel], env=clean_env()).stdout
        return {"python": py, "dir": env_dir, "install_log": log}

    with concurrent.futures.ThreadPoolExecutor(len(TORCHES)) as pool:
        made = dict(zip(TORCHES, pool.map(make, TORCHES)))
    yield made
    shutil.rmtree(root, ignore_errors=True)  # several GB each: do not leave them to pytest's tmp retention


def test_wheel_is_tagged_with_the_declared_policy_and_bundles_nothing(wheel):
    plat = f"{declared_policy()}_x86_64"
    assert wheel.name.endswith(f"-{plat}.whl"), wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("vl3fast/_C.") and n.endswith(".so") for n in names), names
    grafted = [n for n in names if n.startswith("vl3fast.libs/")]
    assert not grafted, f"auditwheel grafted {grafted}: libgomp must come from torch, libcuda from the driver"


def test_auditwheel_show_gives_the_glibc_floor(wheel):
    import torch

    ldpaths = ":".join([str(Path(torch.__file__).parent / "lib"), "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu",
                        "/lib64", "/usr/lib64"])
    shown = json.loads(run([sys.executable, "-m", "auditwheel", "show", "--json", "--ldpaths", ldpaths, wheel]).stdout)
    # Symbol versions alone (libgomp resolved to torch's copy, as at run time) must fit the declared policy...
    assert policy_glibc(shown["sym_tag"]) <= policy_glibc(declared_policy()), (shown["sym_tag"], declared_policy())
    # ...and the one library outside the policy's list is libgomp, which torch provides.
    assert set(shown["external_libs"]) == {"libgomp.so.1"}, shown["external_libs"]
    assert not shown["unsupported_isa"]


@pytest.mark.parametrize("torch_version", TORCHES)
def test_one_wheel_runs_every_op_on_each_torch(venvs, torch_version, tmp_path):
    venv = venvs[torch_version]
    log = venv["install_log"].lower()
    assert "collecting torch" not in log and "uninstalling torch" not in log, f"the wheel pulled in a torch:\n{log}"
    proc = run([venv["python"], OP_CHECKS], cwd=tmp_path, env=clean_env())
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["torch"].split("+")[0] == torch_version, result
    assert Path(result["vl3fast_file"]).is_relative_to(venv["dir"]), result["vl3fast_file"]
    [gomp] = result["libgomp"]  # exactly one OpenMP runtime: torch's
    assert Path(gomp).is_relative_to(venv["dir"]) and "/torch/lib/" in gomp, result["libgomp"]


def test_sdist_builds_a_wheel_that_imports(tmp_path):
    out = tmp_path / "out"
    run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", out, ROOT])
    [sdist] = out.glob("vl3fast-*.tar.gz")
    # CPU only and against this machine's glibc: the CUDA sources and the glibc 2.28 link are those of the
    # editable build (checked above), and doing them again from scratch costs minutes.
    env = {**clean_env(), "VL3FAST_CUDA": "0", "VL3FAST_GLIBC": "native", "VL3FAST_BUILD_DIR": str(tmp_path / "cmake")}
    run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w", out, sdist], env=env,
        timeout=1500)
    [built] = out.glob("vl3fast-*.whl")
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(built).extractall(unpacked)
    code = "import sys; sys.path.insert(0, sys.argv[1]); import vl3fast; print(vl3fast.__file__, vl3fast.info()['cpu_isa'])"
    proc = run([sys.executable, "-c", code, unpacked], cwd=tmp_path, env=clean_env())
    assert proc.stdout.startswith(str(unpacked)), proc.stdout
