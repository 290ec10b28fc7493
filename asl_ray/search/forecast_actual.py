"""Forecast vs actual, for a real run after a dry run of the same --name: the dry run's forecast.json read back, the
stage times (runs/<name>/stage_times.json), the comparison the summary and report.md print, and the ETA line's
inputs. No Ray here; nothing measured (asl_ray/search/forecast.py makes the forecast)."""
from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

FORECAST_JSON, STAGE_TIMES = "forecast.json", "stage_times.json"


def duration_text(seconds: Optional[float]) -> str:
    """12 s, 4.5 min, 2.3 h."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def load_forecast(root: Path) -> Optional[dict[str, Any]]:
    """runs/<name>/forecast.json of a dry run of this name; None when there is none (or it cannot be read)."""
    try:
        f = json.loads((Path(root) / FORECAST_JSON).read_text())
    except (OSError, ValueError):
        return None
    return f if isinstance(f, dict) else None


def record_stage(root: Path, **times: Any) -> dict[str, Any]:
    """Merge `times` into runs/<name>/stage_times.json (atomically) and return the whole record."""
    path = Path(root) / STAGE_TIMES
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = {}
    record.update(times)
    with tempfile.NamedTemporaryFile("w", dir=root, delete=False, suffix=".tmp") as tmp:
        json.dump(record, tmp, indent=1)
    Path(tmp.name).replace(path)
    return record


def comparison_rows(forecast: Optional[dict], times: dict[str, Any]) -> list[dict[str, Any]]:
    """Per stage: forecast expected and worst (None without a measured forecast), actual seconds, the error."""
    stages = (forecast or {}).get("stages") or {}
    out = []
    for stage, key in (("main search", "search"), ("confirmation", "confirmation"), ("total", "total")):
        actual = times.get(f"{key}_s")
        expected = (stages.get(key) or {}).get("expected_s")
        worst = (stages.get(key) or {}).get("worst_s")
        error = (actual / expected - 1) if actual is not None and expected else None
        out.append({"stage": stage, "expected_s": expected, "worst_s": worst, "actual_s": actual, "error": error})
    return out


def comparison_lines(root: Path) -> list[str]:
    """'Forecast vs actual' for the summary and report.md."""
    forecast = load_forecast(root)
    try:
        times = json.loads((Path(root) / STAGE_TIMES).read_text())
    except (OSError, ValueError):
        times = {}
    if forecast is None:
        head = "No forecast (run `--dry-run` with this --name first); actual times only."
    elif not forecast.get("measured"):
        head = f"The dry run forecast no seconds: {forecast.get('why_not_measured')}."
    else:
        head = f"Forecast by the dry run of {forecast.get('created')} on {forecast.get('device')}."
    if times.get("resumed"):
        head += " This run was resumed: actual times are this attempt's only."
    lines = [head, "", "| stage | forecast (expected) | worst case | actual | actual vs expected |",
             "|---|---|---|---|---|"]
    for r in comparison_rows(forecast, times):
        lines.append(f"| {r['stage']} | {duration_text(r['expected_s'])} | {duration_text(r['worst_s'])} | "
                     f"{duration_text(r['actual_s'])} | " + (f"{r['error']:+.0%}" if r["error"] is not None else "-")
                     + " |")
    return lines


def report_section(root: Path) -> str:
    """report.md's last section."""
    return "\n" + "\n".join(["## Forecast vs actual", "", *comparison_lines(root)]) + "\n"


def eta_inputs(root: Path, stage: str) -> tuple[Optional[float], float, float]:
    """(forecast seconds per trial of `stage` ('search' or 'confirmation'), the forecast of what follows it, the
    search's start time) for the progress line; the per-trial figure is None without a measured forecast."""
    forecast = load_forecast(root) or {}
    stages = forecast.get("stages") or {} if forecast.get("measured") else {}
    try:
        started = float(json.loads((Path(root) / STAGE_TIMES).read_text())["started"])
    except (OSError, ValueError, KeyError, TypeError):
        started = time.time()
    if stage == "search":
        per = (stages.get("search") or {}).get("per_trial_expected_s")
        after = (stages.get("confirmation") or {}).get("expected_s") or 0.0
    else:
        per, after = (stages.get("confirmation") or {}).get("per_run_expected_s"), 0.0
    per = per if isinstance(per, (int, float)) and math.isfinite(per) else None
    return per, float(after), started
