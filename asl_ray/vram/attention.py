"""Attention as CUDA would run it, for the VRAM trace: SDPA routed to the memory-efficient kernel, whose
saved tensors and backward scratch the trace then sees (the CPU's own SDPA would save other tensors)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class _MemEfficientAttention(torch.autograd.Function):
    """CUDA's memory-efficient SDPA: saves q, k, v, bias, out, logsumexp and the RNG seed/offset."""

    @staticmethod
    def forward(ctx, q, k, v, bias, dropout_p, is_causal, scale):
        out, lse, seed, offset = torch.ops.aten._scaled_dot_product_efficient_attention(
            q, k, v, bias, True, dropout_p, is_causal, scale=scale)
        ctx.save_for_backward(q, k, v, bias, out, lse, seed, offset)
        ctx.dropout_p, ctx.is_causal, ctx.scale = dropout_p, is_causal, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, bias, out, lse, seed, offset = ctx.saved_tensors
        # The kernel's fp32 scratch lives while the gradients are written.
        scratch = torch.empty(mem_efficient_backward_scratch_bytes(q, v), dtype=torch.uint8, device=q.device)
        gq, gk, gv, _ = torch.ops.aten._scaled_dot_product_efficient_attention_backward(
            grad_out.contiguous(), q, k, v, bias, out, lse, seed, offset, ctx.dropout_p,
            [True, True, True, False], ctx.is_causal, scale=ctx.scale)
        del scratch
        return gq, gk, gv, None, None, None, None


def mem_efficient_backward_scratch_bytes(q: torch.Tensor, v: torch.Tensor) -> int:
    """fp32 scratch of CUDA's mem-efficient attention backward (kernel_backward.h, workspace_size()):
    a grad-Q accumulator per query block, grad-K/V staging when the head dim is too large to keep
    them in registers (or in fp32), and delta (B, H, M). q, v: (B, H, M, K)."""
    b, h, m, k = q.shape
    kv = v.shape[-1]
    half = q.dtype in (torch.float16, torch.bfloat16)
    block_i, block_j = (64, 64) if max(k, kv) <= 64 else (64, 128)
    grad_q = round_up(m, block_i) * round_up(k, 32)
    out_in_registers = half and max(k, kv) <= block_i
    grad_kv = 0 if out_in_registers else block_j * (round_up(k, block_i) + round_up(kv, block_i))
    return 4 * b * h * (grad_q + grad_kv + m)


def _mem_efficient_alignment(dtype: torch.dtype) -> int:
    return 8 if dtype in (torch.float16, torch.bfloat16) else 4


class CudaAttentionRouting(TorchFunctionMode):
    """Sends F.scaled_dot_product_attention where CUDA would: the memory-efficient kernel."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            routed = _cuda_sdpa(*args, **kwargs)
            if routed is not None:
                return routed
        return func(*args, **kwargs)


def _cuda_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
               enable_gqa=False):
    if torch.is_autocast_enabled("cpu"):  # SDPA is on CUDA autocast's lower-precision list
        dtype = torch.get_autocast_dtype("cpu")
        query, key, value = (t.to(dtype) for t in (query, key, value))
    align = _mem_efficient_alignment(query.dtype)
    if enable_gqa or query.dim() != 4 or query.shape[-1] % align or value.shape[-1] % align:
        return None  # CUDA's math fallback: keep CPU's trace of it
    bias = None
    if attn_mask is not None:
        bias = attn_mask
        if bias.dtype == torch.bool:  # convert_boolean_attn_mask
            bias = torch.zeros(bias.shape, dtype=query.dtype, device=query.device)
            bias.masked_fill_(attn_mask.logical_not(), float("-inf"))
        keys = bias.shape[-1]
        if keys % 16:  # preprocess_mask: the kernel reads the bias 16 keys at a time
            bias = F.pad(bias, (0, 16 - keys % 16))[..., :keys]
        bias = bias.expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
    return _MemEfficientAttention.apply(query, key, value, bias, float(dropout_p), bool(is_causal), scale)
