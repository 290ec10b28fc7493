"""Every bad input to `python -m asl_ray.train` gives one line naming the file, key or flag, and exit 2."""
import shutil

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from asl_ray.train.__main__ import main as train_main
from conftest import expect_bad_input


def _run(capsys, *args):
    return expect_bad_input(train_main, capsys, *args)


@pytest.fixture
def root(synth_root, tmp_path):
    return shutil.copytree(synth_root, tmp_path / "root", ignore=shutil.ignore_patterns(".asl_ray_cache"))


def _first_file(root):
    return root / pd.read_csv(root / "train.csv")["path"].iloc[0]


def test_missing_train_csv(root, capsys):
    (root / "train.csv").unlink()
    assert "train.csv" in _run(capsys, "--data", str(root))


def test_wrong_schema(root, capsys):
    f = _first_file(root)
    t = pq.read_table(f)
    pq.write_table(t.set_column(t.schema.get_field_index("x"), "x", pa.array(["a"] * len(t))), f)
    err = _run(capsys, "--data", str(root), "--strict", "--cache-dir", str(root / "c"))
    assert f.name in err and "x" in err


def test_unknown_sign(root, capsys):
    table = pd.read_csv(root / "train.csv")
    table.loc[0, "sign"] = "zebra-crossing"
    table.to_csv(root / "train.csv", index=False)
    err = _run(capsys, "--data", str(root), "--strict", "--cache-dir", str(root / "c"))
    assert "zebra-crossing" in err and "train.csv" in err


def test_empty_file(root, capsys):
    f = _first_file(root)
    pq.write_table(pq.read_table(f).slice(0, 0), f)
    err = _run(capsys, "--data", str(root), "--strict", "--cache-dir", str(root / "c"))
    assert f.name in err and "no rows" in err


def test_missing_data_root(tmp_path, capsys):
    assert "nowhere" in _run(capsys, "--data", str(tmp_path / "nowhere"))


@pytest.mark.parametrize("args,needle", [
    (["--set", "batchsize=4"], "batchsize"),
    (["--set", "precision=fp8"], "precision"),
    (["--set", "batch_size"], "--set"),
    (["--config", "nope.yaml"], "nope.yaml"),
    (["--emulate-gpu", "gtx-imaginary"], "gtx-imaginary"),
    (["--emulate-gpu", "rtx4070", "--headroom-mb", "-1"], "--headroom-mb"),
    (["--set", "fold=9"], "fold"),
    (["--set", "lr_per_64=-1"], "lr_per_64"),
    (["--epochs", "0"], "epochs"),
])
def test_bad_flags(synth_root, capsys, args, needle):
    assert needle in _run(capsys, "--data", str(synth_root), *args)


def test_resume_without_checkpoint(synth_root, tmp_path, capsys):
    assert "--resume" in _run(capsys, "--data", str(synth_root), "--out", str(tmp_path / "x"), "--resume")


def test_bad_int_flag_is_argparse_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        train_main(["--data", "x", "--epochs", "many"])
    assert e.value.code == 2 and "--epochs" in capsys.readouterr().err


def test_existing_out_without_resume(synth_root, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    assert "--out" in _run(capsys, "--data", str(synth_root), "--out", str(tmp_path / "run"))


@pytest.mark.parametrize("args,needle", [
    (["--set", "lr_per_64=nan"], "lr_per_64"),
    (["--set", "warmup_epochs=inf"], "warmup_epochs"),
    (["--set", "min_lr=-inf"], "min_lr"),
    (["--set", "gradient_clip_val=nan"], "gradient_clip_val"),  # would switch clipping off silently
    (["--set", "label_smoothing=.nan"], "label_smoothing"),  # YAML spelling
    (["--set", "weight_decay_ratio=-.inf"], "weight_decay_ratio"),
    (["--set", "drop_path=1e999"], "drop_path"),  # overflows to inf
    (["--emulate-gpu", "rtx4070", "--headroom-mb", "nan"], "--headroom-mb"),
    (["--emulate-gpu", "rtx4070", "--headroom-mb", "inf"], "--headroom-mb"),
    (["--headroom-mb=-inf"], "--headroom-mb"),  # `--headroom-mb -inf` argparse reads as an unknown flag
])
def test_non_finite_flags(synth_root, capsys, args, needle):
    err = _run(capsys, "--data", str(synth_root), *args)
    assert needle in err and "finite" in err, err


def test_non_finite_in_config_yaml(synth_root, tmp_path, capsys):
    (tmp_path / "preset.yaml").write_text("batch_size: 8\nwarmup_epochs: .inf\n")
    err = _run(capsys, "--data", str(synth_root), "--config", str(tmp_path / "preset.yaml"))
    assert "preset.yaml" in err and "warmup_epochs: must be a finite number" in err, err


def test_help_lists_every_config_key_with_its_doc():
    # As a user runs it: a subprocess, the module's own --help.
    import subprocess
    import sys

    from asl_ray.config import FIELD_NAMES, TrainConfig, field_docs
    from asl_ray.cli import flag_of
    from conftest import REPO
    out = subprocess.run([sys.executable, "-m", "asl_ray.train", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    flat = " ".join(out.split())
    for name, doc in field_docs().items():
        assert f" {flag_of(name)}" in flat, name
        assert doc and " ".join(doc.split()) in flat, name
        default = getattr(TrainConfig(), name)
        if not isinstance(default, bool):
            assert f"(default: {default})" in flat, name
    assert len(field_docs()) == len(FIELD_NAMES)
    for section in ("model:", "data:", "optimisation:", "performance switches:"):
        assert f"TrainConfig: {section}" in out.splitlines()
    assert "--set KEY=VALUE" in flat and "--no-compile" in flat and "{fp16,bf16,fp32}" in flat


@pytest.mark.parametrize("module", ["asl_ray.ablate.__main__", "asl_ray.vram.__main__"])
def test_other_set_clis_list_the_keys_too(module):
    import importlib

    from asl_ray.cli import flag_of
    from asl_ray.config import FIELD_NAMES
    text = importlib.import_module(module).build_parser().format_help()
    missing = [name for name in FIELD_NAMES if f"  {flag_of(name)} " not in text and f"  {flag_of(name)}," not in text
               and f"  {flag_of(name)}\n" not in text]
    assert missing == []
