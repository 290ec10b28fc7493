"""The ablation: one switch per variant, paired ratios, honest FLOP counts, and a tiny CPU run end to end."""
import json

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from asl_ray.ablate.__main__ import main as ablate_main
from asl_ray.ablate.flops import count_flops_per_sample, flop_counter
from asl_ray.cards import PEAK_TFLOPS, datasheet_peak_tflops
from asl_ray.ablate.loader_rate import LoaderRate, loader_margin, loader_text, measure_loader_with_workers
from asl_ray.ablate.measure import measurement_config, warmup_batches
from asl_ray.ablate.report import MEMORY_LEGEND
from asl_ray.ablate.results import paired_ratios, spread, verdict
from asl_ray.ablate.variants import ablations_for, select
from asl_ray.config import TrainConfig
from conftest import expect_bad_input, tiny_config

SEED_DEFAULT_VARIANTS = ["fp32", "bf16", "accum=1", "compile=on", "cudnn.benchmark=off", "pinned+non_blocking=off",
                         "workers=0", "workers=2", "empty_cache=every50", "pad=max_len", "bucketing=on",
                         "pad=ladder", "compile+ladder", "compile=reduce-overhead", "foreach_optimizer=on", "features_on_device=on", "persistent_workers=off",
                         "host_step_counts=off", "foreach_grad_accumulation=on"]


def test_every_ablation_of_the_seed_default_changes_one_optimisation():
    base = TrainConfig()
    ablations = ablations_for(base)
    assert [a.name for a in ablations] == SEED_DEFAULT_VARIANTS
    for a in ablations:
        cfg = a.config(base)
        changed = {k for k, v in cfg.to_dict().items() if v != getattr(base, k)}
        if a.name == "accum=1":  # batch x accumulation move together: the effective batch stays
            assert changed == {"batch_size", "gradient_accumulation_steps"}
            assert cfg.effective_batch_size() == base.effective_batch_size() and cfg.gradient_accumulation_steps == 1
        elif a.name.startswith("compile+") or a.name == "compile=reduce-overhead":  # compile's static-shape modes
            assert changed <= {"compile", "compile_mode", "pad_to"} and cfg.compile and cfg.pad_to == "ladder"
        else:
            assert changed == set(a.overrides) and len(changed) == 1, a.name
    assert {a.name for a in ablations if a.needs_cuda} == {"fp32", "bf16", "cudnn.benchmark=off",
                                                            "pinned+non_blocking=off", "empty_cache=every50",
                                                            "compile=reduce-overhead"}
    assert {a.name for a in ablations if a.claim} == {"fp32", "compile=on"}


def test_ablations_are_written_against_the_base_not_the_seed():
    base = TrainConfig(precision="bf16", compile=True, gradient_accumulation_steps=1, batch_size=48, num_workers=0,
                       pad_to="max_len", empty_cache_every=50)
    names = [a.name for a in ablations_for(base)]
    assert "bf16" not in names and "fp16" in names and "compile=off" in names and "workers=0" not in names
    assert "pad=batch_max" in names and "empty_cache=never" in names
    accum = next(a for a in ablations_for(base) if a.name == "accum=4")
    assert accum.config(base).batch_size == 12 and accum.config(base).effective_batch_size() == 48


def test_select_names_unknown_variants():
    ablations = ablations_for(TrainConfig())
    assert [a.name for a in select(ablations, ["fp32", "workers=0"], [])] == ["fp32", "workers=0"]
    assert "workers=0" not in [a.name for a in select(ablations, [], ["workers=0"])]
    with pytest.raises(ValueError, match="unknown ablation.*fp8.*known: fp32"):
        select(ablations, ["fp8"], [])


def test_ratios_are_paired_per_repeat_and_spread_is_min_max():
    # The base drifts from 100 to 50 (machine load); a variant always 2x the base beside it is 2x.
    assert paired_ratios([200, 100, 150], [100, 50, 75]) == [2.0, 2.0, 2.0]
    assert paired_ratios([None, 10], [5, 5]) == [2.0]
    assert spread([1.0, 3.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0}
    assert spread([]) == {"median": None, "min": None, "max": None}


def test_verdict_against_a_claimed_range():
    assert verdict(0.7, (1 / 1.5, 1 / 1.3)) == "as claimed"
    assert verdict(0.5, (1 / 1.5, 1 / 1.3)).startswith("below")
    assert verdict(1.5, (1.2, 1.3)).startswith("above")
    assert verdict(None, (1.2, 1.3)) == "needs GPU"
    assert verdict(1.0, None) == ""


def test_measurement_warms_up_whole_optimizer_steps():
    assert warmup_batches(TrainConfig(gradient_accumulation_steps=4)) == 4
    assert warmup_batches(TrainConfig(gradient_accumulation_steps=1, batch_size=48)) == 3
    cfg = measurement_config(TrainConfig(), steps=5)
    assert cfg.epochs == 1 and cfg.throughput_warmup_steps == 4 and cfg.max_steps_per_epoch == 4 + 5 * 4


def test_depthwise_conv_backward_counts_as_two_forward_convolutions():
    # torch's own formula ignores groups: a depthwise conv's backward comes out ~channels times too big.
    conv = nn.Conv1d(64, 64, 17, groups=64, bias=False)
    x = torch.randn(2, 64, 50, requires_grad=True)
    with flop_counter() as fwd:
        y = conv(x)
    with flop_counter() as bwd:
        y.sum().backward()
    assert fwd.get_total_flops() == 2 * 2 * 64 * 17 * 34  # 2 FLOPs per MAC, output length 34
    assert bwd.get_total_flops() == 2 * fwd.get_total_flops()
    with FlopCounterMode(display=False) as torch_bwd:
        conv(x).sum().backward()
    assert torch_bwd.get_total_flops() > 10 * bwd.get_total_flops()  # the bug this module corrects


def test_dense_conv_backward_agrees_with_torch():
    conv = nn.Conv1d(8, 16, 5, bias=False)
    x = torch.randn(2, 8, 30, requires_grad=True)
    with flop_counter() as ours:
        conv(x).sum().backward()
    with FlopCounterMode(display=False) as theirs:
        conv(x).sum().backward()
    assert ours.get_total_flops() == theirs.get_total_flops()


def test_training_flops_are_about_three_forwards(synth_cache):
    f = count_flops_per_sample(tiny_config(max_len=256), synth_cache, batches=2)
    assert 2.5 < f.train / f.forward < 3.5
    assert f.mean_padded_length >= f.mean_real_length > 0 and 0 <= f.padding_share < 1
    padded = count_flops_per_sample(tiny_config(max_len=256, pad_to="max_len"), synth_cache, batches=2)
    assert padded.mean_padded_length == 256 > f.mean_padded_length and padded.forward > f.forward


@pytest.mark.parametrize("name, precision, peak", [
    # RTX 4070: 58.3 dense fp16/bf16 tensor with fp32 accumulate; 29.1 is its fp32 shader rate.
    ("NVIDIA GeForce RTX 4070", "fp16", 58.3), ("NVIDIA GeForce RTX 4070", "bf16", 58.3),
    ("NVIDIA GeForce RTX 4070", "fp32", 29.1), ("NVIDIA GeForce RTX 4090", "fp16", 165.2),
    ("NVIDIA GeForce RTX 4060 Ti", "fp16", 44.1), ("NVIDIA GeForce RTX 4080", "bf16", 97.5),
    ("NVIDIA GeForce RTX 3060", "fp16", 25.5), ("NVIDIA H100 80GB HBM3", "bf16", 989.4),
    ("NVIDIA H100 PCIe", "fp32", 51.2), ("NVIDIA H200", "fp16", 989.4), ("NVIDIA H200 NVL", "bf16", 835.5),
    ("NVIDIA A100-SXM4-80GB", "bf16", 312.0), ("NVIDIA L4", "fp16", 121.0), ("Tesla T4", "fp16", 65.0),
    ("Tesla T4", "bf16", None), ("Some Future GPU", "fp16", None),
    # Variants with other SM counts and clocks must not borrow the base model's row.
    ("NVIDIA GeForce RTX 4070 Ti", "fp16", None), ("NVIDIA GeForce RTX 4070 SUPER", "fp16", None),
    ("NVIDIA GeForce RTX 4090 Laptop GPU", "fp16", None), ("NVIDIA GeForce RTX 3060 Ti", "fp16", None),
    ("NVIDIA A10G", "fp16", None)])
def test_datasheet_peak_by_device_name(name, precision, peak):
    assert datasheet_peak_tflops(name, precision) == peak


@pytest.mark.parametrize("card", ["rtx4070", "rtx4060ti", "rtx4080", "rtx4090", "rtx3060"])
def test_geforce_fp32_accumulate_tensor_rate_is_twice_the_shader_rate(card):
    # Ada/Ampere GeForce: 512 dense fp16-with-fp32-accumulate FLOP/clk/SM vs 256 fp32: a row that puts the
    # shader rate in the tensor column (as rtx4070 once did) fails here.
    row = PEAK_TFLOPS[card]
    assert row["fp16"] == row["bf16"] and row["fp16"] / row["fp32"] == pytest.approx(2.0, rel=0.01)


def test_loader_margin_with_workers_is_an_upper_bound_unless_measured():
    one_core = LoaderRate(samples_per_s=300.0, batches=10, samples=120)
    m = loader_margin(one_core, loop_samples_per_s=100.0, workers=4)
    assert m["margin_one_core"] == 3.0 and m["margin_with_workers_upper_bound"] == 12.0
    assert m["margin_with_workers_measured"] is None and "margin_with_workers" not in m
    text = loader_text(m, "base")
    assert "at most 12.0x (upper bound, computed: 4 x one core" in text and "measured 1" not in text
    measured = loader_margin(one_core, 100.0, 4, LoaderRate(samples_per_s=550.0, batches=10, samples=120, workers=4))
    assert measured["margin_with_workers_measured"] == 5.5
    assert f"measured 550 samples/s = 5.5x (4 workers on this {measured['cpu_cores']}-core machine" in \
        loader_text(measured, "base")


def test_loader_with_workers_runs_real_worker_processes(synth_cache):
    rate = measure_loader_with_workers(tiny_config(num_workers=1, batch_size=8), synth_cache, batches=3)
    assert rate.workers == 1 and rate.batches == 3 and rate.samples == 24 and rate.samples_per_s > 0


def test_predicted_reserved_leaves_out_what_the_allocator_never_holds():
    from asl_ray.vram.result import VramEstimate
    mib = 2 ** 20
    breakdown = {"parameters": 100 * mib, "activations": 300 * mib, "allocator_overhead": 50 * mib,
                 "cuda_context": 500 * mib, "torch_compile": 128 * mib}
    est = VramEstimate(total_bytes=1078 * mib, breakdown=breakdown, seconds=0.0, method="test")
    assert est.reserved_peak_bytes() == 450 * mib


def test_tiny_cpu_ablation_writes_table_json_and_chart(synth_root, synth_cache, tmp_path, capsys):
    out = tmp_path / "ablate"
    code = ablate_main(["--data", str(synth_root), "--cache-dir", str(synth_cache.path.parent), "--out", str(out),
                        "--set", "dim=32", "--set", "depth=1", "--set", "max_len=32", "--set", "num_workers=0",
                        "--only", "fp32", "accum=1", "bucketing=on", "--repeats", "2", "--steps", "1",
                        "--flops-batches", "1", "--loader-batches", "2"])
    assert code == 0
    record = json.loads((out / "ablation.json").read_text())
    rows = {r["variant"]: r for r in record["rows"]}
    assert list(rows) == ["base", "fp32", "accum=1", "bucketing=on"]
    assert rows["base"]["speed_ratio"]["median"] == 1.0 and rows["accum=1"]["repeats"] == 2
    assert rows["accum=1"]["speed_ratio"]["min"] <= rows["accum=1"]["speed_ratio"]["median"] <= \
        rows["accum=1"]["speed_ratio"]["max"]
    if not torch.cuda.is_available():
        assert rows["fp32"]["status"] == "needs GPU" and rows["fp32"]["verdict"] == "needs GPU"
        assert rows["fp32"]["predicted_reserved_mb"] > 0  # the estimator still predicts it on a CPU
    from asl_ray.vram.constants import CUDA_CONTEXT_BYTES
    for r in rows.values():  # like with like: the reserved prediction has no context in it
        context_mb = r["predicted_with_context_mb"] - r["predicted_reserved_mb"]
        assert context_mb == pytest.approx(CUDA_CONTEXT_BYTES / 2 ** 20)
    e = record["efficiency"]
    assert e["base"]["train_gflops_per_sample"] > 0 and e["loader"]["margin_one_core"] > 0
    table = (out / "table.txt").read_text()
    assert (out / "ablation.png").stat().st_size > 0 and "seed's claim" in table and MEMORY_LEGEND in table
    assert "predicted reserved MiB" in table and "predicted card total MiB" in table
    assert "mixed precision: 30-50% faster" in capsys.readouterr().out


@pytest.mark.parametrize("args, names", [
    (["--repeats", "0"], "--repeats"), (["--steps", "-1"], "--steps"), (["--only", "fp8"], "fp8"),
    (["--set", "dim=-1"], "dim"), (["--set", "colour=red"], "colour"), (["--gpu", "gtx-imaginary"], "--gpu"),
    (["--config", "configs/missing.yaml"], "missing.yaml"), (["--bogus"], "--bogus")])
def test_bad_input_is_one_line_and_exit_2(args, names, synth_root, synth_cache, capsys):
    line = expect_bad_input(ablate_main, capsys, "--data", str(synth_root), "--cache-dir",
                            str(synth_cache.path.parent), *args)
    assert names in line


def test_missing_data_root_is_named(tmp_path, capsys):
    assert str(tmp_path / "nowhere") in expect_bad_input(ablate_main, capsys, "--data", str(tmp_path / "nowhere"))


def test_a_variant_that_runs_out_of_memory_is_marked_and_not_run_again(synth_cache, inject):
    from asl_ray.ablate.__main__ import _measure_or_mark_oom
    from asl_ray.ablate.results import VariantRuns, row
    from asl_ray.ablate.variants import Ablation
    base = VariantRuns(None)
    base.runs.append(_measure_or_mark_oom(base, tiny_config(), synth_cache, 1, torch.device("cpu"), "rtx4070", "t"))
    inject({"when": {"dim": 48}, "oom_at_step": 1})  # the loop's own OOM hook, raised in TrainStep
    v = VariantRuns(Ablation("oom", {"dim": 48}))
    assert _measure_or_mark_oom(v, tiny_config(dim=48), synth_cache, 1, torch.device("cpu"),
                                "rtx4070", "t") is None
    assert v.skipped == "out of memory on rtx4070" and v.runs == []
    r = row(v, base)
    assert r["status"] == r["verdict"] == "out of memory on rtx4070" and r["speed_ratio"]["median"] is None


def test_memory_columns_pair_measured_and_predicted_figures_of_the_same_kind():
    from asl_ray.ablate.measure import Measurement
    from asl_ray.ablate.report import table_text
    from asl_ray.ablate.results import VariantRuns, row
    base = VariantRuns(None, predicted_reserved_mb=400.0, predicted_with_context_mb=900.0)
    base.runs = [Measurement(10.0, 1.0, 5.0, peak_reserved_mb=380.0 + r, peak_allocated_mb=300.0,
                             device_used_mb_sampled_max=1000.0 + r) for r in range(3)]
    r = row(base, base)
    assert r["peak_reserved_mb"] == 381.0 and r["predicted_reserved_mb"] == 400.0  # both without the context
    assert r["device_used_mb_sampled_max"] == 1001.0 and r["predicted_with_context_mb"] == 900.0  # both with it
    header = table_text([r]).splitlines()[0]
    assert header.index("reserved MiB") < header.index("predicted reserved MiB") < \
        header.index("GPU used MiB (sampled max)") < header.index("predicted card total MiB")


def test_one_card_catalogue_names_every_peak_and_every_device_name_pattern():
    from asl_ray.cards import _NAME_PATTERNS, CARDS, resolve_card
    assert set(PEAK_TFLOPS) <= set(CARDS)
    assert {key for _, key in _NAME_PATTERNS if key} <= set(CARDS)
    assert resolve_card("h100-sxm").name == "h100" and resolve_card("h200-nvl").total_bytes > 0
