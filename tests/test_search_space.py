"""Every shipped YAML validates and starts with its command; each bad file names file, key and problem."""
from pathlib import Path

import pytest
import yaml

from asl_ray.search.space import SpaceError, load_space

REPO = Path(__file__).resolve().parents[1]
SPACES = sorted((REPO / "search_spaces").glob("*.yaml"))


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_every_space_file_validates_and_begins_with_its_command(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# python -m asl_ray.search") and path.name in first
    space = load_space(path)
    for values in space.baselines:
        space.config_for(values)  # every baseline is a valid TrainConfig inside the space


def test_cluster_yaml_begins_with_its_command():
    path = REPO / "cluster.yaml"
    if not path.exists():
        pytest.skip("cluster.yaml not written yet")
    assert path.read_text().splitlines()[0].startswith("# ray up cluster.yaml")
    assert isinstance(yaml.safe_load(path.read_text()), dict)


def test_shipped_spaces_include_the_required_ones():
    names = {p.name for p in SPACES}
    assert {"rtx4070.yaml", "cpu-smoke.yaml", "presets.yaml"} <= names
    rtx = load_space(REPO / "search_spaces" / "rtx4070.yaml")
    assert {"batch_size", "gradient_accumulation_steps", "dim", "max_len", "precision", "lr_per_64"} <= \
        {p.name for p in rtx.params}
    assert rtx.baseline_names == ("default", "fast", "large", "memory-saving")


GOOD = {"budget": {"trials": 3, "epochs": 2, "grace_period": 1},
        "params": {"batch_size": {"type": "int", "low": 4, "high": 16, "log": True}}}


def _write(tmp_path, data):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d.update(colour="red"), "unknown key(s) colour"),
    (lambda d: d["params"].update(batchsize={"type": "int", "low": 1, "high": 2}), "params.batchsize: not a TrainConfig key"),
    (lambda d: d["params"].update(batch_size={"type": "int", "low": 16, "high": 4}), "params.batch_size: low (16) > high (4)"),
    (lambda d: d["params"].update(batch_size={"type": "int", "low": "4", "high": 8}), "params.batch_size.low: expected an int"),
    (lambda d: d["params"].update(dim={"type": "categorical", "choices": []}), "params.dim.choices: expected a non-empty list"),
    (lambda d: d["params"].update(dim={"type": "categorical", "choices": ["big"]}), "params.dim.choices: 'big' is not a int"),
    (lambda d: d["params"].update(dim={"type": "grid"}), "params.dim.type: must be one of"),
    (lambda d: d["params"].update(lr_per_64={"type": "float", "low": 0.0, "high": 1e-3, "log": True}), "log scale needs low > 0"),
    (lambda d: d["params"].update(batch_size={"type": "int", "low": 4, "high": 8, "lg": True}), "params.batch_size.lg: not an argument"),
    (lambda d: d.update(gpu="gtx-imaginary"), "gpu: unknown card 'gtx-imaginary'"),
    (lambda d: d.update(sampler="random"), "sampler: must be one of tpe, nsga2"),
    (lambda d: d["budget"].update(trials=0), "budget.trials: must be >= 1"),
    (lambda d: d["budget"].update(grace_period=5), "budget.grace_period: 5 exceeds budget.epochs"),
    (lambda d: d["budget"].update(epochz=5), "budget.epochz: unknown key"),
    (lambda d: d.update(fixed={"batch_size": 8}), "params.batch_size: also in fixed"),
    (lambda d: d.update(fixed={"max_len": -3}), "max_len: must be > 0"),
    (lambda d: d.update(baselines=[{"batch_size": 64}]), "baselines[0] (baseline0): batch_size=64 outside params"),
    (lambda d: d.update(baselines=["configs/missing.yaml"]), "baselines[0]: "),
    (lambda d: d.pop("params"), "params: expected a non-empty mapping"),
    (lambda d: d.update(seed="x"), "seed: expected a whole number"),
    (lambda d: d.update(seed=-1), "seed: must be >= 0"),
    (lambda d: d.update(headroom_mb=-1), "headroom_mb: must be >= 0"),
    (lambda d: d.update(headroom_mb="lots"), "headroom_mb: expected a number"),
    (lambda d: d.update(scheduler="hyperband"), "scheduler: must be one of asha, fifo"),
    (lambda d: d.update(gpu=[12]), "gpu: expected a card name or a size in GiB"),
    (lambda d: d["budget"].update(epochs="many"), "budget.epochs: expected a whole number"),
    (lambda d: d["budget"].update(reduction_factor=1), "budget.reduction_factor: must be >= 2"),
    (lambda d: d["budget"].update(max_steps_per_epoch=-1), "budget.max_steps_per_epoch: must be >= 0"),
    (lambda d: d.update(budget=[1]), "budget: expected a mapping"),
    (lambda d: d.update(fixed=[1]), "fixed: expected a mapping"),
    (lambda d: d.update(fixed={"colour": 1}), "fixed.colour: not a TrainConfig key"),
    (lambda d: d["params"].update(dim=[32, 64]), "params.dim: expected a mapping"),
    (lambda d: d["params"].update(lr_per_64={"type": "int", "low": 1, "high": 2}), "params.lr_per_64.type: lr_per_64 is a float"),
    (lambda d: d["params"].update(dim={"type": "float", "low": 1.0, "high": 2.0}), "params.dim.type: dim is a int"),
    (lambda d: d["params"].update(batch_size={"type": "int", "low": 4, "high": 8, "step": 0}), "params.batch_size.step: expected a positive"),
    (lambda d: d["params"].update(batch_size={"type": "int", "low": 4, "high": 8, "log": "yes"}), "params.batch_size.log: expected true or false"),
    (lambda d: d["params"].update(batch_size={"type": "int", "low": 4, "high": 8, "log": True, "step": 2}), "step together with log"),
    (lambda d: d["params"].update(dim={"type": "categorical", "choices": [32, 32]}), "params.dim.choices: duplicates"),
    (lambda d: d.update(baselines={"a": 1}), "baselines: expected a list"),
    (lambda d: d.update(baselines=[3]), "baselines[0]: expected 'default'"),
    (lambda d: d.update(baselines=[{"batchsize": 8}]), "baselines[0]: "),
    # The budget owns these: a fixed or searched value would silently override it.
    (lambda d: d.update(fixed={"epochs": 9}), "fixed.epochs: set by budget.epochs"),
    (lambda d: d.update(fixed={"max_steps_per_epoch": 3}), "fixed.max_steps_per_epoch: set by budget.max_steps_per_epoch"),
    (lambda d: d["params"].update(epochs={"type": "int", "low": 1, "high": 4}), "params.epochs: set by budget.epochs"),
    (lambda d: d["params"].update(max_steps_per_epoch={"type": "categorical", "choices": [2, 4]}),
     "params.max_steps_per_epoch: set by budget.max_steps_per_epoch"),
    # NaN and inf fail no comparison: each float of the file is checked to be finite.
    (lambda d: d.update(headroom_mb=float("nan")), "headroom_mb: must be a finite number, got nan"),
    (lambda d: d.update(headroom_mb=float("inf")), "headroom_mb: must be a finite number, got inf"),
    (lambda d: d["params"].update(lr_per_64={"type": "float", "low": float("nan"), "high": 1e-3}),
     "params.lr_per_64.low: must be a finite number, got nan"),
    (lambda d: d["params"].update(lr_per_64={"type": "float", "low": 1e-4, "high": float("inf")}),
     "params.lr_per_64.high: must be a finite number, got inf"),
    (lambda d: d["params"].update(lr_per_64={"type": "float", "low": 1e-4, "high": 1e-3, "step": float("nan")}),
     "params.lr_per_64.step: expected a positive number, got nan"),
    (lambda d: d["params"].update(late_dropout={"type": "categorical", "choices": [0.1, float("nan")]}),
     "params.late_dropout.choices: nan is not a finite number"),
    (lambda d: d.update(fixed={"lr_per_64": float("-inf")}), "fixed.lr_per_64: must be a finite number, got -inf"),
])
def test_bad_files_fail_naming_file_key_and_problem(tmp_path, mutate, needle):
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    mutate(data)
    with pytest.raises(SpaceError) as e:
        load_space(_write(tmp_path, data))
    msg = str(e.value)
    assert msg.startswith(str(tmp_path / "space.yaml") + ": ") and needle in msg and "\n" not in msg


def test_unreadable_and_non_mapping_files(tmp_path):
    with pytest.raises(SpaceError, match="not found"):
        load_space(tmp_path / "none.yaml")
    with pytest.raises(SpaceError, match="expected a mapping"):
        load_space(_write(tmp_path, "- a\n- b\n"))
    with pytest.raises(SpaceError, match="cannot read"):
        load_space(_write(tmp_path, "params: {a: [\n"))


def test_several_problems_are_reported_together(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    data["sampler"] = "random"
    data["budget"]["trials"] = -1
    with pytest.raises(SpaceError) as e:
        load_space(_write(tmp_path, data))
    assert "sampler" in str(e.value) and "budget.trials" in str(e.value)


def test_a_nan_in_the_space_file_is_one_line_and_exit_2(tmp_path, synth_root, capsys):
    import ray

    from asl_ray.search.__main__ import main as search_main
    from conftest import expect_bad_input
    path = tmp_path / "nan.yaml"  # YAML's own spelling of NaN, as a user would write it
    path.write_text("budget: {trials: 2, epochs: 1}\nheadroom_mb: .nan\n"
                    "params: {lr_per_64: {type: float, low: 1.0e-4, high: .inf}}\n")
    err = expect_bad_input(search_main, capsys, "--space", str(path), "--data", str(synth_root))
    assert "nan.yaml" in err and "headroom_mb: must be a finite number" in err
    assert "params.lr_per_64.high: must be a finite number" in err
    assert not ray.is_initialized()
