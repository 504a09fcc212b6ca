"""The CPU kernels' register blocks keep their accumulators in registers, at every compiled ISA level.

GCC 12 once kept the accumulator array of the AVX2 build's out-of-line bcast_kernel<6, 1> on the stack: 12 ymm
stores per contraction term inside its k loop, the AVX2 attention at half speed, with correct results (so no
numerical test saw it).  vec_math.h's VL3FAST_UNROLL fixed it.  This test reads the disassembly of the kernel
objects that the build left (build/*/CMakeFiles/vl3fast_cpu_<level>.dir/...) and fails if any loop of a
register-block function (bcast_kernel, bcast_pair_kernel, micro_kernel, dot_block) stores a vector register to
the stack.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BLOCK_FUNCTIONS = ("bcast_kernel<", "bcast_pair_kernel<", "micro_kernel<", "dot_block<")
INSTRUCTION = re.compile(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*)$")
FUNCTION = re.compile(r"^[0-9a-f]+ <(.*)>:$")
VECTOR_STACK_STORE = re.compile(r"^vmov\w*\s+%[xyz]mm\d+,.*\(%rsp\)")
JUMP_TARGET = re.compile(r"^([0-9a-f]+)\b")


def kernel_objects() -> list[Path]:
    return sorted(ROOT.glob("build/*/CMakeFiles/vl3fast_cpu_*.dir/csrc/cpu/kernels/attention*.cpp.o"))


def functions(disassembly: str) -> dict[str, list[tuple[int, str, str]]]:
    """name -> [(address, mnemonic, operands)] of objdump -d -C output."""
    out: dict[str, list[tuple[int, str, str]]] = {}
    current = None
    for line in disassembly.splitlines():
        if m := FUNCTION.match(line):
            current = out.setdefault(m.group(1), [])
        elif current is not None and (m := INSTRUCTION.match(line)):
            current.append((int(m.group(1), 16), m.group(2), m.group(3)))
    return out


def stack_stores_in_loops(instructions: list[tuple[int, str, str]]) -> list[str]:
    """The vector stores to the stack between a conditional backward jump (a loop's back edge, as GCC lays loops
    out) and its target.  An unconditional one is not counted: GCC places cold blocks (K = 0) after the return
    and jumps back into the epilogue from there."""
    found = []
    for address, mnemonic, operands in instructions:
        back_edge = mnemonic.startswith("j") and mnemonic != "jmp"
        target = JUMP_TARGET.match(operands) if back_edge else None
        if target is None or int(target.group(1), 16) >= address:
            continue
        start = int(target.group(1), 16)
        found += [f"{a:x}: {m} {o}" for a, m, o in instructions
                  if start <= a <= address and VECTOR_STACK_STORE.match(f"{m} {o}")]
    return found


def test_register_blocks_keep_accumulators_in_registers():
    objdump = shutil.which("objdump")
    objects = kernel_objects()
    if objdump is None or not objects:
        pytest.skip(f"needs objdump and the CMake objects under {ROOT / 'build'} (an in-tree build)")
    checked = 0
    for obj in objects:
        text = subprocess.run([objdump, "-d", "-C", "--no-show-raw-insn", str(obj)], capture_output=True, text=True,
                              check=True).stdout
        for name, instructions in functions(text).items():
            if not any(f in name for f in BLOCK_FUNCTIONS):
                continue
            checked += 1
            stores = stack_stores_in_loops(instructions)
            assert not stores, f"{obj.relative_to(ROOT)} {name}: {stores[:4]}"
    # Most blocks are inlined into their callers; at least one out-of-line copy per build is what is checked.
    assert checked > 0, "no out-of-line register-block function found: the names above have changed"


def test_the_check_finds_a_store_in_a_loop():
    loop = [(0x10, "vfmadd231ps", "%ymm1,%ymm2,%ymm3"), (0x15, "vmovaps", "%ymm3,-0x58(%rsp)"),
            (0x1b, "cmp", "%r8d,%ecx"), (0x1e, "jne", "10 <f+0x10>")]
    assert stack_stores_in_loops(loop) == ["15: vmovaps %ymm3,-0x58(%rsp)"]
    after_loop = loop[:1] + loop[2:] + [(0x20, "vmovaps", "%ymm3,-0x58(%rsp)")]
    assert stack_stores_in_loops(after_loop) == []
    cold_block = after_loop + [(0x30, "jmp", "20 <f+0x20>")]
    assert stack_stores_in_loops(cold_block) == []
