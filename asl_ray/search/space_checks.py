"""Checks over a whole search space, once its sections are parsed (asl_ray/search/space_yaml.py checks each section
on its own): every learning value makes a valid config, no plan goes below the micro-batch floor, every effective
batch has a micro-batch that divides it. Each appends "key: problem" to a shared list, so `load_space` reports every
problem of a file in one line. `space` is an asl_ray.search.space.SearchSpace (not imported: space.py imports this).
This module does not import Ray."""
from __future__ import annotations

from asl_ray.config import ConfigError
from asl_ray.search.space_yaml import ACCUMULATION, EFFECTIVE_BATCH


def param_values(space, problems: list[str]) -> None:
    """Each learning value on its own (every choice; a range's ends) must make a valid TrainConfig over the base with
    some plan: a value only a trial would find bad (dim 30 with 4 heads) fails here, naming its key."""
    for p in space.params:
        values = p.choices if p.type == "categorical" else (p.low, p.high)
        for v in values:
            if p.name == EFFECTIVE_BATCH:
                continue  # checked against the micro-batches by _check_divisors
            try:
                space.plan_candidates({p.name: v})
            except ConfigError as e:
                reason = str(e).replace(f"{space.path}: ", "").replace("params: invalid TrainConfig: ", "")
                problems.append(f"params.{p.name}: {v!r}: {reason}")


def micro_batch_floor(space, problems: list[str]) -> None:
    """No plan may use a micro-batch below plan_search.min_batch_size (BatchNorm: it changes what is learned)."""
    floor = space.plan_search.min_batch_size
    below = [b for b in space.plans["batch_size"] if b < floor]
    if below:
        problems.append(f"plans.batch_size: {below} below plan_search.min_batch_size {floor} (BatchNorm sees the "
                        f"micro-batch: below it, what is learned changes)")


def divisors(space, listed: bool, problems: list[str]) -> None:
    """Every categorical effective batch (or the fixed / base one) needs a micro-batch that divides it; an
    int-range effective batch may hold values without one (the searcher records those as no_plan)."""
    micro = list(space.plans["batch_size"])
    source = f"plans.batch_size {micro}" if listed else f"batch_size {micro[0]} (fixed or default; no plans.batch_size)"
    param = next((p for p in space.params if p.name == EFFECTIVE_BATCH), None)
    if param is not None:
        if param.type == "categorical":
            for e in param.choices:
                if not any(e % b == 0 for b in micro):
                    problems.append(f"params.{EFFECTIVE_BATCH}: {e} is divided by no {source}")
        return
    effective = space.effective_batch_for({})
    if not any(effective % b == 0 for b in micro):
        where = f"fixed.{EFFECTIVE_BATCH}" if EFFECTIVE_BATCH in space.fixed else \
            f"{EFFECTIVE_BATCH} (defaults' batch_size x {ACCUMULATION}; fix or search it)"
        problems.append(f"{where}: {effective} is divided by no {source}")
