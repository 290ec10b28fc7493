"""Does the micro-batch change what is learned? One effective batch split three ways, several seeds each.

    python bench/microbatch_accuracy.py [--data data/synth] [--effective 48] [--micro 8 12 48] [--seeds 1 2 3]
                                        [--epochs 6] [--set key=value ...]

Every run trains the same learning config (effective batch, dim, depth, max_len, learning rate: the LR rule
scales with the effective batch) through the real loop (`fit`), changing only the micro-batch (hence the
accumulation) and the seed. BatchNorm sees the micro-batch, so it might matter. Per micro-batch: final
validation accuracy as mean +- sd over seeds, the binomial SE of one run from the validation size, and each
pair's difference against its noise (Welch's t). Also the mean accuracy per epoch against chance (what
ASHA's first rung needs: accuracies that separate from chance). Prints a table and writes
bench/results/microbatch_accuracy-<device>.json.
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
from asl_ray.train.loop import fit  # noqa: E402
from asl_ray.train.runtime import Runtime  # noqa: E402

SMOKE = {"dim": 64, "depth": 1, "max_len": 64, "num_workers": 1, "lr_per_64": 4.0e-3, "late_dropout": 0.3}
"""The CPU smoke space's fixed keys and its seed baseline's model (search_spaces/cpu-smoke.yaml)."""


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


def welch_t(a: list[float], b: list[float]) -> float:
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    return (statistics.mean(a) - statistics.mean(b)) / math.sqrt(va + vb) if va + vb > 0 else float("inf")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO / "data" / "synth"))
    p.add_argument("--effective", type=int, default=48)
    p.add_argument("--micro", type=int, nargs="+", default=[8, 12, 48])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = p.parse_args(argv)
    bad = [m for m in args.micro if args.effective % m]
    if bad:
        p.error(f"--micro {bad}: must divide --effective {args.effective}")

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
                     "seconds": time.perf_counter() - started, "curve": rep.curve})
        print(f"micro {micro:3d} x {args.effective // micro} seed {seed}: val_acc {result['val_acc']:.4f} "
              f"({runs[-1]['seconds']:.0f} s)", flush=True)

    n_val = runs[0]["val_samples"] or _val_size(cache, base)
    chance = 1.0 / cache.num_classes
    summary = {}
    for micro in args.micro:
        accs = [r["val_acc"] for r in runs if r["micro_batch"] == micro]
        mean = statistics.mean(accs)
        summary[micro] = {"mean": mean, "sd": statistics.stdev(accs) if len(accs) > 1 else float("nan"),
                          "binomial_se": math.sqrt(mean * (1 - mean) / n_val), "accs": accs}
    pairs = [{"a": a, "b": b, "diff": summary[a]["mean"] - summary[b]["mean"],
              "welch_t": welch_t(summary[a]["accs"], summary[b]["accs"])}
             for a, b in itertools.combinations(args.micro, 2)]
    per_epoch = [{"epoch": e, "mean_val_acc": statistics.mean(r["curve"][e]["val_acc"] for r in runs),
                  "min_val_acc": min(r["curve"][e]["val_acc"] for r in runs),
                  "z_of_min_vs_chance": (min(r["curve"][e]["val_acc"] for r in runs) - chance)
                  / math.sqrt(chance * (1 - chance) / n_val)} for e in range(args.epochs)]

    print(f"\neffective batch {args.effective}, {len(args.seeds)} seeds, {args.epochs} epochs, "
          f"{n_val} validation samples, chance {chance:.3f}")
    print(f"{'micro x accum':>14} {'mean':>7} {'sd':>7} {'binom SE':>9}  accuracies")
    for micro, s in summary.items():
        print(f"{micro:>6} x {args.effective // micro:<5} {s['mean']:7.4f} {s['sd']:7.4f} {s['binomial_se']:9.4f}  "
              + " ".join(f"{a:.4f}" for a in s["accs"]))
    for pr in pairs:
        print(f"  {pr['a']} vs {pr['b']}: {pr['diff']:+.4f} (Welch t {pr['welch_t']:+.2f})")
    print("per epoch (all runs): " + ", ".join(
        f"e{r['epoch'] + 1} mean {r['mean_val_acc']:.3f} min {r['min_val_acc']:.3f} (z {r['z_of_min_vs_chance']:.1f})"
        for r in per_epoch))

    device = f"cpu-{platform.machine()}"
    out = Path(args.out) / f"microbatch_accuracy-{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device, "torch_threads": __import__("torch").get_num_threads(),
                               "config": base.to_dict(), "effective_batch": args.effective,
                               "validation_samples": n_val, "chance": chance, "runs": runs,
                               "summary": {str(k): v for k, v in summary.items()}, "pairs": pairs,
                               "per_epoch": per_epoch}, indent=1))
    print(f"wrote {out}")
    return 0


def _val_size(cache, cfg: TrainConfig) -> int:
    from asl_ray.data.dataset import participant_split
    return len(participant_split(cache.participants, cfg.num_folds, cfg.fold, cfg.seed)[1])


if __name__ == "__main__":
    sys.exit(main())
