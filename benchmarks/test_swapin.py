"""transformers training step, stock against vl3fast.apply_vl3fast, on realistic-width vision towers (CPU).

Two models with random weights: a Qwen2.5-VL-shaped one (vision 1280 wide, 16 heads of 80, MLP 3420,
windowed layers (112 px windows) with full-attention layers at every fourth index, as the released
fullatt_block_indexes [7, 15, 23, 31] are at every eighth) and a VideoLLaMA3-shaped one (SigLIP 1152 wide,
16 heads of 72, MLP 4304), each with VL3FAST_BENCH_LAYERS vision layers (default 2 for VideoLLaMA3, whose
layers are all alike, and 4 for Qwen2.5-VL, 3 windowed + 1 full; the released towers have 27 and 32) and a
small Qwen2 LLM (256 wide, 2 layers).  The full workload is a batch of two: a 448 x 672 px image, and a
16-frame 224 px video (Qwen2.5-VL merges frame pairs: 8 temporal patches).

Measured per round, paired (the two paths back to back, order alternating, so the ratios are of medians
from the same rounds under the same load):
- `tower`: the vision tower's forward + backward on the batch's images and video (what the swap changes);
- `step`: one `Trainer` step (`trainer.training_step` + optimizer step): stock = transformers on a padded
  batch, as users train today; vl3fast = apply_vl3fast and the same samples packed into one row.
The learning rate is 0 so that every round sees the same weights.  Targets (issue #14): tower >= 1.3x,
step never slower.  Both paths' losses are checked equal (fp32: 1e-4; bf16: 2e-2) in every round.
VL3FAST_BENCH_DTYPE=bf16 runs both under the Trainer's CPU bf16 autocast (TrainingArguments(bf16=True)).

`test_attention_core_cpu` times the swapped attention module alone (the real transformers
Qwen2_5_VLVisionAttention, 1280 wide, fwd+bwd; fp32 or bf16 autocast as above) per segment length:
transformers' forward, and the swap with each attention core of CORES; and each core alone on given q, k, v.
The swap runs `fused` (vl3fast.ops.rope2d_attention) on every device; `rope_then_sdpa` is its measured peer,
the best unfused alternative (vl3fast's RoPE op on q and k, then one torch SDPA per run of equal-length
segments on zero-copy views: what the CPU swap ran before the fused kernel's fp32 rewrite and bf16 forward).
If a kernel change makes the peer win again, these numbers show it.

Heavy workloads (realistic image sizes) run with VL3FAST_BENCH_FULL=1; otherwise a small smoke workload keeps
`pytest benchmarks --benchmark-disable` fast for CI.

Run: VL3FAST_BENCH_FULL=1 VL3FAST_BENCH_THREADS=1 pytest benchmarks/test_swapin.py --benchmark-only \\
         --benchmark-json=benchmarks/results/swapin_cpu_<date>.json
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import pytest
import torch
import torch.nn.functional as F

import vl3fast
from vl3fast.ops import apply_rope2d, rope2d_attention

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.integrations import tiny_vlms as tv  # noqa: E402  (the input builders the tests use)

LAYERS = {"video_llama_3": 2, "qwen2_5_vl": 4}
if os.environ.get("VL3FAST_BENCH_LAYERS"):
    LAYERS = dict.fromkeys(LAYERS, int(os.environ["VL3FAST_BENCH_LAYERS"]))
BF16 = os.environ.get("VL3FAST_BENCH_DTYPE", "fp32") == "bf16"
FULL = os.environ.get("VL3FAST_BENCH_FULL") == "1"
ROUNDS = int(os.environ.get("VL3FAST_BENCH_ROUNDS", "3"))
# Intra-op threads (default: torch's).  On a shared, overloaded machine 1 thread is the stable choice: torch's
# pool spinning on busy cores made a small step ~40x slower here (tests/integrations/conftest.py).
THREADS = int(os.environ.get("VL3FAST_BENCH_THREADS", "0")) or torch.get_num_threads()
LLM = dict(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, bos_token_id=1, eos_token_id=2)
# Media per workload: (image grids in 14 px patches, video frames, video frame side in patches), in a batch of
# two samples (the image, then the video).
WORKLOADS = {"image_video16": ((32, 48), 16, 16),  # a 448 x 672 px image; 16 frames of 224 px
             "smoke": ((8, 8), 2, 4)}


def samples(family: str, workload: str) -> list:
    (h, w), frames, side = WORKLOADS[workload]
    t = frames // 2 if family == "qwen2_5_vl" else frames  # Qwen2.5-VL patches 2 frames deep
    return [tv.Sample([("image", (1, h, w))], text=40), tv.Sample([("video", (t, side, side))], text=60)]


def build(family: str):
    import transformers as tf

    layers = LAYERS[family]
    if family == "qwen2_5_vl":
        full = [i for i in range(layers) if i % 4 == 3] or [layers - 1]
        config = tf.Qwen2_5_VLConfig(
            vision_config=dict(depth=layers, hidden_size=1280, num_heads=16, intermediate_size=3420, out_hidden_size=256,
                               spatial_merge_size=2, patch_size=14, temporal_patch_size=2, window_size=112,
                               fullatt_block_indexes=full),
            text_config=dict(LLM, rope_parameters=dict(tv.MROPE, mrope_section=[8, 12, 12])),
            image_token_id=tv.IMAGE_ID, video_token_id=tv.VIDEO_ID)
        cls = tf.Qwen2_5_VLForConditionalGeneration
    else:
        config = tf.VideoLlama3Config(
            vision_config=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=layers,
                               num_attention_heads=16, patch_size=14),
            text_config=dict(model_type="qwen2", **LLM), image_token_id=tv.IMAGE_ID, video_token_id=tv.VIDEO_ID)
        cls = tf.VideoLlama3ForConditionalGeneration
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return cls(config).train()


def autocast():
    """What Trainer(bf16=True) wraps the forward in on CPU; fp32: nothing."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=BF16)


def tower_call(family, model, batch):
    """The vision tower's forward + backward on the batch's images, then its video (as the model calls it)."""
    inner = model.model
    total = 0
    with autocast():
        if family == "qwen2_5_vl":
            for pixels, grid in (("pixel_values", "image_grid_thw"), ("pixel_values_videos", "video_grid_thw")):
                if pixels in batch:
                    total = total + inner.visual(batch[pixels], grid_thw=batch[grid]).pooler_output.float().square().mean()
        else:
            for pixels, grid, merge in (("pixel_values", "image_grid_thw", "image_merge_sizes"),
                                        ("pixel_values_videos", "video_grid_thw", "video_merge_sizes")):
                if pixels in batch:
                    out = inner.vision_model(batch[pixels], grid_thw=batch[grid], merge_sizes=batch[merge])
                    total = total + out.last_hidden_state.float().square().mean()
    total.backward()
    model.zero_grad(set_to_none=True)


def make_trainer(model, tmp_path):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=0.0, report_to=[], use_cpu=True, bf16=BF16,
                             save_strategy="no", disable_tqdm=True, remove_unused_columns=False)
    trainer = Trainer(model=model, args=args)
    # What Trainer.train() does before its first step: accelerate wraps the model's forward in the mixed-precision
    # autocast (bf16=True); training_step itself opens none, so without this a "bf16" step would run in fp32.
    trainer.model_wrapped = trainer.accelerator.prepare_model(model)
    trainer.create_optimizer_and_scheduler(num_training_steps=1000)
    trainer.current_gradient_accumulation_steps = 1  # what Trainer's own loop sets before each training_step
    return trainer


def trainer_step(trainer, batch) -> float:
    loss = trainer.training_step(trainer.model, dict(batch))
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    return float(loss)


def _timed(fn):
    """(wall seconds, result); the process's CPU seconds go to _timed.cpu (see below)."""
    t0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    _timed.cpu = time.process_time() - c0
    return time.perf_counter() - t0, result


# On a shared, overloaded machine (load 12-19 on 2 cores here) wall times of the same call vary 2x between
# rounds; with one intra-op thread the process's CPU time is the work done, and varies far less.  Both are
# recorded; the *_cpu ratios are the ones to read on such a machine.


def _threads(bench):
    """1 thread for --benchmark-disable (a one-round smoke check), else VL3FAST_BENCH_THREADS."""
    return 1 if bench.disabled else THREADS


@pytest.mark.parametrize("family", ["qwen2_5_vl", "video_llama_3"])
@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_trainer_step_stock_vs_vl3fast(bench, family, workload, tmp_path):
    if workload != "smoke" and not FULL:
        pytest.skip(f"{workload} is a heavy case: set VL3FAST_BENCH_FULL=1")
    threads = torch.get_num_threads()
    torch.set_num_threads(_threads(bench))
    try:
        _paired_rounds(bench, family, workload, tmp_path, rounds=1 if bench.disabled else ROUNDS)
    finally:
        torch.set_num_threads(threads)


def _paired_rounds(bench, family, workload, tmp_path, rounds):
    model = build(family)
    padded = tv.padded_batch(family, model.config, samples(family, workload))
    packed = tv.packed_batch(padded)
    trainer = make_trainer(model, tmp_path)
    keys = ("tower_stock", "tower_vl3fast", "step_stock", "step_vl3fast")
    times = {key: [] for key in keys + tuple(f"{key}_cpu" for key in keys)}
    loss_tolerance = 2e-2 if BF16 else 1e-4  # bf16: padded and packed LLM rows round differently

    def stock():
        vl3fast.unapply_vl3fast(model)
        times["tower_stock"].append(_timed(lambda: tower_call(family, model, padded))[0])
        times["tower_stock_cpu"].append(_timed.cpu)
        t, loss = _timed(lambda: trainer_step(trainer, padded))
        times["step_stock"].append(t)
        times["step_stock_cpu"].append(_timed.cpu)
        return loss

    def ours():
        vl3fast.apply_vl3fast(model)
        times["tower_vl3fast"].append(_timed(lambda: tower_call(family, model, padded))[0])
        times["tower_vl3fast_cpu"].append(_timed.cpu)
        t, loss = _timed(lambda: trainer_step(trainer, packed))
        times["step_vl3fast"].append(t)
        times["step_vl3fast_cpu"].append(_timed.cpu)
        return loss

    if not bench.disabled:
        stock(), ours()  # warm-up (first-call allocations, lazy imports)
        for key in times:
            times[key].clear()
    for i in range(rounds):
        first, second = (stock, ours) if i % 2 == 0 else (ours, stock)
        a, b = first(), second()
        assert abs(a - b) <= loss_tolerance * max(1.0, abs(a)), (a, b)
    median = {key: statistics.median(v) for key, v in times.items()}
    bench.extra_info.update(
        family=family, workload=workload, vision_layers=LAYERS[family], rounds=rounds, threads=torch.get_num_threads(),
        dtype="bf16 autocast" if BF16 else "fp32",
        patches=int(sum(g.prod().item() for k in ("image_grid_thw", "video_grid_thw") if k in padded for g in padded[k])),
        llm_tokens_padded=int(padded["input_ids"].numel()), llm_tokens_packed=int(packed["input_ids"].numel()),
        **{f"{key}_s": round(v, 4) for key, v in median.items()},
        **{f"{key}_all_s": [round(t, 3) for t in v] for key, v in times.items()},
        tower_speedup=round(median["tower_stock"] / median["tower_vl3fast"], 3),
        step_speedup=round(median["step_stock"] / median["step_vl3fast"], 3),
        tower_speedup_cpu=round(median["tower_stock_cpu"] / median["tower_vl3fast_cpu"], 3),
        step_speedup_cpu=round(median["step_stock_cpu"] / median["step_vl3fast_cpu"], 3),
        load_average=os.getloadavg()[0],
    )
    vl3fast.apply_vl3fast(model)
    bench.pedantic(lambda: trainer_step(trainer, packed), rounds=1, iterations=1)


def equal_length_runs(cu_seqlens: list[int]) -> list[tuple[int, int, int]]:
    """`(first token, segment length, number of segments)` per run of consecutive equal-length segments;
    empty segments are dropped (they attend to nothing and produce no rows)."""
    runs: list[tuple[int, int, int]] = []
    for start, end in zip(cu_seqlens[:-1], cu_seqlens[1:]):
        length = end - start
        if length == 0:
            continue
        if runs and runs[-1][1] == length and runs[-1][0] + runs[-1][1] * runs[-1][2] == start:
            first, _, count = runs[-1]
            runs[-1] = (first, length, count + 1)
        else:
            runs.append((start, length, 1))
    return runs


def rope_then_sdpa(q_THD, k_THD, v_THD, cu_seqlens, pos_hw, *, theta: float, scale: float,
                   max_seqlen: int | None = None) -> torch.Tensor:
    """The fused op's peer, same signature: vl3fast's RoPE op rotates q and k (no float copies, no
    rotate_half/cat), then torch's SDPA runs once per run of equal-length segments on `[n, H, L, D]` views."""
    T, H, D = q_THD.shape
    q_THD, k_THD = apply_rope2d(q_THD, pos_hw, theta), apply_rope2d(k_THD, pos_hw, theta)
    outs = []
    for start, length, count in equal_length_runs(cu_seqlens.tolist()):
        rows = slice(start, start + length * count)
        q, k, v = (t[rows].view(count, length, H, D).transpose(1, 2) for t in (q_THD, k_THD, v_THD))
        out_nHLD = F.scaled_dot_product_attention(q, k, v, scale=scale)
        outs.append(out_nHLD.transpose(1, 2).reshape(length * count, H, D))
    if not outs:
        return q_THD.new_zeros(T, H, D)
    return outs[0] if len(outs) == 1 else torch.cat(outs)


CORES = {"fused": rope2d_attention, "rope_then_sdpa": rope_then_sdpa}


def test_rope_then_sdpa_is_exact():
    """The peer computes the same attention (else its times would compare different work): against the float64
    reference, outputs and gradients, on a fused-qkv strided layout with runs of equal-length segments and
    empty ones."""
    from vl3fast.reference import rope2d_attention as reference_attention

    assert equal_length_runs([0, 4, 8, 8, 12, 14, 16, 16]) == [(0, 4, 3), (12, 2, 2)]
    assert equal_length_runs([0, 0]) == []
    assert equal_length_runs([0, 3, 7]) == [(0, 3, 1), (3, 4, 1)]
    H, D, theta = 2, 80, 10000.0
    cu = torch.tensor([0, 16, 32, 48, 48, 56, 64, 85, 85], dtype=torch.int32)  # a run of 3, empty, a run of 2, ...
    T = int(cu[-1])
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(T, 3, H, D, generator=g, requires_grad=True)
    pos = torch.stack([torch.arange(T) // 5, torch.arange(T) % 5], 1).to(torch.int32)
    dout = torch.randn(T, H, D, generator=g)
    out = rope_then_sdpa(*qkv.unbind(1), cu, pos, theta=theta, scale=D ** -0.5)
    out.backward(dout)
    exact_qkv = qkv.detach().double().requires_grad_()
    exact = reference_attention(*exact_qkv.unbind(1), cu, pos, theta=theta, scale=D ** -0.5)
    exact.backward(dout.double())
    torch.testing.assert_close(out.double(), exact.detach(), rtol=0, atol=2e-5)
    torch.testing.assert_close(qkv.grad.double(), exact_qkv.grad, rtol=0, atol=2e-5)


# Segment lengths of the towers: Qwen2.5-VL's 112 px windows (64 patches), a 224 px frame (256), a 448 px
# image (1024), an 896 px image (4096); 4096 tokens each (smoke: 64-token segments of 256 tokens).
CORE_LENGTHS = (64, 256, 1024, 4096) if FULL else (64,)


@pytest.mark.parametrize("length", CORE_LENGTHS)
def test_attention_core_cpu(bench, length):
    """The swapped Qwen2.5-VL attention module's fwd+bwd, transformers' forward vs the swap with each core of
    CORES; and the cores alone (`*_core`: q, k, v given)."""
    import transformers as tf

    from vl3fast.integrations import transformers_vision
    from vl3fast.reference.rope import rope2d_inv_freq

    threads = torch.get_num_threads()
    torch.set_num_threads(_threads(bench))
    tokens = 4096 if FULL else 256
    config = tf.Qwen2_5_VLVisionConfig(hidden_size=1280, num_heads=16, _attn_implementation="sdpa")
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    module = tf.models.qwen2_5_vl.modeling_qwen2_5_vl.Qwen2_5_VLVisionAttention(config).train()
    D = module.head_dim
    pos_hw = torch.stack([torch.arange(tokens) // 64, torch.arange(tokens) % 64], 1).to(torch.int32)
    inv_freq = rope2d_inv_freq(D, 10000.0)
    freqs = torch.cat([pos_hw[:, :1] * inv_freq, pos_hw[:, 1:] * inv_freq], -1)
    emb = torch.cat([freqs, freqs], -1)
    cu_seqlens = torch.arange(0, tokens + 1, length, dtype=torch.int32)
    x = torch.randn(tokens, 1280, requires_grad=True)
    dout = torch.randn(tokens, 1280)
    swapped = transformers_vision._fused_forward(transformers_vision.VISION_TOWERS["qwen2_5_vl"], 10000.0)

    def stock():
        with autocast():
            out = module(x, cu_seqlens, position_embeddings=(emb.cos(), emb.sin()))
        out.backward(dout)

    def core(name):
        def run():
            # The swapped forward with this core in the kernel's place (the product calls the fused one).
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(transformers_vision, "rope2d_attention", CORES[name])
                with autocast():
                    out = swapped(module, x, cu_seqlens, **{transformers_vision.POSITIONS_KWARG: pos_hw})
                out.backward(dout)
        return run

    # The cores alone (q, k, v given, in the dtype the module's qkv Linear hands them over).
    qkv_dtype = torch.bfloat16 if BF16 else torch.float32
    q, k, v = (torch.randn(tokens, 16, D, dtype=qkv_dtype, requires_grad=True) for _ in range(3))
    dout_THD = torch.randn(tokens, 16, D, dtype=qkv_dtype)

    def core_only(name):
        def run():
            CORES[name](q, k, v, cu_seqlens, pos_hw, theta=10000.0, scale=D ** -0.5).backward(dout_THD)
            q.grad = k.grad = v.grad = None
        return run

    paths = {"stock": stock, **{name: core(name) for name in CORES},
             **{f"{name}_core": core_only(name) for name in CORES}}
    times = {name: [] for name in paths}
    cpu_times = {name: [] for name in paths}
    try:
        rounds = 1 if bench.disabled else ROUNDS
        for name, fn in paths.items():  # warm-up
            fn()
        for i in range(rounds):
            for name in (list(paths) if i % 2 == 0 else list(paths)[::-1]):
                times[name].append(_timed(paths[name])[0])
                cpu_times[name].append(_timed.cpu)
                x.grad = None
                module.zero_grad(set_to_none=True)
    finally:
        torch.set_num_threads(threads)
    median = {name: statistics.median(v) for name, v in times.items()}
    cpu = {name: statistics.median(v) for name, v in cpu_times.items()}
    bench.extra_info.update(
        tokens=tokens, segment_length=length, heads=16, head_dim=D, threads=_threads(bench), rounds=rounds,
        dtype="bf16 autocast" if BF16 else "fp32", **{f"{name}_cpu_ms": round(1e3 * v, 1) for name, v in cpu.items()},
        **{f"speedup_{name}_cpu": round(cpu["stock"] / cpu[name], 3) for name in CORES},
        **{f"{name}_ms": round(1e3 * v, 1) for name, v in median.items()},
        **{f"speedup_{name}": round(median["stock"] / median[name], 3) for name in CORES},
        fused_core_over_rope_then_sdpa_core_cpu=round(cpu["rope_then_sdpa_core"] / cpu["fused_core"], 3),
        default_path="fused", load_average=os.getloadavg()[0],  # default_path: what apply_vl3fast runs
    )
    bench.pedantic(paths["fused"], rounds=1, iterations=1)
