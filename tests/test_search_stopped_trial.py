"""A trial stopped mid-fit (as ASHA does) frees its Train worker group: the next trial starts and finishes.

Ray 2.60 frees a stopped trial's worker placement group through a cleaner that needs the dashboard
process; without it the next trial's worker group times out. This runs the product's own driver
function under Tune with a stop rule at the first epoch, then a second trial, on a 2-CPU local Ray.
"""
import pytest

from conftest import tiny_config

pytestmark = pytest.mark.slow


def test_a_stopped_trial_is_followed_by_one_that_runs(ray_local, synth_cache, tmp_path):
    from ray import tune

    from asl_ray.search.driver import DRIVER_CPUS, TrialSettings, train_driver_fn

    base = tiny_config(dim=32, max_steps_per_epoch=3, epochs=3)
    settings = TrialSettings(base_config=base.to_dict(), cache_path=str(synth_cache.path),
                             train_storage=str(tmp_path / "train"), use_gpu=False, cpus_per_worker=1.0)
    trainable = tune.with_resources(tune.with_parameters(train_driver_fn, settings=settings), {"cpu": DRIVER_CPUS})

    def stop(trial_id, result):  # the first trial is stopped after its first epoch, mid-fit
        return result["training_iteration"] >= (1 if result["config"]["train_loop_config"]["batch_size"] == 8 else 3)

    tuner = tune.Tuner(
        trainable,
        param_space={"train_loop_config": {"batch_size": tune.grid_search([8, 16])}},
        tune_config=tune.TuneConfig(max_concurrent_trials=1),
        run_config=tune.RunConfig(name="stopped", storage_path=str(tmp_path / "tune"), stop=stop, verbose=0))
    grid = tuner.fit()
    assert grid.num_errors == 0
    iterations = sorted((r.config["train_loop_config"]["batch_size"], r.metrics["training_iteration"]) for r in grid)
    assert iterations == [(8, 1), (16, 3)]
