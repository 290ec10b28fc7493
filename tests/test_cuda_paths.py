"""The CUDA code paths, driven on a CPU: torch.cuda patched where a GPU would answer, CUDA graphs' handling of
gradients faked with static buffers, a compiled backward that fails. Each of these failed on a real GPU's first
run before it was fixed, and no CPU test had gone down its path."""
import copy
import warnings

import pytest
import torch
from torch import nn
from torch._dynamo.backends.common import aot_autograd

from asl_ray.cards import CUDA_CONTEXT_BYTES, CardError, MiB
from asl_ray.config import TrainConfig
from asl_ray.data.dataset import pad_to_batch_max
from asl_ray.model import GISLRModel
from asl_ray.train import runtime as runtime_module
from asl_ray.train.loop import TrainStep, accumulation_window
from asl_ray.train.runtime import EagerFallback, Runtime, emulate_card_memory, indexed_device, make_grad_scaler

CPU = Runtime(device=torch.device("cpu"), precision="fp32", pin_memory=False)
H100_BYTES = 81_559 * MiB


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda as one GPU answers, with torch's own refusals: set_device and the memory fraction want a
    device with an index (a bare 'cuda' raises ValueError there)."""
    calls = {}

    def wants_index(name):
        def call(*args):
            device = args[-1] if args else None
            if isinstance(device, torch.device) and device.index is None:
                raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{device}")
            calls[name] = args
        return call

    class Props:
        total_memory = H100_BYTES

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", wants_index("set_device"))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", wants_index("fraction"))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: Props())
    monkeypatch.setattr(runtime_module, "cap_cudnn_workspace", lambda mb: calls.setdefault("cudnn_cap", mb))
    return calls


def test_standalone_runtime_on_cuda_gets_an_indexed_device(fake_cuda):
    rt = Runtime.create(TrainConfig(precision="fp16"))
    assert rt.device == torch.device("cuda", 0) and rt.precision == "fp16" and rt.pin_memory
    assert fake_cuda["set_device"] == (torch.device("cuda", 0),)
    assert Runtime.create(TrainConfig(), torch.device("cuda")).device.index == 0
    assert indexed_device("cuda:1") == torch.device("cuda", 1) and indexed_device("cpu") == torch.device("cpu")


def test_card_emulation_sets_the_exact_fraction_on_an_indexed_device(fake_cuda):
    fraction = emulate_card_memory(12_010 * MiB - 512 * MiB, torch.device("cuda"))
    assert fake_cuda["fraction"] == (fraction, torch.device("cuda", 0))
    assert fraction == pytest.approx((12_010 * MiB - 512 * MiB - CUDA_CONTEXT_BYTES) / H100_BYTES)
    # A cap at a config's own predicted need (a few hundred MiB) is not raised to a floor.
    small = emulate_card_memory(CUDA_CONTEXT_BYTES + 300 * MiB, "cuda")
    assert small * H100_BYTES == pytest.approx(300 * MiB) and small < 0.01
    with pytest.raises(CardError, match="nothing beyond the CUDA context"):
        emulate_card_memory(CUDA_CONTEXT_BYTES, "cuda")


class _GraphPoolGrads(torch.autograd.Function):
    """Identity on the parameters; its backward hands their gradients out in static buffers, as a CUDA graph
    replay does (the same memory every replay, so the next backward overwrites the last one's)."""

    @staticmethod
    def forward(ctx, buffers, *params):
        ctx.buffers = buffers
        return tuple(p.clone() for p in params)

    @staticmethod
    def backward(ctx, *grads):
        for buf, g in zip(ctx.buffers, grads):
            buf.copy_(g)
        return (None, *(buf.view_as(buf) for buf in ctx.buffers))


class _CudaGraphReplays(nn.Module):
    """`model` whose parameter gradients come out of a graph's memory pool."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.names = [n for n, _ in model.named_parameters()]
        self.buffers_ = [torch.zeros_like(p) for p in model.parameters()]

    def forward(self, *args):
        params = _GraphPoolGrads.apply(self.buffers_, *self.model.parameters())
        return torch.func.functional_call(self.model, dict(zip(self.names, params)), args)


def _update_after_one_window(model: nn.Module, wrap, foreach_accumulation: bool):
    torch.manual_seed(0)
    model = copy.deepcopy(model)
    before = [p.detach().clone() for p in model.parameters()]
    cfg = TrainConfig(batch_size=2, gradient_accumulation_steps=4, gradient_clip_val=0.0,
                      foreach_grad_accumulation=foreach_accumulation)
    step = TrainStep(wrap(model), torch.optim.SGD(model.parameters(), lr=1.0), make_grad_scaler("fp32", "cpu"),
                     CPU, cfg)
    g = torch.Generator().manual_seed(1)
    for i in range(4):
        samples = [(torch.randn(20, 708, generator=g).numpy(), (2 * i + j) % 5) for j in range(2)]
        window, boundary = accumulation_window(i, 4, 4)
        step(pad_to_batch_max(samples, 20), window, boundary)
    return [b - p.detach() for b, p in zip(before, model.parameters())]


@pytest.mark.parametrize("foreach_accumulation", [False, True])
def test_reduce_overhead_accumulates_every_micro_batch(foreach_accumulation):
    torch.manual_seed(0)
    model = GISLRModel(5).eval()  # no dropout, BatchNorm on running statistics: both runs see one function
    eager = _update_after_one_window(model, lambda m: m, foreach_accumulation)
    graphs = _update_after_one_window(
        model, lambda m: EagerFallback(m, _CudaGraphReplays(m), mode="reduce-overhead"), foreach_accumulation)
    for a, b in zip(eager, graphs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_the_fake_graph_pool_is_what_breaks_accumulation_without_stable_grads(monkeypatch):
    # The fake really overwrites: with .grad left to AccumulateGrad, the window's update is wrong.
    monkeypatch.setattr("asl_ray.train.loop.needs_stable_grads", lambda model: False)
    torch.manual_seed(0)
    model = GISLRModel(5).eval()
    eager = _update_after_one_window(model, lambda m: m, False)
    graphs = _update_after_one_window(
        model, lambda m: EagerFallback(m, _CudaGraphReplays(m), mode="reduce-overhead"), False)
    assert not all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(eager, graphs))


def test_a_failing_compiled_backward_falls_back_to_eager_and_the_step_is_right():
    def forward_compiler(gm, inputs):
        return gm.forward

    def backward_compiler(gm, inputs):  # inductor compiles the backward lazily, at the first backward
        raise RuntimeError("backward codegen broke")

    torch.manual_seed(0)
    model = GISLRModel(5).eval()
    eager = _update_after_one_window(model, lambda m: m, False)
    torch._dynamo.reset()
    backend = aot_autograd(fw_compiler=forward_compiler, bw_compiler=backward_compiler)
    wrapped = {}

    def compile_broken(m):
        wrapped["model"] = EagerFallback(m, torch.compile(m, backend=backend))
        return wrapped["model"]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fallen = _update_after_one_window(model, compile_broken, False)
    torch._dynamo.reset()
    assert wrapped["model"].failed
    assert any("backward codegen broke" in str(w.message) for w in caught)
    for a, b in zip(eager, fallen):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_out_of_memory_in_the_compiled_backward_is_not_a_compile_failure():
    def backward_runs_out(gm, inputs):
        raise torch.OutOfMemoryError("CUDA out of memory (compiled backward)")

    torch._dynamo.reset()
    model = nn.Linear(4, 1)
    wrapped = EagerFallback(model, torch.compile(model, backend=aot_autograd(
        fw_compiler=lambda gm, _: gm.forward, bw_compiler=backward_runs_out)))
    with pytest.raises(torch.OutOfMemoryError, match="compiled backward"):
        runtime_module.with_eager_fallback(wrapped, lambda: wrapped(torch.randn(3, 4)).sum().backward())
    torch._dynamo.reset()
    assert not wrapped.failed
