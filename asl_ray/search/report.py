"""From trial rows to the search's results: trials.parquet/.csv, Pareto front, pareto.png,
best_config.yaml and report.md. Plain data in, files out; no Ray here."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from asl_ray.config import TrainConfig

SELECT_RULES = ("fastest-within-margin", "most-accurate", "fastest")
MEMORY_COLUMNS = ["cuda_max_reserved_mb", "predicted_reserved_mb", "predicted_total_mb", "predicted_fit_mb",
                  "rss_peak_mb"]
"""Like with like, each labelled: measured `max_memory_reserved` (CUDA only, NaN on CPU) beside the
predicted allocator peak (no CUDA context); that peak with the context; the fit figure the verdict
compares with the card; host RSS (never GPU memory)."""
MEMORY_LEGEND = ("cuda_max_reserved_mb: measured torch.cuda.max_memory_reserved (NaN on CPU); "
                 "predicted_reserved_mb: predicted unconstrained allocator peak, no CUDA context; "
                 "predicted_total_mb: that peak with the CUDA context (what nvidia-smi would show); "
                 "predicted_fit_mb: least need under the allocator's free-and-retry + context + margin "
                 "(compared with the card); rss_peak_mb: host process RSS, not GPU memory.")


@dataclass(frozen=True)
class Selection:
    rule: str = "fastest-within-margin"
    """How the best config is chosen among finished, feasible trials."""
    margin: float = 0.01
    """For fastest-within-margin: accuracy (absolute) a config may give up against the most accurate."""

    def describe(self) -> str:
        if self.rule == "fastest-within-margin":
            return f"highest samples/s among trials within {self.margin:.3f} validation accuracy of the best"
        return {"most-accurate": "highest validation accuracy", "fastest": "highest samples/s"}[self.rule]


def trials_frame(rows: Sequence[dict]) -> pd.DataFrame:
    df = pd.DataFrame(list(rows))
    for col in ("val_acc", "samples_per_s", *MEMORY_COLUMNS):
        if col not in df:
            df[col] = float("nan")
    df["on_pareto_front"] = pareto_mask(df)
    return df


def finished(df: pd.DataFrame) -> pd.Series:
    """Trials that ran every epoch and fit: the only ones whose accuracy compares fairly."""
    return (df["status"] == "ok") & df["feasible"].astype(bool)


def pareto_mask(df: pd.DataFrame) -> pd.Series:
    """Non-dominated finished trials in (val_acc, samples_per_s), both maximised."""
    mask = pd.Series(False, index=df.index)
    if "status" not in df:
        return mask
    ok = df[finished(df)]
    for i, row in ok.iterrows():
        dominated = ((ok["val_acc"] >= row["val_acc"]) & (ok["samples_per_s"] >= row["samples_per_s"]) &
                     ((ok["val_acc"] > row["val_acc"]) | (ok["samples_per_s"] > row["samples_per_s"]))).any()
        mask[i] = not dominated
    return mask


def select_best(df: pd.DataFrame, selection: Selection) -> Optional[pd.Series]:
    ok = df[finished(df)]
    if ok.empty:
        return None
    if selection.rule == "most-accurate":
        return ok.sort_values(["val_acc", "samples_per_s"], ascending=False).iloc[0]
    if selection.rule == "fastest":
        return ok.sort_values(["samples_per_s", "val_acc"], ascending=False).iloc[0]
    close = ok[ok["val_acc"] >= ok["val_acc"].max() - selection.margin]
    return close.sort_values(["samples_per_s", "val_acc"], ascending=False).iloc[0]


def write_best_config(best: pd.Series, base: TrainConfig, path: Path, data_hint: str,
                      param_names: Sequence[str]) -> TrainConfig:
    """`param_names`: the space's searched keys (whatever they are): the rest is the space's base."""
    values = {k: _plain(best[k]) for k in param_names if k in best and pd.notna(best[k])}
    cfg = base.with_overrides(values, source="best trial")
    cfg.to_yaml(path, header=f"# python -m asl_ray.train --data {data_hint} --config {path}\n"
                             f"# Chosen by the search (trial {best['trial_id']}); add --epochs N to train longer.")
    return cfg


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def plot_pareto(df: pd.DataFrame, path: Path, usable_mb: float, title: str, param_names: Sequence[str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    ok = df[finished(df)]
    stopped = df[df["status"] == "stopped"]
    front = ok[ok["on_pareto_front"]].sort_values("samples_per_s")
    ax.scatter(stopped["samples_per_s"], stopped["val_acc"], c="lightgrey", label="stopped early (partial)")
    ax.scatter(ok["samples_per_s"], ok["val_acc"], c="tab:blue", label="finished")
    ax.plot(front["samples_per_s"], front["val_acc"], "o-", c="tab:red", label="Pareto front")
    for _, r in front.iterrows():
        ax.annotate(" ".join(f"{k}={_plain(r[k])}" for k in param_names if k in r),
                    (r["samples_per_s"], r["val_acc"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("training throughput (samples/s)")
    ax.set_ylabel("validation accuracy (held-out signers)")
    ax.set_title(title)
    ax.legend(fontsize=8)

    infeasible = ~df["feasible"].astype(bool)
    ax2.scatter(range(len(df)), df["predicted_fit_mb"], c=["tab:red" if x else "tab:green" for x in infeasible])
    ax2.axhline(usable_mb, color="black", ls="--", lw=1, label=f"usable on the card ({usable_mb:.0f} MiB)")
    ax2.set_xlabel("config (rejected and OOM in red)")
    ax2.set_ylabel("predicted fit figure: least need + context + margin (MiB)")
    ax2.set_title("VRAM fit")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table_text(df: pd.DataFrame, columns: Sequence[str]) -> str:
    cols = [c for c in columns if c in df]
    return df[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}") if len(df) else "(none)"


def comparison_text(best: pd.Series, reference: Optional[pd.Series]) -> str:
    if reference is None:
        return "The seed's default config did not finish in this search: no comparison."
    ratio = best["samples_per_s"] / reference["samples_per_s"] if reference["samples_per_s"] else float("nan")
    return (f"Against the seed's default config (trial {reference['trial_id']}): throughput x{ratio:.2f} "
            f"({best['samples_per_s']:.1f} vs {reference['samples_per_s']:.1f} samples/s), accuracy "
            f"{best['val_acc'] - reference['val_acc']:+.4f} ({best['val_acc']:.4f} vs {reference['val_acc']:.4f}); "
            f"memory: {memory_text(best)} vs {memory_text(reference)}.")


def memory_text(row: pd.Series) -> str:
    """The row's memory figures, each named for what it is (no CUDA figure exists for a CPU run)."""
    measured = row.get("cuda_max_reserved_mb", float("nan"))
    device = (f"measured max_memory_reserved {measured:.0f} MiB" if pd.notna(measured)
              else "no CUDA measurement (not run on a GPU)")
    return (f"{device}, predicted allocator peak {row['predicted_reserved_mb']:.0f} MiB "
            f"(with CUDA context {row['predicted_total_mb']:.0f} MiB; fit figure {row['predicted_fit_mb']:.0f} MiB), "
            f"host RSS {row['rss_peak_mb']:.0f} MiB")
