"""python -m asl_ray.vram: one config, a space table, and its bad inputs (one line, exit 2)."""
import pytest
import yaml

from asl_ray.vram.__main__ import main as vram_main
from conftest import expect_bad_input
from asl_ray.vram.cards import CARD_TOTAL_MIB, CardError, resolve_card


def test_one_config_prints_breakdown_and_verdict(capsys):
    assert vram_main(["--gpu", "rtx4070", "--set", "dim=32", "--set", "depth=1", "--set", "max_len=32",
                      "--set", "batch_size=4"]) == 0
    out = capsys.readouterr().out
    assert "rtx4070" in out and "FITS" in out and "CUDA context" in out and "activations" in out


def test_does_not_fit_a_tiny_card(capsys):
    assert vram_main(["--gpu", "0.5", "--headroom-mb", "0", "--set", "dim=32", "--set", "depth=1",
                      "--set", "max_len=32", "--set", "batch_size=4"]) == 0
    assert "DOES NOT FIT" in capsys.readouterr().out


def test_space_table(tmp_path, capsys):
    space = tmp_path / "s.yaml"
    space.write_text("# python -m asl_ray.search --space s.yaml\n" + yaml.safe_dump({
        "fixed": {"depth": 1},
        "params": {"batch_size": {"type": "categorical", "choices": [4, 8]},
                   "dim": {"type": "categorical", "choices": [32]},
                   "max_len": {"type": "categorical", "choices": [32]}}}))
    assert vram_main(["--gpu", "rtx4070", "--space", str(space)]) == 0
    out = capsys.readouterr().out
    assert "largest batch" in out and "2 of 2" in out


@pytest.mark.parametrize("args,needle", [
    (["--gpu", "gtx-imaginary"], "gtx-imaginary"),
    (["--config", "missing.yaml"], "missing.yaml"),
    (["--set", "dim=7"], "dim"),
    (["--space", "nope.yaml"], "nope.yaml"),
    (["--num-classes", "0"], "--num-classes"),
])
def test_bad_inputs(capsys, args, needle):
    assert needle in expect_bad_input(vram_main, capsys, *args)


def test_gpu_auto_without_a_gpu_is_a_clear_error():
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(CardError, match="--gpu auto: no NVIDIA GPU"):
        resolve_card("auto")


@pytest.mark.parametrize("name", sorted(CARD_TOTAL_MIB))
def test_every_card_profile_resolves(name):
    card = resolve_card(name)
    assert card.usable_bytes == card.total_bytes - 512 * 2 ** 20 > 0


def test_card_sizes_and_headroom():
    assert resolve_card("12").total_bytes == 12 * 2 ** 30
    assert resolve_card("12GiB", headroom_mb=0).usable_bytes == 12 * 2 ** 30
    assert resolve_card("rtx4070").total_bytes == 12282 * 2 ** 20
    with pytest.raises(CardError, match="headroom"):
        resolve_card("1", headroom_mb=2048)
    with pytest.raises(CardError, match="--headroom-mb"):
        resolve_card("rtx4070", headroom_mb=-1)
