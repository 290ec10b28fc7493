"""CUDA-side costs that no CPU trace can see, with the card/source each figure comes from.

NOT YET MEASURED ON A GPU BY THIS PROJECT: every figure below is a published default or a
conservative reading of public measurements. `python bench/vram_accuracy.py` on a GPU measures the
context and the estimator's error per config; put the measured figures (card, driver, torch version,
date) here when there is one.
"""
MiB = 1024 ** 2

# CUDA context + the kernels torch loads lazily for this model (cuBLAS/cuDNN handles included),
# i.e. what nvidia-smi shows for the process beyond torch.cuda.memory_reserved(). Source: public
# reports for CUDA 12 with lazy module loading (default since CUDA 11.7) range 300-600 MiB on
# Ampere/Ada/Hopper; 500 MiB is the conservative end for consumer cards. Unmeasured here.
CUDA_CONTEXT_BYTES = 500 * MiB

# cuBLAS workspace, allocated through torch's caching allocator once per (handle, stream); a handle
# is per thread, so a training step has two: the forward's (main thread) and the backward's
# (autograd's device thread). Source: aten/src/ATen/cuda/CublasHandlePool.cpp, default
# CUBLAS_WORKSPACE_CONFIG ":4096:8" = 32 MiB on sm_90 and newer (Hopper, Blackwell incl. RTX 50);
# ":4096:2:16:8" = 8.125 MiB before (Ampere, Ada: RTX 30/40, A100, L4). The larger one is used:
# on sm_80/sm_89 this over-states the peak by about 2 x 24 MiB.
CUBLAS_WORKSPACE_BYTES_PER_HANDLE = 32 * MiB
# cuBLASLt workspace (addmm with bias runs through cuBLASLt), also per handle. Source: same file,
# CUBLASLT_WORKSPACE_SIZE default 1024 KiB.
CUBLASLT_WORKSPACE_BYTES_PER_HANDLE = 1 * MiB
CUBLAS_HANDLES_PER_STEP = 2
# Both workspaces of a training step together (kept for callers that want one figure).
CUBLAS_WORKSPACE_BYTES = CUBLAS_HANDLES_PER_STEP * (
    CUBLAS_WORKSPACE_BYTES_PER_HANDLE + CUBLASLT_WORKSPACE_BYTES_PER_HANDLE)

# torch.compile (inductor): Triton kernels loaded into the context and autotuning buffers. A guess
# (unmeasured anywhere): the estimator keeps eager activations for compiled runs, an upper bound, and
# adds this.
TORCH_COMPILE_EXTRA_BYTES = 128 * MiB
