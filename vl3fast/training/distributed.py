"""Process group set-up for one process or a launcher (``deepspeed``, ``torchrun``): nccl on GPU, gloo on CPU.

The launchers export RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT; a bare ``vl3fast train`` runs as
rank 0 of 1 and picks a free port.  On CPU DeepSpeed's TorchBackend JIT-compiles its shared-memory collective
op (``deepspeed_shm_comm``) on first use, about 240 s (build_notes §6); gloo's own collectives are used
instead, by replacing ``build_shm_op`` before ``init_distributed``.
"""
from __future__ import annotations

import atexit
import importlib
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env_defaults() -> None:
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))


def skip_deepspeed_shm_build() -> None:
    """Plain gloo collectives instead of DeepSpeed's JIT-built shm op on CPU (the ~240 s trap).  Written as
    import_module: ``import deepspeed.comm.torch as m`` would give the real torch module, which shadows it."""
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def from_env() -> Dist:
    """This process's place in the run, from the launcher's environment (no process group yet)."""
    _env_defaults()
    rank, local_rank, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    return Dist(rank, local_rank, world, device)


def init(use_deepspeed: bool) -> Dist:
    """Joins (or creates) the process group; idempotent."""
    d = from_env()
    rank, world, device = d.rank, d.world_size, d.device
    if device.type == "cuda":
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        backend = "gloo"
    if use_deepspeed:
        import deepspeed

        if device.type == "cpu":
            skip_deepspeed_shm_build()
        deepspeed.init_distributed(dist_backend=backend)
    elif not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    global _exit_hook_registered
    if not _exit_hook_registered:
        atexit.register(_leave_at_exit)
        _exit_hook_registered = True
    return d


_exit_hook_registered = False


def _leave_at_exit() -> None:
    """Leaves the process group while the interpreter is still whole.  A gloo group alive at finalisation can abort
    a process whose run finished (its worker threads outlive Python: SIGABRT, "terminate called without an active
    exception"; pytorch/pytorch#190489).  Not at the end of ``train``: DeepSpeed keeps handles to the world group,
    so a second run in the same process (tests, notebooks) needs the group to stay."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_gather_object(obj) -> list:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sums of host numbers over ranks (float64), in one collective."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def broadcast_object(obj, src: int = 0):
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
