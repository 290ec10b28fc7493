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
   cached blocks, splitting and merging; under a limit, free-and-retry: every wholly free cached
   segment is released before a request fails) in the loop's order, windows of two micro-batches.
   The first micro-batch of a window is the traced one (autograd's outputs become .grad); the second
   is derived from it with the gradients already there (each incoming gradient is added in place and
   freed); then the boundary. The estimate does not depend on `gradient_accumulation_steps`.
   Two runs are replayed:
   - *fixed*: setup, three windows with every sequence at `max_len` (the worst case; the breakdown
     is taken from it at the moment of most live bytes, and its reserved peak minus those bytes is
     the allocator's rounding and slack);
   - *real sequence*: the padded lengths of the first micro-batches of an epoch in the order the
     loop's sampler draws them (`asl_ray.vram.shapes`), then a window at `max_len`, the evaluation
     pass (one batch of max(batch_size, 32) at max_len, inference), a window at `max_len`. Steps at
     other lengths come from traces at max_len and at the ladder's lowest rung, interpolated per
     tensor (computed, not traced: kernels that round the time axis to 16-64 rows are off by under
     one block). What it reserves beyond the fixed run is the "fragmentation" line.
   Two figures come out: the unconstrained reserved peak (what `max_memory_reserved` shows; with the
   context beside it, what nvidia-smi shows) = `total_bytes`, and the least allocator limit under
   which the real sequence runs with free-and-retry = `need_bytes`. "Fits" uses the second:
   `fit_bytes` = need + context + compile kernels + `constants.FIT_MARGIN_FRACTION` of the need;
   and, because whether the allocator runs is not monotone in its limit, the verdict
   (`asl_ray.vram.fit.fits_within`) also replays the sequence capped at the card's own limit.
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
- The CUDA context is a published figure (constants.py); it depends on the driver, the card and the
  kernels loaded, and dominates small configs. cuBLAS workspaces follow PyTorch's per-architecture
  default (an unknown card gets the larger, sm_90 one).
- cuDNN (fp16 depthwise conv): benchmark's trial workspaces and the chosen algorithm's workspace are
  not modelled but bounded: the run caps them at `cudnn_workspace_cap_mb` (CUDNN_CONV_WSCAP_DBG) and
  the estimate adds the cap to the peak and to the need (`constants.cudnn_workspace_bound_bytes`).
- The allocator model is a simplification: one stream, no garbage collection, no
  `expandable_segments`, addresses assumed increasing with each new segment. Its fragmentation steps
  (a segment at a time) make the estimate only nearly monotone in batch size; the least need assumes
  that a larger limit never fails where a smaller one runs.
- The memory-efficient attention scratch is a formula (block sizes 64x64 for head dims <= 64, 64x128
  above, no key splitting). Head dims not a multiple of 8 (fp16/bf16) or 4 (fp32) make CUDA fall back
  to the math path; the trace then keeps CPU's math path, close to but not exactly CUDA's.
- `compile=True`: activations are traced eagerly; inductor's partitioner usually saves fewer, so this
  is an upper bound, and the extra for Triton kernels is a guess (constants.py).
- The evaluation pass is replayed as one batch at max_len; an epoch's other lengths are sampled, not
  the data's own (asl_ray/vram/shapes.py says why).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from typing import Any, Optional

from asl_ray.config import TrainConfig
from asl_ray.vram import constants
from asl_ray.vram.allocator import (  # noqa: F401 (re-exported: importable from here as before the split)
    REPLAYED_WINDOWS, AllocatorOutOfMemory, CachingAllocatorModel, ReplayPlan, accumulation_window,
    least_need_bytes, replay, replay_through_allocator)
from asl_ray.vram.constants import MiB  # noqa: F401 (importable from here as before)
from asl_ray.vram.disk_cache import DiskCache, cache_file  # noqa: F401 (cache_file re-exported)
from asl_ray.vram.trace import (  # noqa: F401 (re-exported, as above)
    ALLOC, FREE, GRAD_READY, Trace, _BatchTemplate, trace_evaluation,
    trace_training_step)
from asl_ray.vram.result import PART_LABELS, PARTS, VramEstimate, _TRACED_PARTS  # noqa: F401 (re-exported)
from asl_ray.vram.shapes import drawn_lengths

log = logging.getLogger(__name__)

ESTIMATOR_VERSION = 5
"""Bump when the method changes: cached estimates of other versions are ignored."""

# ================================================================================================
# Public entry point and caching
# ================================================================================================

_memory_cache: dict[str, VramEstimate] = {}
_disk = DiskCache(f'"version":{ESTIMATOR_VERSION}')  # shared by the processes of a machine (disk_cache.py)
_lock = threading.RLock()  # one trace at a time; the caches are shared


def estimate_peak_vram(cfg: TrainConfig, num_classes: int = 250,
                       compute_capability: Optional[tuple[int, int]] = None) -> VramEstimate:
    """GPU memory of training `cfg` on a card of `compute_capability` (None: unknown): the
    unconstrained peak (`total_bytes`, max_memory_reserved + CUDA context) and the least need under
    free-and-retry (`need_bytes`, `fit_bytes()`, `fits()`). Cached in memory and on disk by the
    config fields that matter."""
    started = time.perf_counter()
    if cfg.compile:
        eager = estimate_peak_vram(dataclasses.replace(cfg, compile=False), num_classes, compute_capability)
        return _with_compile_kernels(eager, cfg, time.perf_counter() - started)
    key = cache_key(cfg, num_classes, compute_capability)
    with _lock:
        hit, where = _cached(key)
        if hit is None:
            hit, where = _compute(cfg, num_classes, compute_capability), ""
            _memory_cache[key] = hit
            _store_on_disk(key, hit)
    # A copy of the breakdown: the cached estimate must not change if a caller edits the dict.
    return dataclasses.replace(hit, breakdown=dict(hit.breakdown), seconds=time.perf_counter() - started,
                               cache=where)


def cache_key(cfg: TrainConfig, num_classes: int, compute_capability: Optional[tuple[int, int]] = None) -> str:
    return json.dumps(_key_fields(cfg, num_classes, compute_capability), sort_keys=True, separators=(",", ":"))


def _key_fields(cfg: TrainConfig, num_classes: int,
                compute_capability: Optional[tuple[int, int]] = None) -> dict[str, Any]:
    """The fields the estimate depends on. Dropouts, clipping and smoothing matter only as on/off
    (they add or remove a saved tensor, never change its size)."""
    return {
        "batch_size": cfg.batch_size, "dim": cfg.dim, "depth": cfg.depth, "num_heads": cfg.num_heads,
        "kernel_size": cfg.kernel_size, "max_len": cfg.max_len, "precision": cfg.precision,
        "optimizer": cfg.optimizer, "lookahead": cfg.lookahead, "compile": cfg.compile,
        "drop_path": cfg.drop_path > 0, "attn_dropout": cfg.attn_dropout > 0,
        "late_dropout": cfg.late_dropout > 0, "label_smoothing": cfg.label_smoothing > 0,
        "clip": cfg.gradient_clip_val > 0, "num_classes": int(num_classes), "version": ESTIMATOR_VERSION,
        # The real shape sequence depends on these (shapes.py).
        "pad_to": cfg.pad_to, "length_bucketing": cfg.length_bucketing,
        "foreach_optimizer": cfg.foreach_optimizer, "compile_mode": cfg.compile_mode if cfg.compile else "",
        "host_step_counts": cfg.host_step_counts, "foreach_grad_accumulation": cfg.foreach_grad_accumulation,
        # A change to a constant (once measured on a GPU) must not be answered from the cache.
        "cuda": [constants.CUDA_CONTEXT_BYTES, constants.cublas_workspace_bytes(compute_capability),
                 constants.CUBLASLT_WORKSPACE_BYTES_PER_HANDLE],
        "cudnn_workspace": cudnn_bound(cfg),
        "cc": list(compute_capability) if compute_capability else None,
    }


def clear_memory_cache() -> None:
    """Forget in-process results and traces (the disk file is re-read on the next call)."""
    with _lock:
        _memory_cache.clear()
        _runs_within.clear()
        _traces_by_shape.clear()
        _templates_by_shape.clear()
        _disk.forget()


def _cached(key: str) -> tuple[Optional[VramEstimate], str]:
    if key in _memory_cache:
        return _memory_cache[key], "memory"
    entry = _disk.get(key)
    if entry is None:
        return None, ""
    try:
        cc = entry.get("compute_capability")
        hit = VramEstimate(int(entry["total_bytes"]), {k: int(v) for k, v in entry["breakdown"].items()},
                           float(entry["seconds"]), str(entry["method"]), need_bytes=int(entry["need_bytes"]),
                           compute_capability=tuple(int(c) for c in cc) if cc else None)
    except (KeyError, TypeError, ValueError):
        return None, ""  # a damaged entry is recomputed
    _memory_cache[key] = hit
    return hit, "disk"


def _store_on_disk(key: str, estimate: VramEstimate) -> None:
    _disk.put(key, estimate.to_dict())


def _with_compile_kernels(eager: VramEstimate, cfg: TrainConfig, seconds: float) -> VramEstimate:
    """torch.compile: eager activations (an upper bound) + Triton kernels (a constant). For
    compile_mode 'reduce-overhead' (CUDA graphs, one per captured shape) a BOUND, not traced: each
    shape the run can see (the ladder's rungs, or max_len) keeps static input buffers, at most the
    max_len batch each; the graphs' private pool is taken as one step's non-persistent memory,
    which the eager figure already counts (cudagraph trees share one pool across the graphs of a
    tree), plus the zeroed .grad buffers the loop keeps for the whole run under CUDA graphs (one fp32 copy of the
    parameters, alive in the forward too: `needs_stable_grads`). Counted in the need too: graph memory is not
    released by free-and-retry."""
    breakdown = dict(eager.breakdown)
    extra = constants.TORCH_COMPILE_EXTRA_BYTES
    how = "compile: eager activations (upper bound) + Triton kernels constant"
    if cfg.compile_mode == "reduce-overhead":
        from asl_ray.ladder import length_ladder
        shapes = 1 if cfg.pad_to == "max_len" else len(length_ladder(cfg.max_len))
        extra += shapes * breakdown.get("batch", 0) + breakdown.get("parameters", 0)
        how += f" + CUDA graphs' static inputs for {shapes} shapes (bound) + stable .grad buffers"
    breakdown["torch_compile"] = extra
    return VramEstimate(sum(breakdown.values()), breakdown, seconds, f"{eager.method}; {how}",
                        eager.cache, eager.need_bytes, eager.compute_capability)


# ================================================================================================
# Estimation: trace, replay, breakdown
# ================================================================================================

METHOD = ("FakeTensorMode trace (cpu) of the real model, optimizer and TrainStep with CUDA's "
          "mem-efficient SDPA, replayed through a CUDA caching-allocator model: 3 max_len windows of 2 "
          "micro-batches (breakdown), and the real shape sequence + evaluation pass (fragmentation, "
          "least need under free-and-retry)")


def _compute(cfg: TrainConfig, num_classes: int,
             compute_capability: Optional[tuple[int, int]] = None) -> VramEstimate:
    started = time.perf_counter()
    workspace = constants.cublas_workspace_bytes(compute_capability)
    top, how = _trace_for(cfg, num_classes, workspace)
    compiled: dict = {}  # traces compiled once for all three replays
    fixed = replay(ReplayPlan((top,) * (2 * REPLAYED_WINDOWS)), compiled=compiled)
    plan, shapes = _real_sequence(cfg, num_classes, workspace, top)
    sequence = replay(plan, compiled=compiled)
    need = least_need_bytes(plan, sequence, compiled=compiled)
    breakdown = {part: fixed.live_at_peak.get(part, 0) for part in _TRACED_PARTS}
    breakdown["allocator_overhead"] = fixed.peak_reserved - sum(breakdown.values())
    # The real sequence can reserve less than max_len throughout (never more live bytes): no negative line.
    breakdown["fragmentation"] = max(0, sequence.peak_reserved - fixed.peak_reserved)
    if cfg.foreach_grad_accumulation:
        # A BOUND, not traced (the replay adds each incoming gradient as it arrives): an accumulating
        # micro-batch's gradients all stay alive until its backward's one foreach add, at most one more copy
        # of the fp32 parameters (this line includes the BN buffers).
        breakdown["attention_and_temporaries"] += breakdown["parameters"]
        need += breakdown["parameters"]
    breakdown["cudnn_workspace"] = cudnn_bound(cfg)
    need += breakdown["cudnn_workspace"]
    breakdown["cuda_context"] = constants.CUDA_CONTEXT_BYTES
    breakdown["torch_compile"] = 0
    return VramEstimate(sum(breakdown.values()), breakdown, time.perf_counter() - started,
                        f"{METHOD} ({how}; lengths {shapes})", need_bytes=need,
                        compute_capability=tuple(compute_capability) if compute_capability else None)


_runs_within: dict[tuple[str, int], bool] = {}


def runs_within(cfg: TrainConfig, num_classes: int, compute_capability: Optional[tuple[int, int]],
                limit_bytes: int) -> bool:
    """Does the real shape sequence run with the caching allocator capped at `limit_bytes`
    (free-and-retry included)? Asked at a card's own limit because the answer is NOT monotone in the
    limit: a later first release can leave more segments split (measured on this model: dim 384,
    depth 4, batch 163 runs at 9.8-10.2 GB, fails at 10.4-11.2 GB, runs from 11.4 GB), so a
    bisected least need alone can name a limit that happens to run. Cached in memory."""
    key = (cache_key(cfg, num_classes, compute_capability), int(limit_bytes))
    disk_key = f"{key[0]}|runs_within={key[1]}"  # beside the estimates: a Train worker asks what the driver did
    with _lock:
        if key not in _runs_within:
            entry = _disk.get(disk_key)
            if isinstance(entry, dict) and isinstance(entry.get("runs_within"), bool):
                _runs_within[key] = entry["runs_within"]
                return _runs_within[key]
            workspace = constants.cublas_workspace_bytes(compute_capability)
            top, _ = _trace_for(dataclasses.replace(cfg, compile=False), num_classes, workspace)
            plan, _ = _real_sequence(dataclasses.replace(cfg, compile=False), num_classes, workspace, top)
            try:
                replay(plan, limit_bytes - cudnn_bound(cfg))  # the conv workspace needs its bound on top
                _runs_within[key] = True
            except AllocatorOutOfMemory:
                _runs_within[key] = False
            _disk.put(disk_key, {"runs_within": _runs_within[key]})
        return _runs_within[key]


def cudnn_bound(cfg: TrainConfig) -> int:
    """The bound on one cuDNN conv call's workspace this config's run allows (constants.py)."""
    channels = 2 * cfg.dim  # Conv1DBlock's expanded width (model.py)
    return constants.cudnn_workspace_bound_bytes(cfg.precision, channels, cfg.cudnn_workspace_cap_mb)


def eval_batch_size(cfg: TrainConfig) -> int:
    """The evaluation loader's batch size (train/loop.py `setup`)."""
    return max(cfg.batch_size, 32)


def _real_sequence(cfg: TrainConfig, num_classes: int, workspace: int, top: Trace) -> tuple[ReplayPlan, str]:
    """The drawn micro-batches, a max_len window, the evaluation pass, a max_len window."""
    lengths = drawn_lengths(cfg)
    steps: dict[int, Trace] = {cfg.max_len: top}
    if any(length != cfg.max_len for length in lengths):
        from asl_ray.ladder import length_ladder
        low_length = length_ladder(cfg.max_len)[0]  # fixed per shape: its batch-size template is reused
        low, _ = _trace_for(cfg, num_classes, workspace, length=low_length)
        template = _BatchTemplate.fit((cfg.max_len, top), (low_length, low), exact=False)
        if template is None:  # the structure changed with the length: the worst case stands in
            lengths = (cfg.max_len,) * len(lengths)
        else:
            steps[low_length] = low
            for length in set(lengths) - set(steps):
                steps[length] = template.at(length)
    evaluation, _ = _trace_for(cfg, num_classes, workspace, kind="eval")
    micro = tuple(steps[length] for length in lengths) + (top,) * 4
    plan = ReplayPlan(micro, evaluation, eval_after_window=len(lengths) // 2 + 1)
    return plan, "+".join(map(str, lengths)) + f", then {cfg.max_len} x2, eval, {cfg.max_len} x2"

# ---- traces by shape ---------------------------------------------------------------------------
# After two batch sizes of one shape, further ones come from a `_BatchTemplate` (trace.py) fitted to them.

_MAX_SHAPES = 24  # three traces (max_len, lowest rung, evaluation) per config shape
_traces_by_shape: dict[str, tuple[int, "Trace"]] = {}  # shape -> (batch size, its trace)
_templates_by_shape: dict[str, "_BatchTemplate"] = {}


def _shape_key(cfg: TrainConfig, num_classes: int, workspace: int, kind: str, length: int) -> str:
    fields = _key_fields(cfg, num_classes)
    del fields["batch_size"], fields["compile"], fields["pad_to"], fields["length_bucketing"], fields["compile_mode"]
    fields.update(workspace=workspace, kind=kind, length=length)
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def _trace_for(cfg: TrainConfig, num_classes: int, workspace: int = constants.CUBLAS_WORKSPACE_BYTES_PER_HANDLE,
               kind: str = "step", length: Optional[int] = None) -> tuple["Trace", str]:
    """A training step (kind 'step', its batch padded to `length`) or an evaluation batch ('eval',
    max_len) of `cfg`: traced, or from a template fitted to two traced batch sizes."""
    length = length or cfg.max_len
    batch = cfg.batch_size if kind == "step" else eval_batch_size(cfg)
    shape = _shape_key(cfg, num_classes, workspace, kind, length)
    template = _templates_by_shape.get(shape)
    if template is not None:
        return template.at(batch), "from 2 traced batch sizes"
    earlier = _traces_by_shape.get(shape)
    if earlier is not None and earlier[0] == batch:
        return earlier[1], "traced"
    if kind == "step":
        trace = trace_training_step(cfg, num_classes, length, workspace)
    else:
        trace = trace_evaluation(cfg, num_classes, batch, length)
    if earlier is not None:
        template = _BatchTemplate.fit(earlier, (batch, trace))
        if template is not None:
            _remember(_templates_by_shape, shape, template)
    _remember(_traces_by_shape, shape, (batch, trace))
    return trace, "traced"


def _remember(store: dict, key: str, value: Any) -> None:
    store.pop(key, None)
    store[key] = value
    while len(store) > _MAX_SHAPES:
        store.pop(next(iter(store)))
