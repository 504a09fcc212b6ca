"""Per-kernel resource usage from a build log with `-Xptxas=-v` (CMakeLists.txt turns it on for .cu files).

    python benchmarks/gpu/ptxas_resources.py BUILD_LOG [FILTER ...] > cuda_resources.txt

Prints one line per (arch, kernel): registers, static shared memory, stack frame, spill stores/loads, then
the dynamic shared memory of the attention kernels (from the same helper the launchers use).  Exits 1
when any listed kernel spills, so a build check can fail on it.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys


def parse(text: str):
    rows, name, arch, frame = [], None, None, None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\S+)' for '(sm_\w+)'", line)
        if m:
            name, arch = m.groups()
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and name:
            frame = tuple(int(x) for x in m.groups())
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m and name and frame:
            smem = re.search(r"(\d+) bytes smem", line)
            rows.append((arch, name, int(m.group(1)), int(smem.group(1)) if smem else 0, *frame))
            name = frame = None
    return rows


def demangle(names):
    if not shutil.which("c++filt"):
        return names
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return [re.sub(r"vl3fast::cuda::(\(anonymous namespace\)::)?|\(vl3fast::[^)]*\)", "", n) for n in out]


def main() -> int:
    text = open(sys.argv[1], errors="replace").read()
    filters = sys.argv[2:]
    rows = parse(text)
    names = demangle([r[1] for r in rows])
    seen, spills = set(), 0
    print(f"{'arch':7s} {'kernel':52s} {'regs':>4s} {'static_smem':>11s} {'stack':>5s} {'spill_st':>8s} {'spill_ld':>8s}")
    for (arch, _, regs, smem, stack, st, ld), name in sorted(zip(rows, names), key=lambda x: (x[1], x[0][0])):
        if filters and not any(f in name for f in filters):
            continue
        if (arch, name) in seen:
            continue
        seen.add((arch, name))
        spills += st + ld
        print(f"{arch:7s} {name:52s} {regs:4d} {smem:11d} {stack:5d} {st:8d} {ld:8d}")
    try:
        from vl3fast._backend import core
        from vl3fast.ops.attention import ATTENTION_CUDA_HEAD_DIMS

        print("\nDynamic shared memory (bytes, vl3fast/attention_tc.h):")
        for d in ATTENTION_CUDA_HEAD_DIMS:
            w = core._attn_tc_layout(1, 1, 1, d, True)
            print(f"  head dim {d:3d}: forward {w['fwd_smem']:6d}, backward {w['bwd_smem']:6d} "
                  f"(QK^T over {w['qk_dim']}, backward query tile {w['bwd_block_q']})")
    except ImportError as exc:
        print(f"\n(dynamic shared memory not listed: vl3fast not importable: {exc})")
    print(f"\ntotal spill bytes (stores + loads) in the listed kernels: {spills}")
    return 1 if spills else 0


if __name__ == "__main__":
    sys.exit(main())
