"""python -m asl_ray.search.fit_table --space FILE [--gpu CARD] [--headroom-mb MB] [--num-classes N]

What of a search space fits a card, by the VRAM estimate: for every learning config of the space's grid (and
every combination of its other plans keys, e.g. precision), the largest micro-batch that fits and which of
its plans (micro-batch x accumulation) fit. No GPU, no CUDA build of torch and no Ray needed.

It lives here, not in `python -m asl_ray.vram`, because it reads a search space: search builds on vram,
never the other way round.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from asl_ray.cli import CardArgs, OneLineParser, add_dataclass_flags, check_paths, parse_cli, user_errors
from asl_ray.config import ConfigError, TrainConfig, section
from asl_ray.search.space import SearchSpace, load_space
from asl_ray.cards import Card
from asl_ray.vram.fit import fits, largest_batch_that_fits

MICRO_BATCH_KEYS = ("batch_size", "gradient_accumulation_steps")
"""Plan keys a table row spreads over its columns; every other plans key (precision, compile, ...) splits rows."""


@dataclass(frozen=True, kw_only=True)
class FitTableArgs:
    space: Path = field(metadata=section("search space"))
    """a search-space YAML (search_spaces/*.yaml)"""
    num_classes: int = 250
    """classifier size (250 for the real data)"""
    card: CardArgs = field(default=CardArgs(gpu=None), metadata=section(
        "target card", default_docs={"gpu": "the space's gpu", "headroom_mb": "the space's headroom_mb"}))
    """The card the configs must fit."""

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ConfigError(f"--num-classes: must be >= 1, got {self.num_classes}")


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="python -m asl_ray.search.fit_table",
                      description="What of a search space fits a card, by the VRAM estimate.")
    add_dataclass_flags(p, FitTableArgs, required=True)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, _ = parse_cli(build_parser(), FitTableArgs, argv)
    with user_errors():
        check_paths(files={"--space": args.space})
        space = load_space(args.space)
        card = args.card.resolve(str(space.gpu), space.headroom_mb)
        print(card.describe())
        print(fit_table(space, card, args.num_classes))
    return 0


def fit_table(space: SearchSpace, card: Card, num_classes: int) -> str:
    """One row per learning config x other-plan-keys combination: the largest micro-batch in the plans'
    range that fits, and the plans of that row that fit."""
    learning = list(learning_grid(space))
    rows = [row for values in learning for row in fit_rows(space, card, num_classes, values)]
    names = space.param_names()
    others = other_plan_keys(space)
    batches = micro_batches(space)
    columns = [*names, *others, "largest batch", "plans that fit"]
    cells = [[_cell(r["values"].get(n)) for n in names] + [_cell(r["others"].get(k)) for k in others]
             + [str(r["largest"]) if r["largest"] else "none", r["fitting_text"]] for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) if i < len(columns) - 1 else c for i, (c, w) in enumerate(zip(line, widths)))
             for line in [columns, *cells]]
    fitting = sum(len(r["fitting"]) for r in rows)
    total = sum(r["candidates"] for r in rows)
    lines.append(f"{fitting} of {total} plans fit over {len(learning)} learning configs; "
                 f"accumulation does not change memory; largest micro-batch searched in "
                 f"[{min(batches)}, {max(batches)}]")
    return "\n".join(lines)


def fit_rows(space: SearchSpace, card: Card, num_classes: int, values: dict[str, Any]) -> list[dict]:
    """The rows of one learning config: its plan candidates grouped by the plans keys other than the micro-batch."""
    candidates = space.plan_candidates(values)
    if not candidates:
        return [{"values": values, "others": {}, "largest": 0, "fitting": [], "candidates": 0,
                 "fitting_text": "no plan: no plans.batch_size divides effective_batch_size"}]
    groups: dict[tuple, list[TrainConfig]] = {}
    for cfg in candidates:
        groups.setdefault(tuple(getattr(cfg, k) for k in other_plan_keys(space)), []).append(cfg)
    batches = micro_batches(space)
    rows = []
    for key, group in groups.items():
        # The estimate is not strictly monotone in the batch (the allocator's success is not), so each plan
        # is checked on its own rather than read off the largest batch.
        fitting = [cfg for cfg in group if fits(cfg, card, num_classes)]
        largest = largest_batch_that_fits(group[0], card, low=min(batches), high=max(batches),
                                          num_classes=num_classes)
        rows.append({"values": values, "others": dict(zip(other_plan_keys(space), key)), "largest": largest,
                     "fitting": fitting, "candidates": len(group),
                     "fitting_text": ", ".join(f"{c.batch_size}x{c.gradient_accumulation_steps}" for c in fitting)
                     or "-"})
    return rows


def learning_grid(space: SearchSpace):
    """The learning configs: the grid of the learning params alone, whatever the file's plan_search mode."""
    return space.with_plan_search_mode("measure").grid()


def other_plan_keys(space: SearchSpace) -> list[str]:
    return [k for k in space.plan_names() if k not in MICRO_BATCH_KEYS]


def micro_batches(space: SearchSpace) -> tuple[int, ...]:
    return tuple(space.plans.get("batch_size") or (space.base_config().batch_size,))


def _cell(v: Any) -> str:
    return "" if v is None else str(v)


if __name__ == "__main__":
    sys.exit(main())
