"""How a micro-batch's backward lands in the parameters' .grad: autograd's AccumulateGrad, or one
multi-tensor add per micro-batch.

AccumulateGrad adds each incoming gradient into .grad on its own (one `add_` per parameter and
micro-batch after the first of a window: 213 of the seed's optimizer step's ops). `ForeachAccumulation`
takes the later micro-batches' gradients from `torch.autograd.grad` and adds them all with one
`torch._foreach_add_` (the same `add_` per tensor, so the same sums bit for bit). Its cost: those
gradients are all alive at the end of the backward, at most one more fp32 copy of the parameters
(asl_ray/vram accounts for it).
"""
from __future__ import annotations

import torch


class AutogradAccumulation:
    """`loss.backward()`: AccumulateGrad adds into .grad parameter by parameter."""

    def __init__(self, params: list[torch.Tensor]):
        self.params = params

    def __call__(self, loss: torch.Tensor) -> None:
        loss.backward()


class ForeachAccumulation(AutogradAccumulation):
    """The first micro-batch of a window (no .grad yet) backpropagates as usual, so .grad is what
    AccumulateGrad makes it (its layout contract included); the later ones are summed in one foreach add."""

    def __call__(self, loss: torch.Tensor) -> None:
        if all(p.grad is None for p in self.params):
            loss.backward()
            return
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        into, new = [], []
        for p, g in zip(self.params, grads):
            if g is None:
                continue
            if p.grad is None:  # first gradient this window for a parameter the earlier micro-batches missed
                p.grad = g.detach().clone(memory_format=torch.preserve_format)
            else:
                into.append(p.grad)
                new.append(g)
        if into:
            torch._foreach_add_(into, new)


def make_accumulation(params: list[torch.Tensor], foreach: bool) -> AutogradAccumulation:
    return (ForeachAccumulation if foreach else AutogradAccumulation)(params)
