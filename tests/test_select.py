"""The noise-aware selection on synthetic results whose noise is known: a config a little worse than the
best (within the one-sided z of the difference's SE) is not 'worse', so the faster one is picked; a
config far worse is; seed confirmations replace the binomial SE by the pooled run-to-run spread."""
import math

import pandas as pd
import pytest

from asl_ray.config import ConfigError
from asl_ray.search.select import (Selection, accuracy_estimates, binomial_se, finalists, indistinguishable,
                                   seed_baseline, select_best)

N = 400  # validation samples


def _trials(*rows) -> pd.DataFrame:
    """rows: (trial_id, val_acc, samples_per_s[, status[, baseline]])."""
    out = []
    for r in rows:
        tid, acc, speed, status, baseline = (*r, "ok", "")[:5] if len(r) == 3 else (*r, "")[:5]
        out.append({"trial_id": tid, "status": status, "feasible": status in ("ok", "stopped"), "baseline": baseline,
                    "val_acc": acc, "val_samples": N, "samples_per_s": speed})
    return pd.DataFrame(out)


def _below(best: float, k: float) -> float:
    """The accuracy k standard errors of the difference below `best` (each side's binomial SE at n=N)."""
    x = best
    for _ in range(50):  # fixed point: the SE depends on x itself
        x = best - k * math.sqrt(binomial_se(best, N) ** 2 + binomial_se(x, N) ** 2)
    return x


@pytest.mark.parametrize("k, picked", [(1.0, "fast"), (1.6, "fast"), (1.7, "accurate"), (5.0, "accurate")])
def test_a_config_within_z_se_of_the_best_is_not_worse_and_the_faster_wins(k, picked):
    df = _trials(("accurate", 0.50, 100.0), ("fast", _below(0.50, k), 300.0), ("slowest", 0.2, 50.0))
    assert select_best(df, Selection())["trial_id"] == picked  # z 1.645 sits between 1.6 and 1.7
    assert select_best(df, Selection("most-accurate"))["trial_id"] == "accurate"
    assert select_best(df, Selection("fastest"))["trial_id"] == "fast"
    # z is the rule's: a stricter z lets the 1.7-SE config through
    assert select_best(df, Selection(z=1.8))["trial_id"] == ("fast" if k < 1.8 else "accurate")


def test_only_finished_feasible_trials_compete_and_margin_rule_is_kept():
    df = _trials(("ok", 0.50, 100.0), ("stopped", 0.9, 900.0, "stopped"), ("oom", 0.9, 900.0, "oom"),
                 ("close", 0.495, 150.0), ("off", 0.48, 200.0))
    assert select_best(df, Selection("fastest"))["trial_id"] == "off"
    assert select_best(df, Selection("fastest-within-margin", margin=0.01))["trial_id"] == "close"
    best = select_best(df, Selection())
    assert best["acc_se"] == pytest.approx(math.sqrt(0.48 * 0.52 / N)) and best["acc_source"] == "binomial"
    assert list(accuracy_estimates(df).index) == [0, 3, 4]
    assert select_best(_trials(("x", 0.5, 1.0, "oom")), Selection()) is None


def test_confirmations_pool_the_seed_spread_into_every_se():
    df = _trials(("a", 0.50, 100.0), ("b", 0.48, 200.0), ("c", 0.30, 300.0))
    confirmations = pd.DataFrame({
        "finalist": ["a", "a", "b", "b", "b"], "trial_id": ["a1", "a2", "b1", "b2", "b3"],
        "seed": [1042, 1043, 1042, 1043, 1044], "status": ["ok", "ok", "ok", "ok", "error"],
        "val_acc": [0.40, 0.60, 0.50, 0.46, 0.0], "val_samples": N})
    est = accuracy_estimates(df, confirmations).set_index(df["trial_id"])
    pooled = math.sqrt((2 * 0.01 + 2 * 0.0004) / 4)  # runs a: .5 .4 .6 (var .01); b: .48 .5 .46 (var .0004)
    assert est.loc["a", "acc_mean"] == pytest.approx(0.5) and est.loc["a", "acc_runs"] == 3
    assert est.loc["a", "acc_se"] == pytest.approx(pooled / math.sqrt(3)) and est.loc["a", "acc_source"] == "seeds"
    assert est.loc["b", "acc_runs"] == 3  # the failed run is left out
    # an unconfirmed single run: max(binomial 0.023, pooled 0.072)
    assert est.loc["c", "acc_se"] == pytest.approx(pooled) and est.loc["c", "acc_source"] == "seeds"
    # a spread smaller than one run's binomial noise: the binomial floor holds
    tight = confirmations.assign(val_acc=[0.5, 0.5, 0.48, 0.48, 0.0])
    est = accuracy_estimates(df, tight).set_index(df["trial_id"])
    assert est.loc["a", "acc_source"] == "binomial"
    assert est.loc["a", "acc_se"] == pytest.approx(binomial_se(0.5, N) / math.sqrt(3))
    assert est.loc["c", "acc_se"] == pytest.approx(binomial_se(0.3, N))


def test_a_measured_seed_spread_can_change_the_pick():
    df = _trials(("accurate", 0.56, 100.0), ("fast", 0.48, 300.0))
    assert select_best(df, Selection())["trial_id"] == "accurate"  # binomial: 0.08 > 1.645 x 0.035
    confirmations = pd.DataFrame({"finalist": ["accurate"] * 2 + ["fast"] * 2, "trial_id": list("wxyz"),
                                  "seed": [1, 2, 1, 2], "status": "ok", "val_acc": [0.46, 0.66, 0.38, 0.58],
                                  "val_samples": N})
    best = select_best(df, Selection(), confirmations)  # seed sd 0.1: 0.08 < 1.645 x 0.082
    assert best["trial_id"] == "fast" and best["acc_runs"] == 3 and best["acc_mean"] == pytest.approx(0.48)


def test_finalists_pick_most_accurate_default_then_fast_contenders_each_once():
    df = _trials(("accurate", 0.50, 100.0), ("pick", 0.49, 400.0), ("default", 0.30, 50.0, "ok", "default"),
                 ("second", 0.485, 300.0), ("third", 0.48, 200.0), ("poor", 0.30, 1000.0),
                 ("gone", 0.6, 900.0, "stopped"))
    assert finalists(df, Selection(), 10) == ["pick", "accurate", "default", "second", "third"]
    assert finalists(df, Selection(), 2) == ["pick", "accurate"]
    assert finalists(df, Selection("most-accurate"), 3) == ["accurate", "default", "pick"]
    # the default being the most accurate one is listed once
    df2 = _trials(("d", 0.5, 100.0, "ok", "default"), ("p", 0.49, 400.0))
    assert finalists(df2, Selection(), 5) == ["p", "d"]
    assert finalists(_trials(("x", 0.5, 1.0, "oom")), Selection(), 3) == []


def test_without_a_default_baseline_the_first_baseline_stands_for_the_seed():
    assert seed_baseline(("fast", "default")) == "default" and seed_baseline(("baseline0", "baseline1")) == "baseline0"
    assert seed_baseline(()) is None
    # both baselines are credibly below the pick: only the seed's one is a finalist
    df = _trials(("first", 0.30, 60.0, "ok", "baseline0"), ("p", 0.50, 400.0),
                 ("second", 0.30, 50.0, "ok", "baseline1"))
    assert finalists(df, Selection(), 3) == ["p", "first"]  # row order: Optuna runs the baselines in file order
    assert finalists(df, Selection(), 3, reference="baseline1") == ["p", "second"]


def test_indistinguishable_is_two_sided_at_z_times_the_combined_se():
    a = pd.Series({"acc_mean": 0.50, "acc_se": 0.03})
    b = pd.Series({"acc_mean": 0.45, "acc_se": 0.04})  # combined SE 0.05
    assert indistinguishable(a, b) and indistinguishable(b, a)
    assert indistinguishable(a, b, z=1.0) and not indistinguishable(a, b, z=0.99)
    raw = pd.Series({"val_acc": 0.5, "val_samples": 400})  # one run: binomial SE 0.025
    assert indistinguishable(raw, pd.Series({"val_acc": 0.45, "val_samples": 400}))
    assert not indistinguishable(raw, pd.Series({"val_acc": 0.40, "val_samples": 400}))


def test_selection_refuses_bad_values_in_one_error():
    with pytest.raises(ConfigError) as e:
        Selection("best", z=float("nan"), margin=2.0)
    assert "--select" in str(e.value) and "--z" in str(e.value) and "--margin" in str(e.value)
    assert "1.645" in Selection().describe() and "credibly below" in Selection().describe()
