"""CUDA-side costs that no CPU trace can see, with the card/source each figure comes from.

NOT YET MEASURED ON A GPU BY THIS PROJECT: every figure below is a published default or a
conservative reading of public measurements. `python bench/vram_accuracy.py` on a GPU measures the
context and the estimator's error per config; put the measured figures (card, driver, torch version,
date) here when there is one.
"""
from __future__ import annotations

from typing import Optional

# The CUDA context's size lives with the cards (asl_ray/cards.py), which emulate a card with it; MiB too.
from asl_ray.cards import CUDA_CONTEXT_BYTES, MiB  # noqa: F401

# cuBLAS workspace, allocated through torch's caching allocator once per (handle, stream); a handle
# is per thread, so a training step has two: the forward's (main thread) and the backward's
# (autograd's device thread). Source: PyTorch aten/src/ATen/cuda/CublasHandlePool.cpp,
# getDefaultWorkspaceSize / getChosenWorkspaceSize (torch 2.13): without CUBLAS_WORKSPACE_CONFIG the
# size is ":4096:2:16:8" = 4096*1024*2 + 16*1024*8 bytes (8.125 MiB) except on the architectures
# it lists, sm_90 and later, which get ":4096:8" = 4096*1024*8 bytes (32 MiB).
CUBLAS_WORKSPACE_BYTES_DEFAULT = 4096 * 1024 * 2 + 16 * 1024 * 8
CUBLAS_WORKSPACE_BYTES_SM90_AND_LATER = 4096 * 1024 * 8
CUBLAS_HANDLES_PER_STEP = 2
# The cuBLASLt workspace (addmm with bias runs through cuBLASLt): same file, getCUDABlasLtWorkspace;
# by default (TORCH_CUBLASLT_UNIFIED_WORKSPACE unset) cuBLASLt reuses the cuBLAS workspace of its
# handle, so it adds no allocation of its own.
CUBLASLT_WORKSPACE_BYTES_PER_HANDLE = 0
# Kept for callers that read one figure: the unknown-architecture (larger, sm_90) size.
CUBLAS_WORKSPACE_BYTES_PER_HANDLE = CUBLAS_WORKSPACE_BYTES_SM90_AND_LATER


def cublas_workspace_bytes(compute_capability: Optional[tuple[int, int]]) -> int:
    """Per-handle cuBLAS workspace PyTorch allocates on a card of this compute capability; an unknown
    card (None, e.g. `--gpu 12`) gets the larger sm_90 size so that the verdict errs safe."""
    if compute_capability is None or compute_capability[0] >= 9:
        return CUBLAS_WORKSPACE_BYTES_SM90_AND_LATER
    return CUBLAS_WORKSPACE_BYTES_DEFAULT


# Both workspaces of a training step together, unknown architecture (kept for callers that want one figure).
CUBLAS_WORKSPACE_BYTES = CUBLAS_HANDLES_PER_STEP * (
    CUBLAS_WORKSPACE_BYTES_PER_HANDLE + CUBLASLT_WORKSPACE_BYTES_PER_HANDLE)

# cuDNN and the depthwise conv (model.py: F.conv1d with groups=channels). ATen's ConvUtils
# `use_cudnn_depthwise` sends an fp16 depthwise conv with >= 32 channels to cuDNN (conv1d runs as a
# (1, k) conv2d, which its workload table admits); bf16 and fp32 take other paths. With
# cudnn.benchmark, each new shape first tries algorithms with one workspace sized from what is free
# (halved on every OOM, then freed), and the chosen algorithm allocates its own workspace on every
# call: neither is known on a CPU. Both are BOUNDED instead of modelled: the run sets PyTorch's
# documented CUDNN_CONV_WSCAP_DBG (TrainConfig.cudnn_workspace_cap_mb, train/cudnn_workspace.py), which
# drops every algorithm whose workspace exceeds the cap, so one conv call can allocate at most the cap.
# The estimate adds that bound, rounded as the allocator rounds a large block, on top of the replayed
# peak and need (one conv runs at a time; taking the peak to coincide with one errs safe).
CUDNN_DEPTHWISE_MIN_CHANNELS = 32


def cudnn_workspace_bound_bytes(precision: str, channels: int, cap_mb: int) -> int:
    """Most one cuDNN depthwise-conv call can allocate under the cap: 0 where cuDNN is not used."""
    if precision != "fp16" or channels < CUDNN_DEPTHWISE_MIN_CHANNELS or cap_mb <= 0:
        return 0
    return -(-cap_mb * MiB // (2 * MiB)) * 2 * MiB  # allocations above 10 MiB round up to 2 MiB

# torch.compile (inductor): Triton kernels loaded into the context and autotuning buffers. A guess
# (unmeasured anywhere): the estimator keeps eager activations for compiled runs, an upper bound, and
# adds this.
TORCH_COMPILE_EXTRA_BYTES = 128 * MiB

# The fit rule: a config fits when its least need under free-and-retry, plus the context, plus this
# share of that need, is within the card's usable memory. 3 % is the estimator's accuracy goal (no
# config under-predicted by more than 3 %, bench/vram_accuracy.py); unmeasured until bench/vram_accuracy.py runs on a GPU.
FIT_MARGIN_FRACTION = 0.03
