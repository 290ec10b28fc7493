"""Every user-input error reaches the one-line handler of every CLI (exit 2, no traceback), found early or late:
a space-file value that makes an invalid TrainConfig, a path that exists as the wrong kind of thing, a non-finite
headroom; and the product cites sources, never its own issue tracker."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from asl_ray.ablate.__main__ import main as ablate_main
from asl_ray.search.__main__ import main as search_main
from asl_ray.search.fit_table import main as fit_table_main
from asl_ray.train.__main__ import main as train_main
from asl_ray.vram.__main__ import main as vram_main
from conftest import REPO, expect_bad_input

SMOKE = REPO / "search_spaces" / "cpu-smoke.yaml"


def _space_with(tmp_path, **params) -> Path:
    data = yaml.safe_load(SMOKE.read_text())
    data["params"].update(params)
    data["baselines"] = []
    path = tmp_path / "space.yaml"
    path.write_text(f"# python -m asl_ray.search --space {path}\n" + yaml.safe_dump(data))
    return path


def test_a_space_value_that_makes_an_invalid_config_is_one_line_before_ray(tmp_path, capsys):
    import ray
    space = _space_with(tmp_path, dim={"type": "categorical", "choices": [30]})
    err = expect_bad_input(search_main, capsys, "--space", str(space), "--storage-path", str(tmp_path / "runs"))
    assert "params.dim: 30" in err and "divisible by num_heads" in err and not ray.is_initialized()
    assert "params.dim" in expect_bad_input(fit_table_main, capsys, "--space", str(space))
    # the same value through the train CLI: the same one line
    assert "divisible by num_heads" in expect_bad_input(train_main, capsys, "--data", "x", "--set", "dim=30")


@pytest.mark.parametrize("cli, flag", [
    (vram_main, "--headroom-mb"), (ablate_main, "--headroom-mb"), (train_main, "--headroom-mb"),
])
@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_a_non_finite_or_negative_headroom_is_one_line_in_every_cli(cli, flag, value, capsys, synth_root):
    args = ["--data", str(synth_root), "--emulate-gpu", "rtx4070"] if cli is train_main else ["--gpu", "rtx4070"]
    assert flag in expect_bad_input(cli, capsys, *args, flag, value)


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_the_fit_tables_headroom_too(value, capsys):
    assert "--headroom-mb" in expect_bad_input(fit_table_main, capsys, "--space", str(SMOKE), "--headroom-mb", value)


def test_a_card_refuses_a_non_finite_headroom_wherever_it_comes_from():
    from asl_ray.cards import CardError, resolve_card
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(CardError, match="--headroom-mb"):
            resolve_card("rtx4070", bad)


def test_every_path_a_user_gives_is_checked_for_what_it_must_be(tmp_path, synth_root, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    err = expect_bad_input(train_main, capsys, "--data", str(synth_root), "--out", str(a_file))
    assert "--out" in err and "not a folder" in err
    err = expect_bad_input(train_main, capsys, "--data", str(synth_root), "--out", str(a_file / "sub"))
    assert "--out" in err and "is not a folder" in err
    err = expect_bad_input(train_main, capsys, "--data", str(synth_root), "--cache-dir", str(a_file))
    assert "--cache-dir" in err
    err = expect_bad_input(train_main, capsys, "--data", str(synth_root), "--config", str(tmp_path))
    assert "--config" in err and "is a folder" in err
    assert "--config" in expect_bad_input(vram_main, capsys, "--config", str(tmp_path / "missing.yaml"))
    assert "--space" in expect_bad_input(fit_table_main, capsys, "--space", str(tmp_path))
    assert "--out" in expect_bad_input(ablate_main, capsys, "--data", str(synth_root), "--out", str(a_file))
    for flag in ("--storage-path", "--cache-dir"):
        assert flag in expect_bad_input(search_main, capsys, "--space", str(SMOKE), flag, str(a_file))
    assert "--space" in expect_bad_input(search_main, capsys, "--space", str(tmp_path))


def test_no_output_doc_or_comment_names_the_issue_tracker():
    """Sources are datasheets, measurements and commands. (The two words are split so this file passes too.)"""
    word = "iss" + "ue"
    pattern = re.compile(rf"\b{word}s? #?\d+|\(\s*{word}\b|the {word}'s\b", re.IGNORECASE)
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    hits = []
    for name in files:
        if not name.endswith((".py", ".md", ".yaml", ".sh", ".toml")):
            continue
        for i, line in enumerate((REPO / name).read_text(errors="ignore").splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{name}:{i}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_the_search_says_its_target_card_with_a_source(tmp_path):
    from asl_ray.cards import resolve_card
    assert "(" + "iss" + "ue" not in resolve_card("rtx4070").describe() and "public user report" in \
        resolve_card("rtx4070").describe()


@pytest.mark.slow
def test_a_clash_found_only_when_a_trial_is_sampled_is_one_line_too(tmp_path, synth_root, synth_cache):
    """dim 32 and 48 each make a valid config with the base's 4 heads, and num_heads 3 and 4 each with dim 192,
    but dim 32 with 3 heads does not: only sampling finds it, inside Tune, after Ray started."""
    space = _space_with(tmp_path, dim={"type": "categorical", "choices": [32]},
                        num_heads={"type": "categorical", "choices": [3]})
    data = yaml.safe_load(space.read_text())
    data["budget"].update(trials=1, epochs=1, grace_period=1)
    space.write_text(yaml.safe_dump(data))
    done = subprocess.run([sys.executable, "-m", "asl_ray.search", "--space", str(space), "--data", str(synth_root),
                           "--cache-dir", str(synth_cache.path.parent), "--storage-path", str(tmp_path / "runs"),
                           "--name", "clash", "--num-cpus", "2"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "divisible by num_heads" in errors[0] and "Traceback" not in done.stderr


def test_no_fault_injection_knob_in_a_users_config_or_help(capsys, inject, tmp_path):
    """The fault suite's hooks come through a test-only channel (asl_ray/faults.py); a config, best_config.yaml
    and every --help list none of them."""
    from asl_ray.config import FIELD_NAMES, TrainConfig
    from asl_ray.faults import Faults, faults_for
    assert not [k for k in FIELD_NAMES if "inject" in k or "fault" in k]
    TrainConfig().to_yaml(tmp_path / "best_config.yaml")
    assert "inject" not in (tmp_path / "best_config.yaml").read_text()
    for cli in (train_main, vram_main, search_main, ablate_main):
        with pytest.raises(SystemExit):
            cli(["--help"])
        assert "inject" not in capsys.readouterr().out
    inject({"when": {"dim": 48}, "oom_at_step": 3}, {"nan_at_step": 2})
    assert faults_for(TrainConfig(dim=48)) == Faults(oom_at_step=3)
    assert faults_for(TrainConfig()) == Faults(nan_at_step=2)
    inject()
    assert not faults_for(TrainConfig(dim=48))


def test_a_best_config_written_before_the_fault_keys_left_still_trains(tmp_path, capsys):
    """Every best_config.yaml and checkpoint of earlier versions holds the four inject_* keys at 0: they load; a
    non-zero one is refused naming it."""
    from asl_ray.config import RETIRED_KEYS, TrainConfig, load_config_yaml
    old = tmp_path / "best_config.yaml"
    old.write_text(yaml.safe_dump({**TrainConfig(dim=64).to_dict(), **RETIRED_KEYS}))
    assert load_config_yaml(old) == TrainConfig(dim=64)
    assert TrainConfig.from_dict({**TrainConfig().to_dict(), **RETIRED_KEYS}, source="checkpoint") == TrainConfig()
    old.write_text(yaml.safe_dump({**TrainConfig().to_dict(), **RETIRED_KEYS, "inject_oom_at_step": 2}))
    err = expect_bad_input(vram_main, capsys, "--config", str(old))
    assert "inject_oom_at_step" in err and "no longer a config key" in err


@pytest.mark.parametrize("parser_of", ["asl_ray.vram.__main__", "asl_ray.ablate.__main__", "asl_ray.search.fit_table",
                                       "asl_ray.train.__main__"])
def test_every_cli_takes_the_card_through_one_definition(parser_of):
    import importlib
    from asl_ray.cli import CardArgs
    help_text = " ".join(importlib.import_module(parser_of).build_parser().format_help().split())
    assert "Memory kept free for the desktop and other processes, in MiB (finite, >= 0)" in help_text
    assert CardArgs(None, None).resolve() is None and CardArgs("rtx4070", 0).resolve().headroom_bytes == 0
