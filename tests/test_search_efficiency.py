"""bench/search_efficiency.py without running it: its arms' space files, their commands, and its scoring."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from asl_ray.search.__main__ import build_parser as search_parser
from asl_ray.search.space import load_space
from asl_ray.train.__main__ import build_parser as train_parser

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "search_spaces" / "cpu-smoke.yaml"
_spec = importlib.util.spec_from_file_location("search_efficiency", REPO / "bench" / "search_efficiency.py")
se = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = se  # dataclasses look their module up
_spec.loader.exec_module(se)


def test_the_arms_and_their_space_files(tmp_path):
    arms = se.plan_arms(SMOKE, tmp_path, seeds=[0, 1], search_trials=0, kinds=("two-level", "one-level"))
    assert [a.name for a in arms] == ["grid", "two-level-s0", "one-level-s0", "two-level-s1", "one-level-s1"]
    assert [a.name for a in se.plan_arms(SMOKE, tmp_path, seeds=[0], search_trials=0)] == ["grid", "two-level-s0"]
    smoke = load_space(SMOKE)
    for arm in arms:
        assert arm.space.read_text().startswith(f"# python -m asl_ray.search --space {arm.space}\n")
        space = load_space(arm.space)  # every arm's file is a valid space
        assert (space.params, space.plans, space.budget.epochs, space.budget.grace_period, space.fixed) == (
            smoke.params, smoke.plans, smoke.budget.epochs, smoke.budget.grace_period, smoke.fixed)
        assert space.confirm == smoke.confirm  # the shipped confirmation stage, in every arm
    grid = load_space(arms[0].space)
    # The product space: every micro-batch x learning config once, all epochs; a micro-batch that does not
    # divide the effective batch (48 of 24) is no point: 8 learning configs x 4 micro-batches - 2 x 2.
    assert (grid.sampler, grid.scheduler, grid.plan_search.mode) == ("grid", "fifo", "optuna")
    assert grid.grid_size() == 32 and grid.budget.trials == 28 == se.runnable_points(grid)
    assert grid.trials_to_run(grid.budget.trials) == 28 and grid.baselines == ()
    for arm in arms[1:]:
        space = load_space(arm.space)
        assert (space.sampler, space.scheduler, space.seed) == (smoke.sampler, smoke.scheduler, arm.seed)
        assert space.plan_search.mode == "measure" and space.budget.trials == smoke.budget.trials
        assert space.baselines == smoke.baselines and space.baseline_plans == smoke.baseline_plans
    assert load_space(se.plan_arms(SMOKE, tmp_path, [3], search_trials=5)[1].space).budget.trials == 5


def test_the_commands_are_the_real_clis_with_the_arms_flags(tmp_path):
    arms = {a.name: a for a in se.plan_arms(SMOKE, tmp_path, seeds=[0], search_trials=0,
                                            kinds=("two-level", "one-level"))}
    data = tmp_path / "data"
    for name, arm in arms.items():
        cmd = se.search_command(arm, tmp_path, data, confirm=None)
        assert cmd[:3] == [sys.executable, "-m", "asl_ray.search"]
        given = {str(v) for v in vars(search_parser().parse_args(cmd[3:])).values()}  # its own parser takes it
        assert {str(arm.space), name, str(tmp_path), str(data), "noise-aware"} <= given
        assert ("optuna" in given) == name.startswith("one-level")  # the grid has mode optuna in its file
        assert "--confirm" not in cmd  # the space's own confirmation stage
    confirmed = se.search_command(arms["two-level-s0"], tmp_path, data, confirm=2)
    assert confirmed[confirmed.index("--confirm") + 1] == "2"
    (tmp_path / "grid" / "tune").mkdir(parents=True)  # interrupted earlier: finish it
    resumed = se.search_command(arms["grid"], tmp_path, data, confirm=None)
    assert resumed[3:] == ["--storage-path", str(tmp_path), "--name", "grid", "--resume"]

    out = se.retrain_dir(tmp_path, arms["grid"], 1, 7001)
    cmd = se.retrain_command(tmp_path / "grid" / "best_config.yaml", data, 1, 7001, out)
    assert cmd[:3] == [sys.executable, "-m", "asl_ray.train"]
    args = train_parser().parse_args(cmd[3:])
    assert (str(args.data), str(args.config), args.overrides, str(args.out)) == (
        str(data), str(tmp_path / "grid" / "best_config.yaml"), ["fold=1", "seed=7001"], str(out))


def test_dry_run_prints_every_command_and_runs_nothing(tmp_path, capsys):
    assert se.main(["--dry-run", "--storage-path", str(tmp_path), "--seeds", "0", "1", "--retrain-folds", "0", "1",
                    "--retrain-seeds", "5", "6"]) == 0
    lines = capsys.readouterr().out.splitlines()
    searches = [line for line in lines if " -m asl_ray.search " in line]
    retrains = [line for line in lines if " -m asl_ray.train " in line]
    assert len(searches) == 3 and len(retrains) == 3 * 4 and len(lines) == 15
    assert not any((tmp_path / name).exists() for name in ("grid", "two-level-s0"))  # no arm ran


def _pick(accs, speeds):
    return se.Retrained(tuple(accs), tuple(speeds))


def test_a_pick_is_compared_with_the_grids_paired_over_the_pairs():
    grid = _pick([0.50, 0.52, 0.47, 0.55], [100.0, 110.0, 95.0, 105.0])
    close = _pick([0.49, 0.52, 0.46, 0.545], [300.0, 330.0, 290.0, 310.0])  # 0.005 lower on average, 3x faster
    c = se.compare(close, grid)
    assert c.accuracy.mean == pytest.approx(-0.00625) and c.accuracy.n == 4
    low = -0.00625 - scipy_stats.t.ppf(0.95, 3) * c.accuracy.sd / 2
    assert c.accuracy_low(0.05) == pytest.approx(low) and c.equivalent_or_better(0.02, 0.05)
    assert c.ratio() == pytest.approx(3.0, rel=0.02) and c.at_least_as_fast(0.05)
    worse = se.compare(_pick([0.40, 0.43, 0.36, 0.45], [100.0] * 4), grid)
    assert not worse.equivalent_or_better(0.02, 0.05) and not worse.at_least_as_fast(0.05)  # 0.95-1.05x: not shown
    noisy = se.compare(_pick([0.30, 0.70, 0.40, 0.62], [100.0, 110.0, 95.0, 105.0]), grid)
    assert not noisy.equivalent_or_better(0.02, 0.05)  # as accurate on average: too noisy to show it


def test_an_arm_is_scored_over_its_search_seeds():
    grid = _pick([0.5] * 4, [100.0] * 4)
    seeds = [se.compare(_pick([0.5 + d] * 4, [100.0 * r] * 4), grid)
             for d, r in ((0.0, 2.0), (0.01, 2.2), (-0.01, 1.8))]
    overall = se.over_seeds(seeds)
    assert overall.accuracy.n == 3 and overall.accuracy.mean == pytest.approx(0.0)
    assert overall.accuracy.sd == pytest.approx(0.01)  # the spread between the searches' picks
    goal = se.verdicts(overall, 200.0, 1000.0, 0.02, 0.05)
    assert goal == {"equivalent_or_better": True, "at_least_as_fast": True, "cost_fraction": 0.2, "within_cost": True,
                    "goal_met": True}
    assert not se.verdicts(overall, 400.0, 1000.0, 0.02, 0.05)["goal_met"]  # over 30% of the grid


def test_the_retrainings_noise_and_what_they_show():
    rng = np.random.default_rng(0)
    pair = rng.normal(0, 0.03, 12)
    picks = [_pick(0.5 + d + pair + rng.normal(0, 0.01, 12), 100.0 * np.exp(rng.normal(0, 0.05, 12)))
             for d in (0.0, -0.03, 0.01)]
    noise = se.measured_noise(picks)
    assert noise["own_sd"] == pytest.approx(0.01, rel=0.35) and noise["shared_sd"] == pytest.approx(0.03, rel=0.5)
    assert noise["speed_cv"] == pytest.approx(0.05, rel=0.35)
    assert np.isnan(se.measured_noise(picks[:1])["own_sd"])
    truths = {"grid": _pick([0.50] * 3, [100.0] * 3), "a": _pick([0.47] * 3, [300.0] * 3),
              "b": _pick([0.495] * 3, [50.0] * 3)}
    assert se.observed_rates(truths, ["a", "b"], 0.02) == {"worse": 0.5, "missed": 0.5, "arms": 2}


def test_trial_seconds_count_launched_trials_and_confirmations():
    trials = pd.DataFrame({"status": ["ok", "stopped", "rejected", "no_plan", "oom"],
                           "trial_seconds": [40.0, 10.0, float("nan"), 0.5, 5.0],
                           "plan_search_seconds": [3.0, 2.0, float("nan"), 0.1, 1.0]})
    assert se.trial_seconds(se.ArmRun(trials, None, 1.0)) == 55.0
    confirm = pd.DataFrame({"trial_seconds": [30.0, 31.0]})
    run = se.ArmRun(trials, confirm, 1.0)
    assert se.trial_seconds(run) == 116.0 and se.confirm_seconds(run) == 61.0
    assert se.probe_seconds(run) == pytest.approx(6.1)


def test_best_config_is_checked_against_the_pick(tmp_path):
    space = load_space(SMOKE)
    cfg = space.config_for({"effective_batch_size": 48, "dim": 64, "max_len": 32, "batch_size": 12})
    cfg.to_yaml(tmp_path / "best_config.yaml")
    names = [*space.param_names(), *space.plan_names()]
    pick = {"effective_batch_size": 48, "dim": 64, "max_len": 32, "batch_size": 12, "gradient_accumulation_steps": 4}
    assert se.matches_pick(tmp_path / "best_config.yaml", pick, names)
    assert not se.matches_pick(tmp_path / "best_config.yaml", {**pick, "dim": 32}, names)
    assert not se.matches_pick(tmp_path / "missing.yaml", pick, names)


def test_the_bench_imports_no_ray():
    code = (f"import importlib.util, sys; s = importlib.util.spec_from_file_location('b', "
            f"{str(REPO / 'bench' / 'search_efficiency.py')!r}); m = importlib.util.module_from_spec(s); "
            "sys.modules['b'] = m; s.loader.exec_module(m); assert 'ray' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


PAIRS = [(0, 1), (0, 2), (1, 1), (1, 2)]


def _fake_arm(storage, space, name, rows, picked, retrain, confirm=None):
    """A finished arm as the search leaves it (trials.parquet, confirm.parquet, best_config.yaml, its wall time),
    with finished re-trainings: what --reuse reads instead of running anything. `retrain`: (acc, samples/s) per
    pair; `confirm`: {trial: [acc per confirmation pair]}."""
    root = storage / name
    root.mkdir(parents=True)
    frame = pd.DataFrame([{"trial_id": f"{name}-{i}", "status": status, "feasible": status == "ok", "val_acc": acc,
                           "val_samples": 400, "samples_per_s": sps, "trial_seconds": secs, "plan_search_seconds": 1.0,
                           "device": "cpu", "effective_batch_size": 48, "dim": dim, "max_len": 64, "batch_size": 12,
                           "gradient_accumulation_steps": 4, "baseline": "", "val_acc_curve": json.dumps([acc] * 6)}
                          for i, (dim, acc, sps, secs, status) in enumerate(rows)])
    frame.to_parquet(root / "trials.parquet")
    if confirm:
        pd.DataFrame([{"finalist": f"{name}-{i}", "trial_id": f"c-{name}-{i}-{k}", "fold": 0, "seed": 1042 + k,
                       "status": "ok", "val_acc": a, "val_samples": 400, "samples_per_s": rows[i][2],
                       "trial_seconds": 20.0} for i, accs in confirm.items() for k, a in enumerate(accs)]
                     ).to_parquet(root / "confirm.parquet")
    space.config_for({"effective_batch_size": 48, "dim": picked, "max_len": 64, "batch_size": 12}).to_yaml(
        root / "best_config.yaml")
    (root / se.WALL_FILE).write_text('{"wall_seconds": 10.0}')
    for (fold, seed), (acc, speed) in zip(PAIRS, retrain):
        out = root / f"retrain-f{fold}-s{seed}"
        out.mkdir()
        (out / "result.json").write_text(json.dumps({"status": "ok", "feasible": True, "val_acc": acc,
                                                     "val_samples": 400, "samples_per_s_median": speed}))


def test_reused_arms_are_scored_and_the_goal_checked(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(se, "run_own_session", lambda *a, **k: pytest.fail(f"ran {a}"))
    space = load_space(SMOKE)
    # The grid spends 1000 trial-s (940 + 3 x 20 of confirmation) and picks dim 64; both two-level searches pick
    # dim 32, as accurate on the re-trainings and about twice as fast, for 14% of the grid's trial-seconds.
    _fake_arm(tmp_path, space, "grid", [(64, 0.61, 100.0, 600.0, "ok"), (32, 0.40, 300.0, 340.0, "ok")], 64,
              [(0.60, 100.0), (0.61, 104.0), (0.59, 98.0), (0.62, 101.0)], confirm={0: [0.60, 0.61, 0.59]})
    for seed in (0, 1):
        _fake_arm(tmp_path, space, f"two-level-s{seed}", [(32, 0.60, 200.0, 80.0, "ok"),
                                                          (64, 0.0, 0.0, float("nan"), "no_plan")], 32,
                  [(0.60 + 0.002 * seed, 200.0), (0.61, 206.0), (0.59 - 0.002 * seed, 197.0), (0.62, 203.0)],
                  confirm={0: [0.60, 0.61, 0.59]})
    results = tmp_path / "results"
    assert se.main(["--reuse", "--storage-path", str(tmp_path), "--seeds", "0", "1", "--retrain-folds", "0", "1",
                    "--retrain-seeds", "1", "2", "--out", str(results), "--replications", "50"]) == 0
    out = capsys.readouterr().out
    assert "goal (two-level)" in out and "s0 met" in out and "Spearman" in out and "simulated (equal)" in out
    record = json.loads(next(results.glob("search_efficiency-cpu-*.json")).read_text())
    arms = record["arms"]
    assert arms["grid"]["trial_seconds"] == 1000.0 and arms["two-level-s0"]["trial_seconds"] == 140.0
    assert arms["grid"]["confirm_seconds"] == 60.0 and arms["two-level-s0"]["probe_seconds"] == 2.0
    assert arms["grid"]["pick"]["dim"] == 64 and all(a["best_config_matches_pick"] for a in arms.values())
    assert arms["two-level-s0"]["vs_grid"]["speed_ratio"] == pytest.approx(2.0, rel=0.02)
    goal = record["totals"]["two-level"]["goal"]
    assert goal["cost_fraction"] == 0.14 and goal["equivalent_or_better"] and goal["goal_met"]
    assert record["retrain_pairs"] == [list(p) for p in PAIRS]
