"""The launch counter itself: counts on tiny known computations and on the real TrainStep (never timings)."""
import pytest
import torch

from asl_ray.ablate.launches import count_dispatched, count_train_steps, profiled_kernels
from asl_ray.config import TrainConfig
from asl_ray.data.dataset import pad_to_batch_max
from asl_ray.model import GISLRModel
from asl_ray.train.loop import TrainStep
from asl_ray.train.optim import make_optimizer
from asl_ray.train.runtime import Runtime

CPU = Runtime(device=torch.device("cpu"), precision="fp32", pin_memory=False)


def test_dispatch_counter_counts_each_op_once_and_views_apart():
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    count = count_dispatched(lambda: (a * b + 1).view(12).t().sum())
    assert count.ops == {"mul": 1, "add": 1, "sum": 1}
    assert count.views == {"view": 1, "t": 1}
    assert count.launches() == 3 and count.dispatched() == 5


def test_dispatch_counter_sees_backward():
    w = torch.randn(3, 2, requires_grad=True)
    x = torch.randn(5, 3)
    count = count_dispatched(lambda: (x @ w).relu().sum().backward())
    # forward: mm, relu, sum; backward: the ones grad of sum, its expand, threshold_backward, mm (+ t views).
    assert count.ops["mm"] == 2 and count.ops["relu"] == 1 and count.ops["threshold_backward"] == 1


def test_profiler_counts_top_level_cpu_ops_not_their_insides():
    x, w = torch.randn(5, 3), torch.randn(3, 2)

    def run():
        torch.nn.functional.linear(x, w.t()).relu()  # linear is composite: its mm is not an extra launch
        return 5, 1

    count = profiled_kernels(run, torch.device("cpu"))
    assert count.source == "profiler" and count.samples == 5
    assert count.ops.get("aten::relu") == 1
    assert "aten::mm" not in count.ops or "aten::linear" not in count.ops


def _tiny_step(**overrides):
    # torch's RAdam and AccumulateGrad, whatever the defaults: these tests count what foreach_optimizer changes
    overrides = {"host_step_counts": False, "foreach_grad_accumulation": False, **overrides}
    cfg = TrainConfig(dim=16, depth=1, num_heads=2, batch_size=3, gradient_accumulation_steps=2, **overrides)
    torch.manual_seed(0)
    model = GISLRModel.from_config(cfg, 5)
    optimizer, _ = make_optimizer(model, cfg)
    return TrainStep(model, optimizer, CPU.grad_scaler(), CPU, cfg), cfg


def _batches(n, b=3, t=7):
    g = torch.Generator().manual_seed(1)
    return [pad_to_batch_max([(torch.randn(t, 708, generator=g).numpy(), i % 5) for i in range(b)], t)
            for _ in range(n)]


def test_train_step_count_is_per_whole_step_and_per_sample():
    step, cfg = _tiny_step(drop_path=0.0, attn_dropout=0.0, late_dropout=0.0)
    accum = cfg.gradient_accumulation_steps
    count_train_steps(step, _batches(accum), accum, CPU.device)  # first step creates the optimizer state
    one = count_train_steps(step, _batches(accum), accum, CPU.device)
    two = count_train_steps(step, _batches(2 * accum), accum, CPU.device)
    assert one.optimizer_steps == 1 and two.optimizer_steps == 2
    assert one.samples == 6 and two.samples == 12
    assert two.launches() == 2 * one.launches() and two.ops == {k: 2 * v for k, v in one.ops.items()}
    assert one.per_sample() == one.launches() / 6
    # RAdam's per-parameter loop on the CPU: at least one lerp_ (its first moment) per parameter.
    assert one.ops["lerp_"] >= len(step.params)


def test_foreach_optimizer_launches_fewer_ops_per_step():
    counts = {}
    for foreach in (False, True):
        step, cfg = _tiny_step(foreach_optimizer=foreach)
        count_train_steps(step, _batches(2), 2, CPU.device)
        counts[foreach] = count_train_steps(step, _batches(2), 2, CPU.device)
    assert counts[True].launches() < counts[False].launches() - 2 * len(step.params)
    assert counts[True].ops.get("_foreach_lerp_", 0) >= 1  # RAdam's first moment, all parameters at once
    # RAdam's per-parameter lerp_ is gone (MaskedBatchNorm's running statistics use _foreach_lerp_ either way)
    assert counts[True].ops.get("lerp_", 0) == counts[False].ops.get("lerp_", 0) - len(step.params)


def test_profiler_counts_no_view_and_no_to_that_copies_nothing():
    x = torch.randn(4, 3)

    def run():
        y = x.to(torch.float32).t().transpose(0, 1).reshape(12)  # no copy, views only
        y.to(torch.float64)  # a real copy: one launch
        return 1, 1

    count = profiled_kernels(run, torch.device("cpu"))
    assert count.ops == {"aten::to": 1}


@pytest.mark.slow  # an inductor compile: a C++ build
def test_profiler_counts_inductor_kernels_and_extern_matmuls():
    import torch._inductor.config as inductor_config
    x, w = torch.randn(8, 4), torch.randn(4, 3)
    torch._dynamo.reset()
    with inductor_config.patch({"cpp.enable_kernel_profile": True, "fx_graph_cache": False}):
        fn = torch.compile(lambda a, b: ((a @ b).relu() * 2).sum(0))
        fn(x, w)
        count = profiled_kernels(lambda: (fn(x, w), (8, 1))[1], torch.device("cpu"))
    fused = [name for name in count.ops if "cpp_fused" in name]
    assert count.ops.get("aten::mm") == 1 and len(fused) == 1 and count.launches() == 2, count.ops


@pytest.mark.slow
def test_the_launch_bench_runs_only_the_variants_asked_for_and_writes_their_counts(synth_root, tmp_path):
    """`python bench/launches.py --only-variants ...`, as a user runs it: today is kept (the ratios need it)."""
    import json
    import subprocess
    import sys
    from conftest import REPO
    out = subprocess.run([sys.executable, str(REPO / "bench" / "launches.py"), "--data", str(synth_root),
                          "--only-config", "small CPU", "--only-variants", "host_step_counts", "--repeats", "0",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    written = json.loads(next(tmp_path.glob("launches-*.json")).read_text())
    variants = written["results"]["small CPU"]["variants"]
    assert set(variants) == {"today", "host_step_counts"}
    # host-side step counts remove RAdam's .item() calls: fewer launches, counted, not timed
    assert variants["host_step_counts"]["launches_per_sample"] < variants["today"]["launches_per_sample"]
    bad = subprocess.run([sys.executable, str(REPO / "bench" / "launches.py"), "--only-variants", "nope"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--only-variants: unknown nope" in bad.stderr
