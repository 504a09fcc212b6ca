"""What a run reports: one JSON line per logging step (RUN/metrics.jsonl), TensorBoard when installed, a
progress bar and an end summary (rank 0 only).

Throughput counts every rank: tokens/s = LLM tokens of the step over all ranks / step seconds;
supervised tokens/s likewise for tokens with a label; vision patches/s for patches entering the encoder.
MFU (GPU only) = model FLOPs per step / (step seconds x ranks x the GPU's dense bf16 peak), with the usual
6 FLOPs per parameter per token (forward 2, backward 4) for every module a token passes through:
    model FLOPs = 6 * (N_llm - N_embedding) * llm_tokens + 6 * N_vision * patches + 6 * N_projector * merged_tokens
Attention's sequence-length term is left out (as in the PaLM convention), so MFU is a slight underestimate.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time

import torch

# Dense bf16 peak FLOP/s per GPU, by a substring of torch.cuda.get_device_name() (vendor data sheets).
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12, "L40S": 362e12,
                   "A10G": 70e12, "L4": 121e12, "4090": 165e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_FLOPS.items():
        if key in name:
            return value
    return None


def peak_memory_bytes(device: torch.device) -> int:
    """Peak GPU memory allocated by torch on a GPU; the process's peak RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def flop_counts(model) -> dict[str, int]:
    """Parameter counts for the MFU formula: LLM without its input embedding, vision, projector."""
    from .modules import module_group

    counts = {"llm": 0, "vision": 0, "projector": 0}
    for name, p in model.named_parameters():
        if "embed_tokens" in name:
            continue
        counts[module_group(name)] += p.ds_numel if hasattr(p, "ds_numel") else p.numel()
    return counts


def model_flops(counts: dict[str, int], tokens: int, patches: int, merged: int) -> float:
    return 6.0 * (counts["llm"] * tokens + counts["vision"] * patches + counts["projector"] * merged)


class MetricsLog:
    """Appends JSON lines (rank 0); on resume, lines past the resumed step are dropped first (they belong to
    the part of the run that was lost), and TensorBoard purges them too."""

    def __init__(self, run_dir: str, enabled: bool, tensorboard: bool, resume_step: int | None):
        self.enabled = enabled
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.writer = None
        if not enabled:
            return
        if resume_step is None:
            open(self.path, "w").close()
        else:
            self._truncate(resume_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                self.writer = SummaryWriter(os.path.join(run_dir, "tensorboard"),
                                            purge_step=None if resume_step is None else resume_step + 1)

    def _truncate(self, step: int) -> None:
        if not os.path.isfile(self.path):
            return
        with open(self.path) as f:
            keep = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
        with open(self.path, "w") as f:
            f.writelines(keep)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            step = record["step"]
            for key, value in record.items():
                if key == "lr":
                    for group, lr in value.items():
                        self.writer.add_scalar(f"lr/{group}", lr, step)
                elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                    self.writer.add_scalar(f"train/{key}", value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Progress:
    """A tqdm bar over optimizer steps on rank 0 (stderr), showing loss and tokens/s."""

    def __init__(self, enabled: bool, total: int, initial: int):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", file=sys.stderr,
                            dynamic_ncols=True)

    def update(self, record: dict | None) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if record is not None:
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Timer:
    def __init__(self, device: torch.device):
        self.device = device
        self.start = time.perf_counter()

    def lap(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        elapsed, self.start = now - self.start, now
        return elapsed


def format_summary(summary: dict) -> str:
    lines = [f"vl3fast train: {summary['status']} after {summary['steps_done']} step(s) of {summary['total_steps']} "
             f"in {summary['seconds']:.1f} s ({summary['engine']}, ZeRO {summary['zero_stage']}, "
             f"{summary['world_size']} rank(s), {summary['dtype']})"]
    if summary.get("final_loss") is not None:
        lines.append(f"  loss: first {summary['first_loss']:.4f}, last {summary['final_loss']:.4f}")
    if summary.get("tokens_per_s"):
        lines.append(f"  throughput: {summary['tokens_per_s']:.0f} tokens/s, {summary['supervised_tokens_per_s']:.0f} "
                     f"supervised tokens/s, {summary['patches_per_s']:.0f} vision patches/s")
    lines.append(f"  peak memory: {summary['peak_memory_bytes'] / 2**30:.2f} GiB (max over ranks)")
    if summary.get("mfu") is not None:
        lines.append(f"  MFU: {100 * summary['mfu']:.1f}% (see vl3fast/training/metrics.py for the formula)")
    for group, c in summary["parameters"].items():
        lines.append(f"  {group}: {c['trainable']:,} trainable, {c['frozen']:,} frozen parameters")
    if summary.get("checkpoint"):
        lines.append(f"  last checkpoint: {summary['checkpoint']}")
    lines.append(f"  run folder: {summary['run_dir']}")
    return "\n".join(lines)
