"""Optimizer (RAdam or AdamW, optionally with Lookahead) and the warm-up + cosine schedule."""
from __future__ import annotations

import math

import torch
from torch import nn

from asl_ray.config import TrainConfig
from asl_ray.train.radam import HostStepRAdam


class Lookahead:
    """Lookahead (k steps forward, 1 back) as a post-step hook, so the optimizer stays a plain
    torch Optimizer for GradScaler and the LR scheduler. A step the scaler skips never runs the hook."""

    def __init__(self, optimizer: torch.optim.Optimizer, k: int = 5, alpha: float = 0.5, foreach: bool = False):
        self.k, self.alpha, self.steps, self.foreach = k, alpha, 0, foreach
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.slow = [p.detach().clone() for p in self.params]
        optimizer.register_step_post_hook(self._after_step)

    @torch.no_grad()
    def _after_step(self, *_):
        self.steps += 1
        if self.steps % self.k != 0:
            return
        if self.foreach:  # two multi-tensor ops instead of three per parameter
            torch._foreach_lerp_(self.slow, self.params, self.alpha)
            torch._foreach_copy_(self.params, self.slow)
        else:
            for p, s in zip(self.params, self.slow):
                s.add_(p - s, alpha=self.alpha)
                p.copy_(s)

    def state_dict(self) -> dict:
        return {"steps": self.steps, "slow": self.slow}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]
        for s, saved in zip(self.slow, state["slow"]):
            s.copy_(saved)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, Lookahead | None]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        # Norm weights and biases are not decayed (the usual AdamW practice).
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay()}, {"params": no_decay, "weight_decay": 0.0}]
    # foreach_optimizer: multi-tensor kernels on every device (RAdam has no fused kernel; AdamW's fused one
    # is a single launch). Off leaves torch's default: foreach on CUDA, a per-parameter loop on the CPU.
    multi = cfg.foreach_optimizer
    if cfg.optimizer == "radam" and cfg.host_step_counts:  # always multi-tensor, no .item() per parameter
        opt = HostStepRAdam(groups, lr=cfg.learning_rate())
    elif cfg.optimizer == "radam":
        opt = torch.optim.RAdam(groups, lr=cfg.learning_rate(), decoupled_weight_decay=True,
                                foreach=True if multi else None)
    elif multi:
        opt = torch.optim.AdamW(groups, lr=cfg.learning_rate(), fused=True)
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.learning_rate())
    return opt, (Lookahead(opt, foreach=multi) if cfg.lookahead else None)


def make_schedule(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up for `warmup_epochs`, then cosine from the peak to `min_lr`, per optimizer step."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(total - 1, int(round(cfg.warmup_epochs * steps_per_epoch)))
    floor = cfg.min_lr / cfg.learning_rate()

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)
