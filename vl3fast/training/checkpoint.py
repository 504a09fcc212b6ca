"""Run folders and checkpoints that a kill at any moment cannot corrupt.

    RUN/resolved.yaml                  the configuration after inheritance and overrides
    RUN/metrics.jsonl                  one JSON line per logging step
    RUN/processor/                     tokenizer + processor files of the init checkpoint (export copies them)
    RUN/checkpoints/step-00000004/     complete checkpoints only:
        ds/ ... or torch_state.pt      DeepSpeed's save_checkpoint (tag "ds") or the plain torch state
        meta.json                      step, world size, ZeRO stage, model config, LoRA settings
    RUN/checkpoints/.step-00000006.tmp a checkpoint being written (ignored, removed on the next start)

A checkpoint is written under the temporary name and renamed once every rank has finished writing, and
``meta.json`` is written (and fsync'ed) before the rename, so a folder with the final name is always
complete.  ``client_state`` holds the RNG states and data-loader position of *every* rank (gathered to
rank 0 before the save), so a resumed run continues bitwise.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil

import numpy as np
import torch

from . import distributed

CHECKPOINTS = "checkpoints"
META = "meta.json"
RESOLVED = "resolved.yaml"
METRICS = "metrics.jsonl"
PROCESSOR = "processor"
_FINAL = re.compile(r"^step-(\d{8})$")


class RunFolderError(ValueError):
    pass


def step_dirname(step: int) -> str:
    return f"step-{step:08d}"


def is_complete(path: str) -> bool:
    return bool(_FINAL.match(os.path.basename(os.path.normpath(path)))) and os.path.isfile(os.path.join(path, META))


def complete_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """(step, folder) of every complete checkpoint of a run, oldest first."""
    root = os.path.join(run_dir, CHECKPOINTS)
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        m = _FINAL.match(name)
        path = os.path.join(root, name)
        if m and is_complete(path):
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: str) -> str | None:
    found = complete_checkpoints(run_dir)
    return found[-1][1] if found else None


def has_run(run_dir: str) -> bool:
    return os.path.isfile(os.path.join(run_dir, RESOLVED)) or os.path.isdir(os.path.join(run_dir, CHECKPOINTS))


def resolve_resume(run_dir: str, resume: str | None) -> str | None:
    """The checkpoint folder to continue from, or None for a fresh start.

    resume None: the folder must not hold a run yet.  "auto": the newest complete checkpoint (none: a fresh
    start).  Anything else: a checkpoint folder (or a run folder, meaning its newest checkpoint)."""
    if resume is None:
        if has_run(run_dir):
            raise RunFolderError(
                f"run folder {run_dir!r} already holds a run ({RESOLVED} or {CHECKPOINTS}/ exist); pass "
                "--resume auto to continue it from its newest checkpoint, or set run.out to a new folder")
        return None
    if resume == "auto":
        return latest_checkpoint(run_dir)
    if is_complete(resume):
        return resume
    if os.path.isdir(resume):
        latest = latest_checkpoint(resume)
        if latest:
            return latest
    raise RunFolderError(f"--resume {resume!r} is neither 'auto', a complete checkpoint folder "
                         f"({CHECKPOINTS}/step-NNNNNNNN with {META}) nor a run folder with one")


def remove_partial(run_dir: str) -> list[str]:
    """Deletes checkpoints that were being written when a run died; returns their names."""
    root = os.path.join(run_dir, CHECKPOINTS)
    if not os.path.isdir(root):
        return []
    removed = []
    for name in os.listdir(root):
        if name.startswith(".") and name.endswith(".tmp"):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
            removed.append(name)
    return removed


# ---- per-rank state ----------------------------------------------------------------------------------------------
def rank_state(loader_state: dict) -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
             "loader": loader_state}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rank_state(state: dict) -> dict:
    """Restores this rank's RNG states; returns its loader state."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    return state["loader"]


# ---- save ------------------------------------------------------------------------------------------------------
def _fsync_file(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(engine, run_dir: str, step: int, loader_state: dict, meta: dict, dist, keep_last: int,
         on_written=None) -> str:
    """Writes checkpoint ``step`` (a collective: every rank calls it); returns the final folder."""
    root = os.path.join(run_dir, CHECKPOINTS)
    tmp = os.path.join(root, f".{step_dirname(step)}.tmp")
    final = os.path.join(root, step_dirname(step))
    if dist.is_main:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    distributed.barrier()
    ranks = distributed.all_gather_object(rank_state(loader_state))
    engine.save(tmp, {"step": step, "world_size": dist.world_size, "ranks": ranks})
    distributed.barrier()
    if dist.is_main:
        if on_written is not None:  # tests: a kill here must leave nothing --resume auto would take
            on_written(step, tmp)
        meta_path = os.path.join(tmp, META)
        with open(meta_path, "w") as f:
            json.dump({"step": step, "world_size": dist.world_size, **meta}, f, indent=2)
        _fsync_file(meta_path)
        if os.path.isdir(final):  # a re-run of the same step after a resume from an older checkpoint
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
        if keep_last > 0:
            for _, old in complete_checkpoints(run_dir)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()
    return final


def load(engine, ckpt_dir: str, dist) -> tuple[int, dict]:
    """Restores engine state and this rank's RNG states from a checkpoint; returns (step, loader state)."""
    client_state = engine.load(ckpt_dir)
    if client_state.get("world_size") != dist.world_size:
        raise RunFolderError(f"checkpoint {ckpt_dir!r} was written by {client_state.get('world_size')} ranks; this "
                             f"run has {dist.world_size}: exact resume needs the same world size")
    loader_state = restore_rank_state(client_state["ranks"][dist.rank])
    return int(client_state["step"]), loader_state


def read_meta(ckpt_dir: str) -> dict:
    with open(os.path.join(ckpt_dir, META)) as f:
        return json.load(f)
