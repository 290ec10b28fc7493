"""GPU-only checks (skipped cleanly without CUDA): fp16/bf16 steps, memory figures, emulation, OOM guard."""
import pytest
import torch

from asl_ray.train.checkpoint import LocalReporter
from asl_ray.train.loop import fit
from asl_ray.train.runtime import Runtime
from conftest import tiny_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32"])
def test_mixed_precision_epoch_on_gpu(synth_cache, precision):
    cfg = tiny_config(epochs=1, max_steps_per_epoch=8, precision=precision, num_workers=2, pin_memory=True)
    rt = Runtime.create(cfg)
    assert rt.precision == precision and rt.grad_scaler().is_enabled() == (precision == "fp16") and rt.non_blocking
    result = fit(cfg, synth_cache, LocalReporter(None, log=lambda *_: None), runtime=rt)
    assert result["feasible"] and result["cuda_max_reserved_mb"] >= result["cuda_max_allocated_mb"] > 0
    assert "device_used_mb_sampled_max" in result


def test_emulated_small_card_turns_a_big_batch_into_an_oom_result(synth_cache):
    from asl_ray.train.runtime import emulate_card_memory
    rt = Runtime.create(tiny_config())
    emulate_card_memory(1.0 * 2 ** 30, rt.device)  # 1 GiB in all
    try:
        cfg = tiny_config(epochs=1, max_steps_per_epoch=2, dim=1024, depth=4, max_len=512, batch_size=256,
                          pad_to="max_len", lookahead=False)
        result = fit(cfg, synth_cache, LocalReporter(None, log=lambda *_: None), runtime=rt)
        assert result["oom"] is True and result["feasible"] is False
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, rt.device)
        torch.cuda.empty_cache()
    ok = fit(tiny_config(epochs=1, max_steps_per_epoch=2), synth_cache, LocalReporter(None, log=lambda *_: None), runtime=rt)
    assert ok["feasible"] is True


def test_compile_runs_or_falls_back(synth_cache):
    cfg = tiny_config(epochs=1, max_steps_per_epoch=3, compile=True)
    assert fit(cfg, synth_cache, LocalReporter(None, log=lambda *_: None))["feasible"]
