"""The search's two figures: pareto.png (accuracy +- SE vs samples/s, the Pareto front, the chosen config,
the confirmed finalists' seed runs; beside it the VRAM fit of every config) and curves.png (each trial's
validation accuracy per epoch, ASHA's rungs, chance level). Frames in, PNG files out; no Ray here."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from asl_ray.search.report import curve, pareto_mask, shown
from asl_ray.outcome import Status


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on a search machine
    import matplotlib.pyplot as plt
    return plt


def plot_pareto(df: pd.DataFrame, ok: pd.DataFrame, confirmed: Optional[pd.DataFrame],
                confirmations: Optional[pd.DataFrame], chosen_id: Optional[str], path: Path, usable_mb: float,
                title: str, label_keys: Sequence[str]) -> None:
    """`df`: every trial row; `ok`: the finished ones with their one-run estimates (select.screened); `confirmed`:
    the finalists with their confirmed estimates (select.confirmed) and `confirmations` their runs, or None."""
    plt = _pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    stopped = df[df["status"] == Status.STOPPED]
    ax.scatter(stopped["samples_per_s"], stopped["val_acc"], c="lightgrey", label="stopped early (partial)")
    ax.errorbar(ok["samples_per_s"], ok["acc_mean"], yerr=ok["acc_se"], fmt="o", c="tab:blue", ecolor="tab:blue",
                elinewidth=1, capsize=3, label="search runs (accuracy +- binomial SE)")
    _confirmed_runs(ax, confirmed, confirmations)
    front = ok[pareto_mask(ok, "acc_mean")].sort_values("samples_per_s")
    ax.plot(front["samples_per_s"], front["acc_mean"], "-", c="tab:red", label="Pareto front")
    for _, r in front.iterrows():
        ax.annotate(" ".join(f"{k}={shown(r[k])}" for k in label_keys if k in r and pd.notna(r[k])),
                    (r["samples_per_s"], r["acc_mean"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    chosen = (confirmed if confirmed is not None else ok)
    chosen = chosen[chosen["trial_id"] == chosen_id]
    if len(chosen):
        ax.scatter(chosen["samples_per_s"], chosen["acc_mean"], marker="*", s=260, c="gold", edgecolors="black",
                   zorder=5, label=f"chosen (trial {chosen_id})")
    ax.set_xlabel("training throughput (samples/s, chosen plan)")
    ax.set_ylabel("validation accuracy (held-out signers)")
    ax.set_title(title)
    ax.legend(fontsize=8)

    fit = pd.to_numeric(df["predicted_fit_mb"], errors="coerce") if "predicted_fit_mb" in df else pd.Series(
        float("nan"), index=df.index)
    infeasible = ~df["feasible"].astype(bool)
    ax2.scatter(range(len(df)), fit, c=["tab:red" if x else "tab:green" for x in infeasible])
    ax2.axhline(usable_mb, color="black", ls="--", lw=1, label=f"usable on the card ({usable_mb:.0f} MiB)")
    ax2.set_xlabel("config (rejected, no plan and OOM in red)")
    ax2.set_ylabel("predicted fit figure: least need + context + margin (MiB)")
    ax2.set_title("VRAM fit")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _confirmed_runs(ax, confirmed: Optional[pd.DataFrame], confirmations: Optional[pd.DataFrame]) -> None:
    """Each confirmed finalist: its confirmation runs as small dots at their own samples/s, and their mean +- SE
    at the geometric-mean speed."""
    if confirmed is None or confirmations is None or not len(confirmed):
        return
    done = confirmations[confirmations["status"] == Status.OK]
    runs = done[done["finalist"].isin(confirmed["trial_id"])]
    ax.scatter(runs["samples_per_s"], runs["val_acc"], s=9, c="black", alpha=0.6, zorder=4,
               label="confirmation runs (same fold, seed pairs)")
    ax.errorbar(confirmed["samples_per_s"], confirmed["acc_mean"], yerr=confirmed["acc_se"].fillna(0), fmt="D",
                c="tab:orange", ecolor="tab:orange", elinewidth=1.5, capsize=4, zorder=4,
                label="confirmed finalists (mean +- SE)")


def plot_curves(df: pd.DataFrame, path: Path, rungs: Sequence[int], chance: Optional[float], title: str) -> None:
    """Every launched trial's val_acc per epoch; stopped trials dashed; ASHA's rungs; chance if known."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    drawn = 0
    for _, row in df.iterrows():
        accs = curve(row)
        if not accs:
            continue
        drawn += 1
        ax.plot(range(1, len(accs) + 1), accs, marker=".", lw=1.2, ls="--" if row["status"] == Status.STOPPED else "-",
                label=f"{row['trial_id']} ({row['status']})")
    for i, epoch in enumerate(rungs):
        ax.axvline(epoch, color="grey", lw=0.8, ls=":", label="ASHA rung" if i == 0 else None)
    if chance is not None:
        ax.axhline(chance, color="black", lw=0.8, ls="-.", label=f"chance ({chance:.3f})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title if drawn else f"{title}: no learning curves recorded")
    if drawn <= 16:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
