"""The ablation's outputs: a text table (claims beside the measured figures), JSON and a bar chart."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

from asl_ray.ablate.results import NEEDS_GPU


def _ratio(s: dict, digits: int = 2) -> str:
    if s["median"] is None:
        return "-"
    if s["min"] == s["max"]:
        return f"{s['median']:.{digits}f}"
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def _num(v: Optional[float], fmt: str = ".0f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


MEMORY_LEGEND = (
    "memory, like with like (MiB): \"reserved\" = torch.cuda.max_memory_reserved, measured (CUDA only), beside "
    "\"predicted reserved\" = the VRAM estimator's modelled max_memory_reserved for the same config (every "
    "sequence at max_len); neither includes the CUDA context. \"GPU used\" = NVML's used memory of the GPU in "
    "use, the largest of the run's snapshots (CUDA only; context and every process on the GPU included), beside "
    "\"predicted card total\" = the estimate with its CUDA context (and torch.compile kernels): what the card "
    "must hold.")


def table_text(rows: Sequence[dict[str, Any]]) -> str:
    """The table, then MEMORY_LEGEND saying what each memory column is."""
    header = ["variant", "samples/s", "speed x base [min-max]", "reserved MiB", "reserved x base",
              "predicted reserved MiB", "pred. x base", "GPU used MiB (sampled max)", "predicted card total MiB",
              "seed's claim", "verdict"]
    lines = [header]
    for r in rows:
        measured = r["status"] == "measured"
        not_run = NEEDS_GPU if r["status"] == NEEDS_GPU else "OOM"
        peak = _num(r["peak_reserved_mb"]) if r["peak_reserved_mb"] is not None else NEEDS_GPU
        lines.append([
            r["variant"],
            _num(r["samples_per_s"]["median"], ".1f") if measured else not_run,
            _ratio(r["speed_ratio"]) if measured else "-",
            peak if measured else "-",
            _ratio(r["memory_ratio"]),
            _num(r["predicted_reserved_mb"]), _num(r["predicted_memory_ratio"], ".2f"),
            _num(r["device_used_mb_sampled_max"]) if measured else "-", _num(r["predicted_with_context_mb"]),
            r["claim"], r["verdict"]])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out) + "\n\n" + MEMORY_LEGEND


def write_json(path: Path, record: dict[str, Any]) -> None:
    path.write_text(json.dumps(record, indent=1, default=_plain))


def _plain(v):
    if hasattr(v, "item"):
        return v.item()
    if isinstance(v, tuple):
        return list(v)
    return str(v)


def plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Two panels: speed and max_memory_reserved as x base, with the repeats' spread and the claimed range."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["variant"] != "base"]
    names = [r["variant"] for r in rows]
    y = list(range(len(rows)))
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(rows) + 1.8), sharey=True)
    panels = [("speed_ratio", "claimed_speed_ratio", "samples/s, x base"),
              ("memory_ratio", "claimed_memory_ratio", "cuda max_memory_reserved (no context), x base")]
    for ax, (key, claim_key, label) in zip(axes, panels):
        for i, r in enumerate(rows):
            s = r[key]
            if r[claim_key]:
                lo, hi = r[claim_key]
                ax.plot([lo, hi], [i + 0.3, i + 0.3], color="black", linewidth=3, solid_capstyle="butt")
            if r["status"] == NEEDS_GPU or s["median"] is None:
                predicted = r["predicted_memory_ratio"] if key == "memory_ratio" else None
                if predicted:
                    ax.barh(i, predicted, color="none", edgecolor="tab:gray", hatch="//")
                    ax.text(predicted, i, " predicted reserved", va="center", fontsize=7, color="tab:gray")
                else:
                    ax.text(1.0, i, f" {NEEDS_GPU}", va="center", fontsize=7, color="tab:gray")
                continue
            colour = "tab:green" if s["median"] >= 1 else "tab:red"
            if key == "memory_ratio":
                colour = "tab:green" if s["median"] <= 1 else "tab:red"
            ax.barh(i, s["median"], color=colour, alpha=0.8,
                    xerr=[[s["median"] - s["min"]], [s["max"] - s["median"]]], capsize=3)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xlabel(label)
    axes[0].set_yticks(y, names)
    axes[0].invert_yaxis()
    fig.suptitle(title + "\nbars: median of the repeats, whiskers min-max; black bar: the seed's claim; "
                 "hatched: the VRAM estimator's modelled max_memory_reserved, no context (not measured on this device)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
