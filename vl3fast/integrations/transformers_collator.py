"""vl3fast.training's packing collator for transformers' VideoLLaMA3 under `transformers.Trainer`.

    trainer = Trainer(model=model, data_collator=VideoLlama3PackedCollator(), train_dataset=encoded, ...)

`vl3fast.training.collator.collate` packs encoded samples (`vl3fast.training.encode.encode_sample`: labels,
DiffFP mask computed in the data worker, only kept video placeholders) into one row; `transformers_inputs`
renames that `PackedBatch` into the keyword arguments of `VideoLlama3ForConditionalGeneration.forward`:
images and videos apart (transformers encodes them in two tower calls; the placeholder ids keep each
kind in order), the keep mask of the videos as `video_compression_mask`, `position_ids` restarting per
sample and no attention mask.  With `vl3fast.apply_vl3fast(model)` (packing=True) that row trains exactly
as the padded batch of the same samples would (tests/integrations/test_trainer_swapin.py).

A batch without media carries no pixels here: transformers' model then skips its vision tower, which is
fine on one process and under ZeRO-1/2, but a ZeRO-3 rank that skips it while others do not can hang
(vl3fast's own training forward avoids that with a zero-contribution dummy item; `vl3fast train`).
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["transformers_inputs", "VideoLlama3PackedCollator"]


def transformers_inputs(batch) -> dict:
    """`VideoLlama3ForConditionalGeneration` keyword arguments of a vl3fast.training `PackedBatch`."""
    inputs = {"input_ids": batch.input_ids, "labels": batch.labels, "position_ids": batch.position_ids}
    if batch.dummy:
        return inputs
    meta = batch.meta
    patches = [t * h * w for t, h, w in meta.grid_thw]
    tokens = [t * (h // m) * (w // m) for (t, h, w), m in zip(meta.grid_thw, meta.merge_sizes)]
    pixels = batch.pixel_values.split(patches)
    keep = batch.keep_mask.split(tokens)
    is_video = batch.is_video.tolist()
    for video, prefix, pixel_key in ((False, "image", "pixel_values"), (True, "video", "pixel_values_videos")):
        items = [i for i, v in enumerate(is_video) if v == video]
        if not items:
            continue
        inputs[pixel_key] = torch.cat([pixels[i] for i in items])
        inputs[f"{prefix}_grid_thw"] = batch.grid_thw[items]
        inputs[f"{prefix}_merge_sizes"] = batch.merge_sizes[items]
        if video:
            inputs["video_compression_mask"] = torch.cat([keep[i] for i in items])
    return inputs


class VideoLlama3PackedCollator:
    """`Trainer(data_collator=...)`: vl3fast.training.collator.collate, then transformers_inputs.

    The dataset yields `vl3fast.training.encode.EncodedSample`s (e.g. `encode_sample(sample, processor,
    data_folder)` per item).  `pad_token_id` (None: 0) fills the one-token row of an empty batch.
    """

    def __init__(self, *, pad_token_id: int | None = 0):
        self.pad_token_id = 0 if pad_token_id is None else pad_token_id

    def __call__(self, samples: Sequence) -> dict:
        from ..training.collator import collate

        return transformers_inputs(collate(samples, pad_token_id=self.pad_token_id))
