"""Search-space YAML -> a validated SearchSpace: learning knobs (Optuna), execution plans, fixed keys, budget,
baselines.

Two kinds of knobs. Learning knobs change the trained model and are what Optuna samples (`params`, Optuna's own
argument names); `effective_batch_size` is one of them (micro-batch x accumulation: what one optimizer step sees).
Execution knobs (EXECUTION_KEYS: micro-batch, precision, compile, ...) change only how a config runs: `plans` lists
candidate values, and each learning config's plan is chosen by measuring a few optimizer steps of each candidate
(`plan_search.mode: measure`), or Optuna samples them too (`mode: optuna`, the one-level search):

    # python -m asl_ray.search --space search_spaces/cpu-smoke.yaml
    gpu: rtx4070
    sampler: tpe            # tpe | nsga2 | grid (every combination of grid values, once)
    scheduler: asha         # asha | fifo
    budget: {trials: 6, epochs: 6, grace_period: 2, reduction_factor: 2}
    fixed: {depth: 1, num_workers: 1}
    params:
      effective_batch_size: {type: categorical, choices: [24, 48]}
      dim: {type: categorical, choices: [32, 64]}
    plans:
      batch_size: [8, 12, 24, 48]     # gradient_accumulation_steps = effective_batch_size / batch_size
    plan_search: {mode: measure, warmup_steps: 2, steps: 3, max_plans: 8, min_batch_size: 8}
    confirm: {seeds: 2, folds: 1, finalists: 3}
    baselines: [default, configs/fast.yaml, {effective_batch_size: 48, dim: 64, batch_size: 12}]
    concurrency: auto       # optional: pack trials onto each GPU by predicted memory (the search's --pack)

Everything is checked before Ray starts; every problem is reported in one line naming file and key
(section checks: asl_ray/search/space_yaml.py). This module does not import Ray.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import yaml

from asl_ray.config import ConfigError, TrainConfig, UserInputError, load_config_yaml
from asl_ray.search import space_checks as checks
from asl_ray.search import space_yaml as sections
from asl_ray.search.space_yaml import (  # noqa: F401  (re-exported: the space's public names live here)
    ACCUMULATION,
    BUDGET_OWNED_KEYS,
    EFFECTIVE_BATCH,
    EXECUTION_KEYS,
    PARAM_TYPES,
    PLAN_SEARCH_MODES,
    Budget,
    ConfirmSettings,
    Param,
    PlanSearchSettings,
)

SAMPLERS = ("tpe", "nsga2", "grid")
SCHEDULERS = ("asha", "fifo")
TOP_KEYS = ("gpu", "headroom_mb", "sampler", "scheduler", "seed", "budget", "fixed", "params", "plans",
            "plan_search", "confirm", "baselines", "concurrency")
REPO_ROOT = Path(__file__).resolve().parents[2]


class SpaceError(UserInputError):
    """A bad search-space file; the message names the file and every bad key."""


@dataclass(frozen=True)
class SearchSpace:
    path: Path
    """The space file."""
    gpu: str
    """Card name, size in GiB, or 'auto' (asl_ray.cards)."""
    headroom_mb: float
    """MiB of the card left unused by the VRAM-fit check."""
    sampler: str
    """Optuna sampler: tpe, nsga2 or grid."""
    scheduler: str
    """Tune scheduler: asha or fifo."""
    seed: int
    """The sampler's seed."""
    budget: Budget
    """Trials, epochs per trial and ASHA's rungs."""
    fixed: Mapping[str, Any]
    """TrainConfig keys every trial shares (may hold effective_batch_size)."""
    params: tuple[Param, ...]
    """Learning knobs, in the file's order."""
    plans: Mapping[str, tuple] = field(default_factory=dict)
    """Execution key -> candidate values, in the file's order; batch_size is always present (the base config's
    micro-batch when the file lists none)."""
    plan_search: PlanSearchSettings = field(default_factory=PlanSearchSettings)
    """How a learning config's plan is chosen."""
    confirm: ConfirmSettings = field(default_factory=ConfirmSettings)
    """Fresh-seed re-training of the finalists."""
    baselines: tuple[Mapping[str, Any], ...] = ()
    """Optuna values of each baseline for the current plan_search mode: learning values (mode measure), plus a
    value for every plans key (mode optuna)."""
    baseline_names: tuple[str, ...] = ()
    """'default', a preset's stem, or 'baseline<i>' for a mapping."""
    baseline_plans: tuple[Mapping[str, Any], ...] = ()
    """The plan keys each baseline pins (passed as `pinned` to plan_candidates); {} pins nothing."""
    pack: bool = False
    """`concurrency: auto`: trials are packed onto each GPU by predicted memory (the search's --pack)."""

    # ---- configs ---------------------------------------------------------------------------------
    def base_config(self) -> TrainConfig:
        """Defaults + `fixed` (less effective_batch_size, which `config_for` applies) + the budget's per-trial
        settings: what every trial starts from."""
        extra = {"epochs": self.budget.epochs, "max_steps_per_epoch": self.budget.max_steps_per_epoch}
        fixed = {k: v for k, v in self.fixed.items() if k != EFFECTIVE_BATCH}
        return TrainConfig().with_overrides({**extra, **fixed}, source=f"{self.path}: fixed")

    def effective_batch_for(self, values: Mapping[str, Any]) -> int:
        """The effective batch of a learning config: its own, else fixed's, else the base config's."""
        if EFFECTIVE_BATCH in values:
            return values[EFFECTIVE_BATCH]
        if EFFECTIVE_BATCH in self.fixed:
            return self.fixed[EFFECTIVE_BATCH]
        return self.base_config().effective_batch_size()

    def config_for(self, values: Mapping[str, Any]) -> TrainConfig:
        """The TrainConfig of learning values (+ optionally plan keys): batch_size from values, else the base's;
        gradient_accumulation_steps = effective batch / batch_size. ConfigError when it does not divide."""
        values = dict(values)
        base = self.base_config()
        effective = self.effective_batch_for(values)
        values.pop(EFFECTIVE_BATCH, None)
        batch = values.get("batch_size", base.batch_size)
        if not (sections.value_matches(batch, int) and batch > 0):
            return base.with_overrides(values, source=f"{self.path}: params")  # names the bad batch_size
        if effective % batch:
            raise ConfigError(f"{self.path}: {EFFECTIVE_BATCH} {effective} is not a multiple of batch_size {batch}")
        accumulation = effective // batch
        if values.get(ACCUMULATION, accumulation) != accumulation:
            raise ConfigError(f"{self.path}: {ACCUMULATION} {values[ACCUMULATION]} is not {EFFECTIVE_BATCH} "
                              f"{effective} / batch_size {batch}")
        return base.with_overrides({**values, "batch_size": batch, ACCUMULATION: accumulation},
                                   source=f"{self.path}: params")

    def plan_candidates(self, values: Mapping[str, Any], pinned: Optional[Mapping[str, Any]] = None
                        ) -> list[TrainConfig]:
        """Every combination of plans values whose batch_size divides the effective batch, as full TrainConfigs:
        batch_size descending, then the file's order. A pinned key (or a plans key present in `values`, as in
        mode optuna) takes only its value, which may lie outside the plans values. [] when no micro-batch divides."""
        pinned = dict(pinned or {})
        for k in self.plans:
            if k in values:
                pinned.setdefault(k, values[k])
        stray = sorted(set(pinned) - set(self.plans))
        if stray:
            raise ValueError(f"plan_candidates: pinned key(s) {', '.join(stray)} are not plans keys "
                             f"({', '.join(self.plans)})")
        learning = {k: v for k, v in values.items() if k not in self.plans and k != ACCUMULATION}
        effective = self.effective_batch_for(learning)
        names = list(self.plans)
        options = [(pinned[k],) if k in pinned else self.plans[k] for k in names]
        combos = [dict(zip(names, combo)) for combo in itertools.product(*options)]
        combos = [c for c in combos if effective % c["batch_size"] == 0]
        combos.sort(key=lambda c: -c["batch_size"])  # stable: the file's order within one micro-batch
        return [self.config_for({**learning, **c}) for c in combos]

    def plan_of(self, cfg: TrainConfig) -> dict[str, Any]:
        """A config's values of `plan_names()`: the plan columns of a result row."""
        return {k: getattr(cfg, k) for k in self.plan_names()}

    # ---- names and Optuna ----------------------------------------------------------------------
    def param_names(self) -> list[str]:
        """The learning keys, in the file's order: the parameter columns of every result."""
        return [p.name for p in self.params]

    def plan_names(self) -> list[str]:
        """The plans keys, with gradient_accumulation_steps right after batch_size."""
        out = []
        for k in self.plans:
            out += [k, ACCUMULATION] if k == "batch_size" else [k]
        return out

    def optuna_params(self) -> tuple[Param, ...]:
        """What Optuna samples: the learning knobs (mode measure), plus one categorical per plans key (mode optuna)."""
        if self.plan_search.mode == "measure":
            return self.params
        return self.params + tuple(Param(k, "categorical", choices=tuple(v)) for k, v in self.plans.items())

    def with_plan_search_mode(self, mode: str) -> SearchSpace:
        """The same space under another plan_search mode (its baselines' Optuna values recomputed)."""
        problems: list[str] = []
        sections.choice(mode, "plan_search.mode", PLAN_SEARCH_MODES, problems)
        if problems:
            raise SpaceError(f"{self.path}: " + "; ".join(problems))
        space = dataclasses.replace(self, plan_search=dataclasses.replace(self.plan_search, mode=mode))
        names = self.param_names()
        learning = [{k: b[k] for k in names} for b in self.baselines]
        baselines = _optuna_baselines(space, learning, problems)
        if problems:
            raise SpaceError(f"{self.path}: " + "; ".join(problems))
        return dataclasses.replace(space, baselines=baselines)

    def grid(self) -> Iterator[dict[str, Any]]:
        """Every combination of the Optuna parameters' grid values (`sampler: grid`, the fit table)."""
        params = self.optuna_params()
        names = [p.name for p in params]
        for combo in itertools.product(*(p.grid_values() for p in params)):
            yield dict(zip(names, combo))

    def grid_size(self) -> int:
        size = 1
        for p in self.optuna_params():
            size *= len(p.grid_values())
        return size

    def trials_to_run(self, requested: int) -> int:
        """A grid runs each point once: more trials than points would only repeat them."""
        return min(requested, self.grid_size()) if self.sampler == "grid" else requested


def space_param(space: SearchSpace, name: str) -> Param:
    return next(p for p in space.optuna_params() if p.name == name)


def load_space(path: str | Path) -> SearchSpace:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpaceError(f"{path}: search-space file not found") from None
    except (OSError, yaml.YAMLError) as e:
        raise SpaceError(f"{path}: cannot read: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise SpaceError(f"{path}: expected a mapping with keys {', '.join(TOP_KEYS)}")
    problems: list[str] = []
    unknown = sorted(set(raw) - set(TOP_KEYS), key=str)
    if unknown:
        problems.append(f"unknown key(s) {', '.join(map(str, unknown))} (known: {', '.join(TOP_KEYS)})")

    gpu = raw.get("gpu", "rtx4070")  # noqa: the file's own optional keys, defaults stated here once
    sections.check_card(gpu, problems)
    headroom = sections.number(raw.get("headroom_mb", 512), "headroom_mb", problems, minimum=0)
    sampler = sections.choice(raw.get("sampler", "tpe"), "sampler", SAMPLERS, problems)
    scheduler = sections.choice(raw.get("scheduler", "asha"), "scheduler", SCHEDULERS, problems)
    seed = sections.integer(raw.get("seed", 0), "seed", problems, minimum=0)
    budget = sections.budget(raw.get("budget", {}), problems)
    fixed = sections.fixed(raw.get("fixed", {}), problems)
    params = sections.params(raw.get("params"), fixed, problems)
    plans = sections.plans(raw.get("plans"), fixed, problems)
    plan_search = sections.plan_search(raw.get("plan_search", {}), problems)
    confirm = sections.confirm(raw.get("confirm", {}), problems)
    pack = sections.concurrency(raw.get("concurrency"), problems)
    if problems:
        raise SpaceError(f"{path}: " + "; ".join(problems))

    space = SearchSpace(path, gpu, headroom, sampler, scheduler, seed, budget, fixed, params, plans,
                        plan_search, confirm, pack=pack)
    try:
        base = space.base_config()
    except ConfigError as e:
        raise SpaceError(f"{path}: " + str(e).replace(f"{path}: ", "")) from None
    sections.check_plan_values(plans, base, problems)
    if "batch_size" not in plans:
        plans = {"batch_size": (base.batch_size,), **plans}
    space = dataclasses.replace(space, plans=plans)
    if not problems:
        checks.param_values(space, problems)
    if not problems:
        checks.micro_batch_floor(space, problems)
    if not problems:
        checks.divisors(space, "batch_size" in (raw.get("plans") or {}), problems)
    if not problems:
        learning, names, pinned = _baselines(raw.get("baselines", []), space, problems)
        space = dataclasses.replace(space, baseline_names=names, baseline_plans=pinned)
        space = dataclasses.replace(space, baselines=_optuna_baselines(space, learning, problems))
    if problems:
        raise SpaceError(f"{path}: " + "; ".join(problems))
    return space


# ---- baselines: each appends "key: problem" ----------------------------------------------------------

def _baselines(raw: Any, space: SearchSpace, problems: list[str]
               ) -> tuple[list[dict], tuple[str, ...], tuple[dict, ...]]:
    """Each baseline -> (its learning values, its name, the plan keys it pins)."""
    if not isinstance(raw, list):
        problems.append(f"baselines: expected a list of 'default', preset paths or mappings, got {raw!r}")
        return [], (), ()
    base = space.base_config()
    names, learning, pinned = [], [], []
    searched = set(space.param_names()) | set(space.plans)
    for i, item in enumerate(raw):
        key = f"baselines[{i}]"
        try:
            if item == "default":
                cfg, name, explicit, effective = base, "default", {"batch_size"}, base.effective_batch_size()
            elif isinstance(item, str):
                preset = Path(item) if Path(item).is_absolute() else REPO_ROOT / item
                cfg, name = load_config_yaml(preset, base=base), Path(item).stem
                explicit = {"batch_size"} | set(yaml.safe_load(preset.read_text()) or {})
                effective = cfg.effective_batch_size()
            elif isinstance(item, dict):
                bad = [f"{key}.{k}: {sections.ACCUMULATION_HINT}; give {EFFECTIVE_BATCH}" if k == ACCUMULATION else
                       f"{key}.{k}: neither a params nor a plans key (a baseline sets searched keys only)"
                       for k in item if k not in searched]
                if bad:
                    problems.extend(bad)
                    continue
                cfg = base.with_overrides({k: v for k, v in item.items() if k != EFFECTIVE_BATCH}, source=key)
                name, explicit = f"baseline{i}", set(item)
                effective = item.get(EFFECTIVE_BATCH, space.effective_batch_for({}))
            else:
                problems.append(f"{key}: expected 'default', a preset path or a mapping, got {item!r}")
                continue
        except ConfigError as e:
            problems.append(f"{key}: {e}")
            continue
        values = {p.name: effective if p.name == EFFECTIVE_BATCH else getattr(cfg, p.name) for p in space.params}
        outside = [f"{k}={v!r}" for k, v in values.items() if not space_param(space, k).contains(v)]
        if outside:
            problems.append(f"{key} ({name}): {', '.join(outside)} outside params")
            continue
        plan = {k: getattr(cfg, k) for k in space.plans if k in explicit}
        if plan.get("batch_size", space.plan_search.min_batch_size) < space.plan_search.min_batch_size:
            problems.append(f"{key} ({name}): batch_size {plan['batch_size']} below plan_search.min_batch_size "
                            f"{space.plan_search.min_batch_size}")
            continue
        if not _runnable(space, values, plan, f"{key} ({name})", problems):
            continue
        names.append(name)
        learning.append(values)
        pinned.append(plan)
    return learning, tuple(names), tuple(pinned)


def _runnable(space: SearchSpace, values: dict, plan: dict, key: str, problems: list[str]) -> bool:
    if "batch_size" in plan:
        try:
            space.config_for({**values, **plan})
        except ConfigError as e:
            problems.append(f"{key}: {str(e).replace(f'{space.path}: ', '')}")
            return False
        return True
    if not space.plan_candidates(values, plan):
        problems.append(f"{key}: {EFFECTIVE_BATCH} {space.effective_batch_for(values)} is divided by no "
                        f"plans.batch_size {list(space.plans['batch_size'])}")
        return False
    return True


def _optuna_baselines(space: SearchSpace, learning: list[dict], problems: list[str]) -> tuple[dict, ...]:
    """Mode measure: the learning values. Mode optuna: plus a value for every plans key: the pinned one (which
    must be among the plans values), else the base config's if listed, else the first listed (for batch_size:
    the first that divides the effective batch)."""
    if space.plan_search.mode == "measure":
        return tuple(dict(v) for v in learning)
    base = space.base_config()
    out = []
    for i, (values, plan) in enumerate(zip(learning, space.baseline_plans)):
        chosen = dict(values)
        for k, options in space.plans.items():
            if k in plan:
                if plan[k] not in options:
                    problems.append(f"baselines[{i}] ({space.baseline_names[i]}): {k}={plan[k]!r} not among "
                                    f"plans.{k} {list(options)} (plan_search mode optuna samples only those)")
                chosen[k] = plan[k]
                continue
            if k == "batch_size":
                effective = space.effective_batch_for(values)
                options = [b for b in options if effective % b == 0] or options
            chosen[k] = getattr(base, k) if getattr(base, k) in options else options[0]
        out.append(chosen)
    return tuple(out)
