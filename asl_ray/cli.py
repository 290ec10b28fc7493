"""What every entry point shares: one-line errors with exit code 2, and `--set key=value` overrides."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator, NoReturn, Optional, Sequence

import yaml

from asl_ray.config import ConfigError, TrainConfig, UserInputError, field_docs, field_sections

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
    """The target card as every CLI takes it: `--gpu CARD` (`--emulate-gpu` for train) and `--headroom-mb`."""
    gpu: Optional[str]
    """rtx4070, a100-80gb, ..., a size in GiB, or auto (what is free on the device this process uses)."""
    headroom_mb: Optional[float]
    """Memory kept free for the desktop and other processes, in MiB (finite, >= 0)."""

    @classmethod
    def add_to(cls, p: argparse.ArgumentParser, *, flag: str = "--gpu", default: Optional[str] = "rtx4070",
               default_doc: str = "rtx4070", headroom_doc: str = "512", gpu_help: str = "") -> None:
        """The two flags, with one help text each (`default_doc`: what a left-out flag means in this CLI)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        p.add_argument(flag, dest="gpu", default=default, metavar="CARD",
                       help=(gpu_help or _field_doc(cls, fields["gpu"])) + f" (default: {default_doc})")
        p.add_argument("--headroom-mb", type=non_negative_float, default=None,
                       help=_field_doc(cls, fields["headroom_mb"]) + f" (default: {headroom_doc})")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "CardArgs":
        return cls(args.gpu, args.headroom_mb)

    def resolve(self, default_gpu: Optional[str] = None, default_headroom_mb: Optional[float] = None):
        """The Card (asl_ray.cards.resolve_card), the given values first, then this CLI's defaults; None when no
        card is named at all (train without --emulate-gpu)."""
        from asl_ray.cards import DEFAULT_HEADROOM_MB, resolve_card
        gpu = self.gpu or default_gpu
        if gpu is None:
            return None
        headroom = next(h for h in (self.headroom_mb, default_headroom_mb, DEFAULT_HEADROOM_MB) if h is not None)
        return resolve_card(gpu, headroom)


def _field_doc(cls, f: dataclasses.Field) -> str:
    import ast
    import inspect
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == f.name \
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
            return " ".join(str(following.value.value).split()).rstrip(".")
    return f.name


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


def add_config_arguments(p: argparse.ArgumentParser, *, epochs_shorthand: bool = True,
                         config_help: str = "YAML of TrainConfig keys applied over the defaults (configs/*.yaml)"
                         ) -> None:
    """--config, --set (and --epochs), with every TrainConfig key listed at the end of --help."""
    p.add_argument("--config", help=config_help)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one TrainConfig key (repeatable), e.g. --set batch_size=8; the keys are listed "
                        "below")
    if epochs_shorthand:
        p.add_argument("--epochs", type=int, help="shorthand for --set epochs=N")
    # Raw, so the key list keeps its layout; the descriptions of our parsers are one line anyway.
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "\n\n".join(text for text in (p.epilog, config_keys_help()) if text)


def config_keys_help(width: int = 100) -> str:
    """Every TrainConfig key with its type, default and docstring, by section: the --set reference."""
    defaults = TrainConfig()
    docs = field_docs()
    types = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
    out = ["TrainConfig keys (--set KEY=VALUE, or KEY: VALUE in a --config YAML; floats must be finite):"]
    for section, names in field_sections().items():
        out.append(f"\n{section}:")
        for name in names:
            out.append(f"  {name} ({types[name]}, default {getattr(defaults, name)!r})")
            out.append(textwrap.fill(docs[name], width, initial_indent=" " * 6, subsequent_indent=" " * 6,
                                     break_long_words=False, break_on_hyphens=False))
    return "\n".join(out)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults <- --config YAML <- --set / shorthands; every problem raised as one ConfigError."""
    from asl_ray.config import load_config_yaml
    cfg = load_config_yaml(args.config) if args.config else TrainConfig()
    overrides = parse_overrides(args.overrides)
    if getattr(args, "epochs", None) is not None:
        overrides["epochs"] = args.epochs
    return cfg.with_overrides(overrides, source="--set") if overrides else cfg


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


_FLAG_TYPES = {int: whole_number, float: finite_float, str: str, Path: Path}
_METAVARS = {int: "N", float: "X", Path: "PATH"}


def add_dataclass_flags(p: argparse.ArgumentParser, cls: type) -> list[str]:
    """One flag per documented field of a dataclass whose metadata does not say `flag: None`: `--field-name`
    (or the metadata's `flag`), help = the field's docstring (+ its default), type from the annotation
    (Optional[X] as X; bool: a switch, `--no-x` too when it defaults on), `choices` from the metadata.
    A flag not given is absent from the parsed namespace (argparse.SUPPRESS), so the caller can tell "not
    given" from "given the default". Returns the field names, in declaration order."""
    import typing
    from asl_ray.config import documented_fields
    hints = typing.get_type_hints(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    names = []
    for section, name, doc in documented_fields(cls):
        f = by_name[name]
        if "flag" in f.metadata and f.metadata["flag"] is None:
            continue
        flag = f.metadata.get("flag") or "--" + name.replace("_", "-")
        kind = hints[name]
        if typing.get_origin(kind) is typing.Union:
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        has_default = f.default is not dataclasses.MISSING
        shown = has_default and f.default is not None and kind is not bool and "(default" not in doc
        help_text = doc + (f" (default: {f.default})" if shown else "")
        common = dict(dest=name, default=argparse.SUPPRESS, help=help_text.replace("%", "%%"))  # argparse formats %
        if kind is bool:
            action = argparse.BooleanOptionalAction if has_default and f.default else "store_true"
            p.add_argument(flag, action=action, **common)
        else:
            p.add_argument(flag, type=_FLAG_TYPES[kind], choices=f.metadata.get("choices"),
                           metavar=None if f.metadata.get("choices") else _METAVARS.get(kind, name.upper()), **common)
        names.append(name)
    return names


__all__ = ["fail", "finite_float", "non_negative_float", "parse_overrides", "add_config_arguments", "config_from_args",
           "config_keys_help", "positive_int", "whole_number", "add_dataclass_flags", "ConfigError", "EXIT_BAD_INPUT"]


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (the flag and the problem) and exit 2, like every other error."""

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
