"""SearchConfig: the single source of truth for one search (the space file + the flags). No Ray here.

`python -m asl_ray.search`'s flags are SearchConfig's flag fields (`asl_ray.cli.add_dataclass_flags`): the field
name is the flag (`headroom_mb` -> `--headroom-mb`, unless its metadata names another), its docstring the help,
its annotation the type. Fields without a default take the space file's value when their flag is not given
(`trials`, `gpu`, `headroom_mb`, `plan_search`, `confirm_seeds`, `confirm_folds`, `finalists`) or are worked out
(`name`,
`dashboard_port`); the resolved fields (the loaded space, the card, the data's cache) are no flags.
`resolve(given)` builds one from the flags given, every check done before Ray starts; it writes nothing
(the session's `prepare` makes the folder, settles the port and opens the data).
"""
from __future__ import annotations

import dataclasses
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from asl_ray.cli import DEFAULT_DATA, path_problems
from asl_ray.config import ConfigError, is_finite_number, section
from asl_ray.search.dashboard import DEFAULT_DASHBOARD_PORT
from asl_ray.search.select import SELECT_RULES, Selection
from asl_ray.search.space import SearchSpace
from asl_ray.search.space_yaml import PLAN_SEARCH_MODES
from asl_ray.cards import Card

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SPACE = REPO / "search_spaces" / "cpu-smoke.yaml"
TUNE_DIR, TRAIN_DIR, PLANS_DIR, CONFIRM_DIR = "tune", "train", "plans", "confirm"
STUDY_FILE, ARGS_FILE, FINALISTS_FILE = "optuna.db", "search_args.json", "finalists.json"

NOT_A_FLAG = {"flag": None}
"""Field metadata of a resolved value (the loaded space, the card, ...): no flag of its own."""
PER_RUN_FLAGS = ("resume", "dashboard", "dashboard_host", "dashboard_port", "address", "num_cpus",
                 "dry_run")
"""Where this run happens, not what the experiment is: --resume takes them from its own command line; every
other flag is the experiment's own, saved in search_args.json and read back (a --dry-run is never saved: the real
run after it must not become one)."""


class SearchConfigError(ConfigError):
    """Bad search flags; the message names every offending flag."""


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    space_file: Path = field(default=DEFAULT_SPACE, metadata=section(
        "what to search", flag="--space", default_doc="search_spaces/cpu-smoke.yaml"))
    """search-space YAML (search_spaces/*.yaml): learning params, plans, budget, baselines"""
    data: Path = DEFAULT_DATA
    """GISLR data root (synthesised there if it is the default and missing)"""
    cache_dir: Optional[Path] = None
    """where the preprocessed data cache lives (default: next to the data)"""
    gpu: str = field(metadata={"metavar": "CARD"})
    """target card: rtx4070, a size in GiB, or auto (default: the space's gpu)"""
    headroom_mb: float
    """memory left for the desktop and other processes (default: the space's headroom_mb)"""
    trials: int
    """trials to launch (default: the space's budget.trials; a grid at most its points)"""
    time_budget: Optional[str] = field(default=None, metadata={"metavar": "DURATION"})
    """wall-clock budget for the whole search, e.g. 8h, 45m, 1h30m: no trial is launched that the rest cannot hold
    (a trial is forecast as the longest finished one), the confirmation's share is kept, a resume counts what was
    spent; with --trials the first limit reached wins"""
    plan_search: str = field(metadata={"choices": PLAN_SEARCH_MODES})
    """how a learning config's execution plan is chosen: measure (a few optimizer steps of each plan in the trial's
    worker, the fastest trains) or optuna (one level: Optuna samples micro-batch x accumulation too) (default: the
    space's plan_search.mode)"""
    pack: bool = False
    """pack trials onto each GPU by predicted memory: as many at once as their predicted needs (each with its CUDA
    context) fit the card less headroom, each capped to its own share; also the space's `concurrency: auto`; a no-op
    without GPUs; --concurrency then caps the trials at once"""
    emulate: bool = True
    """cap each GPU trial's memory to the target card"""
    dry_run: bool = False
    """start no Ray and no trial: count the space's learning configs that fit the card, measure a few optimizer
    steps of each distinct (model size, max_len, fastest plan) on this machine's device, and write the search's
    forecast (expected and worst case, per stage) to <storage-path>/<name>/forecast.md and forecast.json; a later
    real run of the same --name shows forecast against actual"""

    select: str = field(default="noise-aware", metadata=section("how the best config is chosen", choices=SELECT_RULES))
    """how the best config is chosen (asl_ray/search/select.py): noise-aware is, among the confirmed finalists, the
    most accurate of those credibly within --delta of the best that the fastest such one is not credibly faster than"""
    alpha: float = 0.05
    """one-sided error rate of each test of the choice (screening, equivalence, speed)"""
    delta: float = 0.02
    """equivalence margin: a finalist credibly within this accuracy of the most accurate one counts as as accurate"""
    confirm_seeds: int = field(metadata={"flag": "--confirm"})
    """fresh seeds each finalist is re-trained with on every confirmation fold before best_config.yaml is written;
    0 = off (default: the space's confirm.seeds)"""
    confirm_folds: int
    """validation folds each finalist is re-trained on, the search's fold first: every finalist runs the same (fold,
    seed) pairs (default: the space's confirm.folds)"""
    finalists: int
    """finalists re-trained by --confirm: the most accurate, the seed's default, then the fastest contenders
    (default: the space's confirm.finalists)"""

    name: str = field(metadata=section("where results go"))
    """experiment name: results in <storage-path>/<name>/ (default: <space>-<date-time>)"""
    storage_path: Path = Path("runs")
    """where experiments live"""
    resume: bool = False
    """finish an interrupted experiment of this --name (its other flags are the saved ones)"""

    address: Optional[str] = field(default=None, metadata=section("where it runs"))
    """an existing Ray cluster ('auto' or host:port, see cluster.yaml); default: a local Ray of its own"""
    num_cpus: Optional[int] = None
    """CPUs for a local Ray (default: all)"""
    concurrency: int = 0
    """trials at once; 0: one per GPU in the cluster, 1 without GPUs"""
    cpus_per_trial: float = 1.0
    """CPUs reserved for each trial's Train worker"""
    max_failures: int = 2
    """worker crashes a trial survives, restarting from its last checkpoint"""

    dashboard: bool = field(default=False, metadata=section("dashboard"))
    """print the Ray dashboard's URL and how to log in"""
    dashboard_host: str = "127.0.0.1"
    """dashboard bind address (default: loopback only)"""
    dashboard_port: int
    """local dashboard port (default 8265, or a free one if that is taken)"""

    space: SearchSpace = field(metadata=section("resolved (no flags)", **NOT_A_FLAG))
    """The loaded space file, its plan_search mode set to `plan_search`."""
    card: Card = field(metadata=NOT_A_FLAG)
    """The target card (`gpu` with `headroom_mb`)."""
    cache_path: Optional[Path] = field(default=None, metadata=NOT_A_FLAG)
    """The data's SequenceCache directory (None until `prepare` opened the data)."""
    num_classes: int = field(default=0, metadata=NOT_A_FLAG)
    """Signs in the data (the classifier's width; 0 until `prepare` opened the data)."""

    def __post_init__(self) -> None:
        problems = type_problems(self) or flag_problems({f.name: getattr(self, f.name) for f in flag_fields()})
        if not problems and self.space.plan_search.mode != self.plan_search:
            problems.append(f"{flag_name('plan_search')}: the space's plan_search.mode is "
                            f"{self.space.plan_search.mode!r}, not {self.plan_search!r} (with_plan_search_mode)")
        if problems:
            raise SearchConfigError("; ".join(problems))

    # ---- derived values ----------------------------------------------------------------------
    def time_budget_s(self) -> Optional[float]:
        from asl_ray.search.time_budget import parse_duration
        return parse_duration(self.time_budget) if self.time_budget is not None else None

    @property
    def root(self) -> Path:
        """runs/<name>: everything this experiment writes."""
        return self.storage_path / self.name

    @property
    def selection(self) -> Selection:
        return Selection(self.select, self.alpha, self.delta)

    def study_name(self) -> str:
        return self.name

    def storage_url(self) -> str:
        return f"sqlite:///{(self.root / STUDY_FILE).resolve()}"

    def tune_dir(self) -> Path:
        """The main Tune experiment."""
        return self.root / TUNE_DIR

    def train_dir(self) -> Path:
        """Each search trial's TorchTrainer run (trial-<id>)."""
        return self.root / TRAIN_DIR

    def plan_cache_dir(self) -> Path:
        """Plan measurements per (plan, device): a repeat is free."""
        return self.root / PLANS_DIR

    def confirm_dir(self) -> Path:
        """The confirmation stage: its Tune experiment (tune/) and TorchTrainer runs (train/)."""
        return self.root / CONFIRM_DIR

    def finalists_file(self) -> Path:
        """The finalists' trial ids, saved before their confirmation runs (a resume re-uses them)."""
        return self.root / FINALISTS_FILE

    def args_file(self) -> Path:
        return self.root / ARGS_FILE

    def saved_flags(self) -> dict[str, Any]:
        """The experiment's own flags (PER_RUN_FLAGS left out), JSON-able, paths absolute: what --resume reads."""
        out = {}
        for f in flag_fields():
            if f.name in PER_RUN_FLAGS:
                continue
            value = getattr(self, f.name)
            out[f.name] = str(Path(value).resolve()) if isinstance(value, Path) else value
        return out


# ---- flags ---------------------------------------------------------------------------------------
def flag_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(SearchConfig) if f.metadata.get("flag", "") is not None]


def flag_name(name: str) -> str:
    """The flag of a SearchConfig field: `headroom_mb` -> `--headroom-mb`, or the one its metadata names."""
    f = next(f for f in dataclasses.fields(SearchConfig) if f.name == name)
    return f.metadata.get("flag") or "--" + name.replace("_", "-")



def _is_duration(text: str) -> bool:
    from asl_ray.search.time_budget import parse_duration
    try:
        parse_duration(text)
    except ValueError:
        return False
    return True


def flag_problems(values: Mapping[str, Any]) -> list[str]:
    """Every bad value among `values` (flag field -> value; absent ones are not checked), each naming its flag."""
    p: list[str] = []

    def check(name: str, ok, rule: str) -> None:
        if name in values and values[name] is not None and not ok(values[name]):
            p.append(f"{flag_name(name)}: {rule}, got {values[name]!r}")

    check("trials", lambda v: v > 0, "must be > 0")
    check("time_budget", _is_duration, "must be a duration such as 8h, 45m or 1h30m")
    check("headroom_mb", lambda v: is_finite_number(v) and v >= 0, "must be a finite number >= 0")
    check("confirm_seeds", lambda v: v >= 0, "must be >= 0 (0: no confirmation runs)")
    check("confirm_folds", lambda v: v >= 1, "must be >= 1")
    check("finalists", lambda v: v >= 1, "must be >= 1")
    check("num_cpus", lambda v: v > 0, "must be > 0")
    check("concurrency", lambda v: v >= 0, "must be >= 0 (0: one trial per GPU)")
    check("cpus_per_trial", lambda v: is_finite_number(v) and v > 0, "must be a finite number > 0")
    check("max_failures", lambda v: v >= 0, "must be >= 0")
    check("dashboard_port", lambda v: 1 <= v <= 65535, "must be a port number in 1..65535")
    check("gpu", lambda v: bool(v.strip()), "must name a card")
    check("name", lambda v: bool(v) and "/" not in v and v not in (".", ".."), "must be a folder name")
    check("plan_search", lambda v: v in PLAN_SEARCH_MODES, f"must be one of {', '.join(PLAN_SEARCH_MODES)}")
    if {"select", "alpha", "delta"} <= set(values):
        try:  # the selection rule checks its own settings (asl_ray/search/select.py), naming the flags
            Selection(values["select"], values["alpha"], values["delta"])
        except ConfigError as e:
            p.append(str(e))
    return p


def type_problems(sc: SearchConfig) -> list[str]:
    """Fields whose value is not of their annotated type (a hand-made or edited saved config)."""
    hints = typing.get_type_hints(SearchConfig)
    p = []
    for f in dataclasses.fields(SearchConfig):
        expected, value = hints[f.name], getattr(sc, f.name)
        allowed = typing.get_args(expected) if typing.get_origin(expected) is typing.Union else (expected,)
        if value is None and type(None) in allowed:
            continue
        kinds = tuple(a for a in allowed if a is not type(None))
        ok = (isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
              or float in kinds and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            label = flag_name(f.name) if f.metadata.get("flag", "") is not None else f.name
            p.append(f"{label}: expected {' or '.join(k.__name__ for k in kinds)}, got {type(value).__name__} "
                     f"{value!r}")
    return p


def raise_if(problems: list[str]) -> None:
    if problems:
        raise SearchConfigError("; ".join(problems))


# ---- resolution ------------------------------------------------------------------------------------
def resolve(given: Mapping[str, Any], log=print) -> SearchConfig:
    """A SearchConfig from the flags given (flag field -> value; absent: the default, else the space's).
    Values only: the flags, the space and card, whether the experiment folder may be used; nothing is written
    (`prepare` does that). Raises one SearchConfigError per stage naming every bad flag/file/key."""
    from asl_ray.search.space import SpaceError, load_space
    from asl_ray.cards import CardError, resolve_card
    unknown = sorted(set(given) - {f.name for f in flag_fields()})
    raise_if([f"unknown flag(s): {', '.join(unknown)}"] if unknown else [])
    defaults = {f.name: f.default for f in flag_fields() if f.default is not dataclasses.MISSING}
    values = {**defaults, **{k: v for k, v in given.items() if v is not None or k in defaults}}
    raise_if(flag_problems(values))
    raise_if(path_problems(folders={"--storage-path": values["storage_path"], "--cache-dir": values["cache_dir"]},
                           files={"--space": values["space_file"]}))

    problems: list[str] = []
    space = card = None
    try:
        space = load_space(values["space_file"])
    except SpaceError as e:
        problems.append(str(e))
    if space is not None:
        values.setdefault("gpu", str(space.gpu))
        values.setdefault("headroom_mb", float(space.headroom_mb))
        values.setdefault("plan_search", space.plan_search.mode)
        if given.get("pack") is None:  # --pack / --no-pack as given, else the space's `concurrency: auto`
            values["pack"] = space.pack
        values.setdefault("confirm_seeds", space.confirm.seeds)
        values.setdefault("confirm_folds", space.confirm.folds)
        values.setdefault("finalists", space.confirm.finalists)
        problems += flag_problems(values)
        folds = space.base_config().num_folds
        if isinstance(values["confirm_folds"], int) and values["confirm_folds"] > folds:
            problems.append(f"{flag_name('confirm_folds')}: at most num_folds ({folds}), got {values['confirm_folds']}")
        try:
            card = resolve_card(values["gpu"], values["headroom_mb"])
        except CardError as e:
            problems.append(str(e))
    raise_if(problems)
    try:
        space = space.with_plan_search_mode(values["plan_search"])
    except SpaceError as e:
        raise SearchConfigError(f"{flag_name('plan_search')} {values['plan_search']}: {e}") from None
    values["trials"] = space.trials_to_run(values.get("trials") or space.budget.trials)

    # A new experiment gets a fresh name unless one is given, so rerunning the default never collides.
    values.setdefault("name", f"{Path(values['space_file']).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    values["storage_path"], values["space_file"] = Path(values["storage_path"]), Path(values["space_file"])
    _check_experiment_folder(Path(values["storage_path"]) / values["name"], values["name"], values["resume"],
                             values["storage_path"])
    values.setdefault("dashboard_port", DEFAULT_DASHBOARD_PORT)  # prepare() finds a free one if this is taken
    values["data"] = Path(values["data"])
    values["cache_dir"] = Path(values["cache_dir"]) if values["cache_dir"] is not None else None
    return SearchConfig(**values, space=space, card=card)


def _check_experiment_folder(root: Path, name: str, resume: bool, storage_path: Path) -> None:
    if resume and not (root / TUNE_DIR).exists():
        raise SearchConfigError(f"--resume: no experiment named {name!r} under {storage_path}/ "
                                f"(expected {root / TUNE_DIR})")
    if not resume and (root / TUNE_DIR).exists():
        raise SearchConfigError(f"--name {name!r}: {root} already holds an experiment; use --resume to finish "
                                f"it or another --name")
