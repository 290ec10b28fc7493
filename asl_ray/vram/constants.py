"""CUDA-side fixed costs that no CPU trace can see, measured on real GPUs (card and date noted).

Until measured on the target card these are conservative figures from published measurements of
recent drivers with CUDA lazy module loading (the default since CUDA 11.7).
"""
MiB = 1024 ** 2

# CUDA context + torch's kernels loaded lazily for this model (cuBLAS, cuDNN handles included).
CUDA_CONTEXT_BYTES = 500 * MiB
# cuBLAS workspace (torch keeps one per stream; 4 MiB x 2 on sm_80+ by default, more with cuBLASLt).
CUBLAS_WORKSPACE_BYTES = 32 * MiB
