"""Training VideoLLaMA3 with vl3fast.

The recipe side (configs, stage freezing, DeepSpeed engine, checkpoints with exact resume, export, LoRA:
`config.py`, `modules.py`, `engine.py`, `trainer.py`, `checkpoint.py`, `export.py`, `cli.py`, `recipe_data.py`) drives
the data and model side below: annotations, validation, token-budget packing, the packed training forward.

API (stable; training/README.md shows it end to end):

    from vl3fast.training import (load_annotations, PackedLoader, training_forward, global_supervised_count,
                                  normalised_loss)

    samples, problems = load_annotations(["train.jsonl"])    # data.py: official `conversations` or `messages`
                                                              #   -> [Sample]; problems = ["file:line: what"]
    loader = PackedLoader(samples, processor, data_folder,    # dataset.py: measures every sample first (headers
                          token_budget=16384, patch_budget=None, seed=0, rank=r, world_size=W, num_workers=4,
                          lengths=None | "lengths.jsonl", max_length=None, on_error="raise" | "skip")
    loader.report()                                           #   kept / skipped samples and why
    loader.state_dict() / loader.load_state_dict(state)       #   {"epoch", "step", ...}: resume mid-epoch
    len(loader)                                               #   micro-steps per epoch, equal on every rank
    for window in chunks(loader, grad_accum):                 # each item: a PackedBatch (collator.py)
        n = global_supervised_count([b.num_supervised for b in window])       # loss.py: all-reduced, host int
        for batch in window:
            loss_sum, _ = training_forward(engine_or_model, batch.to(device))  # == model(packed=batch)
            engine.backward(normalised_loss(loss_sum, n, world_size=W, grad_accum=grad_accum))
        engine.step()

Pieces:
    data.py       Sample / Message / Media, load_annotations, parse_record, AnnotationError
    encode.py     encode_sample (labels exactly as the official processor; DiffFP mask in the worker),
                  estimate_sample (header-only lengths), SampleLength, EncodedSample, SampleError
    validate.py   validate() behind `vl3fast data validate`; ValidationReport, write_lengths
    packer.py     pack_epoch(lengths, seed=, epoch=, world_size=, token_budget=, patch_budget=) -> PackPlan
                  (a pure function: first-fit-decreasing in seeded windows, rank-balanced)
    collator.py   PackedBatch (.to(device), .num_supervised, .meta host sizes), collate, NoSupervisedTokensError
    dataset.py    PackedDataset (plan entry -> PackedBatch, in DataLoader workers), PackedLoader, DataError
    loss.py       training_forward, global_supervised_count, normalised_loss
Model side (vl3fast.models.videollama3): `VideoLLaMA3ForCausalLM.forward(packed=batch)` -> (loss_sum, n) with
one vision-encoder call, a x0 dummy item on media-less batches, lm_head on supervised rows only;
`gradient_checkpointing_enable()`; `state_dict_adapter.export_tensors(named_tensors, fmt)` splits the fused
qkv for checkpoints written from `named_parameters` (ZeRO-3 consolidated saves bypass state-dict hooks).
"""
from .collator import BatchMeta, NoSupervisedTokensError, PackedBatch, collate
from .data import AnnotationError, Media, Message, Sample, load_annotations, parse_record
from .dataset import DataError, PackedDataset, PackedLoader, read_lengths
from .encode import IGNORE_INDEX, EncodedSample, SampleError, SampleLength, encode_sample, estimate_sample
from .loss import global_supervised_count, normalised_loss, training_forward
from .packer import OverBudgetError, PackPlan, pack_epoch

__all__ = [
    "load_annotations", "parse_record", "Sample", "Message", "Media", "AnnotationError",
    "encode_sample", "estimate_sample", "EncodedSample", "SampleLength", "SampleError", "IGNORE_INDEX",
    "pack_epoch", "PackPlan", "OverBudgetError",
    "PackedBatch", "BatchMeta", "collate", "NoSupervisedTokensError",
    "PackedDataset", "PackedLoader", "DataError", "read_lengths",
    "training_forward", "global_supervised_count", "normalised_loss",
]
