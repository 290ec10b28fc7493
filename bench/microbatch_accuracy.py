"""Does the micro-batch change what is learned? One effective batch split several ways, paired over seeds.

    python bench/microbatch_accuracy.py [--data data/synth] [--effective 32] [--micro 4 8 32] [--seeds 1 2 3 4 5 6]
                                        [--epochs 6] [--delta 0.02] [--label smoke] [--set key=value ...]

Every run trains the same learning config (effective batch, dim, depth, max_len, learning rate: the LR rule
scales with the effective batch) through the real loop (`fit`), changing only the micro-batch (hence the
accumulation) and the seed. BatchNorm sees the micro-batch, so it might matter. The comparison is paired: every
micro-batch runs the same seeds on the same validation signers (the split is `split_seed`'s, never the seed's),
so seed s of micro-batch a and seed s of micro-batch b form a pair. Per pair of micro-batches: the mean paired
difference, its two-sided 95% t interval, whether it is equivalent within +-delta (both one-sided 95% bounds
inside), whether it exceeds delta (the interval lies beyond it), and the smallest difference these seeds detect at
80% power. Per micro-batch: mean +- sd over seeds (the run-to-run spread on one split: the noise model of
asl_ray/search/decision_sim.py) and the median samples/s. Also the mean accuracy per epoch against chance (what
ASHA's first rung needs). Prints a table and writes bench/results/microbatch_accuracy-<label>-<device>.json.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from asl_ray.cli import parse_overrides  # noqa: E402
from asl_ray.config import TrainConfig  # noqa: E402
from asl_ray.data.cache import load_or_build_cache  # noqa: E402
from asl_ray.stats import detectable_difference, paired  # noqa: E402
from asl_ray.train.loop import fit  # noqa: E402
from asl_ray.train.runtime import Runtime  # noqa: E402

SMOKE = {"dim": 64, "depth": 1, "max_len": 64, "num_workers": 1, "lr_per_64": 4.0e-3, "late_dropout": 0.3}
"""The CPU smoke space's fixed keys and its seed baseline's model (search_spaces/cpu-smoke.yaml)."""
ALPHA = 0.05


class CurveReporter:
    def __init__(self):
        self.curve: list[dict] = []

    def epoch_end(self, metrics, checkpoint) -> None:
        self.curve.append({"epoch": metrics["epoch"], "val_acc": metrics["val_acc"],
                           "samples_per_s": metrics["samples_per_s"]})

    def run_end(self, result) -> None:
        pass


def ensure_data(path: Path) -> Path:
    if not (path / "train.csv").exists():
        from asl_ray.data.synth import write_synthetic_root
        write_synthetic_root(path)
    return path


def compare(a: list[float], b: list[float], delta: float) -> dict:
    """a - b paired by seed: mean, 95% two-sided interval, equivalence within +-delta (TOST at 5%), beyond delta,
    and the difference these pairs detect at 80% power (two-sided 5%)."""
    d = paired(a, b)
    half = d.half_width(ALPHA / 2)
    low, high = d.mean - half, d.mean + half
    one_sided = d.half_width(ALPHA)
    return {"diff": d.mean, "sd": d.sd, "pairs": d.n, "ci95": [low, high],
            "equivalent_within_delta": bool(d.mean + one_sided < delta and d.mean - one_sided > -delta),
            "exceeds_delta": bool(low > delta or high < -delta),
            "detectable_at_80pct_power": detectable_difference(d.sd, d.n, ALPHA / 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO / "data" / "synth"))
    p.add_argument("--effective", type=int, default=32)
    p.add_argument("--micro", type=int, nargs="+", default=[4, 8, 32])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--delta", type=float, default=0.02, help="equivalence margin (accuracy, absolute)")
    p.add_argument("--label", default="smoke", help="names the result file: the model measured")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = p.parse_args(argv)
    bad = [m for m in args.micro if args.effective % m]
    if bad:
        p.error(f"--micro {bad}: must divide --effective {args.effective}")
    if len(args.seeds) < 2:
        p.error("--seeds: at least 2 (a paired spread needs two pairs)")

    cache = load_or_build_cache(ensure_data(Path(args.data)))
    base = TrainConfig().with_overrides({**SMOKE, "epochs": args.epochs, **parse_overrides(args.overrides)})
    runs = []
    # Seeds outermost: each micro-batch's runs are spread over the whole bench, so a load change on the
    # machine falls on all of them alike.
    for seed, micro in itertools.product(args.seeds, args.micro):
        cfg = base.with_overrides({"batch_size": micro, "gradient_accumulation_steps": args.effective // micro,
                                   "seed": seed})
        rep = CurveReporter()
        started = time.perf_counter()
        result = fit(cfg, cache, rep, runtime=Runtime.create(cfg))
        runs.append({"micro_batch": micro, "accumulation": args.effective // micro, "seed": seed,
                     "val_acc": result["val_acc"], "val_samples": result.get("val_samples"),
                     "samples_per_s_median": statistics.median(c["samples_per_s"] for c in rep.curve),
                     "seconds": time.perf_counter() - started, "curve": rep.curve})
        print(f"micro {micro:3d} x {args.effective // micro} seed {seed}: val_acc {result['val_acc']:.4f} "
              f"({runs[-1]['seconds']:.0f} s)", flush=True)

    n_val = runs[0]["val_samples"]
    chance = 1.0 / cache.num_classes
    by_micro = {m: [r for r in runs if r["micro_batch"] == m] for m in args.micro}
    summary = {}
    for micro, mine in by_micro.items():
        accs = [r["val_acc"] for r in mine]
        mean = statistics.mean(accs)
        summary[micro] = {"mean": mean, "sd": statistics.stdev(accs),
                          "binomial_se": math.sqrt(mean * (1 - mean) / n_val), "accs": accs,
                          "samples_per_s_median": statistics.median(r["samples_per_s_median"] for r in mine)}
    pairs = [{"a": a, "b": b, **compare(summary[a]["accs"], summary[b]["accs"], args.delta)}
             for a, b in itertools.combinations(args.micro, 2)]
    seed_sd = math.sqrt(statistics.mean(s["sd"] ** 2 for s in summary.values()))
    per_epoch = [{"epoch": e, "mean_val_acc": statistics.mean(r["curve"][e]["val_acc"] for r in runs),
                  "min_val_acc": min(r["curve"][e]["val_acc"] for r in runs),
                  "z_of_min_vs_chance": (min(r["curve"][e]["val_acc"] for r in runs) - chance)
                  / math.sqrt(chance * (1 - chance) / n_val)} for e in range(args.epochs)]

    print(f"\n{args.label}: effective batch {args.effective}, {len(args.seeds)} seeds (paired), {args.epochs} epochs, "
          f"{n_val} validation samples (one split), chance {chance:.3f}, delta {args.delta}")
    print(f"{'micro x accum':>14} {'mean':>7} {'sd':>7} {'binom SE':>9} {'samples/s':>10}  accuracies")
    for micro, s in summary.items():
        print(f"{micro:>6} x {args.effective // micro:<5} {s['mean']:7.4f} {s['sd']:7.4f} {s['binomial_se']:9.4f} "
              f"{s['samples_per_s_median']:10.1f}  " + " ".join(f"{a:.4f}" for a in s["accs"]))
    for pr in pairs:
        verdict = ("equivalent within delta" if pr["equivalent_within_delta"] else
                   "differs by more than delta" if pr["exceeds_delta"] else "undecided at this power")
        print(f"  {pr['a']} - {pr['b']}: {pr['diff']:+.4f}, 95% CI [{pr['ci95'][0]:+.4f}, {pr['ci95'][1]:+.4f}], "
              f"paired sd {pr['sd']:.4f}; detects {pr['detectable_at_80pct_power']:.3f} at 80% power: {verdict}")
    print(f"run-to-run sd on one split (pooled over micro-batches): {seed_sd:.4f}")
    print("per epoch (all runs): " + ", ".join(
        f"e{r['epoch'] + 1} mean {r['mean_val_acc']:.3f} min {r['min_val_acc']:.3f} (z {r['z_of_min_vs_chance']:.1f})"
        for r in per_epoch))

    device = f"cpu-{platform.machine()}"
    out = Path(args.out) / f"microbatch_accuracy-{args.label}-{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device, "torch_threads": __import__("torch").get_num_threads(),
                               "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
                               "config": base.to_dict(), "effective_batch": args.effective, "delta": args.delta,
                               "validation_samples": n_val, "chance": chance, "runs": runs,
                               "summary": {str(k): v for k, v in summary.items()}, "pairs": pairs,
                               "run_to_run_sd": seed_sd, "per_epoch": per_epoch}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
