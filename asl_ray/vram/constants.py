"""CUDA-side costs that no CPU trace can see, with the card/source each figure comes from.

NOT YET MEASURED ON A GPU BY THIS PROJECT: every figure below is a published default or a
conservative reading of public measurements. `python bench/vram_accuracy.py` on a GPU measures the
context and the estimator's error per config; put the measured figures (card, driver, torch version,
date) here when there is one.
"""
from __future__ import annotations

from typing import Optional

MiB = 1024 ** 2

# The CUDA context's size lives with the cards (asl_ray/cards.py), which emulate a card with it.
from asl_ray.cards import CUDA_CONTEXT_BYTES  # noqa: E402,F401

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
# cudnn.benchmark, each new shape first tries algorithms with one workspace sized from the largest
# free block or the device's free memory, halved on every OOM (cudnn/Conv_v8.cpp), then frees it: it
# can raise max_memory_reserved up to what is free, but never makes the step OOM, so it is not part of
# the need (the fit verdict) and the unconstrained reserved figure is given without it. The chosen
# algorithm's run-time workspace is not known on a CPU: BOUNDED here by 0 (depthwise algorithms
# usually need none) - UNMEASURED; bench/vram_accuracy.py runs benchmark on and off to measure it.
CUDNN_RUNTIME_WORKSPACE_BYTES = 0

# torch.compile (inductor): Triton kernels loaded into the context and autotuning buffers. A guess
# (unmeasured anywhere): the estimator keeps eager activations for compiled runs, an upper bound, and
# adds this.
TORCH_COMPILE_EXTRA_BYTES = 128 * MiB

# The fit rule: a config fits when its least need under free-and-retry, plus the context, plus this
# share of that need, is within the card's usable memory. 3 % is the accuracy goal of issue 13 (no
# config under-predicted by more than 3 %); unmeasured until bench/vram_accuracy.py runs on a GPU.
FIT_MARGIN_FRACTION = 0.03
