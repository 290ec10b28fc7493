"""The search's decision procedure simulated with known truths: how often it recommends a config truly worse than
the best by more than delta, and how often it misses a truly faster equivalent one. No Ray; numpy in the loop.

    python -m asl_ray.search.decision_sim --space search_spaces/cpu-smoke.yaml [--own-sd 0.02] [--val-samples 400]
                                          [--replications 4000] [--seed 0]

One replication runs the whole procedure (decide.py's functions, the ones the search calls) on configs whose true
accuracy on the validation signers and true samples/s are known (`scenario`):
1. search: `trials` distinct configs are trained once each, the seed's default among them (baselines run first),
   the others drawn at random (a stand-in for the sampler, which never runs a config twice). A run's accuracy is
   its truth + the effect of the search's (fold, seed) pair, shared by every search run + its own noise (`Noise`);
   its speed the truth x lognormal noise.
2. finalists: decide.finalists on those runs, each with its binomial SE at `val_samples`, as the search has it.
3. confirmation: every finalist on the same folds x seeds pairs, each pair's effect shared by the finalists,
   each run's noise its own.
4. choice: decide.choose.
Outcomes, against the truths of the configs the search trained (what the decision could see):
- worse: the pick is truly below the best of them by more than delta;
- missed: one of them is truly within delta / 2 of the best and truly faster than the pick by SPEED_MARGIN or
  more, and the pick is not it (nor one as fast);
- default: the pick is the seed's default config.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from asl_ray.config import UserInputError, section
from asl_ray.search import decide

SPEED_MARGIN = 0.10
"""'Truly faster' means faster by at least this fraction (speeds are measured with a few % of noise)."""
SCENARIOS = ("equal", "spread", "boundary")
"""equal: every config as accurate (nothing can be worse; `missed` is the rule's power); spread: true accuracies
N(base, spread_sd) (a landscape like the smoke grid's); boundary: the least favourable case for `worse`: the
space is the trained configs, the slowest is the best and every other is truly worse by 1.25 delta, just beyond
the margin, and faster."""


@dataclass(frozen=True)
class Design:
    """What a search's file and flags fix: how many configs it can see, trains and confirms."""
    configs: int
    """Distinct learning configs in the space (the grid size for a space of categorical knobs)."""
    trials: int
    """Configs the search trains (the default among them)."""
    finalists: int
    """Configs re-trained (at least the most accurate and the default)."""
    seeds: int
    """Confirmation seeds per fold."""
    folds: int = 1
    """Confirmation folds (each finalist runs every (fold, seed) pair)."""


@dataclass(frozen=True)
class Noise:
    """The noise a run's figures carry. A run's accuracy = its config's truth + its (fold, seed) pair's effect,
    shared by every config run on that pair (the same held-out signers, the same data order and augmentations) +
    its own noise, which pairing does not remove. Defaults: the smoke model on the synthetic set
    (bench/results/microbatch_accuracy-smoke-cpu-x86_64.json: run sd 0.040 on one split; configs sharing their
    architecture differ by a paired sd of 0.012-0.020, so own sd 0.008-0.014; configs of other widths share less)."""
    own_sd: float = 0.02
    """sd of a run's own accuracy noise (a paired difference of two configs has sd sqrt(2) x this)."""
    shared_sd: float = 0.035
    """sd of a (fold, seed) pair's effect on every config run on it."""
    val_samples: int = 400
    """Validation size: the binomial SE the search gives one run."""
    speed_cv: float = 0.05
    """sd of log(measured / true samples/s) of one run."""


@dataclass(frozen=True)
class Rates:
    scenario: str
    replications: int
    worse: float
    """P(the pick is truly worse than the best trained config by more than delta)."""
    missed: float
    """P(a trained config truly within delta/2 of the best and truly >= SPEED_MARGIN faster than the pick is missed)."""
    default: float
    """P(the pick is the seed's default)."""
    true_loss: float
    """Mean true accuracy of the best trained config minus the pick's."""

    def se(self, p: float) -> float:
        """Monte-Carlo SE of a rate."""
        return math.sqrt(max(p * (1 - p), 1e-12) / self.replications)


def scenario(name: str, configs: int, delta: float, rng: np.random.Generator, base: float = 0.25,
             spread_sd: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    """(true accuracies, true samples/s) of `configs` configs; config 0 is the seed's default."""
    speed = np.exp(rng.uniform(np.log(100.0), np.log(400.0), configs))
    if name == "equal":
        return np.full(configs, base), speed
    if name == "spread":
        return np.clip(base + rng.normal(0.0, spread_sd, configs), 0.0, 1.0), speed
    if name == "boundary":
        accuracy = np.full(configs, base - 1.25 * delta)
        slowest = int(np.argmin(speed))
        accuracy[slowest] = base
        return accuracy, speed
    raise ValueError(f"scenario: one of {', '.join(SCENARIOS)}, got {name!r}")


def replicate(accuracy: np.ndarray, speed: np.ndarray, design: Design, noise: Noise, delta: float, alpha: float,
              rng: np.random.Generator) -> tuple[int, np.ndarray]:
    """One search on these truths: (the picked config, the configs trained)."""
    others = rng.permutation(np.arange(1, len(accuracy)))[:max(0, design.trials - 1)]
    trained = np.concatenate([[0], others])
    search_pair = rng.normal(0.0, noise.shared_sd)
    run_acc = np.clip(accuracy[trained] + search_pair + rng.normal(0.0, noise.own_sd, len(trained)), 0.0, 1.0)
    run_speed = speed[trained] * np.exp(rng.normal(0.0, noise.speed_cv, len(trained)))
    se = np.sqrt(run_acc * (1 - run_acc) / noise.val_samples)
    chosen = decide.finalists(run_acc, se, run_speed, design.finalists, alpha, default=0)
    configs = trained[chosen]
    pairs = rng.normal(0.0, noise.shared_sd, design.folds * design.seeds)
    shape = (len(configs), len(pairs))
    acc = np.clip(accuracy[configs][:, None] + pairs[None, :] + rng.normal(0.0, noise.own_sd, shape), 0.0, 1.0)
    log_speed = np.log(speed[configs])[:, None] + rng.normal(0.0, noise.speed_cv, shape)
    return int(configs[decide.choose(acc, log_speed, delta, alpha).pick]), trained


def simulate(design: Design, noise: Noise, name: str, delta: float = 0.02, alpha: float = 0.05,
             replications: int = 4000, seed: int = 0) -> Rates:
    """The procedure's operating characteristics on scenario `name` (new truths every replication)."""
    rng = np.random.default_rng(seed)
    worse = missed = default = 0
    loss = 0.0
    configs = min(design.configs, design.trials) if name == "boundary" else design.configs
    for _ in range(replications):
        accuracy, speed = scenario(name, configs, delta, rng)
        pick, trained = replicate(accuracy, speed, design, noise, delta, alpha, rng)
        best = accuracy[trained].max()
        worse += accuracy[pick] < best - delta
        faster = trained[(accuracy[trained] >= best - delta / 2) & (speed[trained] >= (1 + SPEED_MARGIN) * speed[pick])]
        missed += len(faster) > 0
        default += pick == 0
        loss += best - accuracy[pick]
    return Rates(name, replications, worse / replications, missed / replications, default / replications,
                 loss / replications)


def operating_characteristics(design: Design, noise: Noise, delta: float = 0.02, alpha: float = 0.05,
                              replications: int = 4000, seed: int = 0,
                              scenarios: Sequence[str] = SCENARIOS) -> list[Rates]:
    return [simulate(design, noise, name, delta, alpha, replications, seed) for name in scenarios]


def design_of(space, trials: Optional[int] = None, seeds: Optional[int] = None, folds: Optional[int] = None,
              finalists: Optional[int] = None) -> Design:
    """A search space's design (asl_ray.search.space.SearchSpace), with the flags that override it."""
    return Design(configs=space.grid_size(), trials=min(trials or space.budget.trials, space.grid_size()),
                  finalists=finalists or space.confirm.finalists,
                  seeds=space.confirm.seeds if seeds is None else seeds,
                  folds=folds or space.confirm.folds)


def table_text(rates: Sequence[Rates], design: Design, noise: Noise, delta: float, alpha: float) -> str:
    lines = [f"{design.trials} of {design.configs} configs trained, {design.finalists} finalists x {design.folds} "
             f"fold(s) x {design.seeds} seed(s); own sd {noise.own_sd:g}, shared sd {noise.shared_sd:g}, "
             f"{noise.val_samples} validation samples, speed cv {noise.speed_cv:g}; delta {delta:g}, alpha {alpha:g}; "
             f"{rates[0].replications} "
             f"replications each (simulated, not measured)",
             f"{'scenario':>9} {'P(worse by > delta)':>20} {'P(missed faster equivalent)':>28} {'P(default)':>11} "
             f"{'mean true loss':>15}"]
    for r in rates:
        lines.append(f"{r.scenario:>9} {r.worse:>13.3f} +- {r.se(r.worse):.3f} {r.missed:>21.3f} +- "
                     f"{r.se(r.missed):.3f} {r.default:>11.3f} {r.true_loss:>15.4f}")
    return "\n".join(lines)


@dataclass(frozen=True, kw_only=True)
class DecisionSimArgs:
    """The simulation's arguments: the design (a space file, its counts overridable), the noise, the rule."""
    space: Path = field(metadata=section("design"))
    """search-space YAML: its trials and confirmation counts"""
    trials: Optional[int] = field(default=None, metadata={"default_doc": "the space's budget.trials"})
    """configs the search trains"""
    seeds: Optional[int] = field(default=None, metadata={"default_doc": "the space's confirm.seeds"})
    """confirmation seeds"""
    folds: Optional[int] = field(default=None, metadata={"default_doc": "the space's confirm.folds"})
    """confirmation folds"""
    finalists: Optional[int] = field(default=None, metadata={"default_doc": "the space's confirm.finalists"})
    """finalists"""
    noise: Noise = field(default=Noise(), metadata=section("noise"))
    """What a run's figures carry."""
    delta: float = field(default=0.02, metadata=section("rule"))
    """equivalence margin"""
    alpha: float = 0.05
    """one-sided error rate of each test"""
    replications: int = 4000
    """simulated searches per scenario"""
    seed: int = 0
    """seed of the simulation"""

    def __post_init__(self) -> None:
        n = self.noise
        bad = [flag for flag, v in (("--own-sd", n.own_sd), ("--shared-sd", n.shared_sd), ("--speed-cv", n.speed_cv),
                                    ("--delta", self.delta), ("--alpha", self.alpha)) if not v >= 0]
        bad += [flag for flag, v in (("--val-samples", n.val_samples), ("--replications", self.replications))
                if v < 1]
        bad += [f"--{k}" for k in ("trials", "seeds", "folds", "finalists") if (getattr(self, k) or 1) < 1]
        if bad:
            raise UserInputError(f"{', '.join(bad)}: must be finite and positive")


def build_parser():
    from asl_ray.cli import OneLineParser, add_dataclass_flags
    p = OneLineParser(prog="python -m asl_ray.search.decision_sim", description=__doc__.splitlines()[0])
    add_dataclass_flags(p, DecisionSimArgs, required=True)
    return p


def main(argv=None, out: Callable[[str], None] = print) -> int:
    from asl_ray.cli import fail, parse_cli
    from asl_ray.search.space import SpaceError, load_space
    args, _ = parse_cli(build_parser(), DecisionSimArgs, argv)
    try:
        space = load_space(args.space)
    except SpaceError as e:
        fail(str(e))
    design = design_of(space, args.trials, args.seeds, args.folds, args.finalists)
    if design.seeds < 1:
        fail(f"--seeds: the space confirms nothing ({args.space}: confirm.seeds 0); give --seeds N")
    rates = operating_characteristics(design, args.noise, args.delta, args.alpha, args.replications, args.seed)
    out(table_text(rates, design, args.noise, args.delta, args.alpha))
    return 0


if __name__ == "__main__":
    sys.exit(main())
