"""The sections of a search-space file, each parsed and checked on its own: scalars, budget, fixed, params, plans,
plan_search, confirm.

Every check appends "key: problem" to a shared list instead of raising, so `asl_ray.search.space.load_space` reports
every problem of a file in one line. The keys and dataclasses here are re-exported by `asl_ray.search.space`.
This module does not import Ray.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping, Optional

from asl_ray.plan.settings import PlanSearchSettings
from asl_ray.config import FIELD_NAMES, FIELD_TYPES, TrainConfig

PARAM_TYPES = ("int", "float", "categorical")
PLAN_SEARCH_MODES = ("measure", "optuna")
BUDGET_OWNED_KEYS = ("epochs", "max_steps_per_epoch")
"""TrainConfig keys every trial takes from `budget` (ASHA's max_t, the per-epoch cap): never fixed or searched."""
EXECUTION_KEYS = ("batch_size", "gradient_accumulation_steps", "precision", "compile", "compile_mode",
                  "cudnn_benchmark", "num_workers", "pin_memory", "pad_to", "foreach_optimizer", "features_on_device",
                  "persistent_workers", "empty_cache_every", "host_step_counts", "foreach_grad_accumulation")
"""TrainConfig keys that change how a config runs, not what it learns: listed under `plans:` (or fixed), never
searched under `params:`."""
ACCUMULATION = "gradient_accumulation_steps"
EFFECTIVE_BATCH = "effective_batch_size"
"""Pseudo-key of `params` and `fixed`: micro-batch x accumulation, the batch one optimizer step sees."""
EXAMPLE_FILE = "search_spaces/cpu-smoke.yaml"
ACCUMULATION_HINT = f"follows from {EFFECTIVE_BATCH} / plans.batch_size"


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
class ConfirmSettings:
    seeds: int = 0
    """Fresh seeds each finalist is re-trained with, on every confirmation fold, before best_config.yaml is
    written; 0: no confirmation."""
    finalists: int = 3
    """Configs re-trained when seeds > 0: the most accurate, the seed's default, then the fastest contenders."""
    folds: int = 1
    """Validation folds each finalist is re-trained on (the search's fold first); every finalist runs the same
    (fold, seed) pairs."""


@dataclass(frozen=True)
class Param:
    name: str
    """The TrainConfig key (or effective_batch_size) Optuna samples: its parameter name."""
    type: str
    """'int', 'float' or 'categorical' (Optuna's suggest_int / suggest_float / suggest_categorical)."""
    low: Optional[float] = None
    """Optuna's low (int and float)."""
    high: Optional[float] = None
    """Optuna's high (int and float)."""
    log: bool = False
    """Optuna's log (int and float)."""
    step: Optional[float] = None
    """Optuna's step (int and float); None: Optuna's default."""
    choices: tuple = ()
    """Optuna's choices (categorical)."""

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


# ---- scalars ------------------------------------------------------------------------------------

def check_card(gpu: Any, problems: list[str]) -> None:
    from asl_ray.cards import CardError, resolve_card
    if not isinstance(gpu, (str, int, float)) or isinstance(gpu, bool):
        problems.append(f"gpu: expected a card name or a size in GiB, got {gpu!r}")
        return
    if str(gpu).lower() == "auto":
        return  # resolved when the search starts, on the machine that runs it
    try:
        resolve_card(str(gpu))
    except CardError as e:
        problems.append(f"gpu: {e}")


def number(v: Any, key: str, problems: list[str], minimum: Optional[float] = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        problems.append(f"{key}: expected a number, got {v!r}")
        return 0.0
    if not math.isfinite(v):
        problems.append(f"{key}: must be a finite number, got {v!r}")
        return 0.0
    if minimum is not None and v < minimum:
        problems.append(f"{key}: must be >= {minimum}, got {v!r}")
    return float(v)


def integer(v: Any, key: str, problems: list[str], minimum: Optional[int] = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        problems.append(f"{key}: expected a whole number, got {v!r}")
        return 0
    if minimum is not None and v < minimum:
        problems.append(f"{key}: must be >= {minimum}, got {v!r}")
    return v


def choice(v: Any, key: str, allowed: tuple, problems: list[str]) -> str:
    if v not in allowed:
        problems.append(f"{key}: must be one of {', '.join(allowed)}, got {v!r}")
    return v


def not_finite(v: Any) -> bool:
    """NaN passes every comparison check (`low > high`, `step <= 0`), so each float is tested on its own."""
    return isinstance(v, float) and not math.isfinite(v)


def value_matches(v: Any, expected: type) -> bool:
    if expected is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if expected is int:
        return isinstance(v, int) and not isinstance(v, bool)
    return isinstance(v, expected)


FIELD_KIND = {**FIELD_TYPES, EFFECTIVE_BATCH: int}


# ---- sections: each takes the raw YAML value and appends "key: problem" ----------------------------

def _settings(raw: Any, section: str, cls: type, minimums: Mapping[str, int], problems: list[str]):
    """A mapping of whole numbers (and `mode`) -> cls; unknown sub-keys named."""
    if not isinstance(raw, dict):
        problems.append(f"{section}: expected a mapping, got {raw!r}")
        return cls()
    known = [f.name for f in fields(cls)]
    for k in sorted(set(raw) - set(known), key=str):
        problems.append(f"{section}.{k}: unknown key (known: {', '.join(known)})")
    values = {}
    for k in known:
        if k not in raw:
            continue
        if k == "mode":
            values[k] = choice(raw[k], f"{section}.mode", PLAN_SEARCH_MODES, problems)
        else:
            values[k] = integer(raw[k], f"{section}.{k}", problems, minimum=minimums[k])
    return cls(**values)


def budget(raw: Any, problems: list[str]) -> Budget:
    out = _settings(raw, "budget", Budget, {"trials": 1, "epochs": 1, "grace_period": 1, "reduction_factor": 2,
                                            "max_steps_per_epoch": 0}, problems)
    if out.grace_period > out.epochs:
        problems.append(f"budget.grace_period: {out.grace_period} exceeds budget.epochs ({out.epochs})")
    return out


def plan_search(raw: Any, problems: list[str]) -> PlanSearchSettings:
    return _settings(raw, "plan_search", PlanSearchSettings,
                     {"warmup_steps": 0, "steps": 1, "max_plans": 1, "min_batch_size": 1}, problems)


def confirm(raw: Any, problems: list[str]) -> ConfirmSettings:
    return _settings(raw, "confirm", ConfirmSettings, {"seeds": 0, "finalists": 1, "folds": 1}, problems)


CONCURRENCY_VALUES = ("auto",)


def concurrency(raw: Any, problems: list[str]) -> bool:
    """`concurrency: auto` packs trials onto each GPU by predicted memory (the search's --pack); absent: one trial
    per GPU (--concurrency N for another count)."""
    if raw is None:
        return False
    if raw not in CONCURRENCY_VALUES:
        problems.append(f"concurrency: must be auto (pack trials onto each GPU by predicted memory; a number of "
                        f"trials at once is --concurrency N), got {raw!r}")
        return False
    return True


def fixed(raw: Any, problems: list[str]) -> dict[str, Any]:
    """TrainConfig keys (and effective_batch_size) every trial shares."""
    if not isinstance(raw, dict):
        problems.append(f"fixed: expected a mapping of TrainConfig keys, got {raw!r}")
        return {}
    allowed = set(FIELD_NAMES) - set(BUDGET_OWNED_KEYS) - {ACCUMULATION} | {EFFECTIVE_BATCH}
    for k in sorted(set(raw) - set(FIELD_NAMES) - {EFFECTIVE_BATCH}, key=str):
        problems.append(f"fixed.{k}: not a TrainConfig key")
    for k in sorted(set(raw) & set(BUDGET_OWNED_KEYS)):
        problems.append(f"fixed.{k}: set by budget.{k}, not here")
    if ACCUMULATION in raw:
        problems.append(f"fixed.{ACCUMULATION}: {ACCUMULATION_HINT}; fix {EFFECTIVE_BATCH} instead")
    for k, v in raw.items():
        if not_finite(v):
            problems.append(f"fixed.{k}: must be a finite number, got {v!r}")
    if EFFECTIVE_BATCH in raw:
        integer(raw[EFFECTIVE_BATCH], f"fixed.{EFFECTIVE_BATCH}", problems, minimum=1)
    return {k: v for k, v in raw.items() if k in allowed}


def execution_key_hint(name: str) -> str:
    if name == ACCUMULATION:
        return f"{ACCUMULATION_HINT} (see {EXAMPLE_FILE})"
    return (f"an execution knob (how a config runs, not what it learns): list its values under plans.{name}"
            + (f" and search {EFFECTIVE_BATCH}" if name == "batch_size" else "") + f" (see {EXAMPLE_FILE})")


def params(raw: Any, fixed_keys: Mapping[str, Any], problems: list[str]) -> tuple[Param, ...]:
    """The learning knobs Optuna samples."""
    if not isinstance(raw, dict) or not raw:
        problems.append("params: expected a non-empty mapping of TrainConfig keys to {type, ...}")
        return ()
    out = []
    for name, spec in raw.items():
        key = f"params.{name}"
        if name in EXECUTION_KEYS:
            problems.append(f"{key}: {execution_key_hint(name)}")
            continue
        if name not in FIELD_KIND:
            problems.append(f"{key}: not a TrainConfig key")
            continue
        if name in BUDGET_OWNED_KEYS:
            problems.append(f"{key}: set by budget.{name}, not searched")
            continue
        if name in fixed_keys:
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
    for k in sorted(set(spec) - allowed, key=str):
        problems.append(f"{key}.{k}: not an argument of a {kind} parameter (allowed: {', '.join(sorted(allowed))})")
    expected = FIELD_KIND[name]
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            problems.append(f"{key}.choices: expected a non-empty list, got {choices!r}")
            return None
        if not _check_values(choices, expected, f"{key}.choices", problems):
            return None
        if name == EFFECTIVE_BATCH and min(choices) < 1:
            problems.append(f"{key}.choices: every effective batch must be >= 1, got {choices!r}")
            return None
        return Param(name, kind, choices=tuple(choices))
    if kind == "int" and expected is not int:
        problems.append(f"{key}.type: {name} is a {expected.__name__}, not an int")
    if kind == "float" and expected is not float:
        problems.append(f"{key}.type: {name} is a {expected.__name__}, use type: int or categorical")
    numeric = int if kind == "int" else (int, float)
    low, high = spec.get("low"), spec.get("high")
    ok = True
    for arg, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, numeric):
            problems.append(f"{key}.{arg}: expected a{'n int' if kind == 'int' else ' number'}, got {v!r}")
            ok = False
        elif not_finite(v):
            problems.append(f"{key}.{arg}: must be a finite number, got {v!r}")
            ok = False
    log = spec.get("log", False)
    if not isinstance(log, bool):
        problems.append(f"{key}.log: expected true or false, got {log!r}")
        ok = False
    step = spec.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, numeric) or not_finite(step)
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
    if name == EFFECTIVE_BATCH and low < 1:
        problems.append(f"{key}.low: every effective batch must be >= 1, got {low}")
        return None
    return Param(name, kind, low=low, high=high, log=log, step=step)


def _check_values(values: list, expected: type, key: str, problems: list[str]) -> bool:
    """Finite, of the field's type, no duplicates; False if any value is bad."""
    before = len(problems)
    for v in values:
        if not_finite(v):
            problems.append(f"{key}: {v!r} is not a finite number")
        elif not value_matches(v, expected):
            problems.append(f"{key}: {v!r} is not a {expected.__name__}")
    if len(set(map(repr, values))) != len(values):
        problems.append(f"{key}: duplicates in {values!r}")
    return len(problems) == before


def plans(raw: Any, fixed_keys: Mapping[str, Any], problems: list[str]) -> dict[str, tuple]:
    """Execution key -> its candidate values (type-checked here; each value against TrainConfig once the base
    config is known: `check_plan_values`)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(f"plans: expected a mapping of execution keys to lists of values, got {raw!r}")
        return {}
    out = {}
    for name, values in raw.items():
        key = f"plans.{name}"
        if name == ACCUMULATION:
            problems.append(f"{key}: {ACCUMULATION_HINT}, never listed")
            continue
        if name not in EXECUTION_KEYS:
            what = "a TrainConfig key that changes what is learned: search it under params" \
                if name in FIELD_NAMES or name == EFFECTIVE_BATCH else "not a TrainConfig key"
            problems.append(f"{key}: not an execution key ({what}; execution keys: "
                            f"{', '.join(k for k in EXECUTION_KEYS if k != ACCUMULATION)})")
            continue
        if name in fixed_keys:
            problems.append(f"{key}: also in fixed; a key is either a plan candidate or fixed")
            continue
        if not isinstance(values, list) or not values:
            problems.append(f"{key}: expected a non-empty list of values, got {values!r}")
            continue
        if _check_values(values, FIELD_KIND[name], key, problems):
            out[name] = tuple(values)
    return out


def check_plan_values(plan_values: Mapping[str, tuple], base: TrainConfig, problems: list[str]) -> None:
    """Each candidate value on its own must make a valid TrainConfig (a precision TrainConfig knows, a batch >= 1)."""
    from asl_ray.config import ConfigError
    for name, values in plan_values.items():
        for v in values:
            try:
                base.with_overrides({name: v})
            except ConfigError as e:
                problems.append(f"plans.{name}: {v!r}: {str(e).removeprefix('overrides: invalid TrainConfig: ')}")
