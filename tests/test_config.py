import dataclasses
from pathlib import Path

import pytest
import yaml

from asl_ray.config import ConfigError, TrainConfig, load_config_yaml

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_seeds():
    c = TrainConfig()
    assert (c.batch_size, c.gradient_accumulation_steps, c.gradient_clip_val) == (12, 4, 1.0)
    assert (c.num_workers, c.pin_memory, c.max_len, c.dim, c.precision) == (4, True, 384, 192, "fp16")
    assert c.effective_batch_size() == 48


def test_learning_rate_follows_effective_batch():
    a = TrainConfig(batch_size=8, gradient_accumulation_steps=4)
    b = TrainConfig(batch_size=16, gradient_accumulation_steps=2)
    assert a.learning_rate() == b.learning_rate() == pytest.approx(5e-4 * 32 / 64)


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().batch_size = 3


def test_one_error_lists_every_problem():
    with pytest.raises(ConfigError) as e:
        TrainConfig(batch_size=0, precision="fp8", dim=190, pad_to="nope", drop_path=1.5)
    msg = str(e.value)
    for key in ("batch_size", "precision", "dim", "pad_to", "drop_path"):
        assert key in msg
    assert "\n" not in msg


def test_wrong_types_are_named():
    with pytest.raises(ConfigError, match="batch_size: expected int"):
        TrainConfig(batch_size="8")
    with pytest.raises(ConfigError, match="compile: expected bool"):
        TrainConfig(compile=1)


def test_unknown_override_key_names_the_source():
    with pytest.raises(ConfigError, match=r"my.yaml: unknown key\(s\) batchsize"):
        TrainConfig().with_overrides({"batchsize": 4}, source="my.yaml")


@pytest.mark.parametrize("name,expect", [
    ("large.yaml", {"dim": 384, "depth": 4, "batch_size": 8, "gradient_accumulation_steps": 6}),
    ("fast.yaml", {"batch_size": 16, "gradient_accumulation_steps": 3}),
    ("memory-saving.yaml", {"batch_size": 8, "gradient_accumulation_steps": 6, "max_len": 256}),
])
def test_presets(name, expect):
    cfg = load_config_yaml(ROOT / "configs" / name)
    for k, v in expect.items():
        assert getattr(cfg, k) == v


def test_yaml_round_trip(tmp_path):
    cfg = TrainConfig(batch_size=8, precision="bf16")
    cfg.to_yaml(tmp_path / "c.yaml", header="# python -m asl_ray.train --config c.yaml")
    assert load_config_yaml(tmp_path / "c.yaml") == cfg


def test_bad_yaml_files(tmp_path):
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml: expected a mapping"):
        load_config_yaml(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        load_config_yaml(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"max_len": -1}))
    with pytest.raises(ConfigError, match="bad.yaml: .*max_len: must be > 0"):
        load_config_yaml(tmp_path / "bad.yaml")


FLOAT_FIELDS = [f.name for f in dataclasses.fields(TrainConfig) if str(f.type) == "float"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", FLOAT_FIELDS)
def test_every_float_field_must_be_finite(name, value):
    # NaN passes every comparison-based range check; found from the dataclass so new fields are covered too.
    with pytest.raises(ConfigError) as e:
        TrainConfig(**{name: value})
    msg = str(e.value)
    assert f"{name}: must be a finite number" in msg and "\n" not in msg
    assert msg.count(name + ":") == 1, msg  # one problem per key, not a range complaint on top


def test_nan_gradient_clip_cannot_switch_clipping_off():
    # `gradient_clip_val > 0` is False for NaN: the loop would silently skip clipping.
    with pytest.raises(ConfigError, match="gradient_clip_val: must be a finite number, got nan"):
        TrainConfig(gradient_clip_val=float("nan"))


def test_non_finite_is_listed_with_the_other_problems():
    with pytest.raises(ConfigError) as e:
        TrainConfig(lr_per_64=float("nan"), min_lr=float("inf"), batch_size=0)
    msg = str(e.value)
    assert "lr_per_64: must be a finite" in msg and "min_lr: must be a finite" in msg and "batch_size" in msg
    assert "peak learning rate" not in msg


@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf", ".NaN", "1.0e+999"])
def test_yaml_non_finite_names_file_and_key(tmp_path, text):
    (tmp_path / "c.yaml").write_text(f"warmup_epochs: {text}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: .*warmup_epochs: must be a finite number"):
        load_config_yaml(tmp_path / "c.yaml")


def test_train_loop_config_non_finite_is_refused():
    # What asl_ray/train/worker.py does with the dict Ray Train hands the worker.
    config = {**TrainConfig().to_dict(), "label_smoothing": float("nan")}
    with pytest.raises(ConfigError, match="train_loop_config: .*label_smoothing: must be a finite number"):
        TrainConfig.from_dict(config, source="train_loop_config")


def test_every_field_has_a_docstring_and_a_section():
    from asl_ray.config import FIELD_NAMES, field_docs, field_sections
    docs = field_docs()
    assert list(docs) == list(FIELD_NAMES)
    assert [name for name, doc in docs.items() if not doc] == []
    assert docs["gradient_clip_val"] == "Max global gradient norm, applied to unscaled gradients; 0 disables clipping."
    sections = field_sections()
    assert [name for names in sections.values() for name in names] == list(FIELD_NAMES)
    assert sections["model"][0] == "dim" and "lr_per_64" in sections["optimisation"]
