"""Shared fixtures: one small synthetic data root and its cache per test session, and the fault-injection rules."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import pytest

from asl_ray import faults
from asl_ray.config import TrainConfig

# Set at import, before any test starts a Ray: Ray's workers and the CLIs run in subprocesses inherit it, and each
# reads the file when a run starts (asl_ray/faults.py). A subprocess that imports this module keeps its parent's.
if faults.ENV not in os.environ:  # the process that made the folder removes it
    _faults_dir = tempfile.mkdtemp(prefix="asl-ray-faults-")
    atexit.register(shutil.rmtree, _faults_dir, ignore_errors=True)
    os.environ[faults.ENV] = str(Path(_faults_dir) / "faults.json")
FAULTS_FILE = Path(os.environ[faults.ENV])

# Ray Train's controller polls its workers every 2 s by default, and a worker's report waits until the poll has
# taken the one before it (a queue of one): epochs shorter than the poll, as every test's are, go one per poll, and a
# run's start and end wait for a poll too. At 0.5 s CI's ~50 short TorchTrainer runs are each seconds shorter; what
# they compute is the same. (The real data's epochs are minutes; cpu-smoke's, measured by its dry run, 1.6-4.1 s:
# the shortest of those lose a fraction of a second to the poll.)
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

PACED_AT_RAY_DEFAULT = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "2"}
"""The environment a subprocess search is paced by: Ray's default poll, so a test epoch takes about 2 s. For tests
that must interrupt a run while it still trains."""

REPO = Path(__file__).resolve().parents[1]
REAL_FIXTURE = REPO.parent / "shared" / "fixtures" / "gislr-real"

# A model small enough that a CPU learns the synthetic signs in well under a minute.
TINY = dict(dim=64, depth=1, max_len=64, batch_size=16, gradient_accumulation_steps=1, num_workers=0,
            lr_per_64=4e-3, late_dropout=0.3, throughput_warmup_steps=1)


def tiny_config(**overrides) -> TrainConfig:
    return TrainConfig(**{**TINY, **overrides})


@pytest.fixture
def inject():
    """inject(rule, ...): the fault rules for this test (asl_ray/faults.py); none after it."""
    yield lambda *rules: faults.write_rules(FAULTS_FILE, *rules)
    faults.write_rules(FAULTS_FILE)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    from asl_ray.data.synth import write_synthetic_root
    root = tmp_path_factory.mktemp("synth") / "root"
    write_synthetic_root(root, num_signs=10, num_signers=5, per_sign_signer=8, seed=3, workers=1, progress=False)
    return root


@pytest.fixture(scope="session")
def synth_cache(synth_root, tmp_path_factory):
    from asl_ray.data.cache import load_or_build_cache
    return load_or_build_cache(synth_root, tmp_path_factory.mktemp("cache"), progress=False, log=lambda *_: None)


@pytest.fixture(scope="module")
def private_vram_cache(tmp_path_factory):
    """The VRAM estimator with its own disk cache and empty in-process caches for one test module."""
    from asl_ray.vram import estimate
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ASL_RAY_CACHE_DIR", str(tmp_path_factory.mktemp("vram-cache")))
        estimate.clear_memory_cache()
        yield
    estimate.clear_memory_cache()


@pytest.fixture(scope="module")
def ray_local():
    """A real local Ray with 2 CPUs and the dashboard process (Train's cleanup queries its state API)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", configure_logging=False,
                 log_to_driver=False)
    yield ray
    ray.shutdown()


SEARCH_FAULTS = ({"when": {"kernel_size": 5}, "oom_at_step": 5}, {"when": {"kernel_size": 7}, "nan_at_step": 2})
"""The fault rules `write_search_space`'s fault knob needs (pass them to the `inject` fixture): kernel_size 5 runs
out of memory at its 5th optimizer step, 7's loss turns NaN at its 2nd."""

SMOKE_PLAN_SEARCH = {"warmup_steps": 0, "steps": 1, "max_plans": 2}
"""One timed optimizer step per plan, at most two plans per learning config: the plan search stays seconds."""


def write_search_space(path: Path, *, plan_search: Optional[dict] = None, confirm: Optional[dict] = None,
                       baselines: Optional[list] = None, **budget) -> Path:
    """A two-level search space small enough for CI, on a 0.7 GiB 'card'. Learning params: the effective batch,
    max_len and kernel_size, the fault knob (with SEARCH_FAULTS injected: 5 and 7 fail; 17 is the default's);
    plans: the micro-batch. The baselines pin their plans: the first fits and trains
    (8 x 2), the second (64 x 1 at max_len 512) cannot fit, the third runs out of memory at its 5th optimizer step
    (16 x 1: the plan search times 2 to 4 steps per plan, at least 2 for a spread and at most MAX_STEPS_FACTOR x
    steps, so the OOM fires in training, after it), the fourth's loss turns NaN at its 2nd step (16 x 2: a probe
    times a NaN loss like any other, training stops on it). No confirmation runs unless `confirm` asks."""
    import yaml
    space = {
        "gpu": 0.7, "headroom_mb": 0, "sampler": "tpe", "scheduler": "asha", "seed": 0,
        "budget": {"trials": 3, "epochs": 2, "grace_period": 1, "reduction_factor": 2, "max_steps_per_epoch": 6,
                   **budget},
        "fixed": {"depth": 1, "dim": 32, "num_workers": 0, "lr_per_64": 4e-3, "late_dropout": 0.3,
                  "throughput_warmup_steps": 1},
        "params": {"effective_batch_size": {"type": "categorical", "choices": [16, 32, 64]},
                   "max_len": {"type": "categorical", "choices": [32, 512]},
                   # The fault knob (SEARCH_FAULTS): 5 runs out of memory at its 5th step, 7 diverges at its 2nd.
                   "kernel_size": {"type": "categorical", "choices": [17, 5, 7]}},
        "plans": {"batch_size": [8, 16, 64]},
        "plan_search": {"mode": "measure", **SMOKE_PLAN_SEARCH, **(plan_search or {})},
        "confirm": {"seeds": 0, "finalists": 2, **(confirm or {})},
        "baselines": baselines if baselines is not None else [
            {"effective_batch_size": 16, "max_len": 32, "batch_size": 8},
            {"effective_batch_size": 64, "max_len": 512, "batch_size": 64},
            {"effective_batch_size": 16, "max_len": 32, "kernel_size": 5, "batch_size": 16},
            {"effective_batch_size": 32, "max_len": 32, "kernel_size": 7, "batch_size": 16}],
    }
    path.write_text(f"# python -m asl_ray.search --space {path.name}\n" + yaml.safe_dump(space, sort_keys=False))
    return path


def expect_bad_input(main, capsys, *args) -> str:
    """Run a CLI's main on bad input: exit code 2, one 'error: ' line (progress bars may precede it),
    no traceback. Returns that line."""
    with pytest.raises(SystemExit) as e:
        main(list(args))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]
