"""`--dry-run` (asl_ray/search/forecast.py, no Ray): ASHA's expected/worst epochs against hand-computed cases, the
stage arithmetic, the refusal to guess without the target device, a CPU dry run that measures and writes
forecast.md/json without starting Ray or a trial, and forecast vs actual."""
import json
import math
import sys
from types import SimpleNamespace

import pytest
import yaml

from asl_ray.search import forecast, forecast_actual
from asl_ray.search.__main__ import main as search_main
from asl_ray.search.config import PER_RUN_FLAGS, flag_name


# ---- arithmetic -------------------------------------------------------------------------------------------------
def test_asha_expected_epochs_by_hand():
    # Rungs at 2 and 4 of 6, eta 2: 2 epochs for all, 2 more for 1/2, the last 2 for 1/4: 2 + 1 + 0.5.
    assert forecast.asha_epochs(6, 2, 2) == pytest.approx(3.5)
    # Rungs at 3 and 9 of 12, eta 3: 3 + 6/3 + 3/9.
    assert forecast.asha_epochs(12, 3, 3) == pytest.approx(3 + 2 + 1 / 3)
    assert forecast.asha_epochs(4, 4, 2) == 4.0  # no rung below the last epoch: nothing stops early


def test_search_epochs_first_trial_full_length_and_worst_case():
    # The first trial meets empty rungs and runs all 6; the other 5 run 3.5 each; worst: all 6 x 6.
    assert forecast.search_epochs(6, 6, "asha", 2, 2) == (pytest.approx(6 + 5 * 3.5), 36.0)
    assert forecast.search_epochs(6, 6, "fifo", 2, 2) == (36.0, 36.0)
    assert forecast.search_epochs(0, 6, "asha", 2, 2) == (0.0, 0.0)


def test_stage_forecast_by_hand():
    configs = [{"epoch_s": 2.0, "fixed_s": 10.0}, {"epoch_s": 4.0, "fixed_s": 10.0}]
    s = forecast.stage_forecast(configs, 3, 6, "asha", 2, 2, 1, baselines=[])
    # mean config: 3 s/epoch, 10 s fixed. First: 10 + 6 x 3 = 28; two more: 10 + 3.5 x 3 = 20.5 each.
    assert s["expected_s"] == pytest.approx(28 + 2 * 20.5)
    assert s["worst_s"] == pytest.approx(3 * (10 + 6 * 4))  # every trial the slowest config, full length
    baseline = {"epoch_s": 5.0, "fixed_s": 12.0}  # the baseline runs first, full length
    s = forecast.stage_forecast(configs, 3, 6, "asha", 2, 2, 2, baselines=[baseline])
    assert s["expected_s"] == pytest.approx((12 + 30 + 2 * 20.5) / 2)
    assert s["worst_s"] == pytest.approx(3 * (12 + 30) / 2)
    c = forecast.confirm_forecast(6, [40.0, 60.0], 1)
    assert (c["expected_s"], c["worst_s"]) == (pytest.approx(300.0), pytest.approx(360.0))


def test_cannot_measure_reasons():
    sc = SimpleNamespace(address=None, gpu="rtx4070")
    assert "cannot be measured" in forecast.cannot_measure_reason(sc, gpu_given=True, cuda_available=False)
    assert forecast.cannot_measure_reason(sc, gpu_given=True, cuda_available=True) == ""
    assert forecast.cannot_measure_reason(sc, gpu_given=False, cuda_available=False) == ""  # runs on this CPU
    assert "--address" in forecast.cannot_measure_reason(SimpleNamespace(address="auto", gpu="rtx4070"), False, True)


def test_dry_run_is_a_per_run_flag():
    assert "dry_run" in PER_RUN_FLAGS and flag_name("dry_run") == "--dry-run"


# ---- the dry run end to end (no Ray) ------------------------------------------------------------------------------
def _tiny_space(path):
    space = {"gpu": 0.7, "headroom_mb": 0, "sampler": "tpe", "scheduler": "asha", "seed": 0,
             "budget": {"trials": 3, "epochs": 4, "grace_period": 1, "reduction_factor": 2, "max_steps_per_epoch": 4},
             "fixed": {"depth": 1, "dim": 32, "max_len": 32, "num_workers": 0, "throughput_warmup_steps": 1},
             "params": {"effective_batch_size": {"type": "categorical", "choices": [16, 32]},
                        "lr_per_64": {"type": "categorical", "choices": [1e-3, 4e-3]}},
             "plans": {"batch_size": [8, 16]},
             "plan_search": {"mode": "measure", "warmup_steps": 0, "steps": 1, "max_plans": 2},
             "confirm": {"seeds": 1, "finalists": 2}}
    path.write_text(f"# python -m asl_ray.search --space {path.name}\n" + yaml.safe_dump(space, sort_keys=False))
    return path


@pytest.fixture
def dry(tmp_path, synth_root, synth_cache, monkeypatch):
    """Run `--dry-run` with extra flags; starting Ray fails the test."""
    from asl_ray.search import ray_cluster
    monkeypatch.setattr(ray_cluster, "start_ray", lambda *a, **k: pytest.fail("a dry run started Ray"))
    space = _tiny_space(tmp_path / "space.yaml")
    ray_before = "ray" in sys.modules

    def run(*extra):
        code = search_main(["--space", str(space), "--data", str(synth_root), "--cache-dir",
                            str(synth_cache.path.parent), "--storage-path", str(tmp_path / "runs"), "--name", "d",
                            "--dry-run", *extra])
        if not ray_before:
            assert "ray" not in sys.modules, "a dry run imported Ray"
        return code, tmp_path / "runs" / "d"
    return run


def test_a_cpu_dry_run_measures_and_writes_its_forecast(dry, capsys):
    code, root = dry()
    assert code == 0
    f = json.loads((root / forecast.FORECAST_JSON).read_text())
    assert f["measured"] and f["device"].startswith("cpu")
    # lr_per_64 changes no verdict: 2 memory-relevant rows stand for the 4 grid points.
    assert f["fit"]["learning_configs"] == 4 and f["fit"]["fit"] == 4 and len(f["fit"]["rows"]) == 2
    assert len(f["units"]) == 2 and all(u["samples_per_s"] > 0 for u in f["units"])  # 16x1 and 32x1... as kept
    s = f["stages"]
    assert s["search"]["trials"] == 3 and 0 < s["search"]["expected_s"] <= s["search"]["worst_s"]
    assert s["confirmation"]["runs"] == 2
    assert s["total"]["expected_s"] == pytest.approx(s["search"]["expected_s"] + s["confirmation"]["expected_s"])
    md = (root / forecast.FORECAST_MD).read_text()
    assert "## Forecast" in md and "not measured by the dry run" in md
    # Nothing of a search: no Tune folder, no saved flags (the real run after it must not become a dry run).
    assert not (root / "tune").exists() and not (root / "search_args.json").exists()
    assert "dry run: no Ray started" in capsys.readouterr().out


def test_a_gpu_target_without_cuda_forecasts_no_seconds(dry, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, root = dry("--gpu", "rtx4070")
    assert code == 0  # the fit counts are still an answer
    f = json.loads((root / forecast.FORECAST_JSON).read_text())
    assert not f["measured"] and "cannot be measured" in f["why_not_measured"]
    assert f["stages"] == {} and f["units"] == [] and f["fit"]["learning_configs"] == 4
    assert "Not measured: --gpu rtx4070" in (root / forecast.FORECAST_MD).read_text()


# ---- forecast vs actual ---------------------------------------------------------------------------------------
def test_forecast_vs_actual_lines(tmp_path):
    assert "No forecast (run `--dry-run`" in forecast_actual.report_section(tmp_path)
    (tmp_path / forecast.FORECAST_JSON).write_text(json.dumps({
        "measured": True, "created": "today", "device": "cpu",
        "stages": {"search": {"expected_s": 100.0, "worst_s": 150.0},
                   "confirmation": {"expected_s": 200.0, "worst_s": 240.0},
                   "total": {"expected_s": 300.0, "worst_s": 390.0}}}))
    forecast_actual.record_stage(tmp_path, started=0.0, resumed=False)
    forecast_actual.record_stage(tmp_path, search_s=110.0, confirmation_s=180.0, total_s=300.0)
    rows = {r["stage"]: r for r in forecast_actual.comparison_rows(forecast_actual.load_forecast(tmp_path),
                                                           json.loads((tmp_path / forecast_actual.STAGE_TIMES).read_text()))}
    assert rows["main search"]["error"] == pytest.approx(0.10)
    assert rows["confirmation"]["error"] == pytest.approx(-0.10)
    assert rows["total"]["error"] == pytest.approx(0.0)
    text = forecast_actual.report_section(tmp_path)
    assert "## Forecast vs actual" in text and "+10%" in text and "-10%" in text
    per, after, started = forecast_actual.eta_inputs(tmp_path, "search")
    assert per is None and after == 200.0 and started == 0.0  # no per-trial figure in this hand-made file


def test_durations_are_shown_in_units_that_read():
    assert forecast_actual.duration_text(45) == "45 s" and forecast_actual.duration_text(300) == "5.0 min"
    assert forecast_actual.duration_text(3 * 3600) == "3.0 h" and forecast_actual.duration_text(math.nan) == "?"
