"""The GPU smoke step: every attention kernel on a few packs, compared output by output, locating the first bad
element.  Run first by benchmarks/gpu/validate.sh as its own process (CUDA_LAUNCH_BLOCKING=1, checked mode),
then again under compute-sanitizer.

    python benchmarks/gpu/smoke.py [--device cuda|cpu] [--head-dims 72 128] [--dtypes bfloat16 float16]
                                   [--lengths 1 2 63 64 65 130 1000] [--json PATH]

Per (dtype, head dim): the tensor-core pre-pass outputs against their definitions (vl3fast/ops/_attention_stages.py),
then forward and backward of every kernel that serves the device (on CUDA the tensor-core and the simple
kernel, each called by name through vl3fast.ops.attention.run_forward / run_backward; on the CPU the CPU
kernel), plus the CPU kernel on host copies.  Each of out, lse, dq, dk, dv is compared with the fp64
reference (vl3fast.reference.attention) under the tests' rule (tests/ops/test_attention.py): error <= 2 x the
larger error of torch in the same dtype and of the CPU kernel, + eps max|ref|; also kernel against kernel.  Printed per output: max error, the
tolerance and the first bad (token, head, channel).  A CUDA fault stops the run (the context is lost) with
the kernel named by checked mode (VL3FAST_CUDA_DEBUG=1, on unless --no-checked).  Exit status 0 when all pass.
--device cpu runs the same script on host tensors (the CPU kernel alone), so its own bugs show up in CI.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import torch

OUTPUTS = ("out", "lse", "dq", "dk", "dv")
FLOOR_EPS = 1  # as tests/ops/test_attention.py


def make_inputs(lengths, heads, head_dim, dtype, seed=0):
    """Packed q, k, v [T, H, D], cu_seqlens, pos_hw and the output gradient, on the CPU (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    pos = torch.randint(0, 48, (T, 2), generator=gen, dtype=torch.int32)
    q, k, v, dout = (torch.randn(T, heads, head_dim, generator=gen, dtype=torch.float64).to(dtype) for _ in range(4))
    return q, k, v, cu, pos, dout


def run_kernel(kernel, q, k, v, cu, pos, dout, theta, scale):
    """{out, lse, dq, dk, dv} of one kernel by name (vl3fast.ops.attention.run_forward/run_backward)."""
    from vl3fast.ops.attention import run_backward, run_forward

    out, lse = run_forward(kernel, q, k, v, cu, pos, theta, scale)
    dq, dk, dv = run_backward(kernel, dout, q, k, v, out, lse, cu, pos, theta, scale)
    if q.is_cuda:
        torch.cuda.synchronize()
    return dict(zip(OUTPUTS, (out, lse, dq, dk, dv)))


def reference(q, k, v, cu, pos, dout, theta, scale, dtype=torch.float64):
    """Results of the reference attention (transformers' path: fp32 RoPE, then SDPA per segment) computed in
    `dtype` (fp64: the truth; the inputs' dtype: what torch itself achieves), autograd for the gradients;
    lse from the logits of the rotated q and k rounded to `dtype`."""
    from vl3fast.reference.attention import rope2d_attention
    from vl3fast.reference.rope import apply_rope2d

    leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    out = rope2d_attention(*leaves, cu, pos, theta=theta, scale=scale)
    out.backward(dout.to(dtype))
    qr, kr = (apply_rope2d(t.to(dtype), pos, theta).double() for t in (q, k))
    lse = torch.empty(q.shape[1], q.shape[0], dtype=torch.float64)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        lse[:, a:b] = torch.logsumexp(torch.einsum("qhd,khd->hqk", qr[a:b], kr[a:b]) * scale, -1)
    grads = (t.grad.double() for t in leaves)
    return dict(zip(OUTPUTS, (out.detach().double(), lse, *grads)))


def first_bad(name, err, tol):
    """(token, head, channel) of the first element with err > tol or NaN; lse is [H, T]: (token, head)."""
    bad = ~(err <= tol)
    if not bad.any():
        return None
    idx = [int(i) for i in bad.nonzero()[0]]
    return (idx[1], idx[0]) if name == "lse" else tuple(idx)


def compare(name, got, ref, tol):
    """Max error of `got` against `ref` (both moved to the CPU as fp64) and the first bad index."""
    err = (got.detach().cpu().double() - ref.detach().cpu().double()).abs()
    finite = err[err.isfinite()]
    return {"max_err": float(finite.max()) if finite.numel() else 0.0, "nan": int(err.isnan().sum()),
            "tol": tol, "first_bad": first_bad(name, err, tol)}


def check_config(device, dtype, head_dim, lengths, heads=2, theta=10000.0, seed=0, kernels=None, log=print):
    """One (dtype, head dim) pack: the record of every comparison; 'ok' is False when any fails."""
    from vl3fast.ops.attention import kernel_for

    scale = head_dim**-0.5
    q, k, v, cu, pos, dout = make_inputs(lengths, heads, head_dim, dtype, seed)
    record = {"dtype": str(dtype).removeprefix("torch."), "head_dim": head_dim, "lengths": list(lengths),
              "ok": True, "kernels": {}, "pairs": {}}
    if kernels is None:
        kernels = ["cuda_tensor_core", "cuda_simple"] if device == "cuda" else ["cpu"]
        if device == "cuda" and kernel_for("cuda", dtype, head_dim) != "cuda_tensor_core":
            kernels.remove("cuda_tensor_core")
    dev = [t.to(device) for t in (q, k, v, cu, pos, dout)]

    if "cuda_tensor_core" in kernels:  # pre-pass outputs first: a fault there is not the main kernel's
        from vl3fast.ops._attention_stages import check_prepass, tensor_core_prepass
        from vl3fast.ops.attention import run_forward

        q_d, k_d, v_d, cu_d, pos_d, dout_d = dev
        out_d, lse_d = run_forward("cuda_tensor_core", q_d, k_d, v_d, cu_d, pos_d, theta, scale)
        stages = tensor_core_prepass(q_d, k_d, v_d, cu_d, pos_d, theta, scale, dout=dout_d, out=out_d, lse=lse_d)
        problems = check_prepass(stages, q_d, k_d, cu_d, pos_d, theta, dout=dout_d, out=out_d)
        record["prepass"] = problems or "ok"
        record["ok"] &= not problems
        log(f"  pre-pass (block table, cos/sin, k_rot, q_rot, delta, dq accumulator): {problems or 'ok'}")

    ref = reference(q, k, v, cu, pos, dout, theta, scale)
    same = reference(q, k, v, cu, pos, dout, theta, scale, dtype)
    results = {"cpu": run_kernel("cpu", q, k, v, cu, pos, dout, theta, scale)}
    for name in kernels:
        if name != "cpu":
            t0 = time.perf_counter()
            results[name] = run_kernel(name, *dev, theta, scale)
            record.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 4)
    tols = {}
    for o in OUTPUTS:  # the tests' rule: 2 x what torch in the same dtype achieves (or the CPU kernel) + a floor
        eps = torch.finfo(torch.float32 if o == "lse" else dtype).eps
        base = max(float((r[o].double() - ref[o]).abs().max()) for r in (same, results["cpu"]))
        tols[o] = 2 * base + FLOOR_EPS * eps * float(ref[o].abs().max())
    for name in ["cpu"] + [n for n in kernels if n != "cpu"]:
        rec = {o: compare(o, results[name][o], ref[o], tols[o]) for o in OUTPUTS}
        record["kernels"][name] = rec
        for o, c in rec.items():
            passed = c["first_bad"] is None
            record["ok"] &= passed
            log(f"  {name:17s} {o:3s} vs fp64: max err {c['max_err']:.3e} (tol {c['tol']:.3e}) nan {c['nan']}"
                + ("" if passed else f"  FIRST BAD (token, head, channel) = {c['first_bad']}"))
    names = [n for n in results if n != "cpu"]
    for a in names:  # kernel against kernel: informative (the rule above is the verdict)
        for b in ["cpu"] + [n for n in names if n > a]:
            if a == b:
                continue
            diffs = {o: compare(o, results[a][o], results[b][o], 2 * tols[o]) for o in OUTPUTS}
            record["pairs"][f"{a} vs {b}"] = diffs
            log(f"  {a} vs {b}: " + ", ".join(f"{o} {d['max_err']:.2e}" + (f" first diff {d['first_bad']}"
                                                                           if d["first_bad"] else "")
                                              for o, d in diffs.items()))
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--head-dims", type=int, nargs="+", default=[72, 128])
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float16"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1, 2, 63, 64, 65, 130, 1000])
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--json", default=None, help="write the records here")
    parser.add_argument("--no-checked", action="store_true", help="do not set VL3FAST_CUDA_DEBUG=1")
    args = parser.parse_args(argv)
    if not args.no_checked:
        os.environ["VL3FAST_CUDA_DEBUG"] = "1"
    import vl3fast

    print(f"smoke: device {args.device}, VL3FAST_CUDA_DEBUG={os.environ.get('VL3FAST_CUDA_DEBUG', '')}, "
          f"CUDA_LAUNCH_BLOCKING={os.environ.get('CUDA_LAUNCH_BLOCKING', '')}, lengths {args.lengths}", flush=True)
    if args.device == "cuda":
        usable, reason = vl3fast.cuda_status()
        if not usable or not torch.cuda.is_available():
            print(f"smoke: no usable CUDA device: {reason}", flush=True)
            _write(args.json, {"ok": False, "error": f"no usable CUDA device: {reason}", "configs": []})
            return 2
        print(f"smoke: {torch.cuda.get_device_name()}", flush=True)
    records, error = [], None
    for dtype_name, head_dim in [(d, h) for d in args.dtypes for h in args.head_dims]:
        print(f"== {dtype_name} D={head_dim}", flush=True)
        try:
            records.append(check_config(args.device, getattr(torch, dtype_name), head_dim, args.lengths, args.heads,
                                        log=lambda s: print(s, flush=True)))
        except Exception as exc:  # a CUDA fault is sticky: record it, name it, stop
            error = f"{dtype_name} D={head_dim}: {type(exc).__name__}: {exc}"
            print("smoke: FAILED " + error, flush=True)
            traceback.print_exc()
            break
    ok = error is None and all(r["ok"] for r in records)
    _write(args.json, {"ok": ok, "error": error, "configs": records})
    print(f"smoke: {'PASS' if ok else 'FAIL'} ({len(records)} configs)", flush=True)
    return 0 if ok else 1


def _write(path, data):
    if path:
        with open(path, "w") as f:
            json.dump(data, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
