"""Fork safety: DataLoader fork workers run every op after the parent has used them (OpenMP thread pool live).

GNU OpenMP does not survive fork(): a child that enters a parallel region with the parent's thread count
waits forever for threads that were not copied. torch's own ops have the same trap. DataLoader workers are
safe because torch sets one thread in each worker (torch.set_num_threads(1), which also sets OpenMP's
count), and vl3fast's kernels size their parallel regions from omp_get_max_threads(). A plain os.fork()
child must do the same before calling any op: see README "Bad input and robustness".
Each scenario runs in a subprocess with a timeout, so a regression fails instead of hanging the suite.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os, sys, torch
    import vl3fast

    torch.set_num_threads(2)

    def run_all(seed):
        g = torch.Generator().manual_seed(seed)
        grid = torch.tensor([[3, 4, 6], [1, 5, 3]]); merges = torch.tensor([2, 1])
        pos, cu = vl3fast.ops.rope2d_position_ids(grid, merges)
        T = pos.shape[0]
        q, k, v = (torch.randn(T, 2, 72, generator=g, requires_grad=True) for _ in range(3))
        out = vl3fast.ops.rope2d_attention(q, k, v, cu, pos)
        out.sum().backward()
        rot = vl3fast.ops.apply_rope2d(q.detach(), pos)
        px = torch.randn(T, 12, generator=g)
        keep = vl3fast.ops.frame_keep_mask(px, grid, merges, threshold=0.1)
        kept = vl3fast.ops.keep_compaction(keep, grid, merges)
        return [out.detach(), q.grad, k.grad, v.grad, rot, keep, kept.token_index]

    parent = run_all(0)  # the parent's OpenMP pool now exists
    MODE = sys.argv[1]
    if MODE == "dataloader":
        class Every(torch.utils.data.Dataset):
            def __len__(self): return 4
            def __getitem__(self, i): return run_all(0)
        loader = torch.utils.data.DataLoader(Every(), batch_size=None, num_workers=2,
                                             multiprocessing_context="fork")
        for results in loader:
            assert all(torch.equal(a, b) for a, b in zip(results, parent)), "worker results differ"
    else:  # a plain os.fork(): the child sets one thread first, as documented
        pid = os.fork()
        if pid == 0:
            torch.set_num_threads(1)
            ok = all(torch.equal(a, b) for a, b in zip(run_all(0), parent))
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0, f"child exit status {status}"
    print("OK")
""")


def _run(mode):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_dataloader_fork_workers_run_every_op():
    _run("dataloader")


def test_plain_fork_with_one_thread_runs_every_op():
    _run("fork")
