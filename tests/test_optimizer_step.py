"""The fewer-launches optimizer path: RAdam with host step counts and the foreach gradient accumulation
compute what torch's RAdam and AccumulateGrad compute, resume from a checkpoint, and launch fewer ops."""
import copy

import pytest
import torch

from asl_ray.ablate.launches import count_train_steps
from asl_ray.config import ConfigError, TrainConfig
from asl_ray.data.dataset import pad_to_batch_max
from asl_ray.model import GISLRModel
from asl_ray.train.accumulate import AutogradAccumulation, ForeachAccumulation, make_accumulation
from asl_ray.train.loop import TrainStep, accumulation_window
from asl_ray.train.optim import make_optimizer
from asl_ray.train.radam import HostStepRAdam
from asl_ray.train.runtime import Runtime

CPU = Runtime(device=torch.device("cpu"), precision="fp32", pin_memory=False)
NO_DROPOUT = dict(drop_path=0.0, attn_dropout=0.0, late_dropout=0.0)


@pytest.mark.parametrize("name", ["host_step_counts", "foreach_grad_accumulation"])
def test_switches_are_validated_bool_fields(name):
    assert getattr(TrainConfig(), name) in (False, True)
    with pytest.raises(ConfigError, match=name):
        TrainConfig(**{name: 1})


def _params_and_grads(seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(7, 5), (5,), (3, 4, 2), (1,)]
    params = [torch.randn(s, generator=g) for s in shapes]
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(12)]
    return params, grads


def _run(make, steps=12, state=None):
    params, grads = _params_and_grads()
    params = [torch.nn.Parameter(p) for p in params]
    opt = make([{"params": params[:2], "weight_decay": 0.03}, {"params": params[2:], "weight_decay": 0.0}])
    for step_grads in grads[:steps]:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
    return params, opt


def test_host_step_radam_matches_torch_radam_through_the_unrectified_and_rectified_steps():
    # rho_t > 5 from step 6 with beta2 0.999: 12 steps take both branches.
    ours, _ = _run(lambda groups: HostStepRAdam(groups, lr=0.01))
    torchs, _ = _run(lambda groups: torch.optim.RAdam(groups, lr=0.01, decoupled_weight_decay=True, foreach=True))
    for a, b in zip(ours, torchs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_host_step_radam_skips_parameters_without_gradient_and_counts_steps_per_parameter():
    p, q = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = HostStepRAdam([p, q], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    q.grad = torch.ones(3)
    opt.step()
    assert opt.state[p]["step"] == 2 and opt.state[q]["step"] == 1
    with pytest.raises(ValueError, match="lr"):
        HostStepRAdam([p], lr=torch.tensor(0.1))


@pytest.mark.parametrize("load_into", ["host", "torch"])
def test_a_checkpoint_resumes_the_same_trajectory_from_either_radam(load_into):
    """Six steps straight == three, state_dict, a fresh optimizer (ours or torch's), three more."""
    straight, _ = _run(lambda groups: HostStepRAdam(groups, lr=0.01), steps=6)
    first, opt = _run(lambda groups: HostStepRAdam(groups, lr=0.01), steps=3)
    saved = copy.deepcopy(opt.state_dict())
    params, grads = _params_and_grads()
    params = [torch.nn.Parameter(p.detach().clone()) for p in first]
    groups = [{"params": params[:2], "weight_decay": 0.03}, {"params": params[2:], "weight_decay": 0.0}]
    resumed = (HostStepRAdam(groups, lr=0.01) if load_into == "host" else
               torch.optim.RAdam(groups, lr=0.01, decoupled_weight_decay=True, foreach=True))
    resumed.load_state_dict(saved)
    for step_grads in grads[3:6]:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        resumed.step()
    for a, b in zip(params, straight):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_a_torch_radam_checkpoint_loads_into_host_step_radam_as_int_steps():
    _, opt = _run(lambda groups: torch.optim.RAdam(groups, lr=0.01, decoupled_weight_decay=True), steps=2)
    params, _ = _params_and_grads()
    ours = HostStepRAdam([torch.nn.Parameter(p) for p in params], lr=0.01)
    state = opt.state_dict()
    state["param_groups"] = [{**state["param_groups"][0], "params": [0, 1, 2, 3]}]
    ours.load_state_dict(state)
    assert all(s["step"] == 2 and isinstance(s["step"], int) for s in ours.state.values())


def _tiny_cfg(**overrides):
    return TrainConfig(dim=16, depth=1, num_heads=2, batch_size=3, gradient_accumulation_steps=3,
                       gradient_clip_val=0.05, lookahead=True, **{**NO_DROPOUT, **overrides})


def _batches(n, b=3, t=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [pad_to_batch_max([(torch.randn(t, 708, generator=g).numpy(), j % 5) for j in range(b)], t)
            for _ in range(n)]


def _trained(cfg, steps=6, batches=None):
    torch.manual_seed(0)
    model = GISLRModel.from_config(cfg, 5)
    opt, lookahead = make_optimizer(model, cfg)
    step = TrainStep(model, opt, CPU.grad_scaler(), CPU, cfg)
    accum = cfg.gradient_accumulation_steps
    batches = batches or _batches(steps * accum)
    for i, batch in enumerate(batches):
        step(batch, *accumulation_window(i, len(batches), accum))
    return model, step, lookahead


def test_the_whole_fewer_launches_path_trains_the_same_weights():
    """Six optimizer steps (Lookahead syncs once, the clip bites): torch's path vs both switches."""
    torchs, _, _ = _trained(_tiny_cfg(foreach_optimizer=True, host_step_counts=False, foreach_grad_accumulation=False))
    ours, _, _ = _trained(_tiny_cfg(foreach_optimizer=True, host_step_counts=True, foreach_grad_accumulation=True))
    for (name, a), b in zip(ours.named_parameters(), torchs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_foreach_accumulation_sums_the_same_gradients_bit_for_bit():
    torch.manual_seed(0)
    model = GISLRModel(5, dim=16, depth=1, num_heads=2, **NO_DROPOUT)
    grads = {}
    for kind in (AutogradAccumulation, ForeachAccumulation):
        m = copy.deepcopy(model)
        backward = kind(list(m.parameters()))
        for batch in _batches(3):
            backward(torch.nn.functional.cross_entropy(m(batch.x, batch.mask), batch.y) / 3)
        grads[kind] = [p.grad for p in m.parameters()]
    for a, b in zip(grads[AutogradAccumulation], grads[ForeachAccumulation]):
        assert torch.equal(a, b)


def test_foreach_accumulation_gives_a_parameter_first_used_late_its_own_gradient():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    backward = make_accumulation([a, b], foreach=True)
    backward((a * 2).sum())
    backward((a * 3 + b * 5).sum())
    assert torch.equal(a.grad, torch.full((2,), 5.0)) and torch.equal(b.grad, torch.full((2,), 5.0))


def test_checkpoint_resume_on_the_new_path_continues_the_same_trajectory():
    """Through the real TrainStep with Lookahead: 4 steps straight == 2, state_dicts, fresh objects, 2 more."""
    cfg = _tiny_cfg(host_step_counts=True, foreach_grad_accumulation=True, foreach_optimizer=True)
    batches = _batches(4 * 3)
    straight, _, _ = _trained(cfg, batches=batches)
    first, step, lookahead = _trained(cfg, batches=batches[:6])
    saved = copy.deepcopy({"model": first.state_dict(), "optimizer": step.optimizer.state_dict(),
                           "lookahead": lookahead.state_dict()})
    torch.manual_seed(1)
    model = GISLRModel.from_config(cfg, 5)
    opt, la = make_optimizer(model, cfg)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    la.load_state_dict(saved["lookahead"])
    resumed = TrainStep(model, opt, CPU.grad_scaler(), CPU, cfg)
    for i, batch in enumerate(batches[6:]):
        resumed(batch, *accumulation_window(i, 6, 3))
    for (name, a), b in zip(model.named_parameters(), straight.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_the_switches_remove_item_and_the_per_parameter_accumulation_adds():
    counts = {}
    for on in (False, True):
        cfg = _tiny_cfg(foreach_optimizer=True, host_step_counts=on, foreach_grad_accumulation=on)
        torch.manual_seed(0)
        model = GISLRModel.from_config(cfg, 5)
        opt, _ = make_optimizer(model, cfg)
        step = TrainStep(model, opt, CPU.grad_scaler(), CPU, cfg)
        count_train_steps(step, _batches(3), 3, CPU.device)  # creates the optimizer state
        counts[on] = count_train_steps(step, _batches(3, seed=2), 3, CPU.device)
    n = len(step.params)
    assert counts[False].ops["_local_scalar_dense"] >= n and "_local_scalar_dense" not in counts[True].ops
    # AccumulateGrad: one add_ per parameter for each of the 2 later micro-batches; foreach: one per micro-batch
    assert counts[False].ops.get("add_", 0) - counts[True].ops.get("add_", 0) >= 2 * n - 4
    assert counts[True].ops["_foreach_add_"] >= 2
    assert counts[True].launches() < counts[False].launches() - 3 * n
