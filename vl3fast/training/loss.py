"""The training forward and the loss normalisation over an accumulation window and all ranks.

    n_global = global_supervised_count([b.num_supervised for b in window])   # one all-reduce per window
    for batch in window:
        loss_sum, n = training_forward(engine_or_model, batch.to(device))
        loss = normalised_loss(loss_sum, n_global, world_size=W, grad_accum=len(window))
        engine.backward(loss)          # DeepSpeed: its mean over ranks and 1/grad_accum are undone above
    engine.step()

The gradient applied at the step is then d(sum of the cross-entropy of every supervised token of the window
on every rank) / (their global count): each token weighs the same whatever its sample, batch or rank
(the official recipe's `sum / num_items_in_batch`).
"""
from __future__ import annotations

from typing import Iterable

import torch

from .collator import NoSupervisedTokensError, PackedBatch


def training_forward(model, batch: PackedBatch) -> tuple[torch.Tensor, int]:
    """``(loss_sum, num_supervised)`` of one PackedBatch: the fp32 summed cross-entropy over its supervised
    tokens and their count (host int).  `model` is a `VideoLLaMA3ForCausalLM` or an engine wrapping one
    (DeepSpeed's engine forwards ``packed=`` to it)."""
    return model(packed=batch)


def global_supervised_count(local_counts: int | Iterable[int], *, group=None) -> int:
    """Supervised tokens of the accumulation window summed over this rank's micro-batches and all-reduced
    (SUM) over the ranks of `group` when torch.distributed is initialised, so every rank divides by the same
    number.  Raises NoSupervisedTokensError when the window has none anywhere."""
    local = int(local_counts) if isinstance(local_counts, int) else int(sum(local_counts))
    total = local
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        backend = torch.distributed.get_backend(group)
        device = "cuda" if backend == "nccl" else "cpu"
        t = torch.tensor([local], dtype=torch.int64, device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM, group=group)
        total = int(t.item())
    if total <= 0:
        raise NoSupervisedTokensError("no token is supervised in this accumulation window on any rank; every "
                                      "sample needs a non-empty assistant turn (`vl3fast data validate`)")
    return total


def normalised_loss(loss_sum: torch.Tensor, global_count: int, *, world_size: int = 1,
                    grad_accum: int = 1) -> torch.Tensor:
    """The loss to backpropagate: ``loss_sum * world_size * grad_accum / global_count``.  The factor undoes
    the data-parallel mean over `world_size` ranks and the ``1 / grad_accum`` scaling DeepSpeed's
    ``engine.backward`` applies; with a plain model and manual accumulation pass world_size=1, grad_accum=1."""
    if global_count <= 0:
        raise NoSupervisedTokensError(f"global supervised-token count must be > 0, got {global_count}")
    return loss_sum * (world_size * grad_accum / global_count)
