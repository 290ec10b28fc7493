"""bench/search_efficiency.py without running it: its arms' space files, their commands, and its scoring."""
import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

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
    arms = se.plan_arms(SMOKE, tmp_path, seeds=[0, 1], search_trials=0)
    assert [a.name for a in arms] == ["grid", "one-level-s0", "two-level-s0", "one-level-s1", "two-level-s1"]
    smoke = load_space(SMOKE)
    for arm in arms:
        assert arm.space.read_text().startswith(f"# python -m asl_ray.search --space {arm.space}\n")
        space = load_space(arm.space)  # every arm's file is a valid space
        assert (space.params, space.plans, space.budget.epochs, space.budget.grace_period, space.fixed) == (
            smoke.params, smoke.plans, smoke.budget.epochs, smoke.budget.grace_period, smoke.fixed)
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
    arms = {a.name: a for a in se.plan_arms(SMOKE, tmp_path, seeds=[0], search_trials=0)}
    data = tmp_path / "data"
    for name, arm in arms.items():
        cmd = se.search_command(arm, tmp_path, data, confirm=0)
        assert cmd[:3] == [sys.executable, "-m", "asl_ray.search"]
        given = {str(v) for v in vars(search_parser().parse_args(cmd[3:])).values()}  # its own parser takes it
        assert {str(arm.space), name, str(tmp_path), str(data), "noise-aware", "0"} <= given
        assert ("optuna" in given) == name.startswith("one-level")  # the grid has mode optuna in its file
        assert cmd[cmd.index("--confirm") + 1] == "0" and cmd[cmd.index("--select") + 1] == "noise-aware"
    confirmed = se.search_command(arms["two-level-s0"], tmp_path, data, confirm=2)
    assert "2" in {str(v) for v in vars(search_parser().parse_args(confirmed[3:])).values()}
    (tmp_path / "grid" / "tune").mkdir(parents=True)  # interrupted earlier: finish it
    resumed = se.search_command(arms["grid"], tmp_path, data, confirm=0)
    assert resumed[3:] == ["--storage-path", str(tmp_path), "--name", "grid", "--resume"]

    out = se.retrain_dir(tmp_path, arms["grid"], 7001)
    cmd = se.retrain_command(tmp_path / "grid" / "best_config.yaml", data, 7001, out)
    assert cmd[:3] == [sys.executable, "-m", "asl_ray.train"]
    args = train_parser().parse_args(cmd[3:])
    assert (args.data, args.config, args.overrides, args.out) == (
        str(data), str(tmp_path / "grid" / "best_config.yaml"), ["seed=7001"], str(out))


def test_dry_run_prints_every_command_and_runs_nothing(tmp_path, capsys):
    assert se.main(["--dry-run", "--storage-path", str(tmp_path), "--seeds", "0", "1",
                    "--retrain-seeds", "5", "6"]) == 0
    lines = capsys.readouterr().out.splitlines()
    searches = [line for line in lines if " -m asl_ray.search " in line]
    retrains = [line for line in lines if " -m asl_ray.train " in line]
    assert len(searches) == 5 and len(retrains) == 5 * 2 and len(lines) == 15
    assert sum("--plan-search optuna" in line for line in searches) == 2
    assert not any((tmp_path / name).exists() for name in ("grid", "two-level-s0"))  # no arm ran


def _runs(accs, n=400):
    return [{"val_acc": a, "val_samples": n} for a in accs]


def test_quality_floors_a_lucky_small_spread_by_the_binomial_se():
    q = se.quality(_runs([0.5, 0.5, 0.5]))
    assert q.mean == 0.5 and q.sd == 0 and q.se == pytest.approx(math.sqrt(0.25 / 400) / math.sqrt(3))
    wide = se.quality(_runs([0.3, 0.5, 0.7]))
    assert wide.se == pytest.approx(0.2 / math.sqrt(3))
    assert se.quality([]).runs == 0


def test_credibly_below_is_the_noise_aware_test_on_retrained_means():
    best = se.Quality(0.60, 0.01, 0.01, 3)
    assert se.credibly_below(se.Quality(0.55, 0.01, 0.01, 3), best, 1.645)  # 0.05 > 1.645 * 0.0141
    assert not se.credibly_below(se.Quality(0.59, 0.01, 0.01, 3), best, 1.645)
    assert not se.credibly_below(se.Quality(0.65, 0.01, 0.01, 3), best, 1.645)
    assert se.credibly_below(se.Quality(math.nan, math.nan, math.nan, 0), best, 1.645)  # nothing re-trained


def test_pooled_quality_over_search_seeds():
    same = se.pooled([se.Quality(0.5, 0.0, 0.02, 3)] * 3)
    assert same.mean == 0.5 and same.se == pytest.approx(math.sqrt(3 * 0.02 ** 2) / 3) and same.runs == 9
    apart = se.pooled([se.Quality(m, 0.0, 0.001, 3) for m in (0.4, 0.5, 0.6)])
    assert apart.mean == pytest.approx(0.5) and apart.se == pytest.approx(0.1 / math.sqrt(3))


def test_goal_verdicts():
    grid = se.Quality(0.60, 0.02, 0.012, 3)
    good, poor = se.Quality(0.59, 0.02, 0.012, 9), se.Quality(0.50, 0.02, 0.012, 9)
    met = se.verdicts(grid, 1000.0, good, 200.0, good, 300.0, 1.645)
    assert met["goal_met"] and met["two_level_cost_fraction"] == 0.2
    assert not se.verdicts(grid, 1000.0, good, 300.0, good, 400.0, 1.645)["goal_met"]  # over a quarter
    assert not se.verdicts(grid, 1000.0, poor, 200.0, poor, 300.0, 1.645)["goal_met"]  # credibly below grid
    costlier = se.verdicts(grid, 1000.0, good, 200.0, good, 150.0, 1.645)
    assert not costlier["two_level_cheaper_than_one_level_for_as_good"] and not costlier["goal_met"]


def test_trial_seconds_count_launched_trials_and_confirmations():
    trials = pd.DataFrame({"status": ["ok", "stopped", "rejected", "no_plan", "oom"],
                           "trial_seconds": [40.0, 10.0, float("nan"), 0.5, 5.0]})
    assert se.trial_seconds(se.ArmRun(trials, None, 1.0)) == 55.0
    confirm = pd.DataFrame({"trial_seconds": [30.0, 31.0]})
    assert se.trial_seconds(se.ArmRun(trials, confirm, 1.0)) == 116.0


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


def _fake_arm(storage, space, name, rows, picked, retrain_accs, seeds):
    """A finished arm as the search leaves it (trials.parquet, best_config.yaml, its wall time), with
    finished re-trainings: what --reuse reads instead of running anything."""
    root = storage / name
    root.mkdir(parents=True)
    frame = pd.DataFrame([{"trial_id": f"{name}-{i}", "status": status, "feasible": status == "ok", "val_acc": acc,
                           "val_samples": 400, "samples_per_s": sps, "trial_seconds": secs, "device": "cpu",
                           "effective_batch_size": 48, "dim": dim, "max_len": 64, "batch_size": 12,
                           "gradient_accumulation_steps": 4} for i, (dim, acc, sps, secs, status) in enumerate(rows)])
    frame.to_parquet(root / "trials.parquet")
    space.config_for({"effective_batch_size": 48, "dim": picked, "max_len": 64, "batch_size": 12}).to_yaml(
        root / "best_config.yaml")
    (root / se.WALL_FILE).write_text('{"wall_seconds": 10.0}')
    for seed, acc in zip(seeds, retrain_accs):
        out = root / f"retrain-s{seed}"
        out.mkdir()
        (out / "result.json").write_text(f'{{"status": "ok", "feasible": true, "val_acc": {acc}, "val_samples": 400}}')


def test_reused_arms_are_scored_and_the_goal_checked(tmp_path, capsys, monkeypatch):
    import json
    monkeypatch.setattr(se, "run_own_session", lambda *a, **k: pytest.fail(f"ran {a}"))
    space, seeds = load_space(SMOKE), [1, 2]
    # The grid spends 1000 trial-s; its noise-aware pick is dim 64 (dim 32 is faster but credibly below).
    # Every arm picks dim 64, which re-trains to 0.60 +- 0.01; two-level spends 18% of the grid, one-level 35%.
    _fake_arm(tmp_path, space, "grid", [(64, 0.61, 100.0, 600.0, "ok"), (32, 0.40, 300.0, 400.0, "ok")], 64,
              [0.60, 0.61, 0.59], seeds)
    _fake_arm(tmp_path, space, "one-level-s0", [(64, 0.60, 100.0, 300.0, "ok"), (32, 0.3, 90.0, 50.0, "stopped")],
              64, [0.60, 0.61, 0.59], seeds)
    _fake_arm(tmp_path, space, "two-level-s0", [(64, 0.62, 100.0, 180.0, "ok"), (32, 0.0, 0.0, float("nan"),
                                                                                  "no_plan")],
              64, [0.60, 0.61, 0.59], seeds)
    results = tmp_path / "results"
    assert se.main(["--reuse", "--storage-path", str(tmp_path), "--seeds", "0", "--retrain-seeds", "1", "2",
                    "--out", str(results)]) == 0
    out = capsys.readouterr().out
    assert ": met;" in out and "s0 met" in out
    record = json.loads(next(results.glob("search_efficiency-cpu-*.json")).read_text())
    arms = record["arms"]
    assert arms["grid"]["trial_seconds"] == 1000.0 and arms["two-level-s0"]["trial_seconds"] == 180.0
    assert arms["one-level-s0"]["trial_seconds"] == 350.0 and arms["two-level-s0"]["trials"] == 1
    assert arms["grid"]["pick"]["dim"] == 64 and all(a["best_config_matches_pick"] for a in arms.values())
    # A config two arms picked is trained once per seed: the later arms reuse the grid's runs.
    assert arms["grid"]["quality"]["runs"] == 2 and arms["two-level-s0"]["retrain"][0]["same_as"] == "grid"
    assert record["goal"]["overall"]["two_level_cost_fraction"] == 0.18 and record["goal"]["overall"]["goal_met"]
