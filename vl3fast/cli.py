"""The `vl3fast` command: `info`, `bench`, `tokens`, `chat`, `train`, `ckpt export`, `data validate`.

Exit codes: 0 success; 1 `bench` disagreement or `data validate` problems; 2 bad input (missing or unreadable media, a token budget
exceeded, a bad checkpoint directory), with the reason on stderr.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _info(args) -> int:
    from .info import format_info, info

    print(format_info(info()))
    return 0


def _bench(args) -> int:
    from . import bench

    batch = bench.synthetic_batch(frames=args.frames)
    print(f"vl3fast bench: {batch.num_patches} patches (a {args.frames}-frame 336x336 video at merge size 2 and two "
          f"images at merge size 1), median of {args.repeats} timed runs per stage, {args.layers} vision layer(s)")
    from tqdm import tqdm

    with tqdm(total=bench.NUM_STAGES, desc="bench", unit="stage", file=sys.stderr, leave=False) as bar:
        started = []

        def on_stage(name):  # a stage starts: the previous one is done
            if started:
                bar.update(1)
            started.append(name)
            bar.set_postfix_str(name)

        results, report = bench.run(batch, repeats=args.repeats, layers=args.layers, on_stage=on_stage)
        bar.update(bar.total - bar.n)
    print(report)
    print(bench.format_table(results))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(bench.to_json(results, batch, report, args.layers))
        print(f"wrote {args.out}")
    return 0 if all(r.agree for r in results) else 1


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _is_image_path(path: str) -> bool:
    return path.lower().endswith(IMAGE_SUFFIXES)


def _tokens(args) -> int:
    from .processing import ProcessingConfig, TokenBudgetError, VideoLLaMA3Processor, estimate_tokens

    images = [f for f in args.files if _is_image_path(f)]
    videos = [f for f in args.files if not _is_image_path(f)]  # anything else is probed as a video
    settings = {}
    if args.num_frames is not None:
        settings.update(num_frames=args.num_frames, fps=None)
    elif args.fps is not None:
        settings["fps"] = args.fps
    if args.max_frames is not None:
        settings["max_frames"] = args.max_frames
    config = ProcessingConfig.official() if args.official else None
    if args.model is not None:  # text tokens too: the processor expands and tokenizes the prompt
        processor = VideoLLaMA3Processor.from_pretrained(args.model)
        estimate = processor.estimate_tokens(text=args.prompt, images=images or None, videos=videos or None,
                                             config=config, **settings)
    elif args.prompt is not None:
        raise ValueError("counting the prompt's tokens (--prompt) needs --model (a checkpoint with a tokenizer)")
    else:
        estimate = estimate_tokens(images=images or None, videos=videos or None, config=config, **settings)
    print(estimate.summary())
    total = estimate.total_tokens if estimate.total_tokens is not None else estimate.visual_tokens
    if args.pruned and videos:
        total -= _print_pruned(videos, args.model, config, settings, estimate.total_tokens)
    if args.budget is not None and total > args.budget:
        what = "tokens" if estimate.total_tokens is not None else "visual tokens"
        raise TokenBudgetError(f"{total} {what} exceed the budget of {args.budget}; lower --fps or --max-frames, "
                               "or raise --budget")
    return 0


def _print_pruned(videos, model, config, settings, total) -> int:
    """Decodes the videos, prints the tokens DiffFP pruning keeps of each; returns how many it drops."""
    from . import ops
    from .processing import VideoLLaMA3Processor, preprocess_videos
    from .processing.config import resolve_config

    config = VideoLLaMA3Processor.from_pretrained(model)._settings(settings, config) if model else \
        resolve_config(config, settings)
    dropped = 0
    for path in videos:
        vis = preprocess_videos([path], config)
        mask = ops.frame_keep_mask(vis.pixel_values, vis.grid_thw, vis.merge_sizes)
        kept = int(mask.sum())
        dropped += mask.numel() - kept
        print(f"video {os.path.basename(path)}: {kept} of {mask.numel()} video tokens kept by DiffFP pruning")
    if total is not None:
        print(f"total tokens after pruning: {total - dropped}")
    return dropped


def _chat(args) -> int:
    from .chat import run_chat

    result = run_chat(args.model, args.question, images=args.image or (), video=args.video,
                      max_new_tokens=args.max_new_tokens, fps=args.fps, max_frames=args.max_frames,
                      device=args.device, dtype=args.dtype, system_prompt=args.system_prompt)
    if not result.new_token_ids:
        print("(no tokens generated)", file=sys.stderr)
    return 0


def _data_validate(args) -> int:
    from .training.validate import validate, write_lengths

    if args.write_lengths and not (args.decode and args.model):
        raise ValueError("--write-lengths needs --decode and --model (exact post-pruning lengths count text tokens)")
    report = validate(args.annotations, args.data_folder, model=args.model, decode=args.decode, budget=args.budget,
                      patch_budget=args.patch_budget, max_length=args.max_length)
    print(report.summary())
    if args.write_lengths:
        write_lengths(report, args.write_lengths)
        print(f"wrote {len(report.lengths)} lengths to {args.write_lengths}")
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vl3fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, compiled backends (CPU ISA, CUDA archs), visible GPU").set_defaults(func=_info)
    bench = sub.add_parser("bench", help="the main job: synthetic image+video through reference and vl3fast paths")
    bench.add_argument("--frames", type=int, default=16, help="frames of the synthetic 336x336 video (default 16)")
    bench.add_argument("--repeats", type=int, default=3, help="timed runs per stage; the median is reported")
    bench.add_argument("--layers", type=int, default=1,
                       help="vision encoder layers at full width (the released model has 27; time scales linearly)")
    bench.add_argument("--out", default="bench_out/bench.json", help="JSON results path ('' to skip)")
    bench.set_defaults(func=_bench)

    tokens = sub.add_parser("tokens", help="exact token counts for images/videos, without decoding them")
    tokens.add_argument("files", nargs="+", metavar="FILE",
                        help="images (by suffix: " + " ".join(IMAGE_SUFFIXES) + ") and videos")
    tokens.add_argument("--fps", type=float, default=None, help="frames sampled per second (default 1)")
    tokens.add_argument("--num-frames", type=int, default=None, help="a fixed number of evenly spaced frames")
    tokens.add_argument("--max-frames", type=int, default=None, help="at most this many frames (default 180)")
    tokens.add_argument("--budget", type=int, default=None,
                        help="exit 2 when the total exceeds this many tokens (text included with --model)")
    tokens.add_argument("--model", default=None,
                        help="checkpoint directory: its processor settings, and the text tokens of the prompt")
    tokens.add_argument("--prompt", default=None,
                        help="with --model: the prompt text, one placeholder per file (default: the chat template)")
    tokens.add_argument("--pruned", action="store_true",
                        help="also decode the videos and count the tokens DiffFP pruning keeps (what is served)")
    tokens.add_argument("--official", action="store_true",
                        help="the official resize rule (16..16384 tokens shared per call) instead of transformers'")
    tokens.set_defaults(func=_tokens)

    chat = sub.add_parser("chat", help="answer a question about images or a video with a local checkpoint")
    chat.add_argument("question")
    chat.add_argument("--model", required=True, help="checkpoint directory (weights, tokenizer, processor files)")
    media = chat.add_mutually_exclusive_group(required=True)
    media.add_argument("--image", action="append", help="an image file (repeat for several)")
    media.add_argument("--video", help="a video file")
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--fps", type=float, default=None, help="video frames per second (default: the checkpoint's)")
    chat.add_argument("--max-frames", type=int, default=None, help="at most this many video frames")
    chat.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    chat.add_argument("--dtype", default=None,
                      help="auto (the checkpoint's), float32, bfloat16, float16 (default: bfloat16 on CUDA, float32 on CPU)")
    chat.add_argument("--system-prompt", action="store_true", help="prepend VideoLLaMA3's default system prompt")
    chat.set_defaults(func=_chat)

    from .training import cli as training_cli  # argparse only; training imports happen when a command runs

    train = sub.add_parser("train", help="run a training recipe (training/configs/*.yaml) on DeepSpeed or torch")
    training_cli.add_train_arguments(train)
    train.set_defaults(func=training_cli.run_train)
    ckpt = sub.add_parser("ckpt", help="training checkpoints").add_subparsers(dest="ckpt_command", required=True)
    export = ckpt.add_parser("export", help="a run or checkpoint -> a folder transformers and vl3fast load")
    training_cli.add_export_arguments(export)
    export.set_defaults(func=training_cli.run_export)

    data = sub.add_parser("data", help="training data tools").add_subparsers(dest="data_command", required=True)
    val = data.add_parser("validate", help="check training annotations; lists every problem as file:line: what")
    val.add_argument("annotations", nargs="+", metavar="ANN", help=".jsonl / .json annotation files")
    val.add_argument("--data-folder", default=None, help="folder the media paths are relative to")
    val.add_argument("--model", default=None, help="checkpoint directory: its processor and tokenizer (counts text)")
    val.add_argument("--decode", action="store_true", help="decode every media file fully (default: header probe)")
    val.add_argument("--budget", type=int, default=16384, help="token budget per micro-batch (default 16384)")
    val.add_argument("--patch-budget", type=int, default=None, help="vision patch budget per micro-batch")
    val.add_argument("--max-length", type=int, default=None, help="truncation length (model_max_length)")
    val.add_argument("--write-lengths", default=None, metavar="FILE",
                     help="with --decode --model: write exact post-pruning lengths (JSON lines) for the packer")
    val.set_defaults(func=_data_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"vl3fast {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
