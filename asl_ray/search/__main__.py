"""python -m asl_ray.search [--space FILE] [--data DIR] [--gpu CARD] [--trials N] [--name NAME] [--resume] ...

With no arguments: the embedded default (search_spaces/cpu-smoke.yaml on the synthetic set, made if
missing, on a local Ray; CPU when there is no GPU). Every input is checked before Ray starts.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from asl_ray.cli import (DEFAULT_DATA, OneLineParser, fail, finite_float, non_negative_float, open_data_or_fail,
                         positive_int)
from asl_ray.search.ray_cluster import DEFAULT_DASHBOARD_PORT, choose_dashboard_port, port_number
from asl_ray.search.report import SELECT_RULES, Selection

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SPACE = REPO / "search_spaces" / "cpu-smoke.yaml"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m asl_ray.search", description=__doc__.splitlines()[0])
    p.add_argument("--space", default=str(DEFAULT_SPACE), help="search-space YAML (search_spaces/*.yaml)")
    p.add_argument("--data", default=None, help=f"GISLR data root (default {DEFAULT_DATA}, synthesised if missing)")
    p.add_argument("--gpu", default=None, help="target card: rtx4070, a size in GiB, or auto (default: the space's)")
    p.add_argument("--headroom-mb", type=non_negative_float, default=None,
                   help="memory left for the desktop/other processes")
    p.add_argument("--trials", type=positive_int, default=None, help="trials to launch (default: the space's budget)")
    p.add_argument("--name", default=None,
                   help="experiment name: results in <storage-path>/<name>/ (default: <space>-<date-time>)")
    p.add_argument("--storage-path", default="runs", help="where experiments live (default runs/)")
    p.add_argument("--resume", action="store_true", help="finish an interrupted experiment of this --name")
    p.add_argument("--select", choices=SELECT_RULES, default="fastest-within-margin",
                   help="how the best config is chosen (default: fastest within --margin accuracy of the best)")
    p.add_argument("--margin", type=finite_float, default=0.01, help="accuracy margin for fastest-within-margin")
    p.add_argument("--emulate", action=argparse.BooleanOptionalAction, default=True,
                   help="cap each GPU trial's memory to the target card (default on)")
    p.add_argument("--cache-dir", default=None, help="where the preprocessed data cache lives")
    p.add_argument("--address", default=None, help="an existing Ray cluster ('auto' or host:port), see cluster.yaml")
    p.add_argument("--num-cpus", type=positive_int, default=None, help="CPUs for a local Ray (default: all)")
    p.add_argument("--concurrency", type=positive_int, default=None,
                   help="trials at once (default: one per GPU in the cluster, 1 without GPUs)")
    p.add_argument("--cpus-per-trial", type=finite_float, default=1.0,
                   help="CPUs reserved for each trial's Train worker")
    p.add_argument("--max-failures", type=int, default=2,
                   help="worker crashes a trial survives, restarting from its last checkpoint (default 2)")
    p.add_argument("--dashboard", action="store_true", help="print the Ray dashboard's URL and how to log in")
    p.add_argument("--dashboard-host", default="127.0.0.1", help="dashboard bind address (default loopback only)")
    p.add_argument("--dashboard-port", type=port_number, default=None,
                   help=f"local dashboard port (default {DEFAULT_DASHBOARD_PORT}, or a free one if that is taken)")
    return p


ARGS_FILE = "search_args.json"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.resume:
        args = _saved_args(args)
    plan = _plan(args)  # every check that can fail does so here, before Ray starts
    if not args.resume:
        _save_args(args, plan.root)
    from asl_ray.search.session import run_search
    return run_search(plan)


def _saved_args(args: argparse.Namespace) -> argparse.Namespace:
    """--resume needs only --name (and --storage-path): the rest is what the experiment started with."""
    if not args.name:
        fail("--resume: give the --name of the experiment to finish (see the folders under --storage-path)")
    name = args.name
    saved = Path(args.storage_path) / name / ARGS_FILE
    if not saved.exists():
        fail(f"--resume: no experiment named {name!r} under {args.storage_path}/ (no {saved})")
    try:
        values = json.loads(saved.read_text())
    except (OSError, ValueError) as e:
        fail(f"{saved}: cannot read the saved search arguments: {e}")
    return argparse.Namespace(**{**values, "resume": True, "dashboard": args.dashboard, "address": args.address or
                                 values["address"]})


def _save_args(args: argparse.Namespace, root: Path) -> None:
    values = dict(vars(args))
    for key in ("space", "data", "cache_dir", "storage_path"):
        if values[key] is not None:
            values[key] = str(Path(values[key]).resolve())
    if values["data"] is None:
        values["data"] = str(DEFAULT_DATA.resolve())
    values["name"] = root.name
    (root / ARGS_FILE).write_text(json.dumps(values, indent=1))


def _plan(args: argparse.Namespace):
    from asl_ray.search.session import SearchPlan
    from asl_ray.search.space import SpaceError, load_space
    from asl_ray.vram.cards import CardError, resolve_card
    if not 0 <= args.margin < 1:
        fail(f"--margin: must be in [0, 1), got {args.margin}")
    if args.max_failures < 0:
        fail(f"--max-failures: must be >= 0, got {args.max_failures}")
    if not 0 < args.cpus_per_trial <= 256:
        fail(f"--cpus-per-trial: must be > 0, got {args.cpus_per_trial}")
    # A local Ray's dashboard port is checked here, before Ray starts; an --address cluster has its own.
    dashboard_port = (args.dashboard_port or DEFAULT_DASHBOARD_PORT if args.address
                      else choose_dashboard_port(args.dashboard_host, args.dashboard_port))
    try:
        space = load_space(args.space)
        headroom = args.headroom_mb if args.headroom_mb is not None else space.headroom_mb
        card = resolve_card(args.gpu or str(space.gpu), headroom)
    except (SpaceError, CardError) as e:
        fail(str(e))
    # A new experiment gets a fresh name unless one is given, so rerunning the default never collides.
    name = args.name or f"{Path(args.space).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    root = Path(args.storage_path) / name
    if args.resume and not (root / "tune").exists():
        fail(f"--resume: no experiment named {name!r} under {args.storage_path}/ (expected {root / 'tune'})")
    if not args.resume and (root / "tune").exists():
        fail(f"--name {name!r}: {root} already holds an experiment; use --resume to finish it or another --name")
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        fail(f"--storage-path: cannot write to {root}: {e.strerror or e}")
    data, cache = open_data_or_fail(args.data, args.cache_dir)
    trials = space.trials_to_run(args.trials or space.budget.trials)
    return SearchPlan(space=space, card=card, root=root, cache=cache, data=data, trials=trials,
                      resume=args.resume, selection=Selection(args.select, args.margin), emulate=args.emulate,
                      address=args.address, num_cpus=args.num_cpus, dashboard=args.dashboard,
                      dashboard_host=args.dashboard_host, dashboard_port=dashboard_port,
                      concurrency=args.concurrency or 0, cpus_per_trial=args.cpus_per_trial,
                      max_failures=args.max_failures)


if __name__ == "__main__":
    sys.exit(main())
