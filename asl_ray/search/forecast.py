"""`--dry-run`: what of the space fits the card and how long the search would take, before any trial. No Ray here.

The dry run starts no Ray and no trial. It writes `forecast.md` and `forecast.json` in the experiment folder:
1. **Fit.** Every learning config of the space's grid (`fit_table.learning_grid`) is asked, plan by plan, whether
   the VRAM estimate lets it fit the card (`CardFit`, the searcher's own check): how many fit, why the others do
   not (no micro-batch divides the effective batch, or no plan is predicted to fit), and the plans each keeps
   (the fitting ones, as this device runs them, up to `plan_search.max_plans`: what its trial would measure).
2. **Measured steps.** For each distinct (model size, max_len, fastest plan) the plan search's own step measurer
   (`asl_ray.plan.measure.measure_plan`) runs a few optimizer steps of the real loop on the data's own length
   mix, on this machine's device, under the trial's conditions (a CUDA card's memory emulation; on a CPU the
   torch threads a trial's Train worker gets, `--cpus-per-trial`); a few evaluation batches and one checkpoint
   save are timed beside it. The "fastest plan" is the plan search's first candidate that fits: the largest
   micro-batch (an assumption, not a measurement of every plan: in the smoke grid's full plan search the fastest
   was always one of the two largest micro-batches). A baseline trains its pinned plan, so that one is measured.
3. **Seconds.** One epoch = the split's training samples / measured samples/s + its validation samples x the
   measured evaluation time per sample + the checkpoint save + EPOCH_OVERHEAD_S. A trial = TRIAL_OVERHEAD_S + its
   plan search (the plans it would measure x the measured probe's wall time: computed) + its epochs. ASHA's
   epochs per trial: `asha_epochs` (expected) and every trial full length (worst); the whole search adds the
   confirmation stage (finalists x folds x seeds full-length runs) and SEARCH_OVERHEAD_S per Tune stage.
   The three overheads are Ray's (trial start, TorchTrainer and worker start-up, reports, teardown): constants,
   not measured by the dry run (it starts no Ray), and labelled so in forecast.md: TRIAL_OVERHEAD_S from
   bench/search_overhead.py on the project's 2-core CPU, the other two estimates.

Where it cannot measure on the device the search targets it says so and forecasts no seconds (the fit counts are
still written, exit 0): a `--gpu` card asked for on a machine without CUDA, or an `--address` cluster (its
nodes' devices are not this machine's). A real run of the same `--name` reads forecast.json back: the live ETA
(`asl_ray.search.eta`), the final summary's and report.md's "Forecast vs actual" (stage times in
stage_times.json).
"""
from __future__ import annotations

import io
import json
import math
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Optional

from asl_ray.config import TrainConfig
from asl_ray.plan.fits import CardFit
from asl_ray.search.fit_table import learning_grid
from asl_ray.search.report import rung_epochs
from asl_ray.search.select import seed_baseline
from asl_ray.vram.estimate import cache_key

from asl_ray.search.forecast_actual import FORECAST_JSON, duration_text

FORECAST_MD = "forecast.md"
FORECAST_PLANS_DIR = "forecast-plans"
"""The dry run's own plan cache (runs/<name>/forecast-plans/): a repeated dry run measures nothing again; the
search's plans/ stay the trials' own, so a real run's plan search costs what the forecast says it does."""

TRIAL_OVERHEAD_S = 20.0
"""Seconds a trial spends outside its epochs and plan search: Tune's trial start, the TorchTrainer and its
worker's start-up, data mapping, teardown. Not measured by the dry run (it starts no Ray): bench/search_overhead.py
measured 19-29 s per trial outside the loop on the project's 2-core CPU (2026-11-27), its plan search included
(a few seconds there), so 20 s net of it. On another machine it is a guess, and forecast.md says so."""
EPOCH_OVERHEAD_S = 0.5
"""Seconds per epoch for the Train report and the checkpoint's hand-over to Ray beyond the measured torch.save
(constant, not measured: the same source as TRIAL_OVERHEAD_S)."""
SEARCH_OVERHEAD_S = 15.0
"""Seconds per Tune stage: Ray's start (main search only), the Tuner's set-up, the study, the result files
(constant, not measured: the smoke search's console timestamps on the project's 2-core CPU)."""
EVAL_BATCHES = 4
"""Validation batches timed per unit (after one untimed batch)."""


class ForecastError(ValueError):
    pass


# ---- ASHA arithmetic ------------------------------------------------------------------------------------
def asha_epochs(epochs: int, grace_period: int, reduction_factor: int) -> float:
    """Expected epochs of one ASHA trial that is not the first at its rungs: it runs to the first rung, and past
    rung k with probability 1/reduction_factor^k (ASHA keeps the top 1/eta at each rung). A model of the
    expectation (the configs' ranks assumed exchangeable), not a measurement."""
    rungs = rung_epochs(grace_period, reduction_factor, epochs)
    if not rungs:
        return float(epochs)
    bounds = [*rungs, epochs]
    return float(bounds[0] + sum((bounds[k] - bounds[k - 1]) / reduction_factor ** k for k in range(1, len(bounds))))


def search_epochs(trials: int, epochs: int, scheduler: str, grace_period: int, reduction_factor: int
                  ) -> tuple[float, float]:
    """(expected, worst) epochs over `trials` trials. The first trial always runs every epoch (Ray's ASHA stops a
    trial only below a cutoff of the results recorded at the rung, and the first finds none); each other trial
    runs `asha_epochs`. Worst: ASHA stops none. FIFO: every trial runs every epoch."""
    if trials <= 0:
        return 0.0, 0.0
    worst = float(trials * epochs)
    if scheduler != "asha":
        return worst, worst
    return float(epochs + (trials - 1) * asha_epochs(epochs, grace_period, reduction_factor)), worst


# ---- fit -------------------------------------------------------------------------------------------------
def memory_params(space) -> list[str]:
    """The learning params that can change a plan's verdict: the effective batch (which micro-batches divide
    it) and those the VRAM estimate reads; the others (learning rate, ...) share every verdict."""
    estimate_keys = set(json.loads(cache_key(space.base_config(), 1)))
    return [p for p in space.param_names() if p == "effective_batch_size" or p in estimate_keys]


def plan_name(cfg: TrainConfig, space) -> str:
    from asl_ray.plan.measure import describe_plan
    return describe_plan(cfg, space.plan_names())


def fit_rows(space, card_fit: Callable[[TrainConfig], tuple[bool, int]], usable_mb: float,
             as_run: Callable[[TrainConfig], TrainConfig] = lambda c: c) -> list[dict]:
    """One row per distinct memory-relevant learning config (`memory_params`) of the grid: how many grid points it
    stands for, its plan candidates, the fitting ones, the plans its trial keeps (deduplicated as this device runs
    them, up to max_plans), the fastest (the first kept), or why none fits. `as_run`: a plan as this device runs it."""
    keys = memory_params(space)
    rows: dict[tuple, dict] = {}
    for values in learning_grid(space):
        key = tuple(values[k] for k in keys)
        if key in rows:
            rows[key]["grid_points"] += 1
            continue
        row = {"values": {k: values[k] for k in keys}, "learning": dict(values), "grid_points": 1}
        rows[key] = row
        candidates = space.plan_candidates(values)
        row["candidates"] = len(candidates)
        if not candidates:
            row.update(fits=False, why=f"no plan: no plans.batch_size divides effective_batch_size "
                                        f"{space.effective_batch_for(values)}", kept=[], fastest=None)
            continue
        verdicts = [(cfg, *card_fit(cfg)) for cfg in candidates]
        fitting = [cfg for cfg, ok, _ in verdicts if ok]
        if not fitting:
            least = min(b for _, _, b in verdicts) / 2 ** 20
            row.update(fits=False, why=f"no plan predicted to fit: the least fit figure {least:.0f} MiB > "
                                        f"{usable_mb:.0f} MiB usable", kept=[], fastest=None)
            continue
        kept: list[TrainConfig] = []
        for cfg in fitting:
            run = as_run(cfg)
            if all(run != k for k in kept):
                kept.append(run)
        kept = kept[:space.plan_search.max_plans]
        row.update(fits=True, why="", fitting=[plan_name(c, space) for c in fitting],
                   kept=[plan_name(c, space) for c in kept], fastest=kept[0])
    return list(rows.values())


def fit_counts(rows: list[dict]) -> dict[str, int]:
    total = sum(r["grid_points"] for r in rows)
    fit = sum(r["grid_points"] for r in rows if r["fits"])
    no_plan = sum(r["grid_points"] for r in rows if not r["fits"] and r["why"].startswith("no plan:"))
    return {"learning_configs": total, "fit": fit, "no_plan": no_plan, "rejected": total - fit - no_plan}


# ---- measurement -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UnitTiming:
    """The measured figures of one (model size, max_len, plan)."""
    plan: str
    samples_per_s: float
    """Training samples/s after the warm-up steps (the plan search's measurer)."""
    samples_per_s_se: float
    probe_s: float
    """Wall time of the measurement (setup, warm-up, timed steps): what one plan costs a trial's plan search."""
    eval_s_per_sample: float
    """Validation forward pass per sample (measured on EVAL_BATCHES batches)."""
    checkpoint_s: float
    """torch.save of the loop's checkpoint state (measured once, before the first optimizer step)."""
    status: str = "ok"
    error: str = ""


def measure_unit(cfg: TrainConfig, cache, runtime, warmup_steps: int, steps: int, plan_keys, store,
                 usable_bytes: Optional[int] = None) -> UnitTiming:
    """Time `cfg`: `measure_plan` (through the dry run's plan cache), then a few validation batches and a
    checkpoint save on a fresh session."""
    from asl_ray.plan.measure import describe_plan, device_identity, measure_plan, probe_config
    device = device_identity(runtime, usable_bytes)
    key = store.key(cfg, device, warmup_steps, steps, cache.path.name)
    m = store.get(key)
    if m is None:
        m = measure_plan(cfg, cache, runtime, warmup_steps, steps, plan_keys=plan_keys, usable_bytes=usable_bytes)
        store.put(key, m, cfg)
    plan = describe_plan(cfg, plan_keys)
    if not m.ok:
        return UnitTiming(plan, math.nan, math.nan, m.seconds, math.nan, math.nan, m.status, m.error)
    eval_s, ckpt_s = _eval_and_checkpoint(probe_config(cfg, warmup_steps, steps), cache, runtime)
    return UnitTiming(plan, m.samples_per_s, m.samples_per_s_se, m.seconds, eval_s, ckpt_s)


def _eval_and_checkpoint(cfg: TrainConfig, cache, runtime) -> tuple[float, float]:
    import torch
    from asl_ray.train.loop import checkpoint_state, setup
    from asl_ray.train.runtime import Runtime
    s = setup(cfg, cache, Runtime.create(cfg, runtime.device))
    rt = s.runtime
    s.model.eval()
    timed = samples = 0.0
    with torch.inference_mode():
        for i, batch in enumerate(islice(s.val_loader, EVAL_BATCHES + 1)):
            started = time.perf_counter()
            batch = batch.to(rt.device, non_blocking=rt.non_blocking)
            with rt.autocast():
                s.model(batch.x, batch.mask).float().argmax(-1).cpu()
            rt.synchronize()
            if i:  # the first batch starts the loader's workers and warms the kernels: not an epoch's steady cost
                timed += time.perf_counter() - started
                samples += len(batch)
    started = time.perf_counter()
    torch.save(checkpoint_state(s), io.BytesIO())
    ckpt = time.perf_counter() - started
    del s
    return (timed / samples if samples else math.nan), ckpt


# ---- the forecast -------------------------------------------------------------------------------------------
def data_figures(cache, cfg: TrainConfig) -> dict[str, Any]:
    """The data's own size under the split and its length mix, clipped to max_len."""
    import numpy as np
    from asl_ray.data.dataset import split_of
    train, val = split_of(cfg, cache.participants)
    lengths = np.asarray(cache.lengths)[train]
    return {"train_samples": int(len(train)), "val_samples": int(len(val)),
            "length_p50": float(np.median(lengths)) if len(lengths) else math.nan,
            "length_p90": float(np.percentile(lengths, 90)) if len(lengths) else math.nan,
            "length_max": int(lengths.max()) if len(lengths) else 0}


def epoch_seconds(t: UnitTiming, cfg: TrainConfig, train_samples: int, val_samples: int) -> float:
    """One epoch of `cfg` from its measured figures: training (capped by max_steps_per_epoch), evaluation, the
    checkpoint and EPOCH_OVERHEAD_S."""
    samples = train_samples
    if cfg.max_steps_per_epoch:
        samples = min(samples, cfg.max_steps_per_epoch * cfg.batch_size)
    return samples / t.samples_per_s + val_samples * t.eval_s_per_sample + t.checkpoint_s + EPOCH_OVERHEAD_S


def stage_forecast(trial_s: list[dict], n_trials: int, epochs: int, scheduler: str, grace: int, rf: int,
                   at_once: int, baselines: list[dict]) -> dict[str, float]:
    """The main search's seconds. `trial_s`: per fitting config {"epoch_s", "fixed_s"} (fixed: overhead + plan
    search); the baselines run first, the first full length; the other trials are the fitting configs' mean
    (expected) or the slowest (worst). `at_once`: trials in parallel."""
    if n_trials <= 0 or not trial_s:
        return {"trials": 0, "expected_s": 0.0, "worst_s": 0.0, "per_trial_expected_s": math.nan}
    mean = {k: sum(t[k] for t in trial_s) / len(trial_s) for k in ("epoch_s", "fixed_s")}
    trials = ([*baselines] + [mean] * n_trials)[:n_trials]
    each = asha_epochs(epochs, grace, rf) if scheduler == "asha" else float(epochs)
    expected = sum(t["fixed_s"] + (epochs if i == 0 else each) * t["epoch_s"] for i, t in enumerate(trials))
    worst_trial = max(t["fixed_s"] + epochs * t["epoch_s"] for t in [*trial_s, *baselines])
    worst = n_trials * worst_trial
    return {"trials": n_trials, "expected_s": expected / at_once, "worst_s": worst / at_once,
            "per_trial_expected_s": expected / n_trials, "per_trial_worst_s": worst_trial}


def confirm_forecast(runs: int, full_s: list[float], at_once: int) -> dict[str, float]:
    """The confirmation stage: `runs` full-length runs (no plan search), the configs' mean (expected) or the
    slowest (worst), `at_once` at a time."""
    if runs <= 0 or not full_s:
        return {"runs": 0, "expected_s": 0.0, "worst_s": 0.0, "per_run_expected_s": math.nan}
    mean, worst = sum(full_s) / len(full_s), max(full_s)
    return {"runs": runs, "expected_s": runs * mean / at_once, "worst_s": runs * worst / at_once,
            "per_run_expected_s": mean}


def cannot_measure_reason(sc, gpu_given: bool, cuda_available: bool) -> str:
    """Why the dry run cannot measure the search's device here ('' when it can)."""
    if sc.address:
        return (f"--address {sc.address}: the trials run on the cluster's nodes, not on this machine; run the dry "
                f"run on one of them")
    if gpu_given and not cuda_available:
        return (f"--gpu {sc.gpu}: a GPU target, and this machine has no CUDA device, so its steps cannot be "
                f"measured here; no seconds are forecast (a CPU's would be a guess for the card)")
    return ""


def _say(text: str) -> None:
    print(text, flush=True)


def dry_run(sc, gpu_given: bool = False, log=_say) -> int:
    """Count, measure, forecast; write forecast.json/.md under sc.root; print the forecast. Exit code 0."""
    import torch
    forecast = build_forecast(sc, gpu_given, torch.cuda.is_available(), log)
    (sc.root / FORECAST_JSON).write_text(json.dumps(forecast, indent=1, default=_json_default))
    text = forecast_markdown(forecast)
    (sc.root / FORECAST_MD).write_text(text)
    log(text.rstrip())
    log(f"dry run: no Ray started, no trial run; written {sc.root / FORECAST_MD} and {sc.root / FORECAST_JSON}")
    return 0


def build_forecast(sc, gpu_given: bool, cuda_available: bool, log=_say,
                   measure: Callable[..., UnitTiming] = measure_unit) -> dict[str, Any]:
    """The forecast as plain data (what forecast.json holds). `measure`: measure_unit (tests give another)."""
    space = sc.space
    started = time.perf_counter()
    reason = cannot_measure_reason(sc, gpu_given, cuda_available)
    runtime = None
    if not reason:
        from asl_ray.train.runtime import Runtime
        runtime = Runtime.create(space.base_config())
    as_run = (lambda c: c) if runtime is None else _as_run(runtime)
    log(f"dry run: checking which of the space's learning configs fit {sc.card.name} (VRAM estimate)")
    rows = fit_rows(space, CardFit.for_card(sc.card, sc.num_classes), sc.card.usable_bytes / 2 ** 20, as_run)
    counts = fit_counts(rows)
    out: dict[str, Any] = {
        "name": sc.root.name, "space": str(space.path), "card": sc.card.describe(),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"), "fit": {**counts, "rows": [_row_json(r) for r in rows]},
        "measured": False, "why_not_measured": reason, "device": None, "units": [], "stages": {},
        "constants": {"trial_overhead_s": TRIAL_OVERHEAD_S, "epoch_overhead_s": EPOCH_OVERHEAD_S,
                      "search_overhead_s": SEARCH_OVERHEAD_S,
                      "source": "constants, not measured by the dry run: bench/search_overhead.py on the project's "
                                "2-core CPU (2026-11-27)"},
    }
    budget = space.budget
    rungs = rung_epochs(budget.grace_period, budget.reduction_factor, budget.epochs) if space.scheduler == "asha" else []
    out["asha"] = {"scheduler": space.scheduler, "rungs": rungs, "epochs": budget.epochs,
                   "expected_epochs_per_trial": (asha_epochs(budget.epochs, budget.grace_period, budget.reduction_factor)
                                                 if space.scheduler == "asha" else float(budget.epochs)),
                   "first_trial_epochs": budget.epochs, "worst_epochs_per_trial": budget.epochs}
    fitting = [r for r in rows if r["fits"]]
    if reason or not fitting:
        out["why_not_measured"] = reason or "no learning config fits the card: nothing to measure"
        out["seconds"] = time.perf_counter() - started
        return out
    out.update(_measure_and_forecast(sc, runtime, rows, fitting, log, measure))
    out["measured"] = bool(out["units"]) and all(u["status"] == "ok" for u in out["units"])
    if not out["measured"]:
        out["why_not_measured"] = "a measured plan did not run (see units): no seconds forecast"
        out["stages"] = {}
    out["seconds"] = time.perf_counter() - started
    return out


def _as_run(runtime):
    from asl_ray.plan.search import runs_on
    return lambda cfg: runs_on(cfg, runtime)


def _measure_and_forecast(sc, runtime, rows, fitting, log, measure) -> dict[str, Any]:
    import torch
    from asl_ray.data.cache import SequenceCache
    from asl_ray.plan.cache import PlanCache
    from asl_ray.plan.measure import device_identity
    from asl_ray.train.runtime import emulate_card_memory
    space, ps = sc.space, sc.space.plan_search
    cache = SequenceCache(sc.cache_path)
    usable = None
    if runtime.device.type == "cuda" and sc.emulate:
        emulate_card_memory(sc.card.usable_bytes, runtime.device)  # the trial's own cap (trial_worker.py)
        usable = sc.card.usable_bytes
    store = PlanCache(sc.root / FORECAST_PLANS_DIR)
    threads = torch.get_num_threads()
    if runtime.device.type == "cpu":
        # A trial's Train worker gets --cpus-per-trial CPUs, and Ray sets its threads to them: time what it runs.
        torch.set_num_threads(max(1, int(sc.cpus_per_trial)))
    try:
        device = device_identity(runtime, usable)
        baselines = _baseline_units(space, runtime)
        units: dict[str, dict] = {}
        configs = [(r["fastest"], r) for r in fitting] + [(cfg, None) for cfg, _ in baselines]
        for cfg, _ in configs:
            k = store.key(cfg, device, ps.warmup_steps, ps.steps, cache.path.name)
            if k not in units:
                units[k] = {"cfg": cfg, "timing": None}
        log(f"dry run: measuring {len(units)} distinct (model size, max_len, fastest plan) on {device}: "
            f"{ps.warmup_steps} warm-up + at least {ps.steps} timed optimizer steps each")
        for i, (k, u) in enumerate(units.items()):
            u["timing"] = measure(u["cfg"], cache, runtime, ps.warmup_steps, ps.steps, space.plan_names(), store,
                                  usable_bytes=usable)
            t = u["timing"]
            log(f"  [{i + 1}/{len(units)}] {_model_text(u['cfg'])} {t.plan}: "
                + (f"{t.samples_per_s:.1f} samples/s, probe {t.probe_s:.1f} s" if t.status == "ok"
                   else f"{t.status}: {t.error}"))
    finally:
        torch.set_num_threads(threads)
    data = data_figures(cache, space.base_config())
    unit_rows = []
    for k, u in units.items():
        t: UnitTiming = u["timing"]
        ok = t.status == "ok"
        unit_rows.append({"model": _model_text(u["cfg"]), "plan": t.plan, "status": t.status, "error": t.error,
                          "samples_per_s": t.samples_per_s, "samples_per_s_se": t.samples_per_s_se,
                          "probe_s": t.probe_s, "eval_ms_per_sample": t.eval_s_per_sample * 1e3,
                          "checkpoint_s": t.checkpoint_s,
                          "epoch_s": epoch_seconds(t, u["cfg"], data["train_samples"], data["val_samples"])
                          if ok else math.nan})
    out = {"device": device, "units": unit_rows, "data": data}
    if not all(u["timing"].status == "ok" for u in units.values()):
        return out

    def figures(cfg: TrainConfig, plans: int) -> dict[str, float]:
        u = units[store.key(cfg, device, ps.warmup_steps, ps.steps, cache.path.name)]
        t = u["timing"]
        return {"epoch_s": epoch_seconds(t, cfg, data["train_samples"], data["val_samples"]),
                "fixed_s": TRIAL_OVERHEAD_S + plans * t.probe_s}

    # A trial's plan search measures its kept plans: computed as that many probes of its fastest plan.
    per_config = [figures(r["fastest"], len(r["kept"])) for r in fitting]
    weights = [r["grid_points"] for r in fitting]
    weighted = [f for f, w in zip(per_config, weights) for _ in range(w)]
    base = [figures(cfg, plans) for cfg, plans in baselines]
    finite_space = all(p.type == "categorical" or p.type == "int" for p in space.params)
    n_trials = min(sc.trials, sum(weights)) if finite_space else sc.trials
    at_once = sc.concurrency or max(1, torch.cuda.device_count() if runtime.device.type == "cuda" else 1)
    b = space.budget
    search = stage_forecast(weighted, n_trials, b.epochs, space.scheduler, b.grace_period, b.reduction_factor,
                            at_once, base)
    runs = min(sc.finalists, n_trials) * sc.confirm_folds * sc.confirm_seeds
    confirm = confirm_forecast(runs, [TRIAL_OVERHEAD_S + b.epochs * f["epoch_s"] for f in weighted + base], at_once)
    # Each Tune stage's own set-up and wind-down (Ray's start, the Tuner, the result files) is part of its time.
    search["expected_s"] += SEARCH_OVERHEAD_S
    search["worst_s"] += SEARCH_OVERHEAD_S
    if runs:
        confirm["expected_s"] += SEARCH_OVERHEAD_S
        confirm["worst_s"] += SEARCH_OVERHEAD_S
    out["stages"] = {"search": search, "confirmation": confirm,
                     "total": {"expected_s": search["expected_s"] + confirm["expected_s"],
                               "worst_s": search["worst_s"] + confirm["worst_s"]}}
    out["at_once"] = at_once
    return out


def _baseline_units(space, runtime) -> list[tuple[TrainConfig, int]]:
    """Each baseline's plan as its trial runs it (its pinned plan, else its fastest candidate), with the number of
    plans its trial measures."""
    as_run = _as_run(runtime)
    out = []
    for values, pinned in zip(space.baselines, space.baseline_plans):
        candidates = space.plan_candidates({k: values[k] for k in space.param_names()}, pinned)
        runs = []
        for cfg in candidates:
            if all(as_run(cfg) != r for r in runs):
                runs.append(as_run(cfg))
        if runs:
            out.append((runs[0], min(len(runs), space.plan_search.max_plans)))
    return out


def _model_text(cfg: TrainConfig) -> str:
    return f"dim {cfg.dim} depth {cfg.depth} max_len {cfg.max_len}" + (" bucketing" if cfg.length_bucketing else "")


def _row_json(r: dict) -> dict:
    return {"values": r["values"], "grid_points": r["grid_points"], "candidates": r["candidates"],
            "fits": r["fits"], "why": r["why"], "kept": r["kept"]}


def _json_default(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "item"):
        return v.item()
    return str(v)


# ---- text ---------------------------------------------------------------------------------------------------
def forecast_markdown(f: dict[str, Any]) -> str:
    c = f["fit"]
    lines = [f"# Forecast: {f['name']} ({f['space']})", "", f"Target: {f['card']}. Written {f['created']}.", "",
             "## Fit (VRAM estimate, computed)", "",
             f"{c['fit']} of {c['learning_configs']} learning configs of the space's grid fit the card; "
             f"{c['rejected']} have no plan predicted to fit, {c['no_plan']} no micro-batch that divides their "
             f"effective batch.", ""]
    rows = f["fit"]["rows"]
    if rows:
        names = list(rows[0]["values"])
        lines += ["| " + " | ".join(names) + " | grid points | plans kept (fastest first) / why not |",
                  "|" + "---|" * (len(names) + 2)]
        lines += ["| " + " | ".join(str(r["values"][n]) for n in names) + f" | {r['grid_points']} | "
                  + (", ".join(r["kept"]) if r["fits"] else r["why"]) + " |" for r in rows]
        lines.append("")
    if not f["measured"]:
        return "\n".join(lines + ["## Time", "", f"Not measured: {f['why_not_measured']}.", ""]) + "\n"
    d = f["data"]
    lines += ["## Measured steps", "",
              f"On {f['device']}: the plan search's step measurer, each unit's fastest plan (the largest "
              f"micro-batch that fits; a baseline's pinned plan). Data: {d['train_samples']} training and "
              f"{d['val_samples']} validation samples under the split, lengths median {d['length_p50']:.0f}, "
              f"p90 {d['length_p90']:.0f}, max {d['length_max']} frames.", "",
              "| model | plan | samples/s (SE) | probe s | eval ms/sample | checkpoint s | epoch s |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {u['model']} | {u['plan']} | {u['samples_per_s']:.1f} ({u['samples_per_s_se']:.1f}) | "
              f"{u['probe_s']:.1f} | {u['eval_ms_per_sample']:.2f} | {u['checkpoint_s']:.2f} | {u['epoch_s']:.1f} |"
              for u in f["units"]]
    a, s = f["asha"], f["stages"]
    k = f["constants"]
    lines += ["", "## Forecast", "",
              f"Epochs per trial: {a['epochs']}" + (f"; ASHA rungs at {a['rungs']}: expected "
                                                    f"{a['expected_epochs_per_trial']:.2f} per trial after the "
                                                    f"first (which runs all {a['epochs']}), worst case every trial "
                                                    f"all {a['epochs']}" if a["rungs"] else "") + ".", "",
              "| stage | runs | expected | worst case |", "|---|---|---|---|",
              f"| main search | {s['search']['trials']} trials | {duration_text(s['search']['expected_s'])} | "
              f"{duration_text(s['search']['worst_s'])} |",
              f"| confirmation | {s['confirmation']['runs']} runs | {duration_text(s['confirmation']['expected_s'])} | "
              f"{duration_text(s['confirmation']['worst_s'])} |",
              f"| total | | {duration_text(s['total']['expected_s'])} | {duration_text(s['total']['worst_s'])} |", "",
              f"Measured: the steps, evaluation and checkpoint figures above. Computed from them: epochs (the split's "
              f"samples / samples/s), a trial's plan search (its kept plans x its fastest plan's probe). Constants, "
              f"not measured by the dry run (it starts no Ray): {k['trial_overhead_s']:g} s per trial, "
              f"{k['epoch_overhead_s']:g} s per epoch, {k['search_overhead_s']:g} s per Tune stage "
              f"({k['source']}). Expected: the trials are the fitting configs' mean (the baselines first); worst: "
              f"the slowest config, ASHA stopping none. {f['at_once']} trial(s) at a time.", ""]
    return "\n".join(lines) + "\n"
