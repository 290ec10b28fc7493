"""Every shipped YAML validates and starts with its command; each bad file names file, key and problem;
learning knobs vs execution plans: candidates, accumulation, Optuna's parameters in both modes, baselines."""
import copy
from pathlib import Path

import pytest
import yaml

from asl_ray.config import ConfigError
from asl_ray.search.space import EXECUTION_KEYS, SpaceError, load_space

REPO = Path(__file__).resolve().parents[1]
SPACES = sorted((REPO / "search_spaces").glob("*.yaml"))
PRESETS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_every_space_file_validates_and_begins_with_its_command(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# python -m asl_ray.search") and path.name in first
    space = load_space(path)
    assert not set(space.param_names()) & set(EXECUTION_KEYS)
    for mode in ("measure", "optuna"):
        moded = space.with_plan_search_mode(mode)
        for values, pinned in zip(moded.baselines, moded.baseline_plans):
            candidates = moded.plan_candidates(values, pinned)  # every baseline has a plan to run
            assert candidates and all(c.batch_size * c.gradient_accumulation_steps
                                      == moded.effective_batch_for(values) for c in candidates)
            if mode == "optuna":
                moded.config_for(values)  # Optuna's values of a baseline are one full config


def test_cluster_yaml_begins_with_its_command():
    path = REPO / "cluster.yaml"
    if not path.exists():
        pytest.skip("cluster.yaml not written yet")
    assert path.read_text().splitlines()[0].startswith("# ray up cluster.yaml")
    assert isinstance(yaml.safe_load(path.read_text()), dict)


def test_no_plan_goes_below_the_micro_batch_floor(tmp_path):
    data = copy.deepcopy(GOOD)
    data["plan_search"] = {"min_batch_size": 8}
    with pytest.raises(SpaceError, match=r"plans.batch_size: \[4\] below plan_search.min_batch_size 8"):
        load_space(_write(tmp_path, data))
    data["plans"] = {"batch_size": [8, 16]}
    data["baselines"] = [{"effective_batch_size": 16, "dim": 32, "batch_size": 4}]
    with pytest.raises(SpaceError, match=r"baselines\[0\] \(baseline0\): batch_size 4 below"):
        load_space(_write(tmp_path, data))
    data.pop("baselines")
    space = load_space(_write(tmp_path, data))
    assert {c.batch_size for c in space.plan_candidates({"effective_batch_size": 16, "dim": 32})} == {8, 16}


def test_shipped_spaces_include_the_required_ones():
    names = {p.name for p in SPACES}
    assert {"rtx4070.yaml", "cpu-smoke.yaml", "presets.yaml"} <= names
    rtx = load_space(REPO / "search_spaces" / "rtx4070.yaml")
    assert rtx.param_names() == ["effective_batch_size", "dim", "depth", "max_len", "lr_per_64", "length_bucketing"]
    assert rtx.plan_names() == ["batch_size", "gradient_accumulation_steps", "precision", "compile"]
    assert rtx.baseline_names == ("default", "fast", "large", "memory-saving")
    # Each preset pins its own micro-batch; its effective batch is its batch x accumulation.
    assert [p["batch_size"] for p in rtx.baseline_plans] == [12, 16, 8, 8]
    assert [b["effective_batch_size"] for b in rtx.baselines] == [48, 48, 48, 48]
    smoke = load_space(REPO / "search_spaces" / "cpu-smoke.yaml")
    assert (smoke.budget.epochs, smoke.budget.grace_period, smoke.budget.reduction_factor) == (6, 2, 2)
    assert smoke.plans == {"batch_size": (8, 12, 24, 48)}
    assert (smoke.confirm.seeds, smoke.confirm.folds, smoke.confirm.finalists) == (3, 1, 3)
    assert smoke.plan_search.mode == "measure" and smoke.plan_search.max_plans == 2
    # BatchNorm: micro-batch 4 changed what was learned by more than delta (bench/microbatch_accuracy.py)
    assert smoke.plan_search.min_batch_size == rtx.plan_search.min_batch_size == 8
    assert min(rtx.plans["batch_size"]) == 8
    seed_plan = smoke.config_for({**smoke.baselines[0], **smoke.baseline_plans[0]})
    assert (seed_plan.batch_size, seed_plan.gradient_accumulation_steps) == (12, 4)


GOOD = {"budget": {"trials": 3, "epochs": 2, "grace_period": 1},
        "params": {"effective_batch_size": {"type": "categorical", "choices": [16, 32]},
                   "dim": {"type": "categorical", "choices": [32, 64]}},
        "plans": {"batch_size": [4, 8, 16]}}


def _write(tmp_path, data, name="space.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False) if not isinstance(data, str) else data)
    return path


def _space(tmp_path, **changes):
    data = copy.deepcopy(GOOD)
    data.update(changes)
    return load_space(_write(tmp_path, data))


OLD_HINT = ("params.batch_size: an execution knob (how a config runs, not what it learns): list its values under "
            "plans.batch_size and search effective_batch_size (see search_spaces/cpu-smoke.yaml)")


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d.update(colour="red"), "unknown key(s) colour"),
    (lambda d: d["params"].update(maxlen={"type": "int", "low": 1, "high": 2}), "params.maxlen: not a TrainConfig key"),
    (lambda d: d["params"].update(max_len={"type": "int", "low": 16, "high": 4}), "params.max_len: low (16) > high (4)"),
    (lambda d: d["params"].update(max_len={"type": "int", "low": "4", "high": 8}), "params.max_len.low: expected an int"),
    (lambda d: d["params"].update(dim={"type": "categorical", "choices": []}), "params.dim.choices: expected a non-empty list"),
    (lambda d: d["params"].update(dim={"type": "categorical", "choices": ["big"]}), "params.dim.choices: 'big' is not a int"),
    (lambda d: d["params"].update(dim={"type": "grid"}), "params.dim.type: must be one of"),
    (lambda d: d["params"].update(lr_per_64={"type": "float", "low": 0.0, "high": 1e-3, "log": True}), "log scale needs low > 0"),
    (lambda d: d["params"].update(max_len={"type": "int", "low": 4, "high": 8, "lg": True}), "params.max_len.lg: not an argument"),
    (lambda d: d.update(gpu="gtx-imaginary"), "gpu: unknown card 'gtx-imaginary'"),
    (lambda d: d.update(sampler="random"), "sampler: must be one of tpe, nsga2"),
    (lambda d: d["budget"].update(trials=0), "budget.trials: must be >= 1"),
    (lambda d: d["budget"].update(grace_period=5), "budget.grace_period: 5 exceeds budget.epochs"),
    (lambda d: d["budget"].update(epochz=5), "budget.epochz: unknown key"),
    (lambda d: d.update(fixed={"dim": 32}), "params.dim: also in fixed"),
    (lambda d: d.update(fixed={"max_len": -3}), "max_len: must be > 0"),
    (lambda d: d.update(baselines=[{"effective_batch_size": 16, "dim": 128}]),
     "baselines[0] (baseline0): dim=128 outside params"),
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
    (lambda d: d["params"].update(max_len={"type": "int", "low": 4, "high": 8, "step": 0}), "params.max_len.step: expected a positive"),
    (lambda d: d["params"].update(max_len={"type": "int", "low": 4, "high": 8, "log": "yes"}), "params.max_len.log: expected true or false"),
    (lambda d: d["params"].update(max_len={"type": "int", "low": 4, "high": 8, "log": True, "step": 2}), "step together with log"),
    (lambda d: d["params"].update(dim={"type": "categorical", "choices": [32, 32]}), "params.dim.choices: duplicates"),
    (lambda d: d.update(baselines={"a": 1}), "baselines: expected a list"),
    (lambda d: d.update(baselines=[3]), "baselines[0]: expected 'default'"),
    (lambda d: d.update(baselines=[{"batchsize": 8}]), "baselines[0].batchsize: neither a params nor a plans key"),
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
    # Old files: an execution knob under params gets a one-line hint to the new format.
    (lambda d: d["params"].update(batch_size={"type": "categorical", "choices": [8, 16]}), OLD_HINT),
    (lambda d: d["params"].update(gradient_accumulation_steps={"type": "categorical", "choices": [1, 2]}),
     "params.gradient_accumulation_steps: follows from effective_batch_size / plans.batch_size"),
    (lambda d: d["params"].update(precision={"type": "categorical", "choices": ["fp16", "bf16"]}),
     "params.precision: an execution knob (how a config runs, not what it learns): list its values under plans.precision"),
    # plans: execution keys only, each a non-empty list of valid, finite values.
    (lambda d: d["plans"].update(batchsize=[4]), "plans.batchsize: not an execution key (not a TrainConfig key"),
    (lambda d: d["plans"].update(dim=[32]), "plans.dim: not an execution key (a TrainConfig key that changes what is learned"),
    (lambda d: d["plans"].update(gradient_accumulation_steps=[1, 2]),
     "plans.gradient_accumulation_steps: follows from effective_batch_size / plans.batch_size"),
    (lambda d: d["plans"].update(precision="fp16"), "plans.precision: expected a non-empty list of values"),
    (lambda d: d["plans"].update(precision=[]), "plans.precision: expected a non-empty list of values"),
    (lambda d: d["plans"].update(precision=["fp8"]), "plans.precision: 'fp8': precision: must be one of fp16, bf16, fp32"),
    (lambda d: d["plans"].update(batch_size=[0, 8]), "plans.batch_size: 0: batch_size: must be > 0"),
    (lambda d: d["plans"].update(batch_size=[8, 8]), "plans.batch_size: duplicates in [8, 8]"),
    (lambda d: d["plans"].update(batch_size=[8, True]), "plans.batch_size: True is not a int"),
    (lambda d: d["plans"].update(compile=["yes"]), "plans.compile: 'yes' is not a bool"),
    (lambda d: d["plans"].update(empty_cache_every=[1, 2.5]), "plans.empty_cache_every: 2.5 is not a int"),
    (lambda d: d["plans"].update(empty_cache_every=[0, float("nan")]), "plans.empty_cache_every: nan is not a finite number"),
    (lambda d: d.update(plans=[4, 8]), "plans: expected a mapping of execution keys"),
    (lambda d: d.update(fixed={"precision": "bf16"}, plans={"batch_size": [8], "precision": ["fp16"]}),
     "plans.precision: also in fixed"),
    (lambda d: d.update(fixed={"gradient_accumulation_steps": 2}),
     "fixed.gradient_accumulation_steps: follows from effective_batch_size / plans.batch_size"),
    # The effective batch: every choice (or the fixed / base one) needs a dividing micro-batch.
    (lambda d: d["params"].update(effective_batch_size={"type": "categorical", "choices": [16, 18]}),
     "params.effective_batch_size: 18 is divided by no plans.batch_size [4, 8, 16]"),
    (lambda d: (d["params"].pop("effective_batch_size"), d.update(fixed={"effective_batch_size": 18})),
     "fixed.effective_batch_size: 18 is divided by no plans.batch_size"),
    (lambda d: (d["params"].pop("effective_batch_size"), d.update(plans={"batch_size": [5, 7]})),
     "effective_batch_size (defaults' batch_size x gradient_accumulation_steps; fix or search it): 48 is divided by no"),
    (lambda d: d.update(plans=None, fixed={"batch_size": 5}),
     "params.effective_batch_size: 16 is divided by no batch_size 5 (fixed or default; no plans.batch_size)"),
    (lambda d: d["params"].update(effective_batch_size={"type": "categorical", "choices": [0, 16]}),
     "params.effective_batch_size.choices: every effective batch must be >= 1"),
    (lambda d: d["params"].update(effective_batch_size={"type": "int", "low": 0, "high": 16}),
     "params.effective_batch_size.low: every effective batch must be >= 1"),
    (lambda d: d["params"].update(effective_batch_size={"type": "float", "low": 1.0, "high": 16.0}),
     "params.effective_batch_size.type: effective_batch_size is a int"),
    (lambda d: (d["params"].pop("effective_batch_size"), d.update(fixed={"effective_batch_size": "big"})),
     "fixed.effective_batch_size: expected a whole number"),
    # plan_search and confirm: known sub-keys, whole numbers in range.
    (lambda d: d.update(plan_search={"mode": "guess"}), "plan_search.mode: must be one of measure, optuna"),
    (lambda d: d.update(plan_search={"step": 3}), "plan_search.step: unknown key (known: mode, warmup_steps, steps, max_plans, min_batch_size)"),
    (lambda d: d.update(plan_search={"steps": 0}), "plan_search.steps: must be >= 1"),
    (lambda d: d.update(plan_search={"warmup_steps": -1}), "plan_search.warmup_steps: must be >= 0"),
    (lambda d: d.update(plan_search={"max_plans": 0}), "plan_search.max_plans: must be >= 1"),
    (lambda d: d.update(plan_search={"steps": float("nan")}), "plan_search.steps: expected a whole number, got nan"),
    (lambda d: d.update(plan_search="measure"), "plan_search: expected a mapping"),
    (lambda d: d.update(confirm={"seed": 2}), "confirm.seed: unknown key (known: seeds, finalists, folds)"),
    (lambda d: d.update(confirm={"seeds": -1}), "confirm.seeds: must be >= 0"),
    (lambda d: d.update(confirm={"finalists": 0}), "confirm.finalists: must be >= 1"),
    # Baselines: searched keys only, a pinned micro-batch divides the effective batch.
    (lambda d: d.update(baselines=[{"dim": 32, "gradient_accumulation_steps": 2}]),
     "baselines[0].gradient_accumulation_steps: follows from effective_batch_size / plans.batch_size; give effective_batch_size"),
    (lambda d: d.update(baselines=[{"dim": 32, "num_workers": 2}]), "baselines[0].num_workers: neither a params nor a plans key"),
    (lambda d: d.update(baselines=[{"effective_batch_size": 16, "dim": 32, "batch_size": 12}]),
     "baselines[0] (baseline0): effective_batch_size 16 is not a multiple of batch_size 12"),
    (lambda d: d.update(baselines=[{"effective_batch_size": 24, "dim": 32}]),
     "baselines[0] (baseline0): effective_batch_size=24 outside params"),
    (lambda d: d.update(baselines=["default"]), "baselines[0] (default): effective_batch_size=48, dim=192 outside params"),
])
def test_bad_files_fail_naming_file_key_and_problem(tmp_path, mutate, needle):
    data = copy.deepcopy(GOOD)
    mutate(data)
    with pytest.raises(SpaceError) as e:
        load_space(_write(tmp_path, data))
    msg = str(e.value)
    assert msg.startswith(str(tmp_path / "space.yaml") + ": ") and needle in msg and "\n" not in msg, msg


def test_the_good_file_of_the_table_loads(tmp_path):
    space = _space(tmp_path)
    assert space.param_names() == ["effective_batch_size", "dim"]
    assert space.plan_names() == ["batch_size", "gradient_accumulation_steps"]
    assert space.plan_search.mode == "measure" and space.confirm.seeds == 0 and space.confirm.finalists == 3


def test_unreadable_and_non_mapping_files(tmp_path):
    with pytest.raises(SpaceError, match="not found"):
        load_space(tmp_path / "none.yaml")
    with pytest.raises(SpaceError, match="expected a mapping"):
        load_space(_write(tmp_path, "- a\n- b\n"))
    with pytest.raises(SpaceError, match="cannot read"):
        load_space(_write(tmp_path, "params: {a: [\n"))


def test_several_problems_are_reported_together(tmp_path):
    data = copy.deepcopy(GOOD)
    data["sampler"] = "random"
    data["budget"]["trials"] = -1
    data["params"]["batch_size"] = {"type": "categorical", "choices": [8]}
    data["plans"]["dim"] = [32]
    with pytest.raises(SpaceError) as e:
        load_space(_write(tmp_path, data))
    assert all(k in str(e.value) for k in ("sampler", "budget.trials", "params.batch_size", "plans.dim"))


# ---- plan candidates and accumulation -------------------------------------------------------

def _shape(configs):
    return [(c.batch_size, c.gradient_accumulation_steps, c.precision) for c in configs]


def test_plan_candidates_divide_the_effective_batch_largest_micro_batch_first(tmp_path):
    space = _space(tmp_path, plans={"batch_size": [4, 12, 8, 16], "precision": ["bf16", "fp16"]})
    got = space.plan_candidates({"effective_batch_size": 16, "dim": 64})
    # 12 does not divide 16; within one micro-batch the file's order of the other keys (bf16 before fp16).
    assert _shape(got) == [(16, 1, "bf16"), (16, 1, "fp16"), (8, 2, "bf16"), (8, 2, "fp16"),
                           (4, 4, "bf16"), (4, 4, "fp16")]
    assert all(c.dim == 64 and c.effective_batch_size() == 16 for c in got)  # learning values applied
    assert all(c.epochs == 2 for c in got)  # the budget's per-trial settings too
    assert _shape(space.plan_candidates({"effective_batch_size": 32, "dim": 32}))[0] == (16, 2, "bf16")


def test_plan_candidates_pinned_keys_take_only_their_value(tmp_path):
    space = _space(tmp_path, plans={"batch_size": [4, 8, 16], "precision": ["bf16", "fp16"]})
    values = {"effective_batch_size": 32, "dim": 32}
    assert _shape(space.plan_candidates(values, {"precision": "fp16"})) == [(16, 2, "fp16"), (8, 4, "fp16"),
                                                                           (4, 8, "fp16")]
    # A pinned micro-batch may lie outside the candidates (a baseline runs its own plan).
    assert _shape(space.plan_candidates(values, {"batch_size": 2})) == [(2, 16, "bf16"), (2, 16, "fp16")]
    assert space.plan_candidates(values, {"batch_size": 12}) == []
    # Plan keys inside the values pin too (mode optuna samples them): one candidate.
    assert _shape(space.plan_candidates({**values, "batch_size": 8, "precision": "fp16"})) == [(8, 4, "fp16")]
    with pytest.raises(ValueError, match="num_workers"):
        space.plan_candidates(values, {"num_workers": 2})


def test_plan_candidates_are_empty_when_no_micro_batch_divides(tmp_path):
    space = _space(tmp_path, params={"effective_batch_size": {"type": "int", "low": 16, "high": 40},
                                     "dim": {"type": "categorical", "choices": [32]}})
    assert space.plan_candidates({"effective_batch_size": 37, "dim": 32}) == []  # an int range allows 37
    assert _shape(space.plan_candidates({"effective_batch_size": 20, "dim": 32})) == [(4, 5, "fp16")]


def test_config_for_derives_accumulation_from_the_effective_batch(tmp_path):
    space = _space(tmp_path)
    cfg = space.config_for({"effective_batch_size": 32, "dim": 64, "batch_size": 8})
    assert (cfg.batch_size, cfg.gradient_accumulation_steps, cfg.dim) == (8, 4, 64)
    assert cfg.learning_rate() == pytest.approx(cfg.lr_per_64 * 32 / 64)
    # Without a micro-batch in the values: the base config's (12), which does not divide 32.
    with pytest.raises(ConfigError) as e:
        space.config_for({"effective_batch_size": 32, "dim": 64})
    assert "effective_batch_size 32" in str(e.value) and "batch_size 12" in str(e.value)
    assert space.config_for({"effective_batch_size": 48, "dim": 32}).gradient_accumulation_steps == 4
    with pytest.raises(ConfigError, match="gradient_accumulation_steps 3 is not"):
        space.config_for({"effective_batch_size": 32, "dim": 64, "batch_size": 8, "gradient_accumulation_steps": 3})


def test_the_effective_batch_comes_from_values_fixed_or_the_base(tmp_path):
    fixed = _space(tmp_path, params={"dim": {"type": "categorical", "choices": [32]}},
                   fixed={"effective_batch_size": 32})
    assert fixed.effective_batch_for({"dim": 32}) == 32
    assert "effective_batch_size" not in fixed.base_config().to_dict()
    assert _shape(fixed.plan_candidates({"dim": 32})) == [(16, 2, "fp16"), (8, 4, "fp16"), (4, 8, "fp16")]
    base = _space(tmp_path, params={"dim": {"type": "categorical", "choices": [32]}},
                  fixed={"batch_size": 16, "depth": 1}, plans=None)
    assert base.effective_batch_for({}) == 16 * 4  # the defaults' accumulation over the fixed micro-batch
    assert base.plans == {"batch_size": (16,)}  # no plans: one plan, the base config's execution values
    assert _shape(base.plan_candidates({"dim": 32})) == [(16, 4, "fp16")]


# ---- Optuna's parameters and baselines in both modes ------------------------------------------

def test_optuna_params_are_learning_knobs_or_learning_and_plan_knobs(tmp_path):
    space = _space(tmp_path, plans={"batch_size": [4, 8, 16], "precision": ["bf16", "fp16"]})
    assert [p.name for p in space.optuna_params()] == ["effective_batch_size", "dim"]
    assert space.grid_size() == 4 and {tuple(v) for v in space.grid()} == {("effective_batch_size", "dim")}
    one_level = space.with_plan_search_mode("optuna")
    params = one_level.optuna_params()
    assert [p.name for p in params] == ["effective_batch_size", "dim", "batch_size", "precision"]
    assert params[2].type == "categorical" and params[2].choices == (4, 8, 16) and params[3].choices == ("bf16", "fp16")
    assert one_level.grid_size() == 4 * 6 and len(list(one_level.grid())) == 24
    assert one_level.trials_to_run(100) == 100  # tpe: not capped
    grid = dataclass_replace(one_level, sampler="grid")
    assert grid.trials_to_run(100) == 24 and grid.trials_to_run(10) == 10
    assert space.plan_search.mode == "measure"  # with_plan_search_mode is a copy
    with pytest.raises(SpaceError, match="plan_search.mode: must be one of measure, optuna"):
        space.with_plan_search_mode("exhaustive")


def dataclass_replace(obj, **changes):
    import dataclasses
    return dataclasses.replace(obj, **changes)


def test_mapping_baselines_pin_the_plan_keys_they_set(tmp_path):
    space = _space(tmp_path, plans={"batch_size": [4, 8, 16], "precision": ["bf16", "fp16"]},
                   baselines=[{"effective_batch_size": 32, "dim": 64, "batch_size": 8},
                              {"effective_batch_size": 16, "dim": 32, "precision": "bf16"}])
    assert space.baseline_names == ("baseline0", "baseline1")
    assert space.baselines == ({"effective_batch_size": 32, "dim": 64}, {"effective_batch_size": 16, "dim": 32})
    assert space.baseline_plans == ({"batch_size": 8}, {"precision": "bf16"})
    assert _shape(space.plan_candidates(space.baselines[1], space.baseline_plans[1])) == \
        [(16, 1, "bf16"), (8, 2, "bf16"), (4, 4, "bf16")]
    one_level = space.with_plan_search_mode("optuna")
    # Mode optuna: a value for every plans key: pinned, else the base's if listed (fp16), else the first listed;
    # for batch_size the first that divides the effective batch (the base's 12 is not a candidate).
    assert one_level.baselines[0] == {"effective_batch_size": 32, "dim": 64, "batch_size": 8, "precision": "fp16"}
    assert one_level.baselines[1] == {"effective_batch_size": 16, "dim": 32, "batch_size": 4, "precision": "bf16"}
    assert one_level.with_plan_search_mode("measure").baselines == space.baselines


def test_a_baseline_mapping_without_an_effective_batch_takes_the_spaces(tmp_path):
    data = copy.deepcopy(GOOD)
    data["params"]["effective_batch_size"]["choices"] = [16, 32, 48]
    data["baselines"] = [{"dim": 32, "batch_size": 16}]
    space = load_space(_write(tmp_path, data))
    assert space.baselines == ({"effective_batch_size": 48, "dim": 32},)
    assert _shape(space.plan_candidates(space.baselines[0], space.baseline_plans[0])) == [(16, 3, "fp16")]


def test_default_and_preset_baselines_pin_their_micro_batch(tmp_path):
    preset = _write(tmp_path, {"batch_size": 6, "gradient_accumulation_steps": 4, "precision": "bf16",
                               "num_workers": 0}, name="preset.yaml")
    space = _space(tmp_path, params={"effective_batch_size": {"type": "categorical", "choices": [24, 48]},
                                     "dim": {"type": "categorical", "choices": [192]}},
                   plans={"batch_size": [8, 16], "precision": ["fp16", "bf16"]},
                   baselines=["default", str(preset)])
    assert space.baseline_names == ("default", "preset")
    # Effective batch = the preset's batch x accumulation; "default" pins batch_size only; a preset also pins the
    # plans keys it sets (precision), even a micro-batch outside plans.batch_size (6).
    assert space.baselines == ({"effective_batch_size": 48, "dim": 192}, {"effective_batch_size": 24, "dim": 192})
    assert space.baseline_plans == ({"batch_size": 12}, {"batch_size": 6, "precision": "bf16"})
    assert _shape(space.plan_candidates(space.baselines[0], space.baseline_plans[0])) == \
        [(12, 4, "fp16"), (12, 4, "bf16")]
    assert _shape(space.plan_candidates(space.baselines[1], space.baseline_plans[1])) == [(6, 4, "bf16")]
    # Mode optuna samples only listed values: a pinned micro-batch outside them is refused there.
    with pytest.raises(SpaceError) as e:
        space.with_plan_search_mode("optuna")
    assert "baselines[0] (default): batch_size=12 not among plans.batch_size [8, 16]" in str(e.value)
    assert "baselines[1] (preset): batch_size=6 not among plans.batch_size" in str(e.value)


def test_a_file_in_mode_optuna_checks_its_baselines_at_load(tmp_path):
    with pytest.raises(SpaceError, match=r"baselines\[0\] \(baseline0\): batch_size=2 not among plans.batch_size"):
        _space(tmp_path, plan_search={"mode": "optuna"},
               baselines=[{"effective_batch_size": 16, "dim": 32, "batch_size": 2}])
    space = _space(tmp_path, plan_search={"mode": "optuna"}, baselines=[{"effective_batch_size": 16, "dim": 32}])
    # The base's micro-batch (12) is not listed: the first listed one that divides 16.
    assert space.baselines == ({"effective_batch_size": 16, "dim": 32, "batch_size": 4},)
    assert space.config_for(space.baselines[0]).gradient_accumulation_steps == 4


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_every_shipped_preset_loads_as_a_baseline(tmp_path, preset):
    raw = yaml.safe_load(preset.read_text())
    space = load_space(REPO / "search_spaces" / "rtx4070.yaml")
    index = space.baseline_names.index(preset.stem)
    assert space.baseline_plans[index]["batch_size"] == raw["batch_size"]
    assert space.baselines[index]["effective_batch_size"] == raw["batch_size"] * raw["gradient_accumulation_steps"]
    cfg = space.config_for({**space.baselines[index], **space.baseline_plans[index]})
    assert cfg.gradient_accumulation_steps == raw["gradient_accumulation_steps"]
    assert all(getattr(cfg, k) == v for k, v in raw.items())


def test_a_nan_in_the_space_file_is_one_line_and_exit_2(tmp_path, synth_root, capsys):
    import ray

    from asl_ray.search.__main__ import main as search_main
    from conftest import expect_bad_input
    path = tmp_path / "nan.yaml"  # YAML's own spelling of NaN, as a user would write it
    path.write_text("budget: {trials: 2, epochs: 1}\nheadroom_mb: .nan\n"
                    "params: {lr_per_64: {type: float, low: 1.0e-4, high: .inf}}\nplans: {batch_size: [8, .nan]}\n")
    err = expect_bad_input(search_main, capsys, "--space", str(path), "--data", str(synth_root))
    assert "nan.yaml" in err and "headroom_mb: must be a finite number" in err
    assert "params.lr_per_64.high: must be a finite number" in err
    assert "plans.batch_size: nan is not a finite number" in err
    assert not ray.is_initialized()
