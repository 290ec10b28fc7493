"""python -m asl_ray.train --data DIR [--out DIR] [--config YAML] [--set k=v] [--resume] [--ray] [--emulate-gpu CARD]"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from asl_ray.cli import (CardArgs, OneLineParser, add_dataclass_flags, add_train_config_flags, check_paths, fail,
                         parse_cli, train_config_from, user_errors)
from asl_ray.config import UserInputError, section


@dataclass(frozen=True, kw_only=True)
class TrainArgs:
    """The train CLI's own arguments; the run's settings are TrainConfig's flags."""
    data: Path = field(metadata=section("run"))
    """GISLR data root (train.csv, label map, train_landmark_files/)"""
    out: Path = Path("runs/train")
    """output folder: metrics.jsonl, checkpoints/, result.json"""
    config: Optional[Path] = None
    """YAML of TrainConfig keys applied over the defaults (configs/*.yaml); the TrainConfig flags apply over it"""
    cache_dir: Optional[Path] = None
    """where the preprocessed cache lives (default: beside the data)"""
    strict: bool = False
    """stop at the first damaged sequence instead of skipping it"""
    resume: bool = False
    """continue from <out>/checkpoints/last"""
    ray: bool = False
    """run the loop inside a Ray Train TorchTrainer"""
    card: CardArgs = field(default=CardArgs(gpu=None), metadata=section(
        "memory emulation", flags={"gpu": "--emulate-gpu"}, default_docs={"gpu": "no emulation"},
        docs={"gpu": "cap CUDA memory as if on CARD (rtx4070, a size in GiB, ...): fits or fails as there"}))
    """The card whose memory a CUDA run is capped to."""


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m asl_ray.train", description="Train one GISLR configuration.")
    add_dataclass_flags(p, TrainArgs, required=True)
    add_train_config_flags(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, given = parse_cli(build_parser(), TrainArgs, argv)
    try:
        check_paths(folders={"--out": args.out, "--cache-dir": args.cache_dir}, files={"--config": args.config})
        cfg = train_config_from(args.config, given)
        card = args.card.resolve()
        out = Path(args.out)
        if args.resume and not (out / "checkpoints" / "last").exists() and not args.ray:
            fail(f"--resume: no checkpoint under {out / 'checkpoints' / 'last'}")
        if not args.resume and ((out / "metrics.jsonl").exists() or (out / "ray").exists()):
            fail(f"--out {out}: already holds a run; add --resume to continue it, or choose another --out")
        from asl_ray.data.cache import load_or_build_cache
        cache = load_or_build_cache(args.data, args.cache_dir, strict=args.strict)
    except UserInputError as e:  # a bad flag, config, card or data file
        fail(str(e))
    except OSError as e:
        fail(f"{getattr(e, 'filename', '') or args.data}: {e.strerror or e}")
    print(f"data: {len(cache)} sequences, {cache.num_classes} signs, cache {cache.path}")
    usable = card.usable_bytes if card else None
    with user_errors():  # one found later (a checkpoint's config) is still one line
        if args.ray:
            from asl_ray.train.ray_run import run_with_ray
            result = run_with_ray(cfg, cache, out, usable)
        else:
            result = _run_local(cfg, cache, out, args.resume, usable)
    return 0 if result["feasible"] else 3


def _run_local(cfg, cache, out: Path, resume: bool, emulate_usable_bytes):
    from asl_ray.train.checkpoint import LocalReporter, load_checkpoint
    from asl_ray.train.loop import fit
    from asl_ray.train.runtime import Runtime
    runtime = Runtime.create(cfg)
    if emulate_usable_bytes and runtime.device.type == "cuda":
        from asl_ray.train.runtime import emulate_card_memory
        frac = emulate_card_memory(emulate_usable_bytes, runtime.device)
        print(f"emulating a card with {emulate_usable_bytes / 2**30:.2f} GiB usable (allocator capped at {frac:.3f})")
    elif emulate_usable_bytes:
        print("--emulate-gpu: no CUDA device here, nothing to cap")
    reporter = LocalReporter(out)
    resume_state = load_checkpoint(reporter.checkpoint_dir) if resume else None
    print(f"training on {runtime.device} ({runtime.precision}), effective batch {cfg.effective_batch_size()}, "
          f"lr {cfg.learning_rate():.2e}, {cfg.epochs} epochs -> {out}")
    return fit(cfg, cache, reporter, runtime=runtime, resume_state=resume_state)


if __name__ == "__main__":
    sys.exit(main())
