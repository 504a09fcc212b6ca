"""transformers training step, stock against vl3fast.apply_vl3fast, on realistic-width vision towers (CPU).

Two models with random weights: a Qwen2.5-VL-shaped one (vision 1280 wide, 16 heads of 80, MLP 3420,
windowed layers with one full-attention layer in four as in the released 7:1 pattern scaled down) and a
VideoLLaMA3-shaped one (SigLIP 1152 wide, 16 heads of 72, MLP 4304), each with VL3FAST_BENCH_LAYERS vision
layers (default 2; the released towers have 32 and 27) and a small Qwen2 LLM (256 wide, 2 layers).

Measured per round, paired (the two paths back to back, order alternating, so the ratios are of medians
from the same rounds under the same load):
- `tower`: the vision tower's forward + backward on the batch's images and video (what the swap changes);
- `step`: one `Trainer` step (`trainer.training_step` + optimizer step): stock = transformers on a padded
  batch, as users train today; vl3fast = apply_vl3fast and the same samples packed into one row.
The learning rate is 0 so that every round sees the same weights.  Targets (issue #14): tower >= 1.3x,
step never slower.  Both paths' losses are checked equal (1e-4) in every round.

Heavy workloads (realistic image sizes) run with VL3FAST_BENCH_FULL=1; otherwise a small smoke workload keeps
`pytest benchmarks --benchmark-disable` fast for CI.

Run: VL3FAST_BENCH_FULL=1 pytest benchmarks/test_swapin.py --benchmark-only \\
         --benchmark-json=benchmarks/results/swapin_cpu_<date>.json
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import pytest
import torch

import vl3fast

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.integrations import tiny_vlms as tv  # noqa: E402  (the input builders the tests use)

LAYERS = int(os.environ.get("VL3FAST_BENCH_LAYERS", "2"))
FULL = os.environ.get("VL3FAST_BENCH_FULL") == "1"
ROUNDS = int(os.environ.get("VL3FAST_BENCH_ROUNDS", "3"))
# Intra-op threads (default: torch's).  On a shared, overloaded machine 1 thread is the stable choice: torch's
# pool spinning on busy cores made a small step ~40x slower here (tests/integrations/conftest.py).
THREADS = int(os.environ.get("VL3FAST_BENCH_THREADS", "0")) or torch.get_num_threads()
LLM = dict(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, bos_token_id=1, eos_token_id=2)
# Samples (media grids in 14 px patches): two images of realistic size and a short video, in a batch of two.
WORKLOADS = {
    "images_video": [tv.Sample([("image", (1, 32, 32)), ("image", (1, 24, 36))], text=40),
                     tv.Sample([("video", (4, 16, 16))], text=60)],
    "smoke": [tv.Sample([("image", (1, 8, 8))], text=8), tv.Sample([("video", (2, 4, 4))], text=8)],
}


def build(family: str):
    import transformers as tf

    if family == "qwen2_5_vl":
        full = [i for i in range(LAYERS) if i % 4 == 3] or [LAYERS - 1]
        config = tf.Qwen2_5_VLConfig(
            vision_config=dict(depth=LAYERS, hidden_size=1280, num_heads=16, intermediate_size=3420, out_hidden_size=256,
                               spatial_merge_size=2, patch_size=14, temporal_patch_size=2, window_size=112,
                               fullatt_block_indexes=full),
            text_config=dict(LLM, rope_parameters=dict(tv.MROPE, mrope_section=[8, 12, 12])),
            image_token_id=tv.IMAGE_ID, video_token_id=tv.VIDEO_ID)
        cls = tf.Qwen2_5_VLForConditionalGeneration
    else:
        config = tf.VideoLlama3Config(
            vision_config=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=LAYERS,
                               num_attention_heads=16, patch_size=14),
            text_config=dict(model_type="qwen2", **LLM), image_token_id=tv.IMAGE_ID, video_token_id=tv.VIDEO_ID)
        cls = tf.VideoLlama3ForConditionalGeneration
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return cls(config).train()


def tower_call(family, model, batch):
    """The vision tower's forward + backward on the batch's images, then its video (as the model calls it)."""
    inner = model.model
    total = 0
    if family == "qwen2_5_vl":
        for pixels, grid in (("pixel_values", "image_grid_thw"), ("pixel_values_videos", "video_grid_thw")):
            if pixels in batch:
                total = total + inner.visual(batch[pixels], grid_thw=batch[grid]).pooler_output.square().mean()
    else:
        for pixels, grid, merge in (("pixel_values", "image_grid_thw", "image_merge_sizes"),
                                    ("pixel_values_videos", "video_grid_thw", "video_merge_sizes")):
            if pixels in batch:
                total = total + inner.vision_model(batch[pixels], grid_thw=batch[grid],
                                                   merge_sizes=batch[merge]).last_hidden_state.square().mean()
    total.backward()
    model.zero_grad(set_to_none=True)


def make_trainer(model, tmp_path):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=0.0, report_to=[], use_cpu=True,
                             save_strategy="no", disable_tqdm=True, remove_unused_columns=False)
    trainer = Trainer(model=model, args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=1000)
    trainer.current_gradient_accumulation_steps = 1  # what Trainer's own loop sets before each training_step
    return trainer


def trainer_step(trainer, batch) -> float:
    loss = trainer.training_step(trainer.model, dict(batch))
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    return float(loss)


def _timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


@pytest.mark.parametrize("family", ["qwen2_5_vl", "video_llama_3"])
@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_trainer_step_stock_vs_vl3fast(bench, family, workload, tmp_path):
    if workload != "smoke" and not FULL:
        pytest.skip(f"{workload} is a heavy case: set VL3FAST_BENCH_FULL=1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if bench.disabled else THREADS)  # --benchmark-disable: a one-round smoke check
    try:
        _paired_rounds(bench, family, workload, tmp_path, rounds=1 if bench.disabled else ROUNDS)
    finally:
        torch.set_num_threads(threads)


def _paired_rounds(bench, family, workload, tmp_path, rounds):
    model = build(family)
    padded = tv.padded_batch(family, model.config, WORKLOADS[workload])
    packed = tv.packed_batch(padded)
    trainer = make_trainer(model, tmp_path)
    times = {key: [] for key in ("tower_stock", "tower_vl3fast", "step_stock", "step_vl3fast")}

    def stock():
        vl3fast.unapply_vl3fast(model)
        times["tower_stock"].append(_timed(lambda: tower_call(family, model, padded))[0])
        t, loss = _timed(lambda: trainer_step(trainer, padded))
        times["step_stock"].append(t)
        return loss

    def ours():
        vl3fast.apply_vl3fast(model)
        times["tower_vl3fast"].append(_timed(lambda: tower_call(family, model, padded))[0])
        t, loss = _timed(lambda: trainer_step(trainer, packed))
        times["step_vl3fast"].append(t)
        return loss

    if rounds > 1:
        stock(), ours()  # warm-up (first-call allocations, lazy imports)
        for key in times:
            times[key].clear()
    for i in range(rounds):
        first, second = (stock, ours) if i % 2 == 0 else (ours, stock)
        a, b = first(), second()
        assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), (a, b)
    median = {key: statistics.median(v) for key, v in times.items()}
    bench.extra_info.update(
        family=family, workload=workload, vision_layers=LAYERS, rounds=rounds, threads=torch.get_num_threads(),
        patches=int(sum(g.prod().item() for k in ("image_grid_thw", "video_grid_thw") if k in padded for g in padded[k])),
        llm_tokens_padded=int(padded["input_ids"].numel()), llm_tokens_packed=int(packed["input_ids"].numel()),
        **{f"{key}_s": round(v, 4) for key, v in median.items()},
        tower_speedup=round(median["tower_stock"] / median["tower_vl3fast"], 3),
        step_speedup=round(median["step_stock"] / median["step_vl3fast"], 3),
        load_average=os.getloadavg()[0],
    )
    vl3fast.apply_vl3fast(model)
    bench.pedantic(lambda: trainer_step(trainer, packed), rounds=1, iterations=1)
