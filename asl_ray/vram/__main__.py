"""python -m asl_ray.vram --gpu CARD (--config YAML [--set k=v] | --space SPACE.yaml)

One config: its predicted peak, whether it fits the card, and the breakdown. A search space: for every
(dim, depth, max_len, precision) in it, the largest micro-batch that fits, and which batch sizes of the
space fit. No GPU and no CUDA build of torch needed.
"""
from __future__ import annotations

import itertools
import sys
from typing import Optional, Sequence

from asl_ray.cli import OneLineParser, add_config_arguments, config_from_args, fail
from asl_ray.config import ConfigError, TrainConfig
from asl_ray.vram.cards import DEFAULT_HEADROOM_MB, MiB, CardError, resolve_card
from asl_ray.vram.constants import FIT_MARGIN_FRACTION


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="python -m asl_ray.vram", description=__doc__.splitlines()[0])
    p.add_argument("--gpu", default="rtx4070",
                   help="rtx4070, a100-80gb, ..., a size in GiB, or auto (what is free on the device this process uses)")
    p.add_argument("--headroom-mb", type=float, default=None, help=f"kept free for others (default {DEFAULT_HEADROOM_MB})")
    add_config_arguments(p)
    p.add_argument("--space", help="a search-space YAML: table of what fits over its grid")
    p.add_argument("--num-classes", type=int, default=250, help="classifier size (250 for the real data)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num_classes < 1:
        fail(f"--num-classes: must be >= 1, got {args.num_classes}")
    try:
        headroom = args.headroom_mb if args.headroom_mb is not None else DEFAULT_HEADROOM_MB
        card = resolve_card(args.gpu, headroom)
        if args.space:
            if args.config or args.overrides:
                fail("--space: give either --space or --config/--set, not both")
            # An entry point may reach up a floor: the space parser itself imports no Ray.
            from asl_ray.search.space import SpaceError, load_space
            try:
                space = load_space(args.space)
            except SpaceError as e:
                fail(str(e))
            print(card.describe())
            print(space_table(space, card, args.num_classes))
            return 0
        cfg = config_from_args(args)
    except (ConfigError, CardError) as e:
        fail(str(e))
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


def space_table(space, card, num_classes: int) -> str:
    from asl_ray.vram.fit import largest_batch_that_fits
    params = {p.name: p for p in space.params}
    base = space.base_config()

    def values(name: str) -> list:
        return params[name].grid_values() if name in params else [getattr(base, name)]

    batch = params.get("batch_size")
    low, high = (int(min(batch.grid_values())), int(max(batch.grid_values()))) if batch else (base.batch_size,) * 2
    batch_choices = batch.grid_values() if batch else [base.batch_size]
    rows = [f"{'dim':>5} {'depth':>5} {'max_len':>7} {'dtype':>5} {'largest batch':>13}  batch sizes of the space that fit"]
    fitting = total = 0
    for dim, depth, max_len, precision in itertools.product(values("dim"), values("depth"), values("max_len"),
                                                            values("precision")):
        cfg = base.with_overrides({"dim": dim, "depth": depth, "max_len": max_len, "precision": precision,
                                   "batch_size": low, "min_lr": 0.0})
        largest = largest_batch_that_fits(cfg, card, low=low, high=high, num_classes=num_classes)
        ok = [b for b in batch_choices if b <= largest]
        fitting += len(ok)
        total += len(batch_choices)
        rows.append(f"{dim:>5} {depth:>5} {max_len:>7} {precision:>5} {largest if largest else 'none':>13}  "
                    f"{', '.join(map(str, ok)) or '-'}")
    rows.append(f"{fitting} of {total} (dim, depth, max_len, dtype, batch) combinations fit; gradient accumulation "
                f"does not change memory; largest batch searched in [{low}, {high}]")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
