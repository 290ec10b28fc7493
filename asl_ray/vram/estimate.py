"""Peak GPU memory of one training step, estimated on a CPU-only machine.

Method: trace the real pieces once, then replay them through a model of CUDA's caching allocator.

1. **Trace** (`asl_ray.vram.trace`). The real `GISLRModel`, `make_optimizer` (RAdam/AdamW,
   Lookahead) and `TrainStep` run one micro-batch that ends its accumulation window (forward,
   backward, unscale, clip, optimizer step, zero_grad) under `FakeTensorMode` on `cpu`: every tensor
   has its true shape and dtype, nothing is allocated or computed. A `TorchDispatchMode` on top
   records every new storage (bytes, and what it is: parameter, activation, gradient, ...) and,
   through weak references, when it dies. Fake `cuda` tensors do not work on a CPU build, so what
   CUDA does differently is made to match:
   - **Attention.** CPU SDPA takes the math path and keeps the (B, H, T, T) weights and dropout mask
     (a CPU trace over-estimated 1.4-2.2x). On CUDA a boolean key mask selects the memory-efficient
     kernel, so `F.scaled_dot_product_attention` is routed to
     `aten._scaled_dot_product_efficient_attention` (its meta kernel gives CUDA's outputs: out, an fp32
     (B, H, ceil(T/32)*32) logsumexp, a philox seed/offset for dropout - never a T x T matrix) with
     CUDA's mask handling (bool -> additive bias padded to 16 keys). Its backward adds the kernel's
     fp32 scratch (grad-Q accumulator, grad-K/V staging for head dims over 64, delta), sized as in
     `mem_eff_attention/kernel_backward.h`.
   - **Autocast.** CPU autocast puts the ops that hold memory (linear, conv1d, matmul, SDPA) in
     fp16/bf16 as CUDA's list does, and caches the weight casts the same way; softmax/loss run on the
     fp32 logits either way. The lists differ for reductions such as `sum` (fp32 on CUDA), whose
     (B, C) outputs here are negligible.
   - **Defaults.** The optimizer runs `foreach`, its default for CUDA tensors (its per-group
     temporaries are part of the step's peak); RAdam/AdamW keep `step` on the host on CUDA, so it is
     not counted. `GradScaler.step` would call `.item()` on a fake tensor: the trace's scaler always
     takes the step (the memory of a taken step) and `update` only resets its bookkeeping.
   - **cuBLAS** allocates a workspace (and a cuBLASLt one) through the caching allocator per handle,
     i.e. per thread: the trace adds them at the first matmul of the forward (main thread) and of the
     backward (autograd's device thread).
2. **Replay** (`asl_ray.vram.allocator`). The events are replayed through a model of the CUDA
   caching allocator (sizes rounded to 512 B; requests <= 1 MiB served from 2 MiB segments, larger
   ones from 20 MiB segments below 10 MiB, else from their size rounded to 2 MiB; best-fit reuse of
   cached blocks, splitting and merging; nothing given back to the driver) in the loop's order:
   setup, then three windows of two micro-batches. The first micro-batch is the traced one
   (autograd's outputs become .grad); the second is derived from it with the gradients already there
   (each incoming gradient is added in place and freed); then the boundary. So the worst case -
   every sequence at `max_len`, gradients and optimizer state resident while a micro-batch's
   activations are - is always covered, and the estimate does not depend on
   `gradient_accumulation_steps`. The breakdown is taken at the moment of most live bytes; the
   allocator overhead is the modelled `max_memory_reserved` minus those bytes.
3. **Fixed CUDA terms** (context, cuBLAS workspace sizes, torch.compile's kernels) are in
   `asl_ray.vram.constants`.

Why a trace rather than formulas: it follows the model, the loop and the optimizer as they are and
as they change, and gets every saved tensor's size and dtype exactly (parameters, gradients and
optimizer state to the byte); hand-written formulas for this network would drift from model.py.
Cost, measured on a loaded 2-core box: one trace 1-2.5 s for dim 384/depth 4 (about 1 s for the
default config), plus 2-3.5 s once per process for FakeTensorMode's import (torch._dynamo); the
replay takes ~0.1 s. Every tensor is (batch x ...) or batch-independent, so after two batch sizes of
one shape further batch sizes come from those two traces without tracing (a bisection over
batch_size costs two traces). Results are cached in memory and on disk: a repeat takes well under
a millisecond.

Known error sources (none measured: there was no GPU when this was written):
- The CUDA context and cuBLAS workspace sizes are published/default figures (constants.py). The
  context depends on the driver, the card and the kernels loaded; it dominates small configs.
- cuDNN and other kernels' internal workspaces are not seen (cudnn.benchmark may briefly try
  algorithms with large workspaces, which then stay in the allocator's cache).
- The allocator model is a simplification: one stream, no garbage collection, no
  `expandable_segments`, addresses assumed increasing with each new segment. Its fragmentation steps
  (a segment at a time) make the estimate only nearly monotone in batch size. A run close to the
  card's limit frees cached blocks and retries instead of failing, so there the real need is lower
  than the unconstrained `max_memory_reserved` this models (the estimate errs high).
- The memory-efficient attention scratch is a formula (block sizes 64x64 for head dims <= 64, 64x128
  above, no key splitting). Head dims not a multiple of 8 (fp16/bf16) or 4 (fp32) make CUDA fall back
  to the math path; the trace then keeps CPU's math path, close to but not exactly CUDA's.
- `compile=True`: activations are traced eagerly; inductor's partitioner usually saves fewer, so this
  is an upper bound, and the extra for Triton kernels is a guess (constants.py).
- Evaluation (inference at batch max(batch_size, 32)) is not estimated: the training step dominates.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from asl_ray.config import TrainConfig
from asl_ray.vram import constants
from asl_ray.vram.allocator import (  # noqa: F401 (re-exported: importable from here as before the split)
    REPLAYED_WINDOWS, CachingAllocatorModel, accumulation_window, replay_through_allocator)
from asl_ray.vram.constants import MiB
from asl_ray.vram.trace import (  # noqa: F401 (re-exported, as above)
    ALLOC, FREE, GRAD_READY, Trace, _BatchTemplate, mem_efficient_backward_scratch_bytes,
    trace_training_step)

log = logging.getLogger(__name__)

ESTIMATOR_VERSION = 1
"""Bump when the method changes: cached estimates of other versions are ignored."""

PART_LABELS = {
    "parameters": "parameters + BN buffers (fp32)",
    "gradients": "gradients (fp32)",
    "optimizer_state": "optimizer state (+ Lookahead slow weights)",
    "autocast_weight_copies": "mixed-precision weight copies",
    "activations": "activations saved for backward",
    "attention_and_temporaries": "attention scratch + temporaries",
    "batch": "batch (features, mask, labels)",
    "cublas_workspace": "cuBLAS/cuBLASLt workspaces",
    "allocator_overhead": "caching allocator rounding/fragmentation",
    "cuda_context": "CUDA context",
    "torch_compile": "torch.compile kernels",
}
PARTS = tuple(PART_LABELS)
_TRACED_PARTS = PARTS[:8]  # the parts the allocator replay sees; the rest are fixed terms


@dataclass(frozen=True)
class VramEstimate:
    total_bytes: int
    breakdown: dict[str, int]
    """Bytes per part (keys in PARTS order); the parts sum to total_bytes."""
    seconds: float
    """Wall time this call took (a cached answer takes milliseconds)."""
    method: str
    cache: str = ""
    """Where the answer came from: '' (computed by this call), 'memory' or 'disk'."""

    @property
    def total_mib(self) -> float:
        return self.total_bytes / MiB

    def table(self) -> str:
        width = max(len(label) for label in PART_LABELS.values())
        lines = []
        for key, nbytes in self.breakdown.items():
            share = 100.0 * nbytes / self.total_bytes if self.total_bytes else 0.0
            lines.append(f"{PART_LABELS.get(key, key):<{width}}  {nbytes / MiB:>10.1f} MiB  {share:5.1f}%")
        lines.append(f"{'total (peak, incl. context)':<{width}}  {self.total_mib:>10.1f} MiB")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"total_bytes": self.total_bytes, "breakdown": dict(self.breakdown), "seconds": self.seconds,
                "method": self.method}


# ================================================================================================
# Public entry point and caching
# ================================================================================================

_memory_cache: dict[str, VramEstimate] = {}
_disk_entries: Optional[dict[str, dict]] = None  # the disk file's entries, read once per process
_lock = threading.RLock()  # one trace at a time; the caches are shared
_MAX_DISK_ENTRIES = 4096


def estimate_peak_vram(cfg: TrainConfig, num_classes: int = 250) -> VramEstimate:
    """Peak GPU memory (bytes, as max_memory_reserved + CUDA context) of a training step of `cfg`,
    every sequence at max_len. Cached in memory and on disk by the config fields that matter."""
    started = time.perf_counter()
    if cfg.compile:
        eager = estimate_peak_vram(dataclasses.replace(cfg, compile=False), num_classes)
        return _with_compile_kernels(eager, time.perf_counter() - started)
    key = cache_key(cfg, num_classes)
    with _lock:
        hit, where = _cached(key)
        if hit is None:
            hit, where = _compute(cfg, num_classes), ""
            _memory_cache[key] = hit
            _store_on_disk(key, hit)
    # A copy of the breakdown: the cached estimate must not change if a caller edits the dict.
    return dataclasses.replace(hit, breakdown=dict(hit.breakdown), seconds=time.perf_counter() - started,
                               cache=where)


def cache_key(cfg: TrainConfig, num_classes: int) -> str:
    return json.dumps(_key_fields(cfg, num_classes), sort_keys=True, separators=(",", ":"))


def _key_fields(cfg: TrainConfig, num_classes: int) -> dict[str, Any]:
    """The fields the estimate depends on. Dropouts, clipping and smoothing matter only as on/off
    (they add or remove a saved tensor, never change its size)."""
    return {
        "batch_size": cfg.batch_size, "dim": cfg.dim, "depth": cfg.depth, "num_heads": cfg.num_heads,
        "kernel_size": cfg.kernel_size, "max_len": cfg.max_len, "precision": cfg.precision,
        "optimizer": cfg.optimizer, "lookahead": cfg.lookahead, "compile": cfg.compile,
        "drop_path": cfg.drop_path > 0, "attn_dropout": cfg.attn_dropout > 0,
        "late_dropout": cfg.late_dropout > 0, "label_smoothing": cfg.label_smoothing > 0,
        "clip": cfg.gradient_clip_val > 0, "num_classes": int(num_classes), "version": ESTIMATOR_VERSION,
        # A change to a constant (once measured on a GPU) must not be answered from the cache.
        "cuda": [constants.CUDA_CONTEXT_BYTES, constants.CUBLAS_WORKSPACE_BYTES_PER_HANDLE,
                 constants.CUBLASLT_WORKSPACE_BYTES_PER_HANDLE],
    }


def clear_memory_cache() -> None:
    """Forget in-process results and traces (the disk file is re-read on the next call)."""
    global _disk_entries
    with _lock:
        _memory_cache.clear()
        _traces_by_shape.clear()
        _templates_by_shape.clear()
        _disk_entries = None


def cache_file() -> Path:
    """$ASL_RAY_CACHE_DIR, else $XDG_CACHE_HOME/asl_ray, else ~/.cache/asl_ray; file vram-estimates.json."""
    override = os.environ.get("ASL_RAY_CACHE_DIR")
    if override:
        root = Path(override)
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "asl_ray"
    return root / "vram-estimates.json"


def _cached(key: str) -> tuple[Optional[VramEstimate], str]:
    if key in _memory_cache:
        return _memory_cache[key], "memory"
    entry = _load_disk_entries().get(key)
    if entry is None:
        return None, ""
    try:
        hit = VramEstimate(int(entry["total_bytes"]), {k: int(v) for k, v in entry["breakdown"].items()},
                           float(entry["seconds"]), str(entry["method"]))
    except (KeyError, TypeError, ValueError):
        return None, ""  # a damaged entry is recomputed
    _memory_cache[key] = hit
    return hit, "disk"


def _read_disk_file(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text())
        entries = data.get("entries", {}) if isinstance(data, dict) else {}
        return entries if isinstance(entries, dict) else {}
    except (OSError, ValueError):
        return {}  # missing or damaged: the cache only saves time


def _load_disk_entries() -> dict[str, dict]:
    global _disk_entries
    if _disk_entries is None:
        _disk_entries = _read_disk_file(cache_file())
    return _disk_entries


def _store_on_disk(key: str, estimate: VramEstimate) -> None:
    """Merge with what other processes wrote meanwhile, then replace the file atomically."""
    path = cache_file()
    version = f'"version":{ESTIMATOR_VERSION}'
    entries = {k: v for k, v in _read_disk_file(path).items() if version in k}
    entries[key] = estimate.to_dict()
    while len(entries) > _MAX_DISK_ENTRIES:
        entries.pop(next(iter(entries)))
    _load_disk_entries()[key] = entries[key]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".vram-estimates.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"format": 1, "entries": entries}, f, separators=(",", ":"))
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as e:
        # A read-only home must not break estimation: the in-memory cache still answers.
        log.debug("VRAM estimate cache not written to %s: %s", path, e)


def _with_compile_kernels(eager: VramEstimate, seconds: float) -> VramEstimate:
    breakdown = dict(eager.breakdown)
    breakdown["torch_compile"] = constants.TORCH_COMPILE_EXTRA_BYTES
    return VramEstimate(sum(breakdown.values()), breakdown, seconds,
                        eager.method + "; compile: eager activations (upper bound) + Triton kernels constant",
                        eager.cache)


# ================================================================================================
# Estimation: trace, replay, breakdown
# ================================================================================================

METHOD = ("FakeTensorMode trace (cpu) of the real model, optimizer and TrainStep with CUDA's "
          "mem-efficient SDPA, one micro-batch + step, replayed as 3 windows of 2 micro-batches "
          "through a CUDA caching-allocator model")


def _compute(cfg: TrainConfig, num_classes: int) -> VramEstimate:
    started = time.perf_counter()
    trace, how = _trace_for(cfg, num_classes)
    reserved, at_peak = replay_through_allocator(trace)
    breakdown = {part: at_peak.get(part, 0) for part in _TRACED_PARTS}
    breakdown["allocator_overhead"] = reserved - sum(breakdown.values())
    breakdown["cuda_context"] = constants.CUDA_CONTEXT_BYTES
    breakdown["torch_compile"] = 0
    return VramEstimate(sum(breakdown.values()), breakdown, time.perf_counter() - started, f"{METHOD} ({how})")

# ---- traces by shape ---------------------------------------------------------------------------
# After two batch sizes of one shape, further ones come from a `_BatchTemplate` (trace.py) fitted to them.

_MAX_SHAPES = 8
_traces_by_shape: dict[str, tuple[int, "Trace"]] = {}  # shape -> (batch size, its trace)
_templates_by_shape: dict[str, "_BatchTemplate"] = {}


def _shape_key(cfg: TrainConfig, num_classes: int) -> str:
    fields = _key_fields(cfg, num_classes)
    del fields["batch_size"], fields["compile"]
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def _trace_for(cfg: TrainConfig, num_classes: int) -> tuple["Trace", str]:
    shape = _shape_key(cfg, num_classes)
    template = _templates_by_shape.get(shape)
    if template is not None:
        return template.at(cfg.batch_size), "from 2 traced batch sizes"
    trace = trace_training_step(cfg, num_classes)
    earlier = _traces_by_shape.get(shape)
    if earlier is not None and earlier[0] != cfg.batch_size:
        template = _BatchTemplate.fit(earlier, (cfg.batch_size, trace))
        if template is not None:
            _remember(_templates_by_shape, shape, template)
    _remember(_traces_by_shape, shape, (cfg.batch_size, trace))
    return trace, "traced"


def _remember(store: dict, key: str, value: Any) -> None:
    store.pop(key, None)
    store[key] = value
    while len(store) > _MAX_SHAPES:
        store.pop(next(iter(store)))
