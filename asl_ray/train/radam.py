"""RAdam whose step counts live on the host: no `.item()` per parameter and step.

torch.optim.RAdam (foreach, not capturable) keeps each parameter's step as a CPU tensor and reads it with
`.item()` five times per parameter and step to build its rectification and bias-correction scalars: 355 host
reads per optimizer step of the seed's model, each a dispatched op (and `capturable=True`, which avoids them,
is refused for CPU tensors). Here each parameter's step is a Python int, parameters are grouped by it (one
group in practice), and the scalars are computed once per group on the host.
"""
from __future__ import annotations

import math
from collections import defaultdict

import torch


class HostStepRAdam(torch.optim.Optimizer):
    """torch.optim.RAdam's update with decoupled weight decay, in multi-tensor (`torch._foreach_*`) ops.

    Same update up to float rounding (tests/test_optimizer_step.py); state per parameter is torch's
    (`step`, `exp_avg`, `exp_avg_sq`) with `step` an int, so checkpoints load either way: torch's RAdam turns
    an int step back into a tensor, and loading a tensor step here turns it into an int."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        if isinstance(lr, torch.Tensor) or lr < 0:
            raise ValueError(f"lr must be a float >= 0 (the step size is a host scalar), got {lr!r}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                                  **_TORCH_RADAM_FLAGS})
        self.register_load_state_dict_post_hook(_from_checkpoint)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            by_step: dict[int, tuple[list, list, list, list]] = defaultdict(lambda: ([], [], [], []))
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                for into, t in zip(by_step[state["step"]], (p, p.grad, state["exp_avg"], state["exp_avg_sq"])):
                    into.append(t)
            for step, tensors in by_step.items():
                _radam_update(*tensors, step=step, lr=group["lr"], betas=group["betas"], eps=group["eps"],
                              weight_decay=group["weight_decay"])
        return loss


def _radam_update(params, grads, exp_avgs, exp_avg_sqs, *, step: int, lr: float, betas: tuple[float, float],
                  eps: float, weight_decay: float) -> None:
    beta1, beta2 = betas
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * beta2 ** step / bias_correction2
    if weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    if rho_t > 5:  # the variance is tractable: the rectified adaptive step
        rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denom, eps)  # eps on sqrt(v), before the bias correction, as torch's RAdam
        torch._foreach_addcdiv_(params, exp_avgs, denom, -lr * rect * math.sqrt(bias_correction2) / bias_correction1)
    else:  # the first steps: SGD with momentum
        torch._foreach_add_(params, exp_avgs, alpha=-lr / bias_correction1)


# torch.optim.RAdam's group flags for the update this class computes: saved with the groups, so its checkpoint
# loads into torch's RAdam as the same optimizer (absent, torch would fall back to coupled weight decay).
_TORCH_RADAM_FLAGS = {"decoupled_weight_decay": True, "maximize": False, "foreach": True, "capturable": False,
                      "differentiable": False}


def _from_checkpoint(optimizer: torch.optim.Optimizer) -> None:
    for group in optimizer.param_groups:
        other = {k: group.get(k, v) for k, v in _TORCH_RADAM_FLAGS.items()
                 if k in ("decoupled_weight_decay", "maximize") and group.get(k, v) != v}
        if other:
            raise ValueError(f"HostStepRAdam computes decoupled weight decay without maximize; the checkpoint "
                             f"has {other}")
        group.update(_TORCH_RADAM_FLAGS)
    for state in optimizer.state.values():
        if isinstance(state.get("step"), torch.Tensor):
            state["step"] = int(state["step"].item())
