"""The plan search: which execution plan of one learning config runs fastest here (asl_ray/plan/).

Choices are tested with a fake measurement whose speeds the test sets (never wall-clock); the real
measurement is run on the tiny config for its contract (finite, positive, an OOM is a status)."""
from __future__ import annotations

import dataclasses
import json
import math
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from scipy import stats as scipy_stats

from asl_ray.plan.cache import SPEED_NEUTRAL_KEYS, PlanCache
from asl_ray.plan.fits import CardFit
from asl_ray.plan.measure import (MAX_STEPS_FACTOR, TIMING_CI, PlanMeasurement, describe_plan, device_identity,
                                  measure_plan)
from asl_ray.plan.settings import PlanSearchSettings
from asl_ray.plan.search import credibly_faster, search_plans, simplicity
from asl_ray.stats import t_quantile
from asl_ray.train.runtime import Runtime
from conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]
CPU = Runtime(device=torch.device("cpu"), precision="fp32", pin_memory=False)
PLAN_KEYS = ("batch_size", "gradient_accumulation_steps", "precision")


def split(batch_size: int, effective: int = 16, **overrides):
    return tiny_config(batch_size=batch_size, gradient_accumulation_steps=effective // batch_size, **overrides)


def always_fits(cfg):
    return True, 100 * 2**20


class FakeMeasure:
    """Speeds (and their SEs, default 0.5 samples/s over 8 timed steps: distinct speeds are told apart) set by the
    test per micro-batch; records what it was asked to measure."""

    def __init__(self, speed_by_batch: dict[int, float], oom_batches=(), se_by_batch=None):
        self.speed_by_batch, self.oom_batches = speed_by_batch, set(oom_batches)
        self.se_by_batch = se_by_batch or {}
        self.calls: list = []

    def __call__(self, cfg, cache, runtime, warmup_steps, steps, plan_keys=(), usable_bytes=None):
        self.calls.append(cfg)
        oom = cfg.batch_size in self.oom_batches
        return PlanMeasurement(plan=describe_plan(cfg, plan_keys), status="oom" if oom else "ok",
                               samples_per_s=math.nan if oom else self.speed_by_batch[cfg.batch_size],
                               steps_per_s=1.0, samples_per_s_se=self.se_by_batch.get(cfg.batch_size, 0.5),
                               steps_timed=0 if oom else 8, peak_reserved_mb=math.nan, rss_peak_mb=1.0, seconds=0.0,
                               device="fake", error="out of memory" if oom else "")


def run_search(candidates, cache, store, measure=None, fits=always_fits, max_plans=8):
    kwargs = {"measure": measure} if measure is not None else {}
    return search_plans(candidates, cache, CPU, store, fits,
                        PlanSearchSettings(warmup_steps=1, steps=2, max_plans=max_plans), plan_keys=PLAN_KEYS, **kwargs)


def test_the_fastest_measured_plan_is_chosen(synth_cache, tmp_path):
    measure = FakeMeasure({16: 50.0, 8: 90.0, 4: 70.0})
    choice = run_search([split(16), split(8), split(4)], synth_cache, PlanCache(tmp_path), measure)
    assert [c.batch_size for c in measure.calls] == [16, 8, 4]  # in the given order
    assert choice.config.batch_size == 8 and choice.config.gradient_accumulation_steps == 2
    assert choice.chosen.plan == "8x2 precision=fp32" and choice.chosen.samples_per_s == 90.0
    assert [m.plan for m in choice.measured] == ["8x2 precision=fp32", "4x4 precision=fp32", "16x1 precision=fp32"]
    metrics = choice.metrics()
    assert metrics["plan"] == "8x2 precision=fp32" and metrics["plan_samples_per_s"] == 90.0
    assert [r["plan"] for r in json.loads(metrics["plan_runner_ups"])] == ["4x4 precision=fp32", "16x1 precision=fp32"]
    assert (metrics["plans_measured"], metrics["plans_from_cache"], metrics["plans_rejected"]) == (3, 0, 0)


def test_plans_within_each_others_noise_are_tied_and_the_simplest_wins(synth_cache, tmp_path):
    """8x2 is measured 2% faster than 16x1, well inside their spread: tied, and 16x1 (no accumulation) trains."""
    measure = FakeMeasure({16: 88.0, 8: 90.0, 4: 60.0}, se_by_batch={16: 3.0, 8: 3.0, 4: 0.5})
    choice = run_search([split(16), split(8), split(4)], synth_cache, PlanCache(tmp_path), measure)
    assert choice.config.batch_size == 16 and choice.tied == ["8x2 precision=fp32", "16x1 precision=fp32"]
    metrics = choice.metrics()
    assert json.loads(metrics["plans_tied"]) == choice.tied and metrics["plan_samples_per_s"] == 88.0
    half = scipy_stats.t.ppf(0.975, 7) * 3.0
    assert metrics["plan_samples_per_s_ci"] == pytest.approx(half)
    # told apart once the spread is small: the fastest trains
    measure = FakeMeasure({16: 88.0, 8: 90.0, 4: 60.0}, se_by_batch={16: 0.2, 8: 0.2, 4: 0.2})
    choice = run_search([split(16), split(8), split(4)], synth_cache, PlanCache(tmp_path / "b"), measure)
    assert choice.config.batch_size == 8 and choice.tied == ["8x2 precision=fp32"]
    # an unknown spread is never 0: the plans are tied
    measure = FakeMeasure({16: 50.0, 8: 90.0}, se_by_batch={16: math.nan, 8: math.nan})
    assert run_search([split(16), split(8)], synth_cache, PlanCache(tmp_path / "c"), measure).config.batch_size == 16


def test_compile_is_the_less_simple_plan_when_tied():
    plain, compiled = split(8), split(8, compile=True)
    assert simplicity(plain) < simplicity(compiled) and simplicity(split(16)) < simplicity(split(8))
    fast = PlanMeasurement("8x2 compile", "ok", 100.0, 1.0, 2.0, 8, math.nan, 1.0, 0.0, "fake")
    slow = PlanMeasurement("8x2", "ok", 97.0, 1.0, 2.0, 8, math.nan, 1.0, 0.0, "fake")
    bound = scipy_stats.t.ppf(0.95, 7) * math.sqrt(2) * 2.0  # 5.36 samples/s
    assert not credibly_faster(fast, slow) and 3.0 < bound
    assert credibly_faster(dataclasses.replace(fast, samples_per_s=97.0 + bound + 0.1), slow)


def test_the_real_probe_times_steps_until_its_interval_is_narrow(synth_cache):
    cfg = split(8)
    m = measure_plan(cfg, synth_cache, CPU, warmup_steps=1, steps=2)
    assert m.ok and 2 <= m.steps_timed <= MAX_STEPS_FACTOR * 2 and m.samples_per_s_se > 0
    narrow = t_quantile(0.975, m.steps_timed - 1) * m.samples_per_s_se / m.samples_per_s <= TIMING_CI
    assert narrow or m.steps_timed == MAX_STEPS_FACTOR * 2


def test_max_plans_bounds_what_is_measured(synth_cache, tmp_path):
    measure = FakeMeasure({16: 50.0, 8: 90.0, 4: 70.0})
    choice = run_search([split(16), split(8), split(4)], synth_cache, PlanCache(tmp_path), measure, max_plans=2)
    assert [c.batch_size for c in measure.calls] == [16, 8] and choice.config.batch_size == 8


def test_a_plan_the_estimator_rejects_is_never_measured_nor_chosen(synth_cache, tmp_path):
    measure = FakeMeasure({16: 500.0, 8: 90.0})  # the rejected plan would be by far the fastest

    def fits(cfg):
        return cfg.batch_size < 16, cfg.batch_size * 2**20

    choice = run_search([split(16), split(8)], synth_cache, PlanCache(tmp_path), measure, fits=fits)
    assert [c.batch_size for c in measure.calls] == [8]
    assert choice.config.batch_size == 8
    assert choice.rejected == [{"plan": "16x1 precision=fp32", "predicted_fit_mb": 16.0}]
    assert choice.metrics()["plans_rejected"] == 1


def test_no_plan_that_fits_gives_no_config(synth_cache, tmp_path):
    measure = FakeMeasure({16: 1.0})
    choice = run_search([split(16)], synth_cache, PlanCache(tmp_path), measure, fits=lambda cfg: (False, 2**30))
    assert choice.config is None and choice.chosen is None and not measure.calls
    metrics = choice.metrics()
    assert metrics["plan"] == "" and math.isnan(metrics["plan_samples_per_s"]) and metrics["plans_rejected"] == 1
    json.dumps(metrics)


def test_a_plan_that_runs_out_of_memory_is_dropped_and_the_next_tried(synth_cache, tmp_path, inject):
    # The real measurement: the loop's injected OOM at the first optimizer step of the 16x1 plan.
    inject({"when": {"batch_size": 16}, "oom_at_step": 1})
    choice = run_search([split(16), split(8)], synth_cache, PlanCache(tmp_path))
    assert choice.config is not None and choice.config.batch_size == 8
    assert [(m.plan, m.status) for m in choice.measured] == [("8x2 precision=fp32", "ok"),
                                                             ("16x1 precision=fp32", "oom")]
    assert "out of memory" in choice.measured[1].error and math.isnan(choice.measured[1].samples_per_s)
    runner_ups = json.loads(choice.metrics()["plan_runner_ups"])
    assert runner_ups == [{"plan": "16x1 precision=fp32", "status": "oom", "samples_per_s": None,
                           "ci_half_width": None, "peak_reserved_mb": None}]


def test_every_plan_out_of_memory_gives_no_config(synth_cache, tmp_path):
    measure = FakeMeasure({}, oom_batches={16, 8})
    choice = run_search([split(16), split(8)], synth_cache, PlanCache(tmp_path), measure)
    assert choice.config is None and [m.status for m in choice.measured] == ["oom", "oom"]


def test_cache_hits_skip_measurement_whatever_their_status(synth_cache, tmp_path):
    store = PlanCache(tmp_path)
    first = FakeMeasure({8: 90.0}, oom_batches={16})
    run_search([split(16), split(8)], synth_cache, store, first)
    again = FakeMeasure({16: 500.0, 8: 1.0})  # would choose otherwise, if it were asked
    # Another learning config that differs only in speed-neutral keys reuses the measurements.
    choice = run_search([split(16, seed=7, lr_per_64=1e-3), split(8, seed=7, lr_per_64=1e-3)], synth_cache, store,
                        again)
    assert again.calls == []
    assert choice.config.batch_size == 8 and choice.config.seed == 7  # this search's config, the cached speed
    assert [m.status for m in choice.measured] == ["ok", "oom"] and all(m.from_cache for m in choice.measured)
    assert choice.metrics()["plans_from_cache"] == 2


def test_cache_key_ignores_seed_and_learning_rate_not_batch_size_device_or_probe(tmp_path, inject):
    store = PlanCache(tmp_path)
    key = store.key(split(8), "cpu-a", 1, 2)
    inject({"when": {"dim": 64}, "kill_in_plan_search": 2, "nan_at_step": 3})  # no fault of these fires in a probe
    assert store.key(split(8, seed=1, lr_per_64=1e-3, min_lr=0.0, weight_decay_ratio=0.0, label_smoothing=0.0,
                           epochs=3, fold=1, split_seed=7, warmup_epochs=0.0), "cpu-a", 1, 2) == key
    assert store.key(split(4), "cpu-a", 1, 2) != key
    assert store.key(split(8), "cpu-b", 1, 2) != key
    assert store.key(split(8), "cpu-a", 1, 3) != key
    assert store.key(split(8), "cpu-a", 1, 2, data="other") != key
    inject({"oom_at_step": 1})  # an injected OOM makes a plan fail as measured: another measurement
    assert store.key(split(8), "cpu-a", 1, 2) != key
    inject()
    assert store.key(split(8, precision="bf16"), "cpu-a", 1, 2) != key
    assert "seed" in SPEED_NEUTRAL_KEYS and "batch_size" not in SPEED_NEUTRAL_KEYS


def test_cache_round_trips_a_measurement_and_ignores_a_broken_file(tmp_path):
    store = PlanCache(tmp_path)
    m = PlanMeasurement("8x2", "ok", 90.0, 5.0, 2.0, 6, math.nan, 400.0, 1.5, "cpu")
    store.put("k", m, split(8))
    back = store.get("k")
    assert back.from_cache and back.samples_per_s == 90.0 and math.isnan(back.peak_reserved_mb)
    assert json.loads(store.path("k").read_text())["config"]["batch_size"] == 8  # strict JSON: no NaN
    assert list(tmp_path.glob("*.tmp")) == []
    store.path("broken").write_text("{not json")
    assert store.get("broken") is None and store.get("absent") is None


def test_on_a_cpu_fp16_and_bf16_are_one_plan_run_in_fp32(synth_cache, tmp_path):
    measure = FakeMeasure({8: 90.0})
    choice = run_search([split(8, precision="fp16"), split(8, precision="bf16")], synth_cache, PlanCache(tmp_path),
                        measure)
    assert len(measure.calls) == 1 and measure.calls[0].precision == "fp32"
    assert choice.config.precision == "fp32" and not choice.config.pin_memory
    assert choice.chosen.plan == "8x2 precision=fp32" and len(choice.measured) == 1


def test_the_estimator_is_asked_about_the_plan_as_the_card_runs_it(synth_cache, tmp_path):
    asked = []
    run_search([split(8, precision="bf16")], synth_cache, PlanCache(tmp_path), FakeMeasure({8: 1.0}),
               fits=lambda cfg: (asked.append(cfg.precision), (True, 1))[1])
    assert asked == ["bf16"]


def test_a_worker_killed_mid_search_resumes_from_the_plan_cache(synth_cache, tmp_path, inject):
    store_dir = tmp_path / "plans"
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(REPO / "tests")!r})
        from conftest import tiny_config
        from asl_ray.data.cache import SequenceCache
        from asl_ray.plan.cache import PlanCache
        from asl_ray.plan.search import search_plans
        from asl_ray.plan.settings import PlanSearchSettings
        from asl_ray.train.runtime import Runtime
        candidates = [tiny_config(batch_size=b, gradient_accumulation_steps=16 // b) for b in (16, 8, 4)]
        search_plans(candidates, SequenceCache({str(synth_cache.path)!r}), Runtime.create(candidates[0]),
                     PlanCache({str(store_dir)!r}), lambda cfg: (True, 0),
                     PlanSearchSettings(warmup_steps=0, steps=1, max_plans=8),
                     plan_keys=("batch_size", "gradient_accumulation_steps"))
        print("survived")
    """)
    inject({"kill_in_plan_search": 1})  # the subprocess reads the same rules (conftest set the variable)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert len(list(store_dir.glob("*.json"))) == 1

    measured = []

    def counting_measure(cfg, *args, **kwargs):
        measured.append(cfg.batch_size)
        return measure_plan(cfg, *args, **kwargs)

    # The resumed attempt (the kill still configured: it finds one plan cached and never kills).
    candidates = [split(b) for b in (16, 8, 4)]
    choice = search_plans(candidates, synth_cache, CPU, PlanCache(store_dir), always_fits,
                          PlanSearchSettings(warmup_steps=0, steps=1, max_plans=8),
                          plan_keys=("batch_size", "gradient_accumulation_steps"), measure=counting_measure)
    assert measured == [8, 4]
    assert [m.plan for m in choice.measured if m.from_cache] == ["16x1"]
    assert choice.config is not None and len(list(store_dir.glob("*.json"))) == 3


def test_real_measurement_of_the_tiny_config_is_finite_and_ok(synth_cache):
    m = measure_plan(split(8), synth_cache, CPU, warmup_steps=1, steps=2, plan_keys=PLAN_KEYS)
    assert m.status == "ok" and m.error == "" and not m.from_cache
    assert math.isfinite(m.samples_per_s) and m.samples_per_s > 0 and m.steps_per_s > 0
    assert math.isnan(m.peak_reserved_mb) and m.rss_peak_mb > 0  # no device memory on a CPU
    assert m.plan == "8x2 precision=fp16" and m.device == device_identity(CPU)
    assert PlanMeasurement.from_dict(json.loads(json.dumps(m.to_dict()))) == m


def test_a_failure_other_than_memory_is_an_error_status(synth_cache, monkeypatch):
    from asl_ray.plan import measure as measure_module

    def broken_setup(*_):
        raise ValueError("no such layer\nsecond line")

    monkeypatch.setattr(measure_module, "setup", broken_setup)
    m = measure_plan(split(8), synth_cache, CPU, warmup_steps=1, steps=1)
    assert (m.status, m.error) == ("error", "ValueError: no such layer") and math.isnan(m.samples_per_s)


def test_describe_plan_and_device_identity():
    cfg = split(12, effective=48, precision="bf16", compile=True)
    assert describe_plan(cfg, ()) == "12x4"
    assert describe_plan(cfg, ("compile", "batch_size", "precision")) == "12x4 compile=True precision=bf16"
    assert device_identity(CPU).startswith("cpu-") and f"threads={torch.get_num_threads()}" in device_identity(CPU)


def test_card_fit_is_picklable_and_asks_the_estimator(monkeypatch):
    from asl_ray.plan import fits as fits_module
    fit = CardFit(usable_bytes=2**30, num_classes=10, compute_capability=(8, 9))
    assert pickle.loads(pickle.dumps(fit)) == fit
    seen = []
    monkeypatch.setattr(fits_module, "fits_within", lambda *a: (seen.append(a), (False, 5))[1])
    assert fit(split(8)) == (False, 5) and seen == [(split(8), 2**30, 10, (8, 9))]


def test_card_fit_verdict_follows_the_card_size():
    small, large = CardFit(64 * 2**20, 10), CardFit(64 * 2**30, 10)
    cfg = split(8)
    assert large(cfg)[0] and not small(cfg)[0] and small(cfg)[1] == large(cfg)[1] > 0


def test_plan_package_never_imports_ray():
    code = ("import sys, asl_ray.plan.search, asl_ray.plan.fits; "
            "sys.exit(1 if any(m == 'ray' or m.startswith('ray.') for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=120).returncode == 0


def test_evaluate_reports_the_validation_size(synth_cache):
    from asl_ray.train.loop import evaluate, setup
    s = setup(split(8), synth_cache, CPU)
    metrics = evaluate(s)
    assert metrics["val_samples"] == len(s.val_loader.dataset) > 0
    correct = metrics["val_acc"] * metrics["val_samples"]
    assert abs(correct - round(correct)) < 1e-9
