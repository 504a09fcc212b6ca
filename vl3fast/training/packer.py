"""Token- and patch-budget packing: a pure function of (seed, epoch, lengths, world size, budgets).

    plan = pack_epoch(lengths, seed=0, epoch=0, world_size=2, token_budget=16384, patch_budget=65536)
    plan.steps[k][r]      # the sample indices rank r packs into its micro-batch at step k
    plan.for_rank(r)      # [steps][samples] for one rank

How: the samples are shuffled with a generator seeded by (seed, epoch); the shuffled order is cut into
windows of `window` samples; inside a window the samples are sorted by length, longest first, and placed
first-fit into micro-batches that hold at most `token_budget` LLM tokens and `patch_budget` vision patches
(first-fit-decreasing).  The micro-batches of all windows are then ordered by token count and dealt out
world_size at a time, so the ranks of a step carry similar loads (balanced); the order of the steps is
shuffled with the same generator.  When the micro-batch count is not a multiple of world_size, the fullest
multi-sample micro-batches are split in two until it is; if that is impossible (fewer samples than
ranks in the last step), the missing ranks get an empty micro-batch (the collator turns it into a
zero-loss padding batch, so every rank still runs the step).  Every sample appears exactly once.

A sample longer than either budget cannot be packed: `OverBudgetError` names it (the validator reports
the same before a run).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence


class OverBudgetError(ValueError):
    """A sample exceeds the token or patch budget."""


@dataclass(frozen=True)
class PackPlan:
    """steps[k][r] = sample indices of rank r at micro-step k (possibly empty, see the module doc)."""

    steps: tuple[tuple[tuple[int, ...], ...], ...]
    world_size: int
    seed: int
    epoch: int

    def __len__(self) -> int:
        return len(self.steps)

    def for_rank(self, rank: int) -> list[tuple[int, ...]]:
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {rank}")
        return [step[rank] for step in self.steps]


def _length_pairs(lengths) -> list[tuple[int, int]]:
    pairs = []
    for i, ln in enumerate(lengths):
        tokens, patches = (ln.tokens, ln.patches) if hasattr(ln, "tokens") else (ln if isinstance(ln, tuple) else (ln, 0))
        if tokens < 1 or patches < 0:
            raise ValueError(f"sample {i}: length must have >= 1 token and >= 0 patches, got {ln!r}")
        pairs.append((int(tokens), int(patches)))
    return pairs


def pack_epoch(lengths: Sequence, *, seed: int, epoch: int, world_size: int = 1, token_budget: int,
               patch_budget: int | None = None, window: int = 1024, names: Sequence[str] | None = None) -> PackPlan:
    """The plan of one epoch.  lengths[i]: a `SampleLength`, a (tokens, patches) tuple or a token count.
    names (optional) label samples in errors (default: their index)."""
    if world_size < 1 or token_budget < 1 or window < 1:
        raise ValueError(f"world_size, token_budget and window must be >= 1, got {world_size}, {token_budget}, {window}")
    pairs = _length_pairs(lengths)
    if len(pairs) < world_size:
        raise ValueError(f"{len(pairs)} samples cannot feed {world_size} ranks: need at least one sample per rank")
    patch_budget = patch_budget if patch_budget is not None else float("inf")
    over = [(i, t, p) for i, (t, p) in enumerate(pairs) if t > token_budget or p > patch_budget]
    if over:
        label = (lambda i: repr(names[i])) if names is not None else str
        listed = ", ".join(f"sample {label(i)}: {t} tokens, {p} patches" for i, t, p in over[:10])
        raise OverBudgetError(f"{len(over)} sample(s) exceed the budget of {token_budget} tokens / {patch_budget} "
                              f"patches per micro-batch ({listed}{', ...' if len(over) > 10 else ''}); raise the "
                              "budget, or drop or shorten them (`vl3fast data validate` lists them)")
    rng = random.Random(f"vl3fast-pack:{seed}:{epoch}")  # str seeds hash deterministically (sha512)
    order = list(range(len(pairs)))
    rng.shuffle(order)

    bins: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: (-pairs[i][0], -pairs[i][1], i))
        open_bins: list[list] = []  # [tokens, patches, members]
        for i in chunk:
            t, p = pairs[i]
            for b in open_bins:
                if b[0] + t <= token_budget and b[1] + p <= patch_budget:
                    b[0] += t
                    b[1] += p
                    b[2].append(i)
                    break
            else:
                open_bins.append([t, p, [i]])
        bins.extend(b[2] for b in open_bins)

    def load(b):
        return sum(pairs[i][0] for i in b)

    while len(bins) % world_size:
        splittable = [k for k, b in enumerate(bins) if len(b) > 1]
        if not splittable:
            break
        k = max(splittable, key=lambda k: (load(bins[k]), -k))
        b = sorted(bins.pop(k), key=lambda i: (-pairs[i][0], i))
        left, right = [], []
        for i in b:  # greedy halves by tokens
            (left if sum(pairs[j][0] for j in left) <= sum(pairs[j][0] for j in right) else right).append(i)
        bins.extend([left, right])
    while len(bins) % world_size:
        bins.append([])

    bins.sort(key=lambda b: (-load(b), b[0] if b else -1))
    steps = [tuple(tuple(b) for b in bins[k:k + world_size]) for k in range(0, len(bins), world_size)]
    rng.shuffle(steps)
    return PackPlan(tuple(steps), world_size, seed, epoch)
