"""`PackedLoader`: one PackedBatch per rank per micro-step, from the pack plan, with a resumable position.

    loader = PackedLoader(samples, processor, data_folder, token_budget=16384, patch_budget=80000,
                          seed=0, rank=r, world_size=W, num_workers=4)
    print(loader.report())                 # samples kept, skipped and why
    for batch in loader:                   # the rest of the current epoch; the next `iter` starts the next one
        ...
    state = loader.state_dict()            # {"epoch", "step", ...}: put it in the checkpoint's client_state
    loader.load_state_dict(state)          # the next batch is the one after the last one consumed

Before any step, every sample is checked and measured from media headers (`encode.estimate_sample`) or
taken from a lengths file (`vl3fast data validate --decode --write-lengths`).  A malformed sample, a missing
or unreadable media file or a sample over the budget raises `DataError` listing all of them
(on_error="raise", the default), or is left out and counted by reason (on_error="skip"; `report()`,
`skipped`); so is a sample that truncation to `max_length` would leave without a supervised token or cut
inside its visual tokens.  Nothing is dropped silently.  Encoding (decoding, resizing, the DiffFP mask) runs in the
DataLoader workers; an error there names the sample.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Mapping, Sequence

import torch

from .collator import PackedBatch, collate
from .data import Sample
from .encode import (SampleError, SampleLength, encode_sample, estimate_sample, generation_prompt_ids,
                     supervised_after_truncation)
from .packer import PackPlan, pack_epoch


class DataError(ValueError):
    """Samples that cannot be trained on, found before the first step; `problems` lists each."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__(f"{len(self.problems)} sample(s) cannot be used:\n  " + "\n  ".join(self.problems[:50]) +
                         ("\n  ..." if len(self.problems) > 50 else "") +
                         "\n(run `vl3fast data validate` for the full list, or pass on_error='skip')")


def read_lengths(path: str | os.PathLike) -> dict[str, SampleLength]:
    """A lengths file (JSON lines {"id", "tokens", "patches"}) as {id: SampleLength}."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    r = json.loads(line)
                    out[str(r["id"])] = SampleLength(int(r["tokens"]), int(r["patches"]))
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f"{os.fspath(path)}:{lineno}: not a lengths record ({e})") from e
    return out


class PackedDataset(torch.utils.data.Dataset):
    """Index = a tuple of sample numbers (one micro-batch of the plan) -> its PackedBatch (in a worker)."""

    def __init__(self, samples: Sequence[Sample], processor, data_folder=None, *, max_length: int | None = None,
                 dummy_merge_size: int | None = None, timeout: float | None = 60.0):
        self.samples, self.processor, self.data_folder = list(samples), processor, data_folder
        self.max_length, self.timeout = max_length, timeout
        self.dummy_merge_size = dummy_merge_size or processor.config.image_merge_size
        pad = getattr(processor.tokenizer, "pad_token_id", None)
        self.pad_token_id = pad if isinstance(pad, int) else 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, indices: tuple[int, ...]) -> PackedBatch:
        encoded = [encode_sample(self.samples[i], self.processor, self.data_folder, max_length=self.max_length,
                                 timeout=self.timeout) for i in indices]
        return collate(encoded, dummy_merge_size=self.dummy_merge_size, pad_token_id=self.pad_token_id)


def _reason(exc: Exception) -> str:
    from ..processing import MediaNotFoundError, TokenBudgetError

    if isinstance(exc, MediaNotFoundError) or isinstance(exc.__cause__, MediaNotFoundError):
        return "missing media"
    if isinstance(exc.__cause__, TokenBudgetError):
        return "over budget"
    if "truncation to max_length" in str(exc):
        return "nothing left after truncation"
    return "unreadable media or bad sample"


class PackedLoader:
    def __init__(self, samples: Sequence[Sample], processor, data_folder=None, *, token_budget: int,
                 patch_budget: int | None = None, seed: int = 0, rank: int = 0, world_size: int = 1,
                 lengths: Mapping[str, SampleLength] | str | None = None, max_length: int | None = None,
                 window: int = 1024, num_workers: int = 0, pin_memory: bool = False, on_error: str = "raise",
                 timeout: float | None = 60.0, progress: bool | None = None):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.token_budget, self.patch_budget, self.seed = token_budget, patch_budget, seed
        self.rank, self.world_size, self.window = rank, world_size, window
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.skipped: dict[str, list[str]] = defaultdict(list)
        self.total_samples = len(samples)
        if isinstance(lengths, (str, os.PathLike)):
            lengths = read_lengths(lengths)
        kept, measured, problems = [], [], []
        from tqdm import tqdm

        gen_len = len(generation_prompt_ids(processor))
        bar = tqdm(samples, desc="measuring samples", unit="sample", disable=progress is False if progress is not None
                   else None, leave=False)
        for s in bar:
            try:
                if lengths is not None:
                    if s.id not in lengths:
                        raise ValueError(f"{s.where}: sample {s.id!r} is not in the lengths file")
                    ln = lengths[s.id]
                else:
                    est = estimate_sample(s, processor, data_folder, timeout=timeout)
                    ln = est.length
                    if max_length is not None and ln.tokens > max_length:
                        left, cuts_visual = supervised_after_truncation(s, est, gen_len, max_length)
                        if cuts_visual or left == 0:
                            raise SampleError(f"{s.where}: sample {s.id!r}: truncation to max_length={max_length} "
                                              + ("would cut visual tokens" if cuts_visual else
                                                 "leaves no supervised token") + f" ({ln.tokens} tokens)")
                if max_length is not None and ln.tokens > max_length:
                    ln = SampleLength(max_length, ln.patches)  # encode_sample truncates it
                if ln.tokens > token_budget or (patch_budget is not None and ln.patches > patch_budget):
                    raise _OverBudget(f"{s.where}: sample {s.id!r} has {ln.tokens} tokens and {ln.patches} patches; "
                                      f"the budget is {token_budget} tokens / {patch_budget} patches per micro-batch")
            except _OverBudget as e:
                problems.append(str(e))
                self.skipped["over budget"].append(s.id)
                continue
            except (ValueError, OSError) as e:
                problems.append(str(e))
                self.skipped[_reason(e)].append(s.id)
                continue
            kept.append(s)
            measured.append(ln)
        if problems and on_error == "raise":
            raise DataError(problems)
        if not kept:
            raise DataError(problems or ["no samples given"])
        self.samples, self.lengths = kept, measured
        self.dataset = PackedDataset(kept, processor, data_folder, max_length=max_length, timeout=timeout)
        self.epoch, self.step = 0, 0
        self._plans: dict[int, PackPlan] = {}

    # ---- plan ------------------------------------------------------------------------------------------------------
    def plan(self, epoch: int | None = None) -> PackPlan:
        """The (cached) pack plan of `epoch` (default: the current one), the same on every rank."""
        epoch = self.epoch if epoch is None else epoch
        if epoch not in self._plans:
            self._plans = {epoch: pack_epoch(self.lengths, seed=self.seed, epoch=epoch, world_size=self.world_size,
                                             token_budget=self.token_budget, patch_budget=self.patch_budget,
                                             window=self.window, names=[s.id for s in self.samples])}
        return self._plans[epoch]

    def __len__(self) -> int:
        """Micro-steps per epoch (the same on every rank)."""
        return len(self.plan())

    def __iter__(self):
        plan = self.plan()
        mine = plan.for_rank(self.rank)[self.step:]
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=None, sampler=mine, num_workers=self.num_workers,
                                             pin_memory=self.pin_memory, persistent_workers=False)
        for batch in loader:
            self.step += 1
            yield batch
        self.epoch, self.step = self.epoch + 1, 0

    # ---- resume ----------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Position after the last batch consumed (workers may have prefetched more; those are redone)."""
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed, "world_size": self.world_size,
                "num_samples": len(self.samples)}

    def load_state_dict(self, state: Mapping) -> None:
        mine = {"seed": self.seed, "world_size": self.world_size, "num_samples": len(self.samples)}
        for key, value in mine.items():
            if key in state and state[key] != value:
                raise ValueError(f"loader state has {key}={state[key]} but this loader has {key}={value}: the data "
                                 "order would differ (resuming needs the same annotations, seed and world size)")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        if self.step > len(self.plan()):
            raise ValueError(f"loader state step {self.step} is past the {len(self.plan())} steps of epoch {self.epoch}")

    # ---- reporting -------------------------------------------------------------------------------------------------
    def report(self) -> str:
        skipped = sum(len(v) for v in self.skipped.values())
        lines = [f"{len(self.samples)} of {self.total_samples} samples used, {skipped} skipped"]
        for reason, ids in sorted(self.skipped.items()):
            lines.append(f"  {reason}: {len(ids)} (e.g. {', '.join(map(repr, ids[:3]))})")
        plan = self.plan()
        lines.append(f"epoch {self.epoch}: {len(plan)} micro-steps x {self.world_size} rank(s), budget "
                     f"{self.token_budget} tokens / {self.patch_budget} patches")
        return "\n".join(lines)


class _OverBudget(Exception):
    pass
