"""An out-of-memory error in a run becomes an explicit result, and the process can run the next config."""
import json

import torch

from asl_ray.train.checkpoint import LocalReporter
from asl_ray.train.loop import fit
from conftest import tiny_config


def test_injected_oom_becomes_an_infeasible_result(synth_cache, tmp_path, inject):
    inject({"oom_at_step": 2})
    cfg = tiny_config(epochs=2, max_steps_per_epoch=6, gradient_accumulation_steps=2)
    result = fit(cfg, synth_cache, LocalReporter(tmp_path, log=lambda *_: None))
    assert result["oom"] is True and result["feasible"] is False and result["status"] == "oom"
    assert result["oom_step"] == 2 and result["epoch"] == 0
    assert "peak_memory_mb" in result and "injected" in result["error"]
    assert json.loads((tmp_path / "result.json").read_text())["oom"] is True


def test_process_runs_the_next_config_after_an_oom(synth_cache, tmp_path, inject):
    inject({"when": {"dim": 48}, "oom_at_step": 1})
    assert fit(tiny_config(epochs=1, max_steps_per_epoch=2, dim=48), synth_cache,
               LocalReporter(None, log=lambda *_: None))["oom"] is True
    ok = fit(tiny_config(epochs=1, max_steps_per_epoch=2), synth_cache, LocalReporter(None, log=lambda *_: None))
    assert ok["feasible"] is True and ok["oom"] is False


def test_oom_while_building_the_model_is_a_result_too(synth_cache, monkeypatch):
    import asl_ray.train.loop as loop

    def no_memory(*_a, **_k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(loop, "setup", no_memory)
    result = fit(tiny_config(epochs=1), synth_cache, LocalReporter(None, log=lambda *_: None))
    assert result["oom"] is True and result["oom_step"] == 0 and "2.00 GiB" in result["error"]


def test_nan_loss_ends_the_run_as_diverged(synth_cache, tmp_path, inject):
    inject({"nan_at_step": 2})
    cfg = tiny_config(epochs=3, max_steps_per_epoch=6)
    result = fit(cfg, synth_cache, LocalReporter(tmp_path, log=lambda *_: None))
    assert result["status"] == "diverged" and result["feasible"] is False and result["epoch"] == 0
    assert result["nonfinite_losses"] == 5 and "not finite" in result["error"]
    assert not (tmp_path / "checkpoints").exists()  # a diverged epoch is never checkpointed


def test_a_few_nonfinite_losses_are_not_divergence(synth_cache):
    """The rule itself: a minority of NaN/inf losses (fp16 overflows the scaler skips) is not divergence;
    a majority, or non-finite weights, is."""
    from types import SimpleNamespace

    from asl_ray.model import GISLRModel
    from asl_ray.train.loop import has_diverged

    session = SimpleNamespace(model=GISLRModel(5))
    assert not has_diverged(session, {"nonfinite_losses": 3, "train_batches": 12})
    assert has_diverged(session, {"nonfinite_losses": 7, "train_batches": 12})
    with torch.no_grad():
        next(session.model.parameters())[0] = float("nan")
    assert has_diverged(session, {"nonfinite_losses": 0, "train_batches": 12})
