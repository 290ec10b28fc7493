"""Write a synthetic GISLR data root: ``python -m asl_ray.synth --out data/synth``."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

from asl_ray.cli import OneLineParser, add_dataclass_flags, parse_cli
from asl_ray.config import UserInputError
from asl_ray.data.synth import MAX_FRAMES, MIN_FRAMES, default_workers, write_synthetic_root


@dataclass(frozen=True, kw_only=True)
class SynthArgs:
    out: Path
    """folder of the data root to write"""
    signs: int = 20
    """number of signs (classes)"""
    signers: int = 6
    """number of participants"""
    per_sign_signer: int = 10
    """sequences per (sign, signer) pair"""
    seed: int = 0
    """seed of the generator"""
    max_frames: int = MAX_FRAMES
    """longest sequence, in frames"""
    workers: int = field(default_factory=default_workers, metadata={"default_doc": "min(4, CPUs)"})
    """writer processes"""

    def __post_init__(self) -> None:
        minimums = {"signs": 1, "signers": 1, "per_sign_signer": 1, "seed": 0, "max_frames": MIN_FRAMES, "workers": 1}
        bad = [f"--{k.replace('_', '-')}: must be at least {m}, got {getattr(self, k)}"
               for k, m in minimums.items() if getattr(self, k) < m]
        if bad:
            raise UserInputError("; ".join(bad))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m asl_ray.synth",
                           description="Write a synthetic data root in the exact GISLR (asl-signs) format.")
    add_dataclass_flags(parser, SynthArgs, required=True)
    return parser


def main(argv: list[str] | None = None) -> None:
    args, _ = parse_cli(build_parser(), SynthArgs, argv)
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
