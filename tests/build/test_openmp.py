"""One OpenMP runtime per process: vl3fast imports torch before _C, so _C binds to torch's libgomp."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/maps: Linux only")

# `import vl3fast` first, before anything imports torch: the order inside vl3fast must do the right thing.
SCRIPT = """
import json, sys
import vl3fast
with open("/proc/self/maps") as maps:
    gomp = sorted({line.split()[-1] for line in maps if "libgomp" in line.rsplit("/", 1)[-1]})
print(json.dumps({"libgomp": gomp, "first": [m for m in sys.modules if m in ("torch", "vl3fast._C")]}))
"""


def test_exactly_one_libgomp_and_it_is_torchs():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, env=os.environ)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(result["libgomp"]) == 1, f"OpenMP runtimes mapped: {result['libgomp']}"
    assert result["first"] == ["torch", "vl3fast._C"], f"import order: {result['first']}"
    torch_gomp = Path(torch.__file__).parent / "lib" / "libgomp.so.1"
    if torch_gomp.exists():  # torch's wheels bundle it: then no system libgomp is needed at all
        assert Path(result["libgomp"][0]).resolve() == torch_gomp.resolve(), result["libgomp"]
