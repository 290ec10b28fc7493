"""Search-space YAML -> a validated SearchSpace: Optuna parameters, fixed keys, budget, baselines.

A file looks like this (Optuna's own argument names under `params`):

    # python -m asl_ray.search --space search_spaces/rtx4070.yaml --data ~/asl-signs
    gpu: rtx4070
    sampler: tpe            # tpe | nsga2 | grid (every combination of grid values, once)
    scheduler: asha         # asha | fifo
    budget: {trials: 60, epochs: 12, grace_period: 2, reduction_factor: 3}
    fixed: {num_workers: 4}
    params:
      batch_size: {type: int, low: 4, high: 64, log: true}
      precision: {type: categorical, choices: [fp16, bf16]}
    baselines: [default, configs/fast.yaml]

Everything is checked before Ray starts; every problem is reported in one line naming file and key.
This module does not import Ray.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import yaml

from asl_ray.config import FIELD_NAMES, ConfigError, TrainConfig, load_config_yaml

PARAM_TYPES = ("int", "float", "categorical")
SAMPLERS = ("tpe", "nsga2", "grid")
SCHEDULERS = ("asha", "fifo")
TOP_KEYS = ("gpu", "headroom_mb", "sampler", "scheduler", "seed", "budget", "fixed", "params", "baselines")
REPO_ROOT = Path(__file__).resolve().parents[2]
BUDGET_OWNED_KEYS = ("epochs", "max_steps_per_epoch")
"""TrainConfig keys every trial takes from `budget` (ASHA's max_t, the per-epoch cap): never fixed or searched."""


class SpaceError(ValueError):
    """A bad search-space file; the message names the file and every bad key."""


@dataclass(frozen=True)
class Budget:
    trials: int = 12
    """Trials Optuna proposes (baselines included); configs rejected for VRAM do not count."""
    epochs: int = 4
    """Epochs per trial: ASHA's max_t."""
    grace_period: int = 1
    """Epochs every trial gets before ASHA may stop it."""
    reduction_factor: int = 3
    """ASHA's reduction factor."""
    max_steps_per_epoch: int = 0
    """Cap on micro-batches per epoch for every trial (0: full epochs)."""


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        """Ask an Optuna trial for this parameter (define-by-run)."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        suggest = trial.suggest_int if self.type == "int" else trial.suggest_float
        kwargs: dict[str, Any] = {"log": self.log}
        if self.step is not None:
            kwargs["step"] = self.step
        return suggest(self.name, self.low, self.high, **kwargs)

    def contains(self, value: Any) -> bool:
        if self.type == "categorical":
            return value in self.choices
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high

    def grid_values(self, max_points: int = 6) -> list:
        """A few representative values (all choices; a log/linear ladder for numbers)."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            if self.log:
                vals, v = [], int(self.low)
                while v <= self.high:
                    vals.append(v)
                    v *= 2
                return sorted(set(vals + [int(self.high)]))
            step = int(self.step or max(1, (self.high - self.low) // (max_points - 1)))
            return list(range(int(self.low), int(self.high) + 1, step))
        if self.log:
            return [self.low * (self.high / self.low) ** (i / (max_points - 1)) for i in range(max_points)]
        return [self.low + (self.high - self.low) * i / (max_points - 1) for i in range(max_points)]


@dataclass(frozen=True)
class SearchSpace:
    path: Path
    gpu: str
    headroom_mb: float
    sampler: str
    scheduler: str
    seed: int
    budget: Budget
    fixed: Mapping[str, Any]
    params: tuple[Param, ...]
    baselines: tuple[Mapping[str, Any], ...] = field(default_factory=tuple)
    baseline_names: tuple[str, ...] = field(default_factory=tuple)

    def base_config(self) -> TrainConfig:
        """Defaults + `fixed` + the budget's per-trial settings: what every trial starts from."""
        extra = {"epochs": self.budget.epochs, "max_steps_per_epoch": self.budget.max_steps_per_epoch}
        return TrainConfig().with_overrides({**extra, **self.fixed}, source=f"{self.path}: fixed")

    def param_names(self) -> list[str]:
        """The searched TrainConfig keys, in the file's order: the parameter columns of every result."""
        return [p.name for p in self.params]

    def config_for(self, values: Mapping[str, Any]) -> TrainConfig:
        return self.base_config().with_overrides(values, source=f"{self.path}: params")

    def grid(self) -> Iterator[dict[str, Any]]:
        """Every combination of the parameters' grid values (the VRAM table, and `sampler: grid`)."""
        names = [p.name for p in self.params]
        for combo in itertools.product(*(p.grid_values() for p in self.params)):
            yield dict(zip(names, combo))


    def grid_size(self) -> int:
        size = 1
        for p in self.params:
            size *= len(p.grid_values())
        return size

    def trials_to_run(self, requested: int) -> int:
        """A grid runs each point once: more trials than points would only repeat them."""
        return min(requested, self.grid_size()) if self.sampler == "grid" else requested


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
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        problems.append(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(TOP_KEYS)})")

    gpu = raw.get("gpu", "rtx4070")  # noqa: the file's own optional keys, defaults stated here once
    _check_card(gpu, problems)
    headroom = _number(raw.get("headroom_mb", 512), "headroom_mb", problems, minimum=0)
    sampler = _choice(raw.get("sampler", "tpe"), "sampler", SAMPLERS, problems)
    scheduler = _choice(raw.get("scheduler", "asha"), "scheduler", SCHEDULERS, problems)
    seed = _integer(raw.get("seed", 0), "seed", problems, minimum=0)
    budget = _budget(raw.get("budget", {}), problems)
    fixed = _fixed(raw.get("fixed", {}), problems)
    params = _params(raw.get("params"), fixed, problems)
    space = None
    if not problems:
        space = SearchSpace(path, gpu, headroom, sampler, scheduler, seed, budget, fixed, params)
        try:
            space.base_config()
        except ConfigError as e:
            problems.append(str(e).replace(f"{path}: ", ""))
    if not problems:
        baselines, names = _baselines(raw.get("baselines", []), space, problems)
        space = SearchSpace(path, gpu, headroom, sampler, scheduler, seed, budget, fixed, params, baselines, names)
    if problems:
        raise SpaceError(f"{path}: " + "; ".join(problems))
    return space


# ---- checks: each appends "key: problem" -----------------------------------------------------

def _check_card(gpu: Any, problems: list[str]) -> None:
    from asl_ray.vram.cards import CardError, resolve_card
    if not isinstance(gpu, (str, int, float)) or isinstance(gpu, bool):
        problems.append(f"gpu: expected a card name or a size in GiB, got {gpu!r}")
        return
    if str(gpu).lower() == "auto":
        return  # resolved when the search starts, on the machine that runs it
    try:
        resolve_card(str(gpu))
    except CardError as e:
        problems.append(f"gpu: {e}")


def _number(v: Any, key: str, problems: list[str], minimum: Optional[float] = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        problems.append(f"{key}: expected a number, got {v!r}")
        return 0.0
    if not math.isfinite(v):
        problems.append(f"{key}: must be a finite number, got {v!r}")
        return 0.0
    if minimum is not None and v < minimum:
        problems.append(f"{key}: must be >= {minimum}, got {v!r}")
    return float(v)


def _integer(v: Any, key: str, problems: list[str], minimum: Optional[int] = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        problems.append(f"{key}: expected a whole number, got {v!r}")
        return 0
    if minimum is not None and v < minimum:
        problems.append(f"{key}: must be >= {minimum}, got {v!r}")
    return v


def _choice(v: Any, key: str, allowed: tuple, problems: list[str]) -> str:
    if v not in allowed:
        problems.append(f"{key}: must be one of {', '.join(allowed)}, got {v!r}")
    return v


def _budget(raw: Any, problems: list[str]) -> Budget:
    if not isinstance(raw, dict):
        problems.append(f"budget: expected a mapping, got {raw!r}")
        return Budget()
    known = [f.name for f in fields(Budget)]
    for k in sorted(set(raw) - set(known)):
        problems.append(f"budget.{k}: unknown key (known: {', '.join(known)})")
    values = {}
    for k in known:
        if k in raw:
            minimum = 0 if k == "max_steps_per_epoch" else (2 if k == "reduction_factor" else 1)
            values[k] = _integer(raw[k], f"budget.{k}", problems, minimum=minimum)
    budget = Budget(**values)
    if budget.grace_period > budget.epochs:
        problems.append(f"budget.grace_period: {budget.grace_period} exceeds budget.epochs ({budget.epochs})")
    return budget


def _fixed(raw: Any, problems: list[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        problems.append(f"fixed: expected a mapping of TrainConfig keys, got {raw!r}")
        return {}
    for k in sorted(set(raw) - set(FIELD_NAMES)):
        problems.append(f"fixed.{k}: not a TrainConfig key")
    for k in sorted(set(raw) & set(BUDGET_OWNED_KEYS)):
        problems.append(f"fixed.{k}: set by budget.{k}, not here")
    for k, v in raw.items():
        if _not_finite(v):
            problems.append(f"fixed.{k}: must be a finite number, got {v!r}")
    return {k: v for k, v in raw.items() if k in FIELD_NAMES and k not in BUDGET_OWNED_KEYS}


def _params(raw: Any, fixed: Mapping[str, Any], problems: list[str]) -> tuple[Param, ...]:
    if not isinstance(raw, dict) or not raw:
        problems.append("params: expected a non-empty mapping of TrainConfig keys to {type, ...}")
        return ()
    out = []
    for name, spec in raw.items():
        key = f"params.{name}"
        if name not in FIELD_NAMES:
            problems.append(f"{key}: not a TrainConfig key")
            continue
        if name in BUDGET_OWNED_KEYS:
            problems.append(f"{key}: set by budget.{name}, not searched")
            continue
        if name in fixed:
            problems.append(f"{key}: also in fixed; a key is either searched or fixed")
        param = _param(name, spec, key, problems)
        if param is not None:
            out.append(param)
    return tuple(out)


def _param(name: str, spec: Any, key: str, problems: list[str]) -> Optional[Param]:
    if not isinstance(spec, dict):
        problems.append(f"{key}: expected a mapping like {{type: int, low: 1, high: 8}}, got {spec!r}")
        return None
    kind = spec.get("type")
    if kind not in PARAM_TYPES:
        problems.append(f"{key}.type: must be one of {', '.join(PARAM_TYPES)}, got {kind!r}")
        return None
    allowed = {"type", "choices"} if kind == "categorical" else {"type", "low", "high", "log", "step"}
    for k in sorted(set(spec) - allowed):
        problems.append(f"{key}.{k}: not an argument of a {kind} parameter (allowed: {', '.join(sorted(allowed))})")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            problems.append(f"{key}.choices: expected a non-empty list, got {choices!r}")
            return None
        for c in choices:
            if _not_finite(c):
                problems.append(f"{key}.choices: {c!r} is not a finite number")
        if len(set(map(repr, choices))) != len(choices):
            problems.append(f"{key}.choices: duplicates in {choices!r}")
        expected = _FIELD_KIND[name]
        for c in choices:
            if not _value_matches(c, expected):
                problems.append(f"{key}.choices: {c!r} is not a {expected.__name__}")
        return Param(name, kind, choices=tuple(choices))
    expected_num = _FIELD_KIND[name]
    if kind == "int" and expected_num is not int:
        problems.append(f"{key}.type: {name} is a {expected_num.__name__}, not an int")
    if kind == "float" and expected_num is not float:
        problems.append(f"{key}.type: {name} is a {expected_num.__name__}, use type: int or categorical")
    number = int if kind == "int" else (int, float)
    low, high = spec.get("low"), spec.get("high")
    ok = True
    for arg, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, number):
            problems.append(f"{key}.{arg}: expected a{'n int' if kind == 'int' else ' number'}, got {v!r}")
            ok = False
        elif _not_finite(v):
            problems.append(f"{key}.{arg}: must be a finite number, got {v!r}")
            ok = False
    log = spec.get("log", False)
    if not isinstance(log, bool):
        problems.append(f"{key}.log: expected true or false, got {log!r}")
        ok = False
    step = spec.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, number) or _not_finite(step)
                             or step <= 0):
        problems.append(f"{key}.step: expected a positive number, got {step!r}")
        ok = False
    if not ok:
        return None
    if low > high:
        problems.append(f"{key}: low ({low}) > high ({high})")
        return None
    if log and low <= 0:
        problems.append(f"{key}: log scale needs low > 0, got {low}")
        return None
    if log and step is not None:
        problems.append(f"{key}: Optuna does not take step together with log")
        return None
    return Param(name, kind, low=low, high=high, log=log, step=step)


def _not_finite(v: Any) -> bool:
    """NaN passes every comparison check (`low > high`, `step <= 0`), so each float is tested on its own."""
    return isinstance(v, float) and not math.isfinite(v)


def _value_matches(v: Any, expected: type) -> bool:
    if expected is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if expected is int:
        return isinstance(v, int) and not isinstance(v, bool)
    return isinstance(v, expected)


def _baselines(raw: Any, space: SearchSpace, problems: list[str]) -> tuple[tuple[dict, ...], tuple[str, ...]]:
    """Each baseline -> the values of the searched params (what Optuna is asked to evaluate first)."""
    if not isinstance(raw, list):
        problems.append(f"baselines: expected a list of 'default', preset paths or mappings, got {raw!r}")
        return (), ()
    out, names = [], []
    for i, item in enumerate(raw):
        key = f"baselines[{i}]"
        try:
            if item == "default":
                cfg, name = space.base_config(), "default"
            elif isinstance(item, str):
                preset = Path(item) if Path(item).is_absolute() else REPO_ROOT / item
                cfg, name = load_config_yaml(preset, base=space.base_config()), Path(item).stem
            elif isinstance(item, dict):
                cfg, name = space.base_config().with_overrides(item, source=key), f"baseline{i}"
            else:
                problems.append(f"{key}: expected 'default', a preset path or a mapping, got {item!r}")
                continue
        except ConfigError as e:
            problems.append(f"{key}: {e}")
            continue
        values = {p.name: getattr(cfg, p.name) for p in space.params}
        outside = [f"{k}={v!r}" for k, v in values.items() if not space_param(space, k).contains(v)]
        if outside:
            problems.append(f"{key} ({name}): {', '.join(outside)} outside params")
            continue
        out.append(values)
        names.append(name)
    return tuple(out), tuple(names)


def space_param(space: SearchSpace, name: str) -> Param:
    return next(p for p in space.params if p.name == name)


_FIELD_KIND = {f.name: {"int": int, "float": float, "str": str, "bool": bool}[str(f.type)] for f in fields(TrainConfig)}

