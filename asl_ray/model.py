"""The GISLR winner's 1D-CNN + Transformer, with padded frames masked everywhere.

Input: features (B, T, 708), or the 236 positions they are computed from (features_on_device: the model
computes dx/dx2 first, in the same compiled graph), and a boolean mask (B, T) that is True on real frames. Every place where
padding could leak into a real frame is masked: BatchNorm statistics (real frames only), ECA's
average, attention keys and the final pooling. The depthwise convolution is causal and padding sits
at the end, so real frames never see it. Padded positions are zeroed after each block so that
garbage there can never overflow in fp16.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import register_flop_formula

from asl_ray.config import NUM_FEATURE_CHANNELS, TrainConfig
from asl_ray.data.features import NUM_POSITION_CHANNELS, motion_features

BN_MOMENTUM = 0.05  # Keras momentum 0.95 in PyTorch's convention
BN_EPS = 1e-3  # Keras default


def _weighted_column_sums(w: torch.Tensor, xf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(w @ x, w @ x^2) for w (1, N) and x (N, C). Eager: two matmuls, two launches. Compiled: sums, which
    inductor fuses into one reduction kernel with what precedes them, where each matmul is an extern call
    with a fused kernel on either side."""
    if torch.compiler.is_compiling():
        wc = w.reshape(-1, 1)
        return (xf * wc).sum(0), (xf * xf * wc).sum(0)
    return torch.mm(w, xf).squeeze(0), torch.mm(w, xf * xf).squeeze(0)


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
            mean, mean_sq = _weighted_column_sums(w, xf)
            var = torch.addcmul(mean_sq, mean, mean, value=-1.0).clamp_(min=0.0)
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
        if torch.compiler.is_compiling():  # inductor draws these inside a fused kernel; bernoulli_ is an extern call
            keep = (torch.rand(x.shape[0], 1, 1, device=x.device) >= self.p).to(x.dtype)
        else:
            keep = torch.empty(x.shape[0], 1, 1, device=x.device, dtype=x.dtype).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class ECA(nn.Module):
    """Efficient channel attention: a gate from a k=5 convolution across the channels' masked means."""

    def __init__(self, kernel_size: int = 5):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        means = masked_mean(x, mask)
        if torch.compiler.is_compiling():
            logits = self._conv_as_shifted_sums(means)
        else:
            logits = self.conv(means.unsqueeze(1)).squeeze(1)
        return x * torch.sigmoid(logits).unsqueeze(1)

    def _conv_as_shifted_sums(self, means: torch.Tensor) -> torch.Tensor:
        """The same convolution as K shifted multiply-adds: compiled, they fuse with the masked mean and the
        gate into the kernels around them, where a convolution is an extern call forward and two backward.
        (Eager, the convolution is one launch and K shifts would be 2K.)"""
        k = self.conv.kernel_size[0]
        padded = F.pad(means, (k // 2, k // 2))
        weight = self.conv.weight.reshape(k).to(means.dtype)
        width = means.shape[-1]
        return sum(weight[j] * padded[:, j:j + width] for j in range(k))


@torch.library.custom_op("asl_ray::depthwise_conv1d", mutates_args=())
def _depthwise_conv(padded: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.conv1d(padded, weight, groups=weight.shape[0])


@_depthwise_conv.register_fake
def _(padded, weight):
    b, c, length = padded.shape
    return padded.new_empty(b, c, length - weight.shape[-1] + 1)


@torch.library.custom_op("asl_ray::depthwise_conv1d_backward", mutates_args=())
def _depthwise_conv_backward(grad: torch.Tensor, padded: torch.Tensor, weight: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    grad_padded, grad_weight, _ = torch.ops.aten.convolution_backward(
        grad, padded, weight, None, [1], [0], [1], False, [0], weight.shape[0], [True, True, False])
    return grad_padded, grad_weight


@_depthwise_conv_backward.register_fake
def _(grad, padded, weight):
    return padded.new_empty(padded.shape), weight.new_empty(weight.shape)


def _depthwise_conv_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _depthwise_conv_autograd(ctx, grad):
    padded, weight = ctx.saved_tensors
    return tuple(torch.ops.asl_ray.depthwise_conv1d_backward(grad, padded, weight))


_depthwise_conv.register_autograd(_depthwise_conv_autograd, setup_context=_depthwise_conv_setup_context)


# FlopCounterMode sees a custom op as one opaque call: without these, the convolution's FLOPs vanish from
# the MFU figures (asl_ray/ablate/flops.py). Forward: one depthwise convolution, 2 FLOPs per MAC; backward:
# one such convolution per gradient (input and weight).
@register_flop_formula(torch.ops.asl_ray.depthwise_conv1d)
def _depthwise_conv_flops(padded_shape, w_shape, out_shape=None, **_) -> int:
    b, c, length = padded_shape
    return 2 * b * c * w_shape[-1] * (length - w_shape[-1] + 1)


@register_flop_formula(torch.ops.asl_ray.depthwise_conv1d_backward)
def _depthwise_conv_backward_flops(grad_shape, padded_shape, w_shape, out_shape=None, **_) -> int:
    return 2 * _depthwise_conv_flops(padded_shape, w_shape)


def causal_depthwise_conv(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(B, L, C) -> (B, L, C) depthwise convolution with `weight` (C, 1, K), padded on the left only so
    that a real frame never sees the padding at the end.

    The convolution itself is a custom op (`asl_ray::depthwise_conv1d`, forward and backward each one cuDNN /
    oneDNN kernel) that torch.compile traces as an opaque node: the model compiles as one graph, with no graph
    break. Inductor's own convolution-backward lowering pinned the sequence length (a recompile per length),
    and writing the convolution as K shifted multiply-adds took over 10 minutes to compile at dim 192.
    The padding and the channels-first layout the kernel reads are made outside the op, where inductor fuses
    them into the kernel that computes `h`; the output goes back as a transposed view that the next fused
    kernel reads. Inside the op they were three more launches each way (pad, copy, copy). The weight is cast
    to the input's dtype here because autocast does not reach inside a custom op.
    """
    padded = F.pad(h.transpose(1, 2), (weight.shape[-1] - 1, 0))
    out = torch.ops.asl_ray.depthwise_conv1d(padded, weight.to(h.dtype)).transpose(1, 2)
    # Eager, one copy to (B, L, C) here saves two: BatchNorm reshapes its input forward and backward.
    return out if torch.compiler.is_compiling() else out.contiguous()


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
                 late_dropout: float = 0.8, in_channels: int = NUM_FEATURE_CHANNELS, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing
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
                   late_dropout=cfg.late_dropout, label_smoothing=cfg.label_smoothing)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, targets: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits (B, num_classes); with `targets`, the training loss instead (cross-entropy with label
        smoothing, in fp32), so that a compiled model fuses the loss and its backward into its own graph
        (as nanoGPT's model does) instead of running them as a dozen eager launches per micro-batch."""
        if x.shape[-1] == NUM_POSITION_CHANNELS:  # features_on_device: dx/dx2 here, fused into the compiled graph
            x = motion_features(x, mask)
        x = self.stem_bn(self.stem(x), mask)
        x = x * mask.unsqueeze(-1).to(x.dtype)
        for block in self.blocks:
            x = block(x, mask)
        pooled = masked_mean(self.top(x), mask)
        if self.late_dropout_active:
            pooled = self.late_dropout(pooled)
        logits = self.classifier(pooled)
        if targets is None:
            return logits
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
