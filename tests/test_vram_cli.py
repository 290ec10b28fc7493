"""python -m asl_ray.vram: one config and its bad inputs (one line, exit 2); the search space's fit table,
moved to python -m asl_ray.search.fit_table (vram never imports search)."""
import pytest
import yaml

from asl_ray.search.fit_table import main as fit_table_main
from asl_ray.vram.__main__ import main as vram_main
from conftest import expect_bad_input
from asl_ray.cards import CARD_TOTAL_MIB, CARDS, CardError, card_from_device_memory, resolve_card
from asl_ray.vram.constants import CUDA_CONTEXT_BYTES

MiB = 2 ** 20


def test_one_config_prints_breakdown_and_verdict(capsys):
    assert vram_main(["--gpu", "rtx4070", "--set", "dim=32", "--set", "depth=1", "--set", "max_len=32",
                      "--set", "batch_size=4"]) == 0
    out = capsys.readouterr().out
    assert "rtx4070" in out and "FITS" in out and "CUDA context" in out and "activations" in out
    # Both figures, and the verdict says which one it used and with what margin.
    assert "unconstrained peak" in out and "least need under free-and-retry" in out and "% margin" in out
    assert "sm_89" in out and "fragmentation" in out


def test_does_not_fit_a_tiny_card(capsys):
    assert vram_main(["--gpu", "0.5", "--headroom-mb", "0", "--set", "dim=32", "--set", "depth=1",
                      "--set", "max_len=32", "--set", "batch_size=4"]) == 0
    assert "DOES NOT FIT" in capsys.readouterr().out


def _space(tmp_path, **sections):
    path = tmp_path / "s.yaml"
    path.write_text("# python -m asl_ray.search --space s.yaml\n" + yaml.safe_dump(sections))
    return path


def test_fit_table_lists_per_learning_config_the_plans_that_fit(tmp_path, capsys):
    # A 0.7 GiB card holds micro-batches up to ~180 of this model: 12x1 and 8x128 fit, 1024x1 does not.
    space = _space(tmp_path, fixed={"depth": 1, "dim": 64},
                   params={"effective_batch_size": {"type": "categorical", "choices": [12, 1024]},
                           "max_len": {"type": "categorical", "choices": [64]}},
                   plans={"batch_size": [8, 12, 1024], "precision": ["fp16", "bf16"]})
    assert fit_table_main(["--space", str(space), "--gpu", "0.7", "--headroom-mb", "0"]) == 0
    out = capsys.readouterr().out
    rows = {tuple(line.split()[:3]): line for line in out.splitlines() if line.split()[:1] in (["12"], ["1024"])}
    # One row per learning config x precision; only micro-batches that divide the effective batch are plans.
    assert set(rows) == {(e, "64", p) for e in ("12", "1024") for p in ("fp16", "bf16")}
    assert rows[("12", "64", "fp16")].endswith("12x1")
    assert rows[("1024", "64", "bf16")].endswith("8x128") and "1024x1" not in out
    largest = int(rows[("1024", "64", "fp16")].split()[3])
    assert 12 < largest < 1024
    assert "4 of 6 plans fit over 2 learning configs" in out and "[8, 1024]" in out


def test_fit_table_says_when_no_micro_batch_divides(tmp_path, capsys):
    space = _space(tmp_path, fixed={"depth": 1, "dim": 32, "max_len": 32},
                   params={"effective_batch_size": {"type": "int", "low": 7, "high": 8}},
                   plans={"batch_size": [8]})
    assert fit_table_main(["--space", str(space), "--gpu", "rtx4070"]) == 0
    out = capsys.readouterr().out
    assert "no plan" in out and "1 of 1 plans fit over 2 learning configs" in out


def test_vram_space_points_to_the_fit_table(capsys):
    message = expect_bad_input(vram_main, capsys, "--gpu", "rtx4070", "--space", "search_spaces/cpu-smoke.yaml")
    assert "python -m asl_ray.search.fit_table --space search_spaces/cpu-smoke.yaml --gpu rtx4070" in message


@pytest.mark.parametrize("args,needle", [
    (["--space", "nope.yaml"], "nope.yaml"),
    (["--space", "search_spaces/cpu-smoke.yaml", "--gpu", "gtx-imaginary"], "gtx-imaginary"),
    (["--space", "search_spaces/cpu-smoke.yaml", "--num-classes", "0"], "--num-classes"),
    ([], "--space"),
])
def test_fit_table_bad_inputs(capsys, args, needle):
    assert needle in expect_bad_input(fit_table_main, capsys, *args)


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
    assert resolve_card("rtx4070").total_bytes == 12010 * 2 ** 20  # as CUDA sees it, not nvidia-smi's 12282
    with pytest.raises(CardError, match="headroom"):
        resolve_card("1", headroom_mb=2048)
    with pytest.raises(CardError, match="--headroom-mb"):
        resolve_card("rtx4070", headroom_mb=-1)


def test_card_totals_are_what_cuda_can_allocate_with_their_source():
    for name, profile in CARDS.items():
        assert profile.cuda_total_mib < profile.nvidia_smi_mib, name
        assert profile.source.startswith(("reported:", "computed:")), name
    assert CARDS["rtx4070"].compute_capability == (8, 9) and CARDS["h100"].compute_capability == (9, 0)
    assert resolve_card("rtx4070").compute_capability == (8, 9)
    assert resolve_card("12").compute_capability is None  # unknown: the larger workspace is assumed


def test_auto_card_is_what_is_free_on_the_device_less_other_processes():
    total, context, others = 12010 * MiB, 400 * MiB, [(4242, 900 * MiB), (77, 100 * MiB)]
    free = total - context - 1000 * MiB  # this process's context is already made when torch reports free
    card = card_from_device_memory("NVIDIA GeForce RTX 4070", total, free, (8, 9), 512 * MiB, others)
    assert card.total_bytes == total - 1000 * MiB  # our own context stays in: the estimate counts it
    assert card.compute_capability == (8, 9)
    assert "pid 4242 900 MiB" in card.describe() and "other processes hold 1000 MiB" in card.describe()
    # Without NVML the process's own use is taken as the context constant; the rest as others'.
    blind = card_from_device_memory("gpu", total, free, (8, 9), 512 * MiB, None)
    assert blind.total_bytes == total - (total - free - CUDA_CONTEXT_BYTES)
    assert "NVML unavailable" in blind.note
