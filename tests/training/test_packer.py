"""The pack plan: deterministic, every sample exactly once per epoch across all ranks, budgets, balance."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vl3fast.training import OverBudgetError, SampleLength, pack_epoch


def lengths(n=500, seed=0):
    import random

    r = random.Random(seed)
    return [SampleLength(r.randint(20, 3000), r.choice([0, 0, r.randint(4, 4000)])) for _ in range(n)]


KW = dict(token_budget=4096, patch_budget=6000, window=128)


@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_every_rank_covers_every_sample_once(world_size):
    lens = lengths()
    plan = pack_epoch(lens, seed=3, epoch=1, world_size=world_size, **KW)
    seen = [i for step in plan.steps for batch in step for i in batch]
    assert sorted(seen) == list(range(len(lens)))
    assert all(len(step) == world_size for step in plan.steps)
    for step in plan.steps:
        for batch in step:
            assert sum(lens[i].tokens for i in batch) <= KW["token_budget"]
            assert sum(lens[i].patches for i in batch) <= KW["patch_budget"]
    per_rank = [plan.for_rank(r) for r in range(world_size)]
    assert sorted(i for r in per_rank for b in r for i in b) == list(range(len(lens)))


def test_ranks_of_a_step_are_balanced():
    lens = lengths(2000)
    plan = pack_epoch(lens, seed=0, epoch=0, world_size=8, **KW)
    spread = []
    for step in plan.steps[:-1]:
        loads = [sum(lens[i].tokens for i in b) for b in step]
        spread.append(max(loads) - min(loads))
    # dealt out by load: the ranks of a step differ by far less than a budget
    assert sorted(spread)[len(spread) // 2] < 0.05 * KW["token_budget"]
    fill = sum(ln.tokens for ln in lens) / (len(plan.steps) * 8 * KW["token_budget"])
    assert fill > 0.85


def test_plan_is_a_pure_function_of_seed_epoch_lengths():
    lens = lengths()
    a = pack_epoch(lens, seed=7, epoch=2, world_size=4, **KW)
    assert a == pack_epoch(lens, seed=7, epoch=2, world_size=4, **KW)
    assert a.steps != pack_epoch(lens, seed=7, epoch=3, world_size=4, **KW).steps
    assert a.steps != pack_epoch(lens, seed=8, epoch=2, world_size=4, **KW).steps
    # another process, another hash seed: the same plan (packer.py loaded alone: it needs no torch)
    path = os.path.join(os.path.dirname(__file__), "..", "..", "vl3fast", "training", "packer.py")
    code = ("import importlib.util, json, random, sys\n"
            f"spec = importlib.util.spec_from_file_location('packer', {path!r})\n"
            "packer = sys.modules['packer'] = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(packer)\n"
            f"lens = {[(ln.tokens, ln.patches) for ln in lens]!r}\n"
            f"print(json.dumps(packer.pack_epoch(lens, seed=7, epoch=2, world_size=4, **{KW!r}).steps))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "123"}).stdout
    assert json.loads(out) == json.loads(json.dumps(a.steps))


def test_over_budget_names_the_sample():
    with pytest.raises(OverBudgetError, match=r"sample 'long': 5000 tokens"):
        pack_epoch([SampleLength(10, 0), SampleLength(5000, 0)], seed=0, epoch=0, token_budget=4096,
                   names=["short", "long"])
    with pytest.raises(OverBudgetError, match=r"sample 0: 10 tokens, 9000 patches"):
        pack_epoch([SampleLength(10, 9000)], seed=0, epoch=0, token_budget=4096, patch_budget=8000)


def test_fewer_samples_than_ranks_is_refused():
    with pytest.raises(ValueError, match="3 samples cannot feed 4 ranks"):
        pack_epoch([10, 10, 10], seed=0, epoch=0, world_size=4, token_budget=100)


def test_a_short_last_step_splits_batches_or_pads():
    # 3 samples that fit one batch, 2 ranks: the batch is split so both ranks get samples
    plan = pack_epoch([10, 10, 10], seed=0, epoch=0, world_size=2, token_budget=100)
    assert len(plan) == 1 and all(plan.steps[0])
    # 3 samples that each fill a batch, 2 ranks: the last step pads one rank with an empty batch
    plan = pack_epoch([90, 90, 90], seed=0, epoch=0, world_size=2, token_budget=100)
    assert sorted(len(b) for step in plan.steps for b in step) == [0, 1, 1, 1]
