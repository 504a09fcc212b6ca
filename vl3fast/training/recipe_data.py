"""The data side of a run, from ``cfg.data``: annotations -> validated samples -> the packed per-rank loader,
grouped into optimizer steps of ``train.gradient_accumulation_steps`` micro-batches.

Everything here is the annotation / packing / training-forward API of this package (data.py, dataset.py,
loss.py); this module only wires it to the configuration and the trainer's step loop.
"""
from __future__ import annotations

import os

from .config import Config, ConfigError, origin_of


def load_processor(cfg: Config, processor_dir: str | None):
    """The run's processor: the init checkpoint's processor files, with the recipe's sampling, merge sizes and
    pruning (stages 3-4: DiffFP masks in the data worker, only kept video tokens emitted)."""
    from ..processing import VideoLLaMA3Processor

    if processor_dir is None:
        raise ConfigError(f"{origin_of(cfg)}: no tokenizer / processor files: set model.init (a checkpoint folder "
                          "with them) or model.processor")
    d = cfg.data
    return VideoLLaMA3Processor.from_pretrained(processor_dir, fps=d.fps, max_frames=d.max_frames,
                                                image_merge_size=d.image_merge_size,
                                                video_merge_size=d.video_merge_size, use_token_compression=d.pruning)


class StepData:
    """Optimizer steps of ``grad_accum`` PackedBatches for this rank; a window may run into the next epoch."""

    def __init__(self, loader, grad_accum: int):
        self.loader, self.grad_accum = loader, grad_accum
        self.micro_steps_per_epoch = len(loader)
        self._it = None

    def next_step(self) -> list:
        out = []
        while len(out) < self.grad_accum:
            if self._it is None:
                self._it = iter(self.loader)
            try:
                out.append(next(self._it))
            except StopIteration:
                self._it = None
        return out

    @staticmethod
    def batch_stats(batch) -> dict:
        m = batch.meta
        return {"supervised": m.num_supervised, "tokens": m.num_tokens, "patches": m.num_patches,
                "merged": m.num_visual_tokens, "sample_ids": list(m.sample_ids)}

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)
        self._it = None


def build_data(cfg: Config, dist, processor_dir: str | None) -> StepData:
    """Validates every annotation and measures every sample before the first step; any problem is an error
    listing ``file:line: what`` for each."""
    from . import PackedLoader, load_annotations

    d = cfg.data
    if not d.annotations:
        raise ConfigError(f"{origin_of(cfg)}: data.annotations lists no file")
    missing = [p for p in d.annotations if not os.path.isfile(p)]
    if missing:
        raise ConfigError(f"{origin_of(cfg)}: data.annotations: no such file(s) {missing}")
    samples, problems = load_annotations(d.annotations)
    if problems:
        raise ValueError(f"{len(problems)} annotation problem(s) (rank {dist.rank}; `vl3fast data validate` lists "
                         "them all):\n  " + "\n  ".join(problems[:50]))
    loader = PackedLoader(samples, load_processor(cfg, processor_dir), d.data_folder, token_budget=d.max_tokens,
                          patch_budget=d.max_patches, seed=d.seed, rank=dist.rank, world_size=dist.world_size,
                          num_workers=d.num_workers, progress=dist.is_main and cfg.run.progress)
    if dist.is_main:
        print(loader.report(), flush=True)
    return StepData(loader, cfg.train.gradient_accumulation_steps)


def default_loss_fn():
    """``(model, batch) -> (loss_sum, n_supervised)``: the packed training forward on the model's device."""
    from . import training_forward

    def loss_fn(model, batch):
        return training_forward(model, batch.to(model.device, non_blocking=True, dtype=model.dtype))

    return loss_fn
