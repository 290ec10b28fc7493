"""The one CLI library (asl_ray/cli.py): every entry point's flags come from frozen dataclasses, with their field
docstrings as help; every float flag refuses NaN and inf with one line and exit 2; TrainConfig's flags and their
`--set` alias give the same config."""
from __future__ import annotations

import argparse
import dataclasses
import importlib

import pytest
import yaml

from asl_ray.cli import CardArgs, dataclass_from, finite_float, flag_of, non_negative_float, train_config_from
from asl_ray.config import TrainConfig, documented_fields

CLIS = {  # module: the dataclasses its flags are generated from
    "asl_ray.train.__main__": ("TrainArgs", TrainConfig),
    "asl_ray.vram.__main__": ("VramArgs", TrainConfig),
    "asl_ray.ablate.__main__": ("AblateArgs", TrainConfig),
    "asl_ray.search.fit_table": ("FitTableArgs",),
    "asl_ray.search.__main__": ("SearchConfig",),
    "asl_ray.search.decision_sim": ("DecisionSimArgs",),
    "asl_ray.synth": ("SynthArgs",),
}


def _classes(module, names):
    out = []
    for item in names:
        cls = getattr(module, item) if isinstance(item, str) else item
        out.append(cls)
        hints = __import__("typing").get_type_hints(cls)
        out += [hints[f.name] for f in dataclasses.fields(cls)
                if dataclasses.is_dataclass(hints[f.name]) and f.metadata.get("flag", "") is not None]
    return out


def _options(parser):
    return [a for a in parser._actions if a.option_strings and a.dest not in ("help", "overrides")]


@pytest.mark.parametrize("module_name", sorted(CLIS))
def test_every_flag_of_every_cli_is_a_documented_dataclass_field(module_name):
    module = importlib.import_module(module_name)
    docs = {name: doc for cls in _classes(module, CLIS[module_name]) for _, name, doc in documented_fields(cls)}
    parser = module.build_parser()
    options = _options(parser)
    assert options
    for action in options:
        assert action.dest in docs and docs[action.dest], (module_name, action.option_strings)
        assert action.help, (module_name, action.dest)
    text = " ".join(parser.format_help().split())
    undocumented_here = {"gpu"}  # a CLI may describe its card in its own words (the field's `docs` metadata)
    for action in options:
        if action.dest not in undocumented_here:
            assert docs[action.dest] in text, (module_name, action.dest)


def _float_flags(parser):
    return [a.option_strings[0] for a in _options(parser) if a.type in (finite_float, non_negative_float)]


@pytest.mark.parametrize("module_name", sorted(CLIS))
@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_every_float_flag_of_every_cli_refuses_non_finite_values(module_name, bad, capsys):
    module = importlib.import_module(module_name)
    flags = _float_flags(module.build_parser())
    if module_name != "asl_ray.synth":
        assert flags, module_name  # each CLI but synth takes floats (--headroom-mb, --lr-per-64, --alpha, ...)
    for flag in flags:
        with pytest.raises(SystemExit) as e:
            module.main([f"{flag}={bad}"])
        assert e.value.code == 2, flag
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and flag in err[0] and "finite" in err[0] and "Traceback" not in err[0], (flag, err)


def test_headroom_is_one_definition_and_checked_when_made():
    assert [f.name for f in dataclasses.fields(CardArgs)] == ["gpu", "headroom_mb"]
    with pytest.raises(ValueError, match="--headroom-mb"):
        CardArgs("rtx4070", float("nan"))
    with pytest.raises(ValueError, match="--headroom-mb"):
        CardArgs("rtx4070", -1.0)


def test_nested_card_section_takes_its_renamed_flag_and_its_own_defaults():
    from asl_ray.train.__main__ import TrainArgs, build_parser
    given = vars(build_parser().parse_args(["--data", "d", "--emulate-gpu", "rtx4070", "--headroom-mb", "100"]))
    args = dataclass_from(TrainArgs, given)
    assert args.card == CardArgs("rtx4070", 100.0) and str(args.data) == "d"
    bare = dataclass_from(TrainArgs, vars(build_parser().parse_args(["--data", "d"])))
    assert bare.card == CardArgs(None, None) and bare.card.resolve() is None  # no emulation unless asked
    from asl_ray.vram.__main__ import VramArgs, build_parser as vram_parser
    assert dataclass_from(VramArgs, vars(vram_parser().parse_args([]))).card.gpu == "rtx4070"


def test_train_config_flags_and_their_set_alias_give_one_config(tmp_path):
    from asl_ray.train.__main__ import build_parser
    preset = tmp_path / "preset.yaml"
    preset.write_text(yaml.safe_dump({"compile": True, "batch_size": 16}))
    parse = lambda *argv: vars(build_parser().parse_args(["--data", "d", *argv]))  # noqa: E731
    by_flag = train_config_from(None, parse("--batch-size", "8", "--lr-per-64", "2e-3", "--no-aug-mirror",
                                            "--precision", "bf16"))
    by_set = train_config_from(None, parse("--set", "batch_size=8", "--set", "lr_per_64=2e-3",
                                           "--set", "aug_mirror=false", "--set", "precision=bf16"))
    assert by_flag == by_set == TrainConfig(batch_size=8, lr_per_64=2e-3, aug_mirror=False, precision="bf16")
    # a flag applies over the --config file, --no-x turns off what the file switched on, --set comes last
    cfg = train_config_from(preset, parse("--no-compile", "--batch-size", "4", "--set", "batch_size=2"))
    assert cfg == TrainConfig(compile=False, batch_size=2)
    with pytest.raises(ValueError) as e:
        train_config_from(None, parse("--batch-size", "0", "--depth", "-1"))
    assert "--batch-size" in str(e.value) and "--depth" in str(e.value)  # the flags typed, every problem at once


def test_a_bad_choice_of_a_train_config_flag_is_one_line(capsys):
    from asl_ray.vram.__main__ import main
    with pytest.raises(SystemExit) as e:
        main(["--precision", "fp8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "--precision" in err[0]


def test_a_bool_field_is_a_switch_with_its_negation():
    from asl_ray.cli import add_dataclass_flags

    @dataclasses.dataclass(frozen=True)
    class Args:
        strict: bool = False
        """stop at the first damaged file"""

    p = argparse.ArgumentParser()
    add_dataclass_flags(p, Args)
    assert dataclass_from(Args, vars(p.parse_args(["--strict"]))).strict is True
    assert dataclass_from(Args, vars(p.parse_args(["--no-strict"]))).strict is False
    assert dataclass_from(Args, vars(p.parse_args([]))) == Args()
    assert flag_of("headroom_mb") == "--headroom-mb"
