"""The confirmation runs (no Ray started): every finalist re-trains on the same (fold, seed) pairs, with its own
learning values and plan, and the runs run under the search's own conditions (so their speeds compare)."""
import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from asl_ray.search import confirm
from asl_ray.search.space import load_space

REPO = Path(__file__).resolve().parents[1]


def _trials() -> pd.DataFrame:
    rows = [("a", 48, 64, 64, 12), ("b", 24, 64, 32, 24), ("c", 48, 32, 64, 48)]
    return pd.DataFrame([{"trial_id": t, "status": "ok", "feasible": True, "effective_batch_size": e, "dim": d,
                          "max_len": m, "batch_size": b, "gradient_accumulation_steps": e // b, "seed": 42}
                         for t, e, d, m, b in rows])


def test_every_finalist_runs_the_same_fold_seed_pairs():
    space = load_space(REPO / "search_spaces" / "cpu-smoke.yaml")
    sc = SimpleNamespace(space=space, confirm_folds=2, confirm_seeds=3)
    points = confirm.confirmation_points(sc, _trials(), ["b", "a", "c"])
    pairs = {f: [(fold, seed) for fin, fold, seed, _ in points if fin == f] for f in "abc"}
    expected = [(0, 1042), (0, 1043), (0, 1044), (1, 1042), (1, 1043), (1, 1044)]
    assert pairs["a"] == pairs["b"] == pairs["c"] == expected
    assert [p[0] for p in points] == ["b"] * 6 + ["a"] * 6 + ["c"] * 6  # finalists in their order
    for finalist, fold, seed, cfg in points:
        assert (cfg["fold"], cfg["seed"]) == (fold, seed)
        assert cfg["split_seed"] == space.base_config().split_seed  # one dealing of the signers for every run
    b = next(cfg for fin, _, _, cfg in points if fin == "b")
    assert (b["batch_size"], b["gradient_accumulation_steps"], b["max_len"]) == (24, 1, 32)  # its own plan


def test_confirmation_pairs_wrap_around_the_folds():
    base = load_space(REPO / "search_spaces" / "cpu-smoke.yaml").base_config()
    last = dataclasses.replace(base, fold=4)
    assert confirm.confirmation_pairs(last, 2, 1) == [(4, 1042), (0, 1042)]
    assert confirm.fresh_seeds(42, 2) == [1042, 1043]


def test_confirmation_runs_under_the_searchs_conditions(monkeypatch):
    """As many at once as the search ran trials: one without GPUs (the old stage ran one per CPU, so its speeds
    were not comparable with the search's), one per GPU, or --concurrency."""
    monkeypatch.setattr(confirm.experiment, "cluster_gpus", lambda: 0)
    assert confirm._placement(SimpleNamespace(concurrency=0)) == (False, 1)
    assert confirm._placement(SimpleNamespace(concurrency=3)) == (False, 3)
    monkeypatch.setattr(confirm.experiment, "cluster_gpus", lambda: 2)
    assert confirm._placement(SimpleNamespace(concurrency=0)) == (True, 2)
