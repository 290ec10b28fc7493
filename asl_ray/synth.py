"""Write a synthetic GISLR data root: ``python -m asl_ray.synth --out data/synth``."""

from __future__ import annotations

import argparse
import time

from asl_ray.cli import OneLineParser
from asl_ray.data.synth import MAX_FRAMES, MIN_FRAMES, default_workers, write_synthetic_root


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m asl_ray.synth",
        description="Write a synthetic data root in the exact GISLR (asl-signs) format.",
    )
    parser.add_argument("--out", required=True, help="folder of the data root to write")
    parser.add_argument("--signs", type=_int_at_least(1), default=20, help="number of signs (classes)")
    parser.add_argument("--signers", type=_int_at_least(1), default=6, help="number of participants")
    parser.add_argument("--per-sign-signer", type=_int_at_least(1), default=10,
                        help="sequences per (sign, signer) pair")
    parser.add_argument("--seed", type=_int_at_least(0), default=0)
    parser.add_argument("--max-frames", type=_int_at_least(MIN_FRAMES), default=MAX_FRAMES,
                        help="longest sequence, in frames")
    parser.add_argument("--workers", type=_int_at_least(1), default=default_workers(),
                        help="writer processes (default: min(4, CPUs))")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    out = write_synthetic_root(
        args.out,
        num_signs=args.signs,
        num_signers=args.signers,
        per_sign_signer=args.per_sign_signer,
        seed=args.seed,
        max_frames=args.max_frames,
        workers=args.workers,
    )
    count = args.signs * args.signers * args.per_sign_signer
    print(f"wrote {count} sequences ({args.signs} signs x {args.signers} signers) to {out} "
          f"in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
