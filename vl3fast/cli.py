"""The `vl3fast` command: `vl3fast info`, `vl3fast bench`."""
from __future__ import annotations

import argparse
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
    results, report = bench.run(batch, repeats=args.repeats, layers=args.layers)
    print(report)
    print(bench.format_table(results))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(bench.to_json(results, batch, report, args.layers))
        print(f"wrote {args.out}")
    return 0 if all(r.agree for r in results) else 1


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
