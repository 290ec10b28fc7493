"""Bad search input: one line naming the flag/file/key, exit code 2, and Ray never started (the flags' own
ranges: tests/test_search_config.py)."""
import pytest
import yaml

from asl_ray.search.__main__ import main as search_main
from conftest import expect_bad_input, write_search_space


def _run(capsys, *args):
    import ray
    err = expect_bad_input(search_main, capsys, *args)
    assert not ray.is_initialized()
    return err


@pytest.fixture
def space(tmp_path):
    return write_search_space(tmp_path / "space.yaml")


def test_bad_space_file_names_file_and_key(tmp_path, synth_root, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"params": {"dim": {"type": "int", "low": 64, "high": 32}}}))
    err = _run(capsys, "--space", str(bad), "--data", str(synth_root))
    assert "bad.yaml" in err and "params.dim" in err and "low (64) > high (32)" in err


def test_an_old_space_file_gets_the_hint(tmp_path, synth_root, capsys):
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump({"params": {"batch_size": {"type": "categorical", "choices": [8, 16]},
                                              "dim": {"type": "categorical", "choices": [32, 64]}}}))
    err = _run(capsys, "--space", str(old), "--data", str(synth_root))
    assert "params.batch_size" in err and "plans.batch_size" in err and "effective_batch_size" in err


def test_the_flags_are_checked_before_the_space_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"params": {"dim": {"type": "int", "low": 64, "high": 32}}}))
    err = _run(capsys, "--space", str(bad), "--trials", "0")
    assert "--trials" in err and "bad.yaml" not in err


def test_missing_space_file(tmp_path, capsys):
    assert "nope.yaml" in _run(capsys, "--space", str(tmp_path / "nope.yaml"))


def test_unknown_card(space, synth_root, capsys):
    assert "gtx-imaginary" in _run(capsys, "--space", str(space), "--gpu", "gtx-imaginary", "--data", str(synth_root))


def test_gpu_auto_without_a_gpu(space, synth_root, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert "--gpu auto" in _run(capsys, "--space", str(space), "--gpu", "auto", "--data", str(synth_root))


def test_resume_of_unknown_name(space, tmp_path, capsys):
    err = _run(capsys, "--space", str(space), "--name", "ghost", "--storage-path", str(tmp_path), "--resume")
    assert "--resume" in err and "ghost" in err


def test_existing_name_without_resume(space, synth_root, tmp_path, capsys):
    (tmp_path / "taken" / "tune").mkdir(parents=True)
    err = _run(capsys, "--space", str(space), "--name", "taken", "--storage-path", str(tmp_path), "--data", str(synth_root))
    assert "--name 'taken'" in err and "--resume" in err


def test_unwritable_storage(space, synth_root, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert "--storage-path" in _run(capsys, "--space", str(space), "--storage-path", str(blocker), "--data", str(synth_root))


def test_bad_data_root(space, tmp_path, capsys):
    assert "missing-root" in _run(capsys, "--space", str(space), "--data", str(tmp_path / "missing-root"),
                                  "--storage-path", str(tmp_path))


def test_bad_dashboard_host(space, synth_root, tmp_path, capsys):
    err = _run(capsys, "--space", str(space), "--storage-path", str(tmp_path), "--dashboard-host", "203.0.113.7")
    assert "--dashboard-host" in err  # not an address of this machine


def test_dashboard_port_in_use(space, synth_root, tmp_path, capsys):
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        err = _run(capsys, "--space", str(space), "--data", str(synth_root), "--storage-path", str(tmp_path),
                   "--dashboard-port", str(port))
    assert f"--dashboard-port {port}" in err and "in use" in err


def test_resume_needs_a_name(space, tmp_path, capsys):
    assert "--name" in _run(capsys, "--space", str(space), "--storage-path", str(tmp_path), "--resume")
