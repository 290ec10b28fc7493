"""python -m asl_ray.train --data DIR [--out DIR] [--config YAML] [--set k=v] [--resume] [--ray] [--emulate-gpu CARD]"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from asl_ray.cli import (CardArgs, OneLineParser, add_config_arguments, check_paths, config_from_args, fail, user_errors)
from asl_ray.config import UserInputError


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m asl_ray.train", description="Train one GISLR configuration.")
    p.add_argument("--data", required=True, help="GISLR data root (train.csv, label map, train_landmark_files/)")
    p.add_argument("--out", default="runs/train", help="output folder: metrics.jsonl, checkpoints/, result.json")
    add_config_arguments(p)
    p.add_argument("--cache-dir", help="where the preprocessed cache lives (default: beside the data)")
    p.add_argument("--strict", action="store_true", help="stop at the first damaged sequence instead of skipping it")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoints/last")
    p.add_argument("--ray", action="store_true", help="run the loop inside a Ray Train TorchTrainer")
    CardArgs.add_to(p, flag="--emulate-gpu", default=None, default_doc="no emulation",
                    gpu_help="cap CUDA memory as if on CARD (rtx4070, a size in GiB, ...): fits or fails as there")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_paths(folders={"--out": args.out, "--cache-dir": args.cache_dir}, files={"--config": args.config})
        cfg = config_from_args(args)
        card = CardArgs.from_args(args).resolve()
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
