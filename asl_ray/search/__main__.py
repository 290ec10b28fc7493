"""python -m asl_ray.search [--space FILE] [--data DIR] [--gpu CARD] [--trials N] [--confirm K] [--name NAME] ...

With no arguments: the embedded default (search_spaces/cpu-smoke.yaml on the synthetic set, made if missing, on
a local Ray; CPU when there is no GPU). The flags are SearchConfig's fields (asl_ray/search/config.py); every
input is checked before Ray starts. --resume needs only --name (and --storage-path): the rest is what the
experiment started with.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from asl_ray.cli import OneLineParser, add_dataclass_flags, fail, user_errors
from asl_ray.search.config import ARGS_FILE, PER_RUN_FLAGS, SearchConfig, flag_name, resolve


RETIRED_FLAGS = ("z", "margin")
"""Saved by earlier versions (the rule's z and fastest-within-margin's margin): a resume decides with --alpha and
--delta."""


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m asl_ray.search", description=__doc__.splitlines()[0])
    add_dataclass_flags(p, SearchConfig)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    given = vars(build_parser().parse_args(argv))
    # Asked for on this command line (not the space's default): a dry run then forecasts for that card only.
    gpu_given = given.get("gpu") is not None
    if given.get("resume"):
        given = _saved_flags(given)
    with user_errors():
        # every check that can fail does so here, before Ray starts: the values, then the folder, port and data
        from asl_ray.search import session
        sc = session.prepare(resolve(given), port_given=given.get("dashboard_port") is not None)
        if not sc.resume and not sc.dry_run:  # a dry run writes only its forecast
            sc.args_file().write_text(json.dumps(sc.saved_flags(), indent=1))
        # A bad value found only once a trial is sampled (two keys that clash) is one line too; Tune's saved state
        # keeps what ran, for --resume after the space file is fixed.
        if sc.dry_run:  # before anything of Ray is imported
            from asl_ray.search import forecast
            return forecast.dry_run(sc, gpu_given)
        return session.run_search(sc)


def _saved_flags(given: dict[str, Any]) -> dict[str, Any]:
    """The experiment's saved flags, with this command line's per-run ones (dashboard, address, ...)."""
    if not given.get("name"):
        fail("--resume: give the --name of the experiment to finish (see the folders under --storage-path)")
    name, storage = given["name"], given.get("storage_path", Path("runs"))
    saved = Path(storage) / name / ARGS_FILE
    if not saved.exists():
        fail(f"--resume: no experiment named {name!r} under {storage}/ (no {saved})")
    extra = sorted(set(given) - set(PER_RUN_FLAGS) - {"name", "storage_path"})
    if extra:
        fail(f"--resume: {', '.join(flag_name(k) for k in extra)}: the experiment's own (saved in {saved}); "
             f"leave them out")
    try:
        values = json.loads(saved.read_text())
    except (OSError, ValueError) as e:
        fail(f"{saved}: cannot read the saved search arguments: {e}")
    if not isinstance(values, dict):
        fail(f"{saved}: cannot read the saved search arguments: not a mapping")
    return {**{k: v for k, v in values.items() if k not in PER_RUN_FLAGS and k not in RETIRED_FLAGS}, **given}


if __name__ == "__main__":
    sys.exit(main())
