"""TEMPORARY step source over the existing model forward (until the packed loader of vl3fast.training lands)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.models import tiny_vl3


class SyntheticData:
    def __init__(self, rank: int, world: int, steps: int, gas: int = 1, seed: int = 0):
        self.rank, self.world, self.steps, self.gas, self.seed = rank, world, steps, gas, seed
        self.position = 0
        self.steps_per_epoch = steps

    def _batch(self, step: int, micro: int) -> dict:
        kinds = ["image", "pruned_video", "text", "multi_image"]
        k = (step * self.gas * self.world + micro * self.world + self.rank)
        prompt = tiny_vl3.PROMPTS[kinds[k % len(kinds)]]()
        g = torch.Generator().manual_seed(1000 + k)
        ids = prompt["input_ids"]
        labels = torch.where(torch.rand(ids.shape, generator=g) < 0.5, ids, torch.full_like(ids, -100))
        labels[ids >= 120] = -100
        labels[0, -1] = ids[0, -1]
        prompt.pop("attention_mask")
        return {**prompt, "labels": labels, "sample_ids": [f"s{k}"]}

    def next_step(self):
        out = [self._batch(self.position, m) for m in range(self.gas)]
        self.position += 1
        return out

    def batch_stats(self, b):
        merged = int(b["input_ids"].ge(120).sum())
        patches = sum(int(b[k].shape[0]) for k in ("pixel_values", "pixel_values_videos") if k in b)
        return {"supervised": int(b["labels"][:, 1:].ne(-100).sum()), "tokens": int(b["input_ids"].numel()),
                "patches": patches, "merged": merged, "sample_ids": b["sample_ids"]}

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, s):
        self.position = s["position"]


def loss_fn(model, batch):
    b = {k: v for k, v in batch.items() if k not in ("labels", "sample_ids")}
    logits = model(**b).logits
    labels = batch["labels"][:, 1:]
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                           ignore_index=-100, reduction="sum"), int(labels.ne(-100).sum())
