"""The GISLR winner's 1D-CNN + Transformer, with padded frames masked everywhere.

Input: features (B, T, 708) and a boolean mask (B, T) that is True on real frames. Every place where
padding could leak into a real frame is masked: BatchNorm statistics (real frames only), ECA's
average, attention keys and the final pooling. The depthwise convolution is causal and padding sits
at the end, so real frames never see it. Padded positions are zeroed after each block so that
garbage there can never overflow in fp16.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import register_flop_formula

from asl_ray.config import NUM_FEATURE_CHANNELS, TrainConfig

BN_MOMENTUM = 0.05  # Keras momentum 0.95 in PyTorch's convention
BN_EPS = 1e-3  # Keras default


class _MaskedBatchNormFn(torch.autograd.Function):
    """BatchNorm over the real frames only; saves just the input (in its own dtype) for backward.

    Masked means are matrix products with the mask divided by the count (a weight per frame), so the
    statistics take two matmuls, and scale/shift/output are fused multiply-adds: with the running
    statistics, 34 aten ops per forward + backward where the textbook formula needs far more and the first
    version of this one 46 (each a kernel launch on a GPU; counted in tests/test_eager_launches.py).
    """

    @staticmethod
    def forward(ctx, x, mask, weight, bias, eps):
        # fp16/bf16 statistics overflow or lose precision (a dtype test, not promote_types: that is an op)
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        with torch.autocast(x.device.type, enabled=False):
            c = x.shape[-1]
            xf = x.reshape(-1, c).to(acc)
            w = mask.reshape(1, -1).to(acc)
            n = w.sum().clamp_(min=1.0)
            w = w / n
            mean = torch.mm(w, xf).squeeze(0)
            var = torch.addcmul(torch.mm(w, xf * xf).squeeze(0), mean, mean, value=-1.0).clamp_(min=0.0)
            invstd = (var + eps).rsqrt_()
            scale = invstd * weight
            y = torch.addcmul(torch.addcmul(bias, mean, scale, value=-1.0), xf, scale).to(x.dtype).view_as(x)
        # n travels through save_for_backward, not as a ctx attribute: an output tensor stored on
        # ctx makes a reference cycle that only the garbage collector breaks (late, on the GPU too).
        ctx.mark_non_differentiable(mean, var, n)
        ctx.set_materialize_grads(False)  # no zero gradients made for the statistics (3 launches)
        ctx.save_for_backward(x, mask, mean, invstd, weight, n)
        return y, mean, var, n

    @staticmethod
    def backward(ctx, gy, _gmean, _gvar, _gn):
        if gy is None:  # gradients are not materialised: nothing flowed back through the output
            return None, None, None, None, None
        x, mask, mean, invstd, weight, n = ctx.saved_tensors
        acc = mean.dtype
        c = x.shape[-1]
        xf = x.reshape(-1, c).to(acc)
        g = gy.reshape(-1, c).to(acc)
        m = mask.reshape(-1, 1).to(acc)
        sum_gy = g.sum(0)
        sum_gy_xhat = torch.addcmul((g * xf).sum(0), mean, sum_gy, value=-1.0) * invstd
        # Every output depends on the statistics, but only real frames feed them (hence `m`):
        # gx = k * (gy - m * (sum_gy + xhat * sum_gy_xhat) / n), expanded so x is read once.
        k = weight * invstd
        k_n = k / n
        beta = k_n * invstd * sum_gy_xhat
        alpha = torch.addcmul(k_n * sum_gy, beta, mean, value=-1.0)
        gx = torch.addcmul(k * g, m, torch.addcmul(alpha, xf, beta), value=-1.0)
        return gx.to(x.dtype).view_as(x), None, sum_gy_xhat, sum_gy, None


class MaskedBatchNorm(nn.Module):
    """BatchNorm1d over channels-last (B, T, C) whose batch statistics ignore padded frames."""

    def __init__(self, num_features: int, momentum: float = BN_MOMENTUM, eps: float = BN_EPS):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not self.training:
            scale = torch.rsqrt(self.running_var + self.eps) * self.weight
            acc = torch.promote_types(x.dtype, torch.float32)
            return ((x.to(acc) - self.running_mean) * scale + self.bias).to(x.dtype)
        y, mean, var, n = _MaskedBatchNormFn.apply(x, mask, self.weight, self.bias, self.eps)
        with torch.no_grad():
            unbiased = var * (n / (n - 1).clamp(min=1.0))
            # both running statistics in one multi-tensor launch
            torch._foreach_lerp_([self.running_mean, self.running_var], [mean, unbiased], self.momentum)
        return y


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over time of the real frames: (B, T, C) -> (B, C)."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class DropPath(nn.Module):
    """Drops the whole residual branch per sample (Keras Dropout with noise_shape=(B, 1, 1))."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty(x.shape[0], 1, 1, device=x.device, dtype=x.dtype).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class ECA(nn.Module):
    """Efficient channel attention: a gate from a k=5 convolution across the channels' masked means."""

    def __init__(self, kernel_size: int = 5):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.conv(masked_mean(x, mask).unsqueeze(1))).squeeze(1)
        return x * gate.unsqueeze(1)


@torch.library.custom_op("asl_ray::causal_depthwise_conv", mutates_args=())
def _causal_conv(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    k = weight.shape[-1]
    out = F.conv1d(F.pad(h.transpose(1, 2), (k - 1, 0)), weight, groups=weight.shape[0])
    return out.transpose(1, 2).contiguous()


@_causal_conv.register_fake
def _(h, weight):
    return h.new_empty(h.shape)


@torch.library.custom_op("asl_ray::causal_depthwise_conv_backward", mutates_args=())
def _causal_conv_backward(grad: torch.Tensor, h: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    k = weight.shape[-1]
    padded = F.pad(h.transpose(1, 2), (k - 1, 0))
    grad_padded, grad_weight, _ = torch.ops.aten.convolution_backward(
        grad.transpose(1, 2), padded, weight, None, [1], [0], [1], False, [0], weight.shape[0], [True, True, False])
    return grad_padded[..., k - 1:].transpose(1, 2).contiguous(), grad_weight


@_causal_conv_backward.register_fake
def _(grad, h, weight):
    return h.new_empty(h.shape), weight.new_empty(weight.shape)


def _causal_conv_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)  # the unpadded input: the padded copy is rebuilt in backward


def _causal_conv_autograd(ctx, grad):
    h, weight = ctx.saved_tensors
    return tuple(torch.ops.asl_ray.causal_depthwise_conv_backward(grad, h, weight))


_causal_conv.register_autograd(_causal_conv_autograd, setup_context=_causal_conv_setup_context)


# FlopCounterMode sees a custom op as one opaque call: without these, the convolution's FLOPs vanish from
# the MFU figures (asl_ray/ablate/flops.py). Forward: one depthwise convolution, 2 FLOPs per MAC; backward:
# one such convolution per gradient (input and weight).
@register_flop_formula(torch.ops.asl_ray.causal_depthwise_conv)
def _causal_conv_flops(h_shape, w_shape, out_shape=None, **_) -> int:
    b, length, c = h_shape
    return 2 * b * c * w_shape[-1] * length


@register_flop_formula(torch.ops.asl_ray.causal_depthwise_conv_backward)
def _causal_conv_backward_flops(grad_shape, h_shape, w_shape, out_shape=None, **_) -> int:
    return 2 * _causal_conv_flops(h_shape, w_shape)


def causal_depthwise_conv(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(B, L, C) -> (B, L, C) depthwise convolution with `weight` (C, 1, K), padded on the left only so
    that a real frame never sees the padding at the end.

    A custom op (forward and backward each one cuDNN / oneDNN convolution kernel) that torch.compile
    traces as an opaque node: the model compiles as one graph, with no graph break. Inductor's own
    convolution-backward lowering pinned the sequence length (a recompile per length), and writing the
    convolution as K shifted multiply-adds took over 10 minutes to compile at dim 192. The weight is cast
    to the input's dtype here because autocast does not reach inside a custom op.
    """
    return torch.ops.asl_ray.causal_depthwise_conv(h, weight.to(h.dtype))


class Conv1DBlock(nn.Module):
    def __init__(self, dim: int, kernel_size: int, drop_path: float, expand: int = 2):
        super().__init__()
        hidden = dim * expand
        self.expand = nn.Linear(dim, hidden)
        self.kernel_size = kernel_size
        self.dwconv = nn.Conv1d(hidden, hidden, kernel_size, groups=hidden, bias=False)
        self.bn = MaskedBatchNorm(hidden)
        self.eca = ECA()
        self.project = nn.Linear(hidden, dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.expand(x))
        h = causal_depthwise_conv(h, self.dwconv.weight)
        h = self.eca(self.bn(h, mask), mask)
        h = self.drop_path(self.project(h))
        return (x + h) * mask.unsqueeze(-1).to(x.dtype)


class MultiHeadSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        # The winner scales logits by the full width, dim ** -0.5, not SDPA's default head_dim ** -0.5
        # (docs/GISLR.md, "More facts"): with 4 heads its attention is twice as soft as SDPA's default.
        self.scale = dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        attn_mask = mask[:, None, None, :]  # keys only: padded frames are never attended to
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, attn_dropout: float, drop_path: float, expand: int = 2):
        super().__init__()
        self.bn1 = MaskedBatchNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, num_heads, attn_dropout)
        self.drop_path1 = DropPath(drop_path)
        self.bn2 = MaskedBatchNorm(dim)
        self.mlp_in = nn.Linear(dim, dim * expand, bias=False)
        self.mlp_out = nn.Linear(dim * expand, dim, bias=False)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = mask.unsqueeze(-1).to(x.dtype)
        x = (x + self.drop_path1(self.attn(self.bn1(x, mask), mask))) * keep
        h = self.mlp_out(F.silu(self.mlp_in(self.bn2(x, mask))))
        return (x + self.drop_path2(h)) * keep


class GISLRModel(nn.Module):
    def __init__(self, num_classes: int, dim: int = 192, depth: int = 2, num_heads: int = 4,
                 kernel_size: int = 17, drop_path: float = 0.2, attn_dropout: float = 0.2,
                 late_dropout: float = 0.8, in_channels: int = NUM_FEATURE_CHANNELS):
        super().__init__()
        self.stem = nn.Linear(in_channels, dim, bias=False)
        self.stem_bn = MaskedBatchNorm(dim)
        # A ModuleList built block by block (no deepcopy, unlike nn.TransformerEncoder): the VRAM
        # estimator traces this model under FakeTensorMode.
        blocks: list[nn.Module] = []
        for _ in range(depth):
            blocks += [Conv1DBlock(dim, kernel_size, drop_path) for _ in range(3)]
            blocks.append(TransformerBlock(dim, num_heads, attn_dropout, drop_path))
        self.blocks = nn.ModuleList(blocks)
        self.top = nn.Linear(dim, 2 * dim)
        self.late_dropout = nn.Dropout(late_dropout)
        self.late_dropout_active = True
        self.classifier = nn.Linear(2 * dim, num_classes)

    @classmethod
    def from_config(cls, cfg: TrainConfig, num_classes: int) -> "GISLRModel":
        return cls(num_classes, dim=cfg.dim, depth=cfg.depth, num_heads=cfg.num_heads,
                   kernel_size=cfg.kernel_size, drop_path=cfg.drop_path, attn_dropout=cfg.attn_dropout,
                   late_dropout=cfg.late_dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.stem_bn(self.stem(x), mask)
        x = x * mask.unsqueeze(-1).to(x.dtype)
        for block in self.blocks:
            x = block(x, mask)
        pooled = masked_mean(self.top(x), mask)
        if self.late_dropout_active:
            pooled = self.late_dropout(pooled)
        return self.classifier(pooled)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
