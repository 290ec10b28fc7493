"""python -m asl_ray.ablate [--data DIR] [--gpu CARD] [--config YAML] [--set k=v] [--repeats N] [--steps N]

From the base config (the seed's default unless --config/--set change it), switch one optimisation at a
time and measure samples/s and max_memory_reserved side by side in one run, interleaved repeat by repeat;
then count FLOPs per sample for MFU and time the data pipeline alone (on one core, and with the config's
loader workers). Writes ablation.json, ablation.png and table.txt under runs/ablate-<date-time>/ (or --out).
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from asl_ray.ablate import report
from asl_ray.ablate.flops import count_flops_per_sample, measured_matmul_tflops
from asl_ray.cards import MiB, datasheet_peak_tflops
from asl_ray.ablate.loader_rate import (loader_margin, loader_text, measure_loader_one_core,
                                       measure_loader_with_workers)
from asl_ray.ablate.measure import measure
from asl_ray.ablate.results import NEEDS_GPU, VariantRuns, row
from asl_ray.ablate.variants import BASE_CLAIM, ablations_for, select
from asl_ray.cli import (CardArgs, OneLineParser, add_dataclass_flags, add_train_config_flags, check_paths, fail,
                         open_data_or_fail, parse_cli, train_config_from, user_errors)
from asl_ray.config import ConfigError, TrainConfig, UserInputError, section


@dataclass(frozen=True, kw_only=True)
class AblateArgs:
    """The ablation CLI's own arguments; its base config is TrainConfig's flags over --config."""
    data: Optional[Path] = field(default=None, metadata=section("data"))
    """GISLR data root (default: the synthetic set in data/synth, written if missing)"""
    cache_dir: Optional[Path] = None
    """where the preprocessed cache lives (default: beside the data)"""
    card: CardArgs = field(default=CardArgs(), metadata=section("target card", docs={
        "gpu": "target card: its memory is emulated on CUDA (rtx4070, a size in GiB, auto); speed is always this "
               "machine's"}))
    """The card whose memory is emulated."""
    emulate: bool = True
    """cap a CUDA device to the target card's memory (--no-emulate: use the whole GPU)"""
    config: Optional[Path] = field(default=None, metadata=section("measurement"))
    """base config YAML (e.g. a search's best_config.yaml); default: the seed's; the TrainConfig flags apply over it"""
    repeats: int = 3
    """measurements of every variant (interleaved)"""
    steps: Optional[int] = field(default=None, metadata={"default_doc": "10 on CUDA, 3 on CPU"})
    """optimizer steps measured per repeat after warm-up"""
    only: tuple[str, ...] = field(default=(), metadata={"metavar": "VARIANT"})
    """measure only these variants"""
    skip: tuple[str, ...] = field(default=(), metadata={"metavar": "VARIANT"})
    """leave these variants out"""
    flops_batches: int = 8
    """real batches the FLOP count averages over"""
    loader_batches: int = 40
    """batches each loader timing reads"""
    out: Optional[Path] = field(default=None, metadata={"default_doc": "runs/ablate-<date-time>"})
    """output folder"""

    def __post_init__(self) -> None:
        bad = [f"--{name.replace('_', '-')}: must be >= 1, got {value}"
               for name, value in (("repeats", self.repeats), ("steps", self.steps),
                                   ("flops_batches", self.flops_batches), ("loader_batches", self.loader_batches))
               if value is not None and value < 1]
        if bad:
            raise ConfigError("; ".join(bad))


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m asl_ray.ablate", description=__doc__.splitlines()[0])
    add_dataclass_flags(p, AblateArgs)
    add_train_config_flags(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, given = parse_cli(build_parser(), AblateArgs, argv)
    with user_errors():
        return _run(args, given)


def _run(args: AblateArgs, given: dict) -> int:
    base, card, cache = _inputs(args, given)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_cuda = device.type == "cuda"
    steps = args.steps or (10 if on_cuda else 3)
    try:
        chosen = select(ablations_for(base), args.only, args.skip)
    except ValueError as e:
        fail(f"--only/--skip: {e}")
    out = Path(args.out or f"runs/ablate-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        fail(f"--out: cannot create {out}: {e.strerror or e}")

    device_name = torch.cuda.get_device_name(device) if on_cuda else \
        f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    emulated = None
    if on_cuda and args.emulate:
        from asl_ray.train.runtime import emulate_card_memory
        emulated = emulate_card_memory(card.usable_bytes, device)
    print(f"device: {device_name}" + (f"; memory capped as {card.describe()}" if emulated else ""))
    print(f"base: batch {base.batch_size} x accum {base.gradient_accumulation_steps}, dim {base.dim}, depth "
          f"{base.depth}, max_len {base.max_len}, {base.precision if on_cuda else 'fp32 (CPU)'}, "
          f"{base.num_workers} workers; {args.repeats} repeats of {steps} optimizer steps each")

    variants = [VariantRuns(None)] + [VariantRuns(a, skipped=NEEDS_GPU if a.needs_cuda and not on_cuda else "")
                                      for a in chosen]
    _predict(variants, base, cache.num_classes)
    _warm_compiled(variants, base, cache, device, card.name)
    for r in range(args.repeats):
        for v in variants:  # interleaved: a drift in machine load hits every variant alike
            if v.skipped:
                continue
            cfg = v.ablation.config(base) if v.ablation else base
            m = _measure_or_mark_oom(v, cfg, cache, steps, device, card.name, f"repeat {r}")
            if m is None:
                continue
            v.runs.append(m)
            mem = f"  reserved {m.peak_reserved_mb:.0f} MiB" if m.peak_reserved_mb is not None else ""
            print(f"repeat {r}: {v.name:<28} {m.samples_per_s:8.1f} samples/s{mem}  ({m.seconds:.0f} s)", flush=True)

    rows = [row(v, variants[0]) for v in variants]
    measured = [(v, rw) for v, rw in zip(variants, rows) if rw["status"] == "measured"]
    if not variants[0].runs:
        fail(f"the base config could not be measured ({variants[0].skipped}); choose a smaller one with --set")
    best_v, best_row = max(measured, key=lambda p: p[1]["samples_per_s"]["median"])
    best_cfg = best_v.ablation.config(base) if best_v.ablation else base
    efficiency = _efficiency(base, best_cfg, best_v.name, rows[0], best_row, cache, device, device_name, args)

    title = (f"asl_ray ablation on {device_name}" + (f" (memory as {card.name})" if emulated else "") +
             f", {time.strftime('%Y-%m-%d')}; base: batch {base.batch_size} x {base.gradient_accumulation_steps}, "
             f"dim {base.dim}, {base.precision if on_cuda else 'fp32 (CPU)'}")
    text = report.table_text(rows)
    summary = _summary_text(rows, base, efficiency, device_name)
    print("\n" + text + "\n\n" + summary)
    (out / "table.txt").write_text(title + "\n\n" + text + "\n\n" + summary + "\n")
    report.write_json(out / "ablation.json", {
        "benchmark": "ablation", "date": time.strftime("%Y-%m-%d"), "device": device_name,
        "torch": torch.__version__, "cuda": on_cuda, "emulated_card": card.describe() if emulated else None,
        "base_config": base.to_dict(), "base_claim": BASE_CLAIM, "repeats": args.repeats,
        "steps_per_repeat": steps, "rows": rows, "efficiency": efficiency,
        "runs": {v.name: [asdict(m) for m in v.runs] for v in variants}})
    report.plot(rows, out / "ablation.png", title)
    print(f"\nwrote {out}/ablation.json, ablation.png, table.txt")
    return 0


def _inputs(args: AblateArgs, given: dict):
    from asl_ray.cards import CardError
    try:
        check_paths(folders={"--out": args.out, "--cache-dir": args.cache_dir}, files={"--config": args.config})
        base = train_config_from(args.config, given)
        card = args.card.resolve()
    except CardError as e:
        fail(str(e) if str(e).startswith("--") else f"--gpu: {e}")
    except UserInputError as e:
        fail(str(e))
    _, cache = open_data_or_fail(str(args.data) if args.data else None, str(args.cache_dir) if args.cache_dir else None)
    return base, card, cache


def _predict(variants: list[VariantRuns], base: TrainConfig, num_classes: int) -> None:
    """The VRAM estimator's figures for every variant (worst case: every sequence at max_len): its
    allocator peak (compared with the measured max_memory_reserved) and its card total (context included)."""
    from asl_ray.vram.estimate import estimate_peak_vram
    for v in variants:
        cfg = v.ablation.config(base) if v.ablation else base
        try:
            estimate = estimate_peak_vram(cfg, num_classes)
            v.predicted_reserved_mb = estimate.reserved_peak_bytes() / MiB
            v.predicted_with_context_mb = estimate.total_bytes / MiB
        except Exception as e:  # the estimate is a side column; a failure must not cost the measurements
            print(f"VRAM estimate for {v.name} failed: {type(e).__name__}: {e}")


def _measure_or_mark_oom(v: VariantRuns, cfg: TrainConfig, cache, steps: int, device, card_name: str, label: str):
    """A Measurement, or None after marking `v` out of memory (it is not run again)."""
    try:
        return measure(cfg, cache, steps, device)
    except torch.cuda.OutOfMemoryError as e:
        v.skipped, v.runs = f"out of memory on {card_name}", []
        print(f"{label}: {v.name:<28} out of memory on {card_name}: {str(e).splitlines()[0][:120]}")
        return None


def _warm_compiled(variants: list[VariantRuns], base: TrainConfig, cache, device, card_name: str) -> None:
    """One unrecorded run of every compiled variant first: compiling (minutes on a small CPU) and the
    dynamic-shape recompile would otherwise land in repeat 0's measured steps. Later runs of the same
    model class reuse the compiled code."""
    for v in variants:
        cfg = v.ablation.config(base) if v.ablation else base
        if v.skipped or not cfg.compile:
            continue
        print(f"compiling {v.name} (not measured) ...", flush=True)
        started = time.perf_counter()
        if _measure_or_mark_oom(v, cfg, cache, 2, device, card_name, "warm-up") is not None:
            print(f"compiled {v.name} in {time.perf_counter() - started:.0f} s", flush=True)


def _efficiency(base, best_cfg, best_name, base_row, best_row, cache, device, device_name, args) -> dict:
    """FLOPs per sample, achieved FLOP/s and MFU at the base and the fastest variant; the loader's margin."""
    out = {"best_variant": best_name, "best_config_changes": best_row["changes"]}
    for label, cfg, rw in (("base", base, base_row), ("best", best_cfg, best_row)):
        flops = count_flops_per_sample(cfg, cache, args.flops_batches)
        sps = rw["samples_per_s"]["median"]
        precision = cfg.precision if device.type == "cuda" else "fp32"
        achieved = flops.train * sps / 1e12
        peak = datasheet_peak_tflops(device_name, precision) if device.type == "cuda" else None
        matmul = measured_matmul_tflops(device, precision)
        out[label] = {"variant": rw["variant"], "forward_gflops_per_sample": flops.forward / 1e9,
                      "train_gflops_per_sample": flops.train / 1e9, "mean_padded_length": flops.mean_padded_length,
                      "mean_real_length": flops.mean_real_length, "padding_share": flops.padding_share,
                      "samples_per_s": sps, "achieved_tflops": achieved, "precision": precision,
                      "datasheet_peak_tflops": peak, "mfu": achieved / peak if peak else None,
                      "matmul_tflops_measured": matmul, "share_of_matmul_peak": achieved / matmul}
    loader = measure_loader_one_core(best_cfg, cache, args.loader_batches)
    with_workers = measure_loader_with_workers(best_cfg, cache, args.loader_batches) if best_cfg.num_workers else None
    out["loader"] = loader_margin(loader, best_row["samples_per_s"]["median"], best_cfg.num_workers, with_workers)
    return out


def _summary_text(rows: list[dict], base: TrainConfig, e: dict, device_name: str) -> str:
    lines, base_row = [], rows[0]
    sps = base_row["samples_per_s"]["median"]
    bps = sps / base.batch_size
    peak = base_row["peak_reserved_mb"]
    where = "" if "4070" in device_name else f" (this is {device_name}, not an RTX 4070)"
    lines.append(f"base: {sps:.1f} samples/s = {bps:.2f} micro-batches/s of {base.batch_size}"
                 + (f", max_memory_reserved {peak / 1024:.2f} GiB (no CUDA context)" if peak
                    else ", memory: needs GPU")
                 + f"; seed's claim: {BASE_CLAIM}{where}")
    for label in ("base", "best"):
        x = e[label]
        mfu = f"MFU {x['mfu']:.2%} of {x['datasheet_peak_tflops']:.1f} TFLOP/s datasheet {x['precision']}" \
            if x["mfu"] is not None else "MFU: no datasheet peak for this device"
        lines.append(f"{label} ({x['variant']}): {x['train_gflops_per_sample']:.3f} GFLOPs/sample forward+backward "
                     f"({x['forward_gflops_per_sample']:.3f} forward; padded length {x['mean_padded_length']:.0f}, "
                     f"real {x['mean_real_length']:.0f}, {x['padding_share']:.0%} padding) x {x['samples_per_s']:.1f} "
                     f"samples/s = {x['achieved_tflops'] * 1e3:.2f} GFLOP/s; {mfu}; "
                     f"{x['share_of_matmul_peak']:.2%} of a large matmul here ({x['matmul_tflops_measured']:.2f} TFLOP/s)")
    for r in rows:
        for note in r["notes"]:
            lines.append(f"note ({r['variant']}): {note}")
    lines.append(loader_text(e["loader"], e["best_variant"]))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
