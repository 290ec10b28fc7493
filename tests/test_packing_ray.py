"""Packing trials onto one GPU, on a real Ray with a declared GPU (`ray.init(num_gpus=1)`).

Packing never puts more predicted memory on a GPU than the card allows, and runs trials concurrently when it does.
A CPU has no CUDA, so the trials do not train: each Tune trial runs the search's own `driver.trial_trainer` (its GPU
share from `trial_share`, the Train worker's ScalingConfig, the raised start timeout) around a probe worker that
reports what Ray gave it (`get_assigned_resources`), its allocator cap and when it ran. Two small trials fit the
card together, three do not, and a large one fits only alone. The search's cap on trials at once
(`experiment.max_concurrent_trials`) lets all three be in flight: Ray's GPU accounting decides who runs.
"""
import json
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import tiny_config

SMALL = tiny_config(dim=32, max_steps_per_epoch=1, epochs=1)
LARGE = tiny_config(dim=192, batch_size=64, max_len=128, depth=2, max_steps_per_epoch=1, epochs=1)
HOLD_S = 6.0  # each probe holds its share this long: long enough for two started together to overlap
NUM_CLASSES = 10


def probe_worker(config):
    """A Train worker that reports what it was given, instead of training."""
    import ray

    from asl_ray.search import trial_worker
    spec = config[trial_worker.SPEC]
    started = time.time()
    time.sleep(HOLD_S)
    record = {"dim": spec.candidates[0].dim, "start": started, "end": time.time(), "cap": spec.emulate_usable_bytes,
              "card": spec.card.usable_bytes, "resources": ray.get_runtime_context().get_assigned_resources(),
              "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}
    Path(config["out"], f"{uuid.uuid4().hex}.json").write_text(json.dumps(record))


def probe_driver(config, settings, out):
    from ray.train.torch import TorchConfig

    from asl_ray.search import driver
    # gloo: a CPU's torch has no NCCL (Ray's default backend with a GPU); one worker uses no collective anyway.
    trainer = driver.trial_trainer(config, settings, train_fn=lambda c: probe_worker({**c, "out": out}),
                                   torch_config=TorchConfig(backend="gloo"))
    trainer.fit()


@pytest.fixture(scope="module")
def ray_one_gpu(private_vram_cache):
    """A local Ray with 2 CPUs and one declared GPU, started after the private VRAM cache is set (its workers
    inherit the cache's folder, so a trial reads the verdicts this process computed)."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=True, dashboard_host="127.0.0.1", configure_logging=False,
             log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_packing_keeps_predictions_within_the_card_and_runs_what_fits_together(ray_one_gpu, tmp_path):
    import ray.cloudpickle
    from ray import tune

    from asl_ray.plan.fits import CardFit
    from asl_ray.search import experiment, packing
    from asl_ray.search.driver import DRIVER_CPUS, TrialSettings

    # The test module is not importable in Ray's workers: its probe travels by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    need_small = CardFit(1 << 40, NUM_CLASSES)(SMALL)[1]
    usable = int(need_small / 0.395)  # a small trial takes 40 of 100 units: two fit, three do not
    card = CardFit(usable, NUM_CLASSES)
    (ok_small, need_small), (ok_large, need_large) = card(SMALL), card(LARGE)
    shares = {32: packing.share_for(need_small, usable), 192: packing.share_for(need_large, usable)}
    assert ok_small and ok_large and packing.fits_together([shares[32]] * 2)
    assert not packing.fits_together([shares[32]] * 3) and not packing.fits_together([shares[32], shares[192]])

    settings = TrialSettings(base_config=SMALL.to_dict(), cache_path=str(tmp_path / "no-data"),  # probes read none
                             train_storage=str(tmp_path / "train"), use_gpu=True, cpus_per_worker=0.5, card=card,
                             emulate_usable_bytes=usable, pack=True)
    out = tmp_path / "probes"
    out.mkdir()
    at_once = experiment.max_concurrent_trials(SimpleNamespace(trials=3, card=SimpleNamespace(usable_bytes=usable),
                                                               concurrency=0), gpus=1, pack=True)
    assert at_once == 3  # the cap lets every trial be in flight; the GPU's fractions decide who runs
    trainable = tune.with_resources(tune.with_parameters(probe_driver, settings=settings, out=str(out)),
                                    {"cpu": DRIVER_CPUS})
    started = time.perf_counter()
    grid = tune.Tuner(
        trainable,
        param_space={"train_loop_config": tune.grid_search([SMALL.to_dict(), LARGE.to_dict(), SMALL.to_dict()])},
        tune_config=tune.TuneConfig(max_concurrent_trials=at_once),
        run_config=tune.RunConfig(name="pack", storage_path=str(tmp_path / "tune"), verbose=0)).fit()
    seconds = time.perf_counter() - started
    assert grid.num_errors == 0, [r.error for r in grid]

    probes = [json.loads(p.read_text()) for p in out.glob("*.json")]
    assert sorted(p["dim"] for p in probes) == [32, 32, 192]
    need = {32: need_small, 192: need_large}
    for p in probes:  # each worker got its share from Ray, and its allocator and plan checks are capped to it
        share = shares[p["dim"]]
        assert p["resources"]["GPU"] == pytest.approx(share.fraction) and p["gpu_ids"]
        assert p["cap"] == p["card"] == share.bytes >= need[p["dim"]]
    # At every moment a probe started, the predictions of the probes running then sum within the card.
    for moment in (p["start"] for p in probes):
        running = [p for p in probes if p["start"] <= moment < p["end"]]
        assert sum(need[p["dim"]] for p in running) <= usable
        assert sum(shares[p["dim"]].fraction for p in running) <= 1.0 + 1e-9

    def overlap(a, b):
        return a["start"] < b["end"] and b["start"] < a["end"]

    small = [p for p in probes if p["dim"] == 32]
    large = next(p for p in probes if p["dim"] == 192)
    assert overlap(*small), "the two small trials fit together and should have run at once"
    assert not any(overlap(large, p) for p in small), "the large trial fits only alone"
    print(f"packed 3 trials in {seconds:.0f} s")
