"""python -m asl_ray.vram --gpu CARD [--config YAML] [--set k=v]

One config: its predicted peak, whether it fits the card, and the breakdown. No GPU and no CUDA build of
torch needed. What of a search space fits is `python -m asl_ray.search.fit_table --space FILE --gpu CARD`:
vram never imports search (search builds on vram).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from asl_ray.cli import (CardArgs, OneLineParser, add_dataclass_flags, add_train_config_flags, check_paths, fail,
                         parse_cli, train_config_from, user_errors)
from asl_ray.config import ConfigError, TrainConfig, section
from asl_ray.cards import MiB
from asl_ray.vram.constants import FIT_MARGIN_FRACTION

FIT_TABLE_COMMAND = "python -m asl_ray.search.fit_table"
"""Where a search space's fit table lives: it reads a space file, and vram must not import search."""


@dataclass(frozen=True, kw_only=True)
class VramArgs:
    """The vram CLI's own arguments; the config is TrainConfig's flags."""
    card: CardArgs = field(default=CardArgs(), metadata=section("target card"))
    """The card the config must fit."""
    config: Optional[Path] = field(default=None, metadata=section("config"))
    """YAML of TrainConfig keys applied over the defaults (configs/*.yaml); the TrainConfig flags apply over it"""
    num_classes: int = 250
    """classifier size (250 for the real data)"""
    space: Optional[Path] = None
    """moved: python -m asl_ray.search.fit_table --space FILE --gpu CARD"""

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ConfigError(f"--num-classes: must be >= 1, got {self.num_classes}")


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="python -m asl_ray.vram", description=__doc__.splitlines()[0])
    add_dataclass_flags(p, VramArgs)
    add_train_config_flags(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, given = parse_cli(build_parser(), VramArgs, argv)
    if args.space:
        fail(f"--space: the fit table of a search space moved to `{FIT_TABLE_COMMAND} --space {args.space} "
             f"--gpu {args.card.gpu}`")
    with user_errors():
        check_paths(files={"--config": args.config})
        card = args.card.resolve()
        cfg = train_config_from(args.config, given)
        print(one_config_report(cfg, card, args.num_classes))
    return 0


def one_config_report(cfg: TrainConfig, card, num_classes: int) -> str:
    from asl_ray.vram.estimate import estimate_peak_vram
    est = estimate_peak_vram(cfg, num_classes, card.compute_capability)
    verdict = "FITS" if est.fits(card.usable_bytes) else "DOES NOT FIT"
    margin = (card.usable_bytes - est.fit_bytes()) / MiB
    return "\n".join([
        card.describe(),
        f"config: batch {cfg.batch_size} (x{cfg.gradient_accumulation_steps} accumulation), dim {cfg.dim}, depth "
        f"{cfg.depth}, max_len {cfg.max_len}, {cfg.precision}, {cfg.optimizer}{'+lookahead' if cfg.lookahead else ''}"
        f"{', compiled' if cfg.compile else ''}; breakdown with every sequence at max_len, "
        f"fragmentation and need over an epoch's shapes (pad_to {cfg.pad_to}) and the evaluation pass",
        est.table(),
        f"{verdict}: needs {est.fit_bytes() / MiB:.0f} MiB (least need under free-and-retry + context + "
        f"{100 * FIT_MARGIN_FRACTION:.0f}% margin) of {card.usable_bytes / MiB:.0f} MiB usable "
        f"({'+' if margin >= 0 else ''}{margin:.0f} MiB); unconstrained peak {est.total_mib:.0f} MiB "
        f"[{est.method}, {est.seconds:.2f}s]",
    ])


if __name__ == "__main__":
    sys.exit(main())
