"""Memory figures say what they are: the device figure is never host RSS, and NVML reads the GPU in use."""
import math

import pytest
import torch

from asl_ray.train.checkpoint import LocalReporter
from asl_ray.train.loop import fit
from asl_ray.train.metrics import MemoryMonitor, format_epoch, memory_text, nvml_index_for, run_speed
from conftest import tiny_config

# Four GPUs as NVML lists them (PCI bus order, "GPU-" prefix); torch's uuid property has no prefix.
NVML = ["GPU-aaaa0000-0000", "GPU-bbbb1111-1111", "GPU-cccc2222-2222", "GPU-dddd3333-3333"]
TORCH = {u: u.removeprefix("GPU-") for u in NVML}


def test_on_cpu_the_device_figure_is_nan_and_rss_is_its_own_key():
    monitor = MemoryMonitor(torch.device("cpu"))
    monitor.reset()
    ballast = bytearray(64 * 2 ** 20)  # resident host memory the RSS sample must see
    monitor.sample()
    result = monitor.result()
    del ballast
    assert math.isnan(result["peak_memory_mb"])  # was the process RSS
    assert result["rss_peak_mb"] > 64
    assert not {"cuda_max_reserved_mb", "cuda_max_allocated_mb", "device_used_mb_sampled_max"} & set(result)


def test_a_cpu_epoch_reports_and_prints_rss_not_a_device_peak(synth_cache):
    lines = []
    result = fit(tiny_config(epochs=1, max_steps_per_epoch=2), synth_cache, LocalReporter(None, log=lines.append))
    assert math.isnan(result["peak_memory_mb"]) and result["rss_peak_mb"] > 0
    epoch_line = next(line for line in lines if line.startswith("epoch"))
    assert "RSS peak" in epoch_line and "nan" not in epoch_line and "reserved" not in epoch_line


def test_cuda_figures_are_labelled_for_what_they_are():
    m = {"epoch": 1, "train_loss": 1.0, "val_acc": 0.5, "samples_per_s": 10.0, "steps_per_s": 1.0,
         "scaler_skipped_steps": 0, "lr": 1e-3, "peak_memory_mb": 812.0, "cuda_max_reserved_mb": 812.0,
         "cuda_max_allocated_mb": 600.0, "device_used_mb_sampled_max": 1400.0, "rss_peak_mb": 2100.0}
    assert memory_text(m) == ("cuda reserved peak 812 MiB (no context)  GPU used (sampled max) 1400 MiB  "
                              "RSS peak 2100 MiB")
    assert memory_text(m) in format_epoch(m)


def test_ray_worker_cuda0_is_the_nvml_gpu_its_uuid_names():
    # Ray gave this worker GPUs 2 and 3: torch's cuda:0 is NVML's index 2 (device.index would read GPU 0).
    torch_uuids = [TORCH[NVML[2]], TORCH[NVML[3]]]
    assert nvml_index_for(0, torch_uuids, NVML, "2,3") == 2
    assert nvml_index_for(1, torch_uuids, NVML, "2,3") == 3


def test_the_uuid_wins_over_an_ordinal_in_cuda_order():
    # CUDA_VISIBLE_DEVICES ordinals count in CUDA's (fastest-first) order, NVML in PCI order: "3,1" may
    # well be NVML's GPUs 1 and 3 in that order; the UUIDs say which.
    torch_uuids = [TORCH[NVML[1]].upper(), TORCH[NVML[3]]]
    assert nvml_index_for(0, torch_uuids, NVML, "3,1") == 1
    assert nvml_index_for(1, torch_uuids, NVML, "3,1") == 3


def test_without_a_torch_uuid_cuda_visible_devices_decides():
    assert nvml_index_for(0, [None, None], NVML, "2,3") == 2
    assert nvml_index_for(1, ["", ""], NVML, " 2, 3 ") == 3
    assert nvml_index_for(0, [None], NVML, "GPU-cccc") == 2  # a UUID prefix, as CUDA accepts
    assert nvml_index_for(0, [None], NVML, "GPU-") is None  # matches every GPU: no guess
    assert nvml_index_for(0, [None], NVML, "7") is None  # no such NVML GPU
    assert nvml_index_for(1, [None], NVML, "2") is None  # torch index past the list
    assert nvml_index_for(2, [None, None, None], NVML, None) == 2  # nothing remapped


def test_a_uuid_nvml_does_not_list_gives_no_figure():
    # A MIG instance: torch reports its own UUID, NVML's device list has only the parent GPU's.
    assert nvml_index_for(0, ["MIG-1234abcd"], NVML, "MIG-1234abcd") is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_device_figure_is_a_sampled_max_of_this_gpu():
    device = torch.device("cuda")
    monitor = MemoryMonitor(device)
    monitor.reset()
    x = torch.empty(256 * 2 ** 20, dtype=torch.uint8, device=device)
    monitor.sample()
    result = monitor.result()
    del x
    assert result["peak_memory_mb"] == result["cuda_max_reserved_mb"] >= 256
    if "device_used_mb_sampled_max" in result:  # NVML present and matched
        assert result["device_used_mb_sampled_max"] >= result["cuda_max_reserved_mb"]
        _, total = torch.cuda.mem_get_info(device)
        assert abs(result["device_total_mb"] - total / 2 ** 20) < 1  # the same GPU torch uses


def test_a_runs_speed_is_the_median_of_its_epochs_with_their_spread(synth_cache):
    """One epoch's samples/s is one draw: the run's figure (what rows, Optuna and the report use) is the median over
    its epochs so far, beside their interquartile range; every epoch's metrics carry both."""
    speeds = [{"samples_per_s": v} for v in (100.0, 400.0, 200.0, 300.0)]
    assert run_speed(speeds) == {"samples_per_s_median": 250.0, "samples_per_s_iqr": pytest.approx(150.0)}
    assert run_speed(speeds[:1])["samples_per_s_median"] == 100.0
    assert math.isnan(run_speed([])["samples_per_s_median"])
    assert run_speed([*speeds, {"samples_per_s": float("nan")}])["samples_per_s_median"] == 250.0
    result = fit(tiny_config(epochs=3, max_steps_per_epoch=2), synth_cache, LocalReporter(None, log=lambda *_: None))
    assert math.isfinite(result["samples_per_s_median"]) and result["samples_per_s_iqr"] >= 0
