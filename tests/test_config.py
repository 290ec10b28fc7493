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
