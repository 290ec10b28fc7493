"""The decision rule's error rates, by simulating the whole procedure with known truths (fixed RNG, thousands of
replications, seconds): the choice's calibration, and the operating characteristics of the shipped spaces'
designs that docs/search.md states."""
import numpy as np
import pytest

from asl_ray.search import decide
from asl_ray.search.decision_sim import Design, Noise, design_of, main, operating_characteristics, simulate
from asl_ray.search.space import load_space
from conftest import REPO, expect_bad_input

SMOKE_NOISE = Noise()
"""The smoke model's noise on the synthetic set (decision_sim.Noise's defaults, from bench/microbatch_accuracy.py)."""
REAL_NOISE = Noise(own_sd=0.005, shared_sd=0.005, val_samples=18_895)
"""Assumed for the real set (not measured: no session has it): a fold of ~4 of 21 signers, 18,895 validation
sequences, and a run-to-run spread an order of magnitude below the synthetic set's."""


def test_an_equivalence_call_on_a_truly_worse_finalist_happens_at_most_alpha():
    """Two fixed finalists on the same 6 pairs, B truly 1.25 delta below A and 3x faster: B is picked (shown
    equivalent) in at most alpha of the searches; at delta exactly it is the test's boundary, alpha itself."""
    rng = np.random.default_rng(0)
    for gap, bound in ((1.25 * 0.02, 0.05), (0.02, 0.05)):
        picked = 0
        for _ in range(4000):
            pair = rng.normal(0, 0.03, 6)
            acc = np.array([0.5 + pair, 0.5 - gap + pair]) + rng.normal(0, 0.01, (2, 6))
            log_speed = np.log([[100.0] * 6, [300.0] * 6]) + rng.normal(0, 0.03, (2, 6))
            picked += decide.choose(acc, log_speed, 0.02, 0.05).pick == 1
        assert picked / 4000 <= bound + 3 * np.sqrt(bound * (1 - bound) / 4000), gap
    # and it does pick B when B is as accurate: the power the designs trade for
    picked = 0
    for _ in range(2000):
        pair = rng.normal(0, 0.03, 6)
        acc = np.array([0.5 + pair, 0.5 + pair]) + rng.normal(0, 0.005, (2, 6))
        log_speed = np.log([[100.0] * 6, [300.0] * 6]) + rng.normal(0, 0.03, (2, 6))
        picked += decide.choose(acc, log_speed, 0.02, 0.05).pick == 1
    assert picked / 2000 > 0.9


@pytest.mark.parametrize("space, noise, expected", [
    # (P(worse by > delta), P(missed a faster equivalent)) per scenario: docs/search.md, "Deciding under noise".
    ("cpu-smoke", SMOKE_NOISE, {"equal": (0.000, 0.583), "spread": (0.085, 0.174), "boundary": (0.452, 0.000)}),
    ("rtx4070", REAL_NOISE, {"equal": (0.000, 0.318), "spread": (0.001, 0.182), "boundary": (0.015, 0.000)}),
])
def test_the_shipped_designs_error_rates(space, noise, expected):
    design = design_of(load_space(REPO / "search_spaces" / f"{space}.yaml"))
    rates = {r.scenario: r for r in operating_characteristics(design, noise, replications=2000)}
    for name, (worse, missed) in expected.items():
        assert rates[name].worse == pytest.approx(worse, abs=0.005) and rates[name].missed == pytest.approx(missed,
                                                                                                           abs=0.005)
    assert rates["equal"].worse == 0.0  # nothing is worse when every config is as accurate


def test_more_confirmation_runs_lower_the_miss_rate_at_low_noise():
    base = Design(configs=8, trials=6, finalists=3, seeds=2)
    quiet = Noise(own_sd=0.005)
    few = simulate(base, quiet, "equal", replications=1500)
    many = simulate(Design(configs=8, trials=6, finalists=3, seeds=6), quiet, "equal", replications=1500)
    assert many.missed < few.missed - 0.1


def test_the_cli_prints_the_table_and_refuses_bad_values(capsys):
    lines = []
    assert main(["--space", str(REPO / "search_spaces" / "cpu-smoke.yaml"), "--replications", "200"], lines.append) == 0
    text = "\n".join(lines)
    assert "6 of 8 configs trained, 3 finalists x 1 fold(s) x 3 seed(s)" in text and "boundary" in text
    assert "simulated, not measured" in text
    for args in (["--own-sd", "nan"], ["--replications", "0"], ["--alpha", "inf"]):
        err = expect_bad_input(main, capsys, "--space", str(REPO / "search_spaces" / "cpu-smoke.yaml"), *args)
        assert args[0] in err
    err = expect_bad_input(main, capsys, "--space", str(REPO / "search_spaces" / "presets.yaml"))
    assert "--seeds" in err  # a space that confirms nothing
