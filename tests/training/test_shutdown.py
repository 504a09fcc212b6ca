"""A process that joined the training process group leaves it before the interpreter finalises.  A gloo group
still alive then can abort a process whose run finished (SIGABRT, "terminate called without an active
exception"): that turned a 2-rank launch red in CI.  The launch itself is tested in test_launch.py."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from ._runs import REPO

# The probe is registered before the group exists, so (atexit runs last-in first-out) it runs after
# vl3fast's own exit hook: it sees what finalisation will see.
PROBE = textwrap.dedent("""
    import atexit, os, sys
    import torch.distributed as dist
    from vl3fast.training import distributed
    atexit.register(lambda: print("group at finalisation:", dist.is_initialized(), flush=True))
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT"):
        os.environ.pop(k, None)
    distributed.init(use_deepspeed=False)
    assert dist.is_initialized()
    if sys.argv[1] == "fail":
        raise RuntimeError("the run failed")
""")


def _probe(mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, mode], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


def test_finished_process_leaves_the_group_before_finalisation():
    proc = _probe("ok")
    assert proc.returncode == 0, proc.stderr
    assert "group at finalisation: False" in proc.stdout


def test_failed_process_leaves_the_group_too():
    proc = _probe("fail")
    assert proc.returncode == 1 and "the run failed" in proc.stderr
    assert "group at finalisation: False" in proc.stdout
