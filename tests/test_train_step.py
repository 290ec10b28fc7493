import copy

import pytest
import torch

from asl_ray.config import TrainConfig
from asl_ray.data.dataset import pad_to_batch_max
from asl_ray.model import GISLRModel
from asl_ray.train.loop import TrainStep, accumulation_window
from asl_ray.train.runtime import Runtime, make_grad_scaler

CPU = Runtime(device=torch.device("cpu"), precision="fp32", pin_memory=False)


def _samples(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 30, (n,), generator=g).tolist()
    return [(torch.randn(t, 708, generator=g).numpy(), i % 5) for i, t in enumerate(lengths)]


def _grads_after(micro_batch: int, accum: int, model, samples, foreach_accumulation: bool = False):
    cfg = TrainConfig(batch_size=micro_batch, gradient_accumulation_steps=accum, gradient_clip_val=0.0,
                      foreach_grad_accumulation=foreach_accumulation)
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    captured = []
    opt.register_step_pre_hook(lambda *_: captured.append([p.grad.clone() for p in model.parameters()]))
    step = TrainStep(model, opt, make_grad_scaler("fp32", "cpu"), CPU, cfg)
    n = len(samples) // micro_batch
    for i in range(n):
        chunk = samples[i * micro_batch:(i + 1) * micro_batch]
        batch = pad_to_batch_max(chunk, max(len(s[0]) for s in chunk))  # each micro-batch its own padding
        window, boundary = accumulation_window(i, n, accum)
        step(batch, window, boundary)
    assert len(captured) == 1
    return captured[0]


@pytest.mark.parametrize("foreach_accumulation", [False, True])
def test_micro_batch_8_accum_1_equals_micro_batch_2_accum_4(foreach_accumulation):
    torch.manual_seed(0)
    # eval(): BatchNorm on running statistics and no dropout, so both splits see the same function.
    model = GISLRModel(5).eval()
    samples = _samples()
    a = _grads_after(8, 1, model, samples)
    b = _grads_after(2, 4, model, samples, foreach_accumulation)
    for ga, gb in zip(a, b):
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)


def test_last_partial_window_is_averaged_over_its_own_size():
    windows = [accumulation_window(i, 10, 4) for i in range(10)]
    assert [w for w, _ in windows] == [4] * 8 + [2, 2]
    assert [i for i, (_, end) in enumerate(windows) if end] == [3, 7, 9]


@pytest.mark.parametrize("precision,enabled", [("fp16", True), ("bf16", False), ("fp32", False)])
def test_grad_scaler_only_for_fp16(precision, enabled):
    assert make_grad_scaler(precision, "cpu").is_enabled() is enabled


def test_cpu_runtime_runs_fp32_with_disabled_scaler():
    rt = Runtime.create(TrainConfig(precision="fp16"), torch.device("cpu"))
    assert rt.precision == "fp32" and not rt.grad_scaler().is_enabled() and not rt.non_blocking


def test_clipping_sees_unscaled_gradients(monkeypatch):
    torch.manual_seed(0)
    model = GISLRModel(5).eval()
    batch = pad_to_batch_max(_samples(4), 29)
    seen = {}
    real_clip = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **k):
        params = list(params)
        seen.setdefault("norms", []).append(float(torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))))
        return real_clip(params, max_norm, *a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    cfg = TrainConfig(gradient_clip_val=1e9, gradient_accumulation_steps=1)
    for scaler in (torch.amp.GradScaler("cpu", enabled=False), torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)):
        m = copy.deepcopy(model)
        step = TrainStep(m, torch.optim.SGD(m.parameters(), lr=0.0), scaler, CPU, cfg)
        step(batch, 1, True)
    unscaled, with_scaler = seen["norms"]
    assert with_scaler == pytest.approx(unscaled, rel=1e-4)


def test_clipping_bounds_the_update():
    torch.manual_seed(0)
    model = GISLRModel(5).eval()
    batch = pad_to_batch_max(_samples(4), 29)
    before = [p.detach().clone() for p in model.parameters()]
    cfg = TrainConfig(gradient_clip_val=0.01, gradient_accumulation_steps=1)
    TrainStep(model, torch.optim.SGD(model.parameters(), lr=1.0), make_grad_scaler("fp32", "cpu"), CPU, cfg)(batch, 1, True)
    moved = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.detach() - b)
                                                  for p, b in zip(model.parameters(), before)]))
    assert float(moved) <= 0.01 * 1.0001


def test_compile_failure_falls_back_to_eager(monkeypatch):
    from asl_ray.train import runtime as rt_module

    def broken_compile(model, **_):
        def fails(*_a, **_k):
            raise RuntimeError("inductor exploded")
        return fails

    monkeypatch.setattr(torch, "compile", broken_compile)
    model = GISLRModel(5).eval()
    wrapped = rt_module.maybe_compile(model, enabled=True)
    batch = pad_to_batch_max(_samples(2), 29)
    with pytest.warns(RuntimeWarning, match="inductor exploded"):
        out = wrapped(batch.x, batch.mask)
    torch.testing.assert_close(out, model(batch.x, batch.mask))
    assert wrapped.failed and list(wrapped.state_dict()) == ["eager." + k for k in model.state_dict()]
    assert rt_module.maybe_compile(model, enabled=False) is model
