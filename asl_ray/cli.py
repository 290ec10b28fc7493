"""The one CLI library of every entry point: flags generated from frozen dataclasses (their field docstrings are
the help, their sections the groups of --help, a nested dataclass such as `CardArgs` a section of its own), the
TrainConfig flags with `--set key=value` as their alias, and one-line errors with exit code 2."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import sys
import re
import typing
from dataclasses import MISSING, field
from pathlib import Path
from typing import Any, Iterator, NoReturn, Optional, Sequence

import yaml

from asl_ray.cards import DEFAULT_HEADROOM_MB
from asl_ray.config import ConfigError, TrainConfig, UserInputError, is_finite_number

EXIT_BAD_INPUT = 2
DEFAULT_DATA = Path("data/synth")
"""Where entry points without --data write (once) and read the synthetic set."""


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_BAD_INPUT)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Every user-input error raised inside (asl_ray.config.UserInputError: a bad flag, file, key or value, found
    early or late) ends the CLI with its one line and exit code 2, never a traceback."""
    try:
        yield
    except UserInputError as e:
        fail(str(e))


def path_problems(folders: Optional[dict] = None, files: Optional[dict] = None) -> list[str]:
    """What is wrong with the paths a user gave, each naming its flag: a folder flag (flag -> path or None) must be a
    folder or not exist yet under a folder; a file flag must be an existing file."""
    problems = []
    for flag, path in (folders or {}).items():
        if path is None:
            continue
        path = Path(path)
        if path.exists() and not path.is_dir():
            problems.append(f"{flag} {path}: exists and is not a folder")
            continue
        parent = next((p for p in path.absolute().parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            problems.append(f"{flag} {path}: {parent} is not a folder")
    for flag, path in (files or {}).items():
        if path is not None and not Path(path).is_file():
            problems.append(f"{flag} {path}: " + ("is a folder, not a file" if Path(path).is_dir() else "no such file"))
    return problems


def check_paths(folders: Optional[dict] = None, files: Optional[dict] = None) -> None:
    """`path_problems`, raised as one UserInputError (every CLI prints it as one line, exit 2)."""
    problems = path_problems(folders, files)
    if problems:
        raise UserInputError("; ".join(problems))


@dataclasses.dataclass(frozen=True)
class CardArgs:
    """The target card as every CLI takes it: `--gpu CARD` (`--emulate-gpu` for train) and `--headroom-mb`. A CLI
    holds it as one field of its arguments (a section of its --help), renaming or re-describing a flag in that
    field's metadata (`flags`, `docs`, `default_docs`)."""
    gpu: Optional[str] = field(default="rtx4070", metadata={"metavar": "CARD"})
    """rtx4070, a100-80gb, ..., a size in GiB, or auto (what is free on the device this process uses)"""
    headroom_mb: Optional[float] = field(default=None, metadata={"type": "non_negative_float",
                                                                 "default_doc": str(DEFAULT_HEADROOM_MB)})
    """Memory kept free for the desktop and other processes, in MiB (finite, >= 0)"""

    def __post_init__(self) -> None:
        if self.headroom_mb is not None and not (is_finite_number(self.headroom_mb) and self.headroom_mb >= 0):
            raise UserInputError(f"--headroom-mb: must be a finite number >= 0, got {self.headroom_mb!r}")

    def resolve(self, default_gpu: Optional[str] = None, default_headroom_mb: Optional[float] = None):
        """The Card (asl_ray.cards.resolve_card), the given values first, then this CLI's defaults; None when no
        card is named at all (train without --emulate-gpu)."""
        from asl_ray.cards import resolve_card
        gpu = self.gpu or default_gpu
        if gpu is None:
            return None
        headroom = next(h for h in (self.headroom_mb, default_headroom_mb, DEFAULT_HEADROOM_MB) if h is not None)
        return resolve_card(gpu, headroom)


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """['batch_size=8', 'precision=bf16'] -> {'batch_size': 8, 'precision': 'bf16'} (values read as YAML)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--set {pair!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = _number_or_yaml(value)
        except yaml.YAMLError:
            fail(f"--set {pair!r}: cannot read the value")
    return out


def _number_or_yaml(text: str) -> Any:
    # YAML 1.1 reads '2e-3' as a string; a user typing it means the number.
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return yaml.safe_load(text)


def add_train_config_flags(p: argparse.ArgumentParser) -> list[str]:
    """One flag per TrainConfig key (`--batch-size 8`, `--no-compile`, ...), under its section's title, and
    `--set KEY=VALUE` as their alias (the keys' own names, values read as YAML; kept for scripts that use it)."""
    names = add_dataclass_flags(p, TrainConfig, title_prefix="TrainConfig: ")
    p.add_argument_group("TrainConfig keys by name").add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="alias of the TrainConfig flags by key name (repeatable): --set batch_size=8 is "
                        "--batch-size 8; applied after them")
    return names


def train_config_from(config: Optional[Path], given: dict[str, Any]) -> TrainConfig:
    """Defaults <- the --config YAML <- the TrainConfig flags given <- --set; every problem raised as one
    ConfigError naming the file, flag or key."""
    from asl_ray.config import FIELD_NAMES, load_config_yaml
    cfg = load_config_yaml(config) if config else TrainConfig()
    flagged = {k: given[k] for k in FIELD_NAMES if k in given}
    by_set = parse_overrides(given.get("overrides") or [])
    if not flagged and not by_set:
        return cfg
    try:  # one application, so every problem of both is in the one error; --set wins a key given twice
        return cfg.with_overrides({**flagged, **by_set}, source="--set" if not flagged else "flags")
    except ConfigError as e:  # name the flags the user typed, not the keys
        message = str(e)
        for k in sorted(set(flagged) - set(by_set), key=len, reverse=True):
            message = re.sub(rf"(?<![\w-]){k}(?=[: ])", flag_of(k), message)
        raise ConfigError(message) from None


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v


def finite_float(text: str) -> float:
    """argparse type: a real number; NaN and inf are refused (they would pass every range check)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return v


def non_negative_float(text: str) -> float:
    v = finite_float(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def whole_number(text: str) -> int:
    """argparse type: an integer (its range is the config's to check)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


_FLAG_TYPES = {int: whole_number, float: finite_float, str: str, Path: Path,
               "non_negative_float": non_negative_float, "positive_int": positive_int}
_METAVARS = {int: "N", float: "X", Path: "PATH"}


def flag_of(name: str, f: Optional[dataclasses.Field] = None) -> str:
    """The flag of a field: `--field-name`, or the one its metadata names."""
    return (f.metadata.get("flag") if f is not None else None) or "--" + name.replace("_", "-")


def _flag_kind(annotation) -> tuple[Any, bool]:
    """(the flag's element type, whether it takes several values): Optional[X] -> X, tuple[X, ...] -> X, many."""
    if typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is tuple:
        return typing.get_args(annotation)[0], True
    return annotation, False


def _field_default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


def add_dataclass_flags(p: argparse.ArgumentParser, cls: type, *, required: bool = False, defaults: Any = None,
                        flags: Optional[dict] = None, docs: Optional[dict] = None,
                        default_docs: Optional[dict] = None, title_prefix: str = "", _title: str = "",
                        _groups: Optional[dict] = None) -> list[str]:
    """One flag per documented field of a dataclass, listed in --help under its section (`config.section`):
    `--field-name` (or the metadata's `flag`; `flag: None`: none), help = the field's docstring and its default,
    type from the annotation (Optional[X] as X; tuple[X, ...]: several values; bool: `--x` and `--no-x`; the metadata's `type` and `choices` refine it; floats must be finite). A field whose type is
    a dataclass is a nested section: its fields' flags, with the defaults of the field's default value and the
    `flags`/`docs`/`default_docs` renames of its metadata. `required`: a field without default is a required
    flag. A flag not given is absent from the parsed namespace (argparse.SUPPRESS), so the caller can tell "not
    given" from "given the default" (`dataclass_from`). Returns the field names, in declaration order."""
    from asl_ray.config import documented_fields
    hints = typing.get_type_hints(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    groups = {} if _groups is None else _groups
    names = []
    for section_title, name, doc in documented_fields(cls):
        f = by_name[name]
        if "flag" in f.metadata and f.metadata["flag"] is None:
            continue
        title = title_prefix + section_title if section_title else _title
        if title not in groups:
            groups[title] = p.add_argument_group(title) if title else p
        default = getattr(defaults, name) if defaults is not None else _field_default(f)
        kind, many = _flag_kind(hints[name])
        if dataclasses.is_dataclass(kind):
            add_dataclass_flags(p, kind, required=required, defaults=None if default is MISSING else default,
                                flags=f.metadata.get("flags"), docs=f.metadata.get("docs"),
                                default_docs=f.metadata.get("default_docs"), _title=title, _groups=groups)
            names.append(name)
            continue
        doc = (docs or {}).get(name) or doc
        shown = (default_docs or {}).get(name) or f.metadata.get("default_doc")
        if shown is None and default not in (MISSING, None, ()) and kind is not bool and "(default" not in doc:
            shown = " ".join(default) if many else default
        help_text = doc + (f" (default: {shown})" if shown is not None else "")
        common = dict(dest=name, default=argparse.SUPPRESS, help=help_text.replace("%", "%%"))  # argparse formats %
        if required and default is MISSING:
            common["required"] = True
        flag = (flags or {}).get(name) or flag_of(name, f)
        if kind is bool:
            # --no-x too: a --config file or a saved experiment may have switched it on
            groups[title].add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        else:
            choices = f.metadata.get("choices")
            groups[title].add_argument(
                flag, type=_FLAG_TYPES[f.metadata.get("type", kind)], choices=choices, nargs="+" if many else None,
                metavar=f.metadata.get("metavar") or (None if choices else _METAVARS.get(kind, name.upper())),
                **common)
        names.append(name)
    return names


def dataclass_from(cls: type, given: dict[str, Any], defaults: Any = None):
    """The dataclass of `add_dataclass_flags`'s flags: the values given, else the defaults (the `defaults`
    instance's, else the fields' own); nested sections likewise. Validated as it is made (its __post_init__)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        default = getattr(defaults, f.name) if defaults is not None else _field_default(f)
        kind, many = _flag_kind(hints[f.name])
        if dataclasses.is_dataclass(kind):
            values[f.name] = dataclass_from(kind, given, None if default is MISSING else default)
        elif f.name in given:
            values[f.name] = tuple(given[f.name]) if many else given[f.name]
        elif default is not MISSING:
            values[f.name] = default
    return cls(**values)


def parse_cli(parser: argparse.ArgumentParser, cls: type, argv: Optional[Sequence[str]]):
    """(the CLI's arguments as `cls`, every value given by name): a bad value is one line and exit 2."""
    given = vars(parser.parse_args(argv))
    with user_errors():
        return dataclass_from(cls, given), given


__all__ = ["fail", "finite_float", "non_negative_float", "parse_overrides", "add_train_config_flags",
           "train_config_from", "positive_int", "whole_number", "add_dataclass_flags", "dataclass_from", "parse_cli",
           "CardArgs", "ConfigError", "EXIT_BAD_INPUT"]


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's, without breaking words at hyphens (a flag or path in a docstring stays whole)."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        import textwrap
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False, break_long_words=False)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (the flag and the problem) and exit 2, like every other error."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("usage", "%(prog)s [flags] (see --help)")  # generated flags: a usage line per flag is noise
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: {message} (see --help)")


def open_data_or_fail(data: Optional[str], cache_dir: Optional[str] = None):
    """(data root, its SequenceCache) for --data, or for the synthetic default (written on first use);
    bad data exits 2 with one line naming the file."""
    from asl_ray.data.cache import load_or_build_cache
    from asl_ray.data.gislr import DataError
    root = Path(data) if data else DEFAULT_DATA
    try:
        if data is None and not (root / "train.csv").exists():
            from asl_ray.data.synth import write_synthetic_root
            print(f"no --data given: writing the synthetic set to {root}")
            write_synthetic_root(root)
        return root, load_or_build_cache(root, cache_dir)
    except (DataError, ConfigError) as e:
        fail(str(e))
    except OSError as e:
        fail(f"{getattr(e, 'filename', '') or root}: {e.strerror or e}")
