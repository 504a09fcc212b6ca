"""Every public vl3fast op, forward and backward, against vl3fast.reference: a standalone script.

It needs only torch and an installed vl3fast (no pytest), so tests/build/ runs it inside fresh
virtual environments holding the built wheel and another torch, and once per CPU ISA level.

    python op_checks.py [--save OUT.pt]

Prints one JSON line: torch and vl3fast versions, where vl3fast was imported from, the libgomp files
mapped into the process (/proc/self/maps), the ISA level in use and the checks run.  Exits non-zero,
naming the op, when a result differs from the reference.  --save writes every output (for comparing
ISA levels with each other).
"""
from __future__ import annotations

import json
import sys

import torch

import vl3fast
from vl3fast import ops, reference

# Inputs: a 3-frame video at merge size 2 beside a 1-frame image at merge size 1 (odd sizes on purpose).
GRID = torch.tensor([[3, 6, 10], [1, 5, 3]])
MERGE = torch.tensor([2, 1])
HEADS, HEAD_DIM, CHANNELS = 2, 72, 3 * 14 * 14

# What each check covers; a public op missing here fails the run, so a new op cannot go unchecked.
COVERED = {
    "rope2d_position_ids", "apply_rope2d", "rope2d_attention", "varlen_attention", "frame_keep_mask", "frame_token_diff",
    "keep_compaction", "prune_tokens", "prune_patches", "pruning_report",
}


def close(name: str, got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
    err = (got.double() - want.double()).abs().max().item() if got.numel() else 0.0
    scale = max(want.double().abs().max().item(), 1.0) if want.numel() else 1.0
    if got.shape != want.shape or not err <= tol * scale:
        raise SystemExit(f"{name}: differs from vl3fast.reference (shapes {tuple(got.shape)} vs "
                         f"{tuple(want.shape)}, max abs diff {err:.3e}, allowed {tol * scale:.3e})")


def same(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    if got.shape != want.shape or not torch.equal(got, want):
        raise SystemExit(f"{name}: differs from the expected result ({got.tolist()[:8]} vs {want.tolist()[:8]} ...)")


def grads(fn, *inputs, grad_out):
    """fn(*inputs) and the gradients of <fn(*inputs), grad_out> w.r.t. every input."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*leaves)
    out.backward(grad_out.to(out.dtype))
    return [out.detach()] + [x.grad for x in leaves]


def check_positions(saved: dict) -> tuple[torch.Tensor, torch.Tensor]:
    pos_hw, cu = ops.rope2d_position_ids(GRID, MERGE)
    ref_pos, ref_cu = reference.rope2d_position_ids(GRID, MERGE)
    same("rope2d_position_ids pos_hw", pos_hw, ref_pos.to(pos_hw.dtype))
    same("rope2d_position_ids cu_seqlens", cu, ref_cu.to(cu.dtype))
    saved["positions"] = [pos_hw, cu]
    return pos_hw, cu


def check_rope(saved: dict, pos_hw: torch.Tensor, gen: torch.Generator) -> None:
    x = torch.randn(pos_hw.shape[0], HEADS, HEAD_DIM, generator=gen)
    dy = torch.randn(x.shape, generator=gen)
    ours = grads(lambda a: ops.apply_rope2d(a, pos_hw), x, grad_out=dy)
    ref = grads(lambda a: reference.apply_rope2d(a, pos_hw), x.double(), grad_out=dy.double())
    for name, a, b in zip(("out", "dx"), ours, ref):
        close(f"apply_rope2d {name}", a, b, 1e-5)
    saved["apply_rope2d"] = ours


def check_attention(saved: dict, pos_hw: torch.Tensor, cu: torch.Tensor, gen: torch.Generator) -> None:
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 5e-2)):
        q, k, v = (torch.randn(pos_hw.shape[0], HEADS, HEAD_DIM, generator=gen).to(dtype) for _ in range(3))
        dout = torch.randn(q.shape, generator=gen)
        ours = grads(lambda a, b, c: ops.rope2d_attention(a, b, c, cu, pos_hw), q, k, v, grad_out=dout)
        ref = grads(lambda a, b, c: reference.rope2d_attention(a, b, c, cu, pos_hw),
                    q.double(), k.double(), v.double(), grad_out=dout.double())
        for name, a, b in zip(("out", "dq", "dk", "dv"), ours, ref):
            close(f"rope2d_attention {dtype} {name}", a, b, tol)
        saved[f"rope2d_attention {dtype}"] = ours


def check_varlen_attention(saved: dict, cu: torch.Tensor, gen: torch.Generator) -> None:
    q, k, v = (torch.randn(int(cu[-1]), HEADS, HEAD_DIM, generator=gen) for _ in range(3))
    dout = torch.randn(q.shape, generator=gen)
    ours = grads(lambda a, b, c: ops.varlen_attention(a, b, c, cu), q, k, v, grad_out=dout)
    ref = grads(lambda a, b, c: reference.packed_attention(a, b, c, cu), q.double(), k.double(), v.double(),
                grad_out=dout.double())
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, ref):
        close(f"varlen_attention {name}", a, b, 1e-4)
    saved["varlen_attention"] = ours


def check_pruning(saved: dict, pos_hw: torch.Tensor, gen: torch.Generator) -> None:
    # A static video whose frame 1 changes in its first 4 merged tokens (16 rows): those are kept in
    # frames 1 and 2, the other tokens of those frames are dropped.
    frame_rows = int(GRID[0, 1] * GRID[0, 2])
    video = torch.randn(frame_rows, CHANNELS, generator=gen).repeat(int(GRID[0, 0]), 1)
    video[frame_rows: frame_rows + 16] += torch.rand(16, CHANNELS, generator=gen)
    image = torch.randn(int(GRID[1].prod()), CHANNELS, generator=gen)
    pixels = torch.cat([video, image])

    keep = ops.frame_keep_mask(pixels, GRID, MERGE)
    same("frame_keep_mask", keep, reference.frame_keep_mask(pixels, GRID, MERGE))
    if keep.all() or not keep.any():
        raise SystemExit("frame_keep_mask: the check's input should keep some tokens and drop others")

    # The score behind the mask: 255 * mean |P_t - P_{t-1}| over each merged token's m*m patch rows,
    # which are consecutive (VideoLLaMA3's merge-block order).
    t, h, w = GRID[0].tolist()
    m = int(MERGE[0])
    blocks = video.view(t, (h // m) * (w // m), m * m * CHANNELS)
    diff = ops.frame_token_diff(pixels, GRID, MERGE)
    close("frame_token_diff", diff[(h // m) * (w // m): t * (h // m) * (w // m)],
          ((blocks[1:] - blocks[:-1]).abs().mean(-1) * 255).flatten(), 1e-5)

    idx = ops.keep_compaction(keep, GRID, MERGE)
    kept = keep.nonzero().flatten()
    same("keep_compaction token_index", idx.token_index[: kept.numel()], kept)

    features = torch.randn(keep.shape[0], 8, generator=gen)
    out, token_index, _ = grads_prune_tokens(features, keep)
    same("prune_tokens features", out[0], features[keep])
    same("prune_tokens backward", out[1], keep[:, None].to(features.dtype).expand_as(features))
    same("prune_tokens token_index", token_index, kept)

    rows_per_token = torch.cat([torch.full((int(n),), int(mm) ** 2) for n, mm in
                                zip((GRID[:, 0] * (GRID[:, 1] // MERGE) * (GRID[:, 2] // MERGE)).tolist(), MERGE.tolist())])
    patch_keep = keep.repeat_interleave(rows_per_token)
    patches = ops.prune_patches(pixels, keep, GRID, MERGE)
    same("prune_patches pixel_values", patches.pixel_values, pixels[patch_keep])
    same("prune_patches pos_hw", patches.pos_hw, pos_hw[patch_keep])

    report = ops.pruning_report(keep, GRID, MERGE)
    if (report.tokens_before, report.tokens_after) != (keep.numel(), int(keep.sum())):
        raise SystemExit(f"pruning_report: {report.tokens_before}/{report.tokens_after} tokens, "
                         f"expected {keep.numel()}/{int(keep.sum())}")
    saved["pruning"] = [keep, diff, *idx, patches.pixel_values, patches.pos_hw]


def grads_prune_tokens(features: torch.Tensor, keep: torch.Tensor):
    leaf = features.clone().requires_grad_()
    pruned = ops.prune_tokens(leaf, keep, GRID, MERGE)
    pruned.features.sum().backward()
    return (pruned.features.detach(), leaf.grad), pruned.token_index, pruned.cu_seqlens


def libgomp_mappings() -> list[str]:
    with open("/proc/self/maps") as maps:
        return sorted({line.split()[-1] for line in maps if "libgomp" in line.rsplit("/", 1)[-1]})


def main(argv: list[str]) -> None:
    public = {name for name in ops.__all__ if callable(getattr(ops, name)) and name[0].islower()}
    if public - COVERED:
        raise SystemExit(f"op_checks.py does not check {sorted(public - COVERED)}: add them")
    gen = torch.Generator().manual_seed(0)
    saved: dict = {}
    pos_hw, cu = check_positions(saved)
    check_rope(saved, pos_hw, gen)
    check_attention(saved, pos_hw, cu, gen)
    check_varlen_attention(saved, cu, gen)
    check_pruning(saved, pos_hw, gen)
    if "--save" in argv:
        torch.save(saved, argv[argv.index("--save") + 1])
    info = vl3fast.info()
    print(json.dumps({
        "torch": torch.__version__, "vl3fast": vl3fast.__version__, "vl3fast_file": vl3fast.__file__,
        "libgomp": libgomp_mappings(), "cpu_isa": info["cpu_isa"], "checked": sorted(COVERED),
    }))


if __name__ == "__main__":
    main(sys.argv[1:])
