"""Command-line entries of training: `vl3fast train`, `vl3fast ckpt export`, and `python -m vl3fast.training`
(what the launchers run: ``deepspeed --num_gpus N --module vl3fast.training --config ...`` or
``torchrun --nproc_per_node N -m vl3fast.training --config ...``)."""
from __future__ import annotations

import argparse
import sys


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="a training/configs/*.yaml file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set train.max_steps=10 --set run.out=runs/try (repeatable)")
    p.add_argument("--resume", default=None, metavar="auto|CKPT",
                   help="continue: 'auto' = the newest complete checkpoint of run.out (a fresh start when there is "
                        "none), or a checkpoint folder")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed


def run_train(args) -> int:
    from .config import load_config
    from .trainer import train

    cfg = load_config(args.config, args.overrides)
    train(cfg, resume=args.resume)
    return 0


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="RUN_OR_CKPT", help="a run folder (its newest checkpoint) or a checkpoint folder")
    p.add_argument("out", metavar="OUT", help="the new checkpoint folder")
    p.add_argument("--format", default="native", choices=("native", "official"),
                   help="native: transformers' video_llama_3 layout (default); official: DAMO-NLP-SG's")
    p.add_argument("--merge-lora", action="store_true", help="fold LoRA adapters into the weights")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                   help="weights dtype (default: the training dtype)")


def run_export(args) -> int:
    import torch

    from .export import export

    used = export(args.src, args.out, fmt=args.format, merge_lora_adapters=args.merge_lora,
                  dtype=getattr(torch, args.dtype) if args.dtype else None)
    print(f"exported {used} -> {args.out} ({args.format} format)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m vl3fast.training --config ...` (the same as `vl3fast train`)."""
    parser = argparse.ArgumentParser(prog="python -m vl3fast.training", description=__doc__)
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_train(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"vl3fast train: error: {exc}", file=sys.stderr)
        return 2
