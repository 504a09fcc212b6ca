"""`vl3fast train`: one run of the recipe, from a resolved configuration to checkpoints and an export-ready folder.

Order of work (every check happens before the first step, on every rank):
    config -> run folder (refuse an existing run without --resume) -> init checkpoint -> DeepSpeed JSON ->
    data (validated, planned) -> model (LoRA, freezing, parameter groups) -> engine -> resume -> steps.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from . import checkpoint, distributed, metrics
from .config import Config, ConfigError, origin_of, write_resolved
from .loss import global_supervised_count, normalised_loss
from .engine import build_engine, optimizer_checksum, parameter_checksum, resolve_ds_config
from .modules import apply_lora, freeze_and_group, trainable_summary
from .model_init import build_model, copy_processor_files, resolve_dtype

# Tests only: a rank-0 hook run inside a checkpoint save after every rank wrote its part and before the
# folder gets its final name ("kill here" must leave nothing --resume auto would pick up).
PAUSE_IN_CHECKPOINT_ENV = "VL3FAST_TEST_PAUSE_IN_CHECKPOINT"


class TrainingStep(nn.Module):
    """What DeepSpeed wraps: ``forward(batch) -> (loss_sum, n_supervised)`` of the model's training forward.
    Calling it through the engine lets DeepSpeed run its forward prologue (ZeRO-3 hooks, autocast)."""

    def __init__(self, model: nn.Module, loss_fn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch):
        return self.loss_fn(self.model, batch)


@dataclass
class RunResult:
    run_dir: str
    summary: dict
    records: list          # the JSON lines logged by this process's run (rank 0's view)
    model: nn.Module       # the trained VideoLLaMA3ForCausalLM (under ZeRO-3 its parameters stay partitioned)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _pause_hook():
    target = os.environ.get(PAUSE_IN_CHECKPOINT_ENV)
    if not target:
        return None

    def hook(step, tmp):
        if step == int(target):
            print(f"vl3fast train: paused inside checkpoint {step} ({tmp})", flush=True)
            time.sleep(3600)

    return hook


def train(cfg: Config, *, resume: str | None = None, data=None, loss_fn=None) -> RunResult:
    """Runs (or continues) the training run described by ``cfg``.

    data: the per-rank step source (default: the annotation loader of vl3fast.training, built from cfg.data).
    loss_fn: ``(model, batch) -> (loss_sum, n_supervised)`` (default: the model's training forward).
    """
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    use_ds = cfg.deepspeed.enabled
    dist = distributed.from_env()  # the process group is joined after the checks (bad input fails fast)
    run_dir = os.path.abspath(cfg.run.out)

    # ---- checks before anything is written ------------------------------------------------------------------
    resume_from = checkpoint.resolve_resume(run_dir, resume)
    if resume_from is not None:
        _check_same_config(cfg, run_dir)
    dtype = resolve_dtype(cfg, dist.device)
    ds_config = resolve_ds_config(cfg, dist.world_size, dtype) if use_ds else None
    if not use_ds and dist.world_size > 1:
        raise ConfigError(f"{origin_of(cfg)}: {dist.world_size} ranks need DeepSpeed (deepspeed.enabled: true)")
    _seed_everything(cfg.train.seed)
    model, processor_dir = build_model(cfg, dist.device, dtype)
    if data is None:
        from .recipe_data import build_data

        data = build_data(cfg, dist, processor_dir)
    if loss_fn is None:
        from .recipe_data import default_loss_fn

        loss_fn = default_loss_fn()
    dist = distributed.init(use_ds)
    # train.max_steps, when set, is the run's length (epochs then only bound nothing: the data repeats)
    gas = cfg.train.gradient_accumulation_steps
    steps_total = cfg.train.max_steps if cfg.train.max_steps is not None else \
        data.micro_steps_per_epoch * cfg.train.epochs // gas
    if steps_total < 1:
        raise ConfigError(f"{origin_of(cfg)}: {cfg.train.epochs} epoch(s) of {data.micro_steps_per_epoch} packed "
                          f"micro-batch(es) per rank make no step of {gas} (train.gradient_accumulation_steps); "
                          "add data, lower the accumulation, or set train.max_steps")

    model = apply_lora(model, cfg.lora, cfg.train.lr)
    groups = freeze_and_group(model, cfg.train.lr, cfg.lora, cfg.train.weight_decay)
    params = trainable_summary(model)
    flop_counts = metrics.flop_counts(model)

    if dist.is_main:
        os.makedirs(run_dir, exist_ok=True)
        removed = checkpoint.remove_partial(run_dir)
        if removed:
            print(f"vl3fast train: removed unfinished checkpoint(s) {removed}", flush=True)
        write_resolved(cfg, os.path.join(run_dir, checkpoint.RESOLVED))
        if processor_dir and not os.path.isdir(os.path.join(run_dir, checkpoint.PROCESSOR)):
            copy_processor_files(processor_dir, os.path.join(run_dir, checkpoint.PROCESSOR))
    distributed.barrier()

    engine = build_engine(TrainingStep(model, loss_fn), groups, cfg, steps_total, ds_config)
    start_step = 0
    if resume_from is not None:
        start_step, loader_state = checkpoint.load(engine, resume_from, dist)
        data.load_state_dict(loader_state)
        if dist.is_main:
            print(f"vl3fast train: resumed from {resume_from} (step {start_step})", flush=True)

    meta = {"model_config": model.config.to_dict("native"), "lora": dataclasses.asdict(cfg.lora),
            "zero_stage": ds_config and ds_config["zero_optimization"].get("stage", 0) or 0,
            "engine": engine.name, "dtype": str(dtype).removeprefix("torch.")}
    log = metrics.MetricsLog(run_dir, dist.is_main, cfg.run.tensorboard, None if resume_from is None else start_step)
    progress = metrics.Progress(dist.is_main and cfg.run.progress, steps_total, start_step)
    peak = metrics.peak_flops(dist.device)
    records, timer, started = [], metrics.Timer(dist.device), time.perf_counter()
    totals = {"tokens": 0.0, "supervised": 0.0, "patches": 0.0, "seconds": 0.0}
    last_ckpt, status = (resume_from if resume_from else None), "finished"
    pause = _pause_hook()
    try:
        for step in range(start_step, steps_total):
            batches = data.next_step()
            stats = [data.batch_stats(b) for b in batches]
            # the loss of the step: supervised-token sum over the window and all ranks / their global count
            n_sup = global_supervised_count([s["supervised"] for s in stats])
            n_tok, n_patch, n_merged = distributed.all_reduce_sum(
                [float(sum(s[k] for s in stats)) for k in ("tokens", "patches", "merged")], dist.device)
            lrs = engine.lrs()  # the rates of this update (DeepSpeed advances the schedule in the last micro-step)
            loss_local = 0.0
            for b in batches:
                loss_sum, _ = engine.forward(b)
                engine.backward(normalised_loss(loss_sum, n_sup, **engine.loss_normalisation))
                engine.micro_step_done()
                loss_local += float(loss_sum.detach())
            engine.step()
            (loss_total,) = distributed.all_reduce_sum([loss_local], dist.device)
            seconds = timer.lap()
            totals["tokens"] += n_tok
            totals["supervised"] += n_sup
            totals["patches"] += n_patch
            totals["seconds"] += seconds
            done = step + 1
            record = None
            if done % cfg.run.log_every == 0 or done == steps_total:
                ids = distributed.all_gather_object([s.get("sample_ids", []) for s in stats])
                mem = max(distributed.all_gather_object(metrics.peak_memory_bytes(dist.device)))
                flops = metrics.model_flops(flop_counts, n_tok, n_patch, n_merged)
                record = {"step": done, "loss": loss_total / n_sup, "lr": lrs, "grad_norm": engine.grad_norm,
                          "tokens": int(n_tok), "supervised_tokens": int(n_sup), "vision_patches": int(n_patch),
                          "seconds": seconds, "tokens_per_s": n_tok / seconds, "supervised_tokens_per_s":
                          n_sup / seconds, "vision_patches_per_s": n_patch / seconds, "peak_memory_bytes": mem,
                          "mfu": flops / (seconds * dist.world_size * peak) if peak else None,
                          "sample_ids": ids}
                records.append(record)
                log.log(record)
            progress.update(record)
            save_now = cfg.run.save_every > 0 and done % cfg.run.save_every == 0
            if save_now or (done == steps_total and cfg.run.save_at_end):
                last_ckpt = checkpoint.save(engine, run_dir, done, data.state_dict(), meta, dist, cfg.run.keep_last,
                                            on_written=pause)
            timer.lap()  # checkpoint time is not step time
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        progress.close()
        log.close()

    param_sum = parameter_checksum(engine.module.model)
    opt_sums = distributed.all_gather_object(optimizer_checksum(engine.base_optimizer()))
    summary = {
        "status": status, "run_dir": run_dir, "steps_done": steps_total - start_step, "total_steps": steps_total,
        "resumed_from_step": start_step if resume_from else None, "seconds": time.perf_counter() - started,
        "engine": engine.name, "zero_stage": meta["zero_stage"], "world_size": dist.world_size, "dtype": meta["dtype"],
        "first_loss": records[0]["loss"] if records else None, "final_loss": records[-1]["loss"] if records else None,
        "tokens_per_s": totals["tokens"] / totals["seconds"] if totals["seconds"] else None,
        "supervised_tokens_per_s": totals["supervised"] / totals["seconds"] if totals["seconds"] else None,
        "patches_per_s": totals["patches"] / totals["seconds"] if totals["seconds"] else None,
        "peak_memory_bytes": max(distributed.all_gather_object(metrics.peak_memory_bytes(dist.device))),
        "mfu": (sum(r["mfu"] for r in records if r["mfu"]) / len(records)) if peak and records else None,
        "parameters": params, "checkpoint": last_ckpt, "parameter_checksum": param_sum,
        "optimizer_checksums": opt_sums,
    }
    if dist.is_main:
        with open(os.path.join(run_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        print(metrics.format_summary(summary), flush=True)
    return RunResult(run_dir, summary, records, engine.module.model)


def _check_same_config(cfg: Config, run_dir: str) -> None:
    """A resumed run must train what it started training: only ``run.*`` settings may change."""
    from .config import load_config

    path = os.path.join(run_dir, checkpoint.RESOLVED)
    if not os.path.isfile(path):
        return
    before = load_config(path).to_dict()
    now = cfg.to_dict()
    changed = [f"{section}.{key}" for section in now if section != "run"
               for key in now[section] if before.get(section, {}).get(key) != now[section][key]]
    if changed:
        raise ConfigError(f"--resume: the configuration differs from the run's {path} in {changed}; a resumed run "
                          "must keep them (only run.* may change), or start a new run folder")
