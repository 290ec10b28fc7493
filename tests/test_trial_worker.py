"""A search trial's Train worker inside a real TorchTrainer: it measures its plans, trains the fastest, reports
the plan with every epoch, and never searches again once it has a checkpoint; a worker killed in the middle
of its plan search finds what it measured in the plan cache."""
import json

import pytest

from conftest import tiny_config

pytestmark = pytest.mark.slow

PLAN_KEYS = ("batch_size", "gradient_accumulation_steps")


def _trainer(candidates, cache, plan_cache_dir, name, storage, max_failures=0):
    from asl_ray.plan.fits import CardFit
    from asl_ray.plan.settings import PlanSearchSettings
    from asl_ray.search import trial_worker
    from asl_ray.search.trial_spec import TrialSpec
    from asl_ray.train.worker import make_trainer
    spec = TrialSpec(tuple(candidates), str(cache.path), card=CardFit(8 * 2 ** 30, cache.num_classes),
                     plan_search=PlanSearchSettings(warmup_steps=1, steps=1, max_plans=4), plan_keys=PLAN_KEYS,
                     plan_cache_dir=str(plan_cache_dir))
    return make_trainer({trial_worker.SPEC: spec}, name=name, storage_path=str(storage), use_gpu=False,
                        max_failures=max_failures, train_fn=trial_worker.train_fn_per_worker)


def _plans(**overrides):
    """One learning config (effective batch 16), two plans: 16x1 and 8x2."""
    return [tiny_config(dim=32, max_len=32, epochs=1, max_steps_per_epoch=2, batch_size=b,
                        gradient_accumulation_steps=16 // b, **overrides) for b in (16, 8)]


def test_a_trial_measures_its_plans_trains_the_fastest_and_a_resume_does_not_search_again(
        ray_local, synth_cache, tmp_path):
    result = _trainer(_plans(), synth_cache, tmp_path / "plans", "trial-a", tmp_path / "train").fit()
    assert result.error is None
    m = result.metrics
    assert m["status"] == "ok" and m["epochs_done"] == 1 and m["seed"] == 42
    assert m["plans_measured"] == 2 and m["plans_from_cache"] == 0 and m["plans_rejected"] == 0
    runner_ups = json.loads(m["plan_runner_ups"])
    assert [r["plan"] for r in runner_ups] == [p for p in ("16x1", "8x2") if p != m["plan"]]
    chosen = {"16x1": 16, "8x2": 8}[m["plan"]]
    assert m["plan_config/batch_size"] == chosen and m["plan_config/gradient_accumulation_steps"] == 16 // chosen
    assert m["plan_samples_per_s"] > 0 and m["val_samples"] > 0
    assert len(list((tmp_path / "plans").iterdir())) >= 2  # both measurements are in the plan cache
    from asl_ray.train.checkpoint import load_checkpoint
    with result.checkpoint.as_directory() as d:
        assert load_checkpoint(d)["config"]["batch_size"] == chosen

    # Same name and storage: Train restores the run from its checkpoint; the worker goes on with the
    # checkpoint's plan and reports the plan metrics saved with it. A new search would measure into (or
    # read from) this other, empty plan cache.
    resumed = _trainer(_plans(), synth_cache, tmp_path / "other-plans", "trial-a", tmp_path / "train").fit()
    assert resumed.error is None
    assert not (tmp_path / "other-plans").exists()
    assert resumed.metrics["plan"] == m["plan"] and resumed.metrics["plans_measured"] == 2
    assert resumed.metrics["plans_from_cache"] == 0 and resumed.metrics["plan_config/batch_size"] == chosen


def test_a_worker_killed_in_its_plan_search_finds_its_measurement_in_the_cache(ray_local, synth_cache, tmp_path,
                                                                              inject):
    # The first attempt dies right after its first measurement lands in the cache; the restarted one reads it.
    inject({"kill_in_plan_search": 1})
    result = _trainer(_plans(), synth_cache, tmp_path / "plans", "trial-k",
                      tmp_path / "train", max_failures=1).fit()
    assert result.error is None
    m = result.metrics
    assert m["status"] == "ok" and m["plans_measured"] == 2 and m["plans_from_cache"] == 1
