"""Peak GPU memory of one training step, estimated on a CPU-only machine.

Method: trace the real pieces once, then replay them through a model of CUDA's caching allocator.

1. **Trace.** The real `GISLRModel`, `make_optimizer` (RAdam/AdamW, Lookahead) and `TrainStep` run
   one micro-batch that ends its accumulation window (forward, backward, unscale, clip, optimizer
   step, zero_grad) under `FakeTensorMode` on `cpu`: every tensor has its true shape and dtype,
   nothing is allocated or computed. A `TorchDispatchMode` on top records every new storage (bytes,
   and what it is: parameter, activation, gradient, ...) and, through weak references, when it dies.
   Fake `cuda` tensors do not work on a CPU build, so what CUDA does differently is made to match:
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
2. **Replay.** The events are replayed through a model of the CUDA caching allocator (sizes rounded
   to 512 B; requests <= 1 MiB served from 2 MiB segments, larger ones from 20 MiB segments below
   10 MiB, else from their size rounded to 2 MiB; best-fit reuse of cached blocks, splitting and
   merging; nothing given back to the driver) in the loop's order: setup, then three windows of two
   micro-batches. The first micro-batch is the traced one (autograd's outputs become .grad); the
   second is derived from it with the gradients already there (each incoming gradient is added in
   place and freed); then the boundary. So the worst case - every sequence at `max_len`, gradients
   and optimizer state resident while a micro-batch's activations are - is always covered, and the
   estimate does not depend on `gradient_accumulation_steps`. The breakdown is taken at the moment of
   most live bytes; the allocator overhead is the modelled `max_memory_reserved` minus those bytes.
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

import bisect
import contextlib
import dataclasses
import json
import os
import tempfile
import threading
import time
import weakref
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._mode_utils import no_dispatch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from asl_ray.config import NUM_FEATURE_CHANNELS, TrainConfig
from asl_ray.vram import constants

ESTIMATOR_VERSION = 1
"""Bump when the method changes: cached estimates of other versions are ignored."""

MiB = 1024 ** 2

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
_HOST = "host"  # tensors that live on the host on CUDA (the optimizers' `step` counters)


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
    except OSError:
        pass  # a read-only home must not break estimation


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


# ---- batch-size templates ----------------------------------------------------------------------
# Every tensor of a step is (batch x something) or batch-independent, so the trace at any batch size
# follows from traces at two: after a second batch size of the same shape (a binary search over
# batch_size, say) further batch sizes are a replay away (milliseconds) instead of a trace (seconds).

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


class _BatchTemplate:
    """A trace whose allocation sizes are `intercept + slope * batch_size`, fitted from two traces
    that are identical but for those sizes."""

    def __init__(self, trace: "Trace", intercept: dict[int, int], slope: dict[int, int]):
        self.trace, self.intercept, self.slope = trace, intercept, slope

    @classmethod
    def fit(cls, a: tuple[int, "Trace"], b: tuple[int, "Trace"]) -> Optional["_BatchTemplate"]:
        (batch_a, trace_a), (batch_b, trace_b) = a, b
        if (len(trace_a.events), trace_a.window_start, trace_a.boundary_start) != \
                (len(trace_b.events), trace_b.window_start, trace_b.boundary_start):
            return None
        position_a, position_b = _alloc_positions(trace_a), _alloc_positions(trace_b)
        intercept, slope = {}, {}
        for (kind_a, item_a), (kind_b, item_b) in zip(trace_a.events, trace_b.events):
            if kind_a != kind_b:
                return None
            if kind_a == GRAD_READY:
                item_a, item_b = item_a.grad, item_b.grad
                if (item_a is None) != (item_b is None):
                    return None
                if item_a is None:
                    continue
            if position_a[id(item_a)] != position_b[id(item_b)] or item_a.part != item_b.part or \
                    item_a.by_accumulate_grad != item_b.by_accumulate_grad:
                return None
            if kind_a != ALLOC:
                continue
            per_sample, rest = divmod(item_b.nbytes - item_a.nbytes, batch_b - batch_a)
            if rest or per_sample < 0 or item_a.nbytes - per_sample * batch_a < 0:
                return None
            intercept[id(item_a)] = item_a.nbytes - per_sample * batch_a
            slope[id(item_a)] = per_sample
        return cls(trace_a, intercept, slope)

    def at(self, batch_size: int) -> "Trace":
        renewed: dict[int, _Alloc] = {}
        events: list[tuple[int, Any]] = []
        for kind, item in self.trace.events:
            if kind == ALLOC:
                new = _Alloc(self.intercept[id(item)] + self.slope[id(item)] * batch_size, item.part,
                             item.by_accumulate_grad)
                renewed[id(item)] = new
                events.append((ALLOC, new))
            elif kind == FREE:
                events.append((FREE, renewed[id(item)]))
            else:
                events.append((GRAD_READY, _GradReady(None if item.grad is None else renewed[id(item.grad)])))
        return Trace(events, self.trace.window_start, self.trace.boundary_start)


def _alloc_positions(trace: "Trace") -> dict[int, int]:
    return {id(item): i for i, (kind, item) in enumerate(trace.events) if kind == ALLOC}


# ---- the trace ---------------------------------------------------------------------------------

class _Alloc:
    """One storage: its size, what it is (a part name, or _HOST), and whether autograd's
    AccumulateGrad made it (a copy made only when a parameter had no gradient yet)."""
    __slots__ = ("nbytes", "part", "freed", "by_accumulate_grad", "__weakref__")

    def __init__(self, nbytes: int, part: str, by_accumulate_grad: bool = False):
        self.nbytes, self.part, self.freed = nbytes, part, False
        self.by_accumulate_grad = by_accumulate_grad


class _GradReady:
    """Marker: AccumulateGrad has just stored this parameter's gradient (`grad`)."""
    __slots__ = ("grad",)

    def __init__(self, grad: Optional[_Alloc]):
        self.grad = grad


ALLOC, FREE, GRAD_READY = 1, -1, 0


@dataclass
class Trace:
    """One micro-batch that ends an accumulation window, as allocation events in program order."""
    events: list[tuple[int, Any]]
    """(ALLOC | FREE, _Alloc) or (GRAD_READY, _GradReady)."""
    window_start: int
    """First event of the micro-batch (everything before is setup: parameters, slow weights)."""
    boundary_start: int
    """First event after the backward: unscale, clip, optimizer step, zero_grad."""


_CUBLAS_OPS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
               torch.ops.aten.baddbmm.default, torch.ops.aten._addmm_activation.default}
_DEVICE_QUERY = torch.ops.prim.device.default
_ITEM = torch.ops.aten._local_scalar_dense.default


class _AllocationTracker(TorchDispatchMode):
    """Records each new storage an op returns and, by weak reference, when it is freed."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[int, Any]] = []
        self.live: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._refs: list[weakref.ref] = []
        self.phase = "setup"  # setup | batch | forward | optimizer
        self.backward_seen = False
        self.recording = True
        self.boundary_start: Optional[int] = None
        self._cublas_handles: set[str] = set()

    # -- bookkeeping -----------------------------------------------------------------------------
    def start(self, phase: str) -> None:
        self.phase, self.backward_seen = phase, False

    def mark_boundary(self) -> None:
        if self.boundary_start is None:
            self.boundary_start = len(self.events)

    def grad_ready(self, param: torch.Tensor) -> None:
        alloc = self.allocation_of(param.grad)
        if alloc is not None:
            alloc.part = "gradients"
        self.events.append((GRAD_READY, _GradReady(alloc)))

    def record(self, t: torch.Tensor, part: str, by_accumulate_grad: bool = False) -> None:
        storage = t.untyped_storage()
        if storage in self.live or storage.nbytes() == 0:
            return  # a view or in-place result of a known storage
        alloc = _Alloc(storage.nbytes(), part, by_accumulate_grad)
        self.live[storage] = alloc
        self._refs.append(weakref.ref(storage, lambda _ref, a=alloc: self._freed(a)))
        if self.recording:
            self.events.append((ALLOC, alloc))

    def _freed(self, alloc: _Alloc) -> None:
        if self.recording and not alloc.freed:
            alloc.freed = True
            self.events.append((FREE, alloc))

    def release(self) -> None:
        self.events, self._refs, self.live = [], [], WeakIdKeyDictionary()

    def allocation_of(self, t: Optional[torch.Tensor]) -> Optional[_Alloc]:
        return self.live.get(t.untyped_storage()) if isinstance(t, torch.Tensor) else None

    def relabel(self, t: Optional[torch.Tensor], part: str) -> None:
        alloc = self.allocation_of(t)
        if alloc is not None:
            alloc.part = part

    def add_cublas_workspace(self, thread: str) -> None:
        """cuBLAS (and cuBLASLt) keep one workspace per handle, i.e. per thread, for the whole run."""
        if thread in self._cublas_handles:
            return
        self._cublas_handles.add(thread)
        for nbytes in (constants.CUBLAS_WORKSPACE_BYTES_PER_HANDLE, constants.CUBLASLT_WORKSPACE_BYTES_PER_HANDLE):
            if nbytes:
                self.events.append((ALLOC, _Alloc(nbytes, "cublas_workspace")))

    # -- the mode --------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is _DEVICE_QUERY and hasattr(args[0], "fake_device"):
            return args[0].fake_device  # over half of all calls: answered as FakeTensorMode would, faster
        if func is _ITEM and getattr(args[0], "constant", None) is not None:
            with no_dispatch():  # the optimizers' step counters: FakeTensorMode reads the same constant
                return args[0].constant.item()
        kwargs = kwargs or {}
        node = torch._C._current_autograd_node()
        if func in _CUBLAS_OPS:
            self.add_cublas_workspace("main" if node is None else "autograd")
        out = func(*args, **kwargs)
        part = self._part_of_new(func, args, node is not None)
        by_accumulate_grad = node is not None and "AccumulateGrad" in node.name()
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.record(t, part, by_accumulate_grad)
        return out

    def _part_of_new(self, func, args, in_backward: bool) -> str:
        if in_backward:
            self.backward_seen = True
        if in_backward or self.backward_seen or self.phase == "optimizer":
            return "attention_and_temporaries"  # gradients and optimizer state are relabelled later
        if self.phase == "forward":
            source = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if func is torch.ops.aten._to_copy.default and source is not None:
                alloc = self.allocation_of(source)
                if alloc is not None and alloc.part == "parameters":
                    return "autocast_weight_copies"
            return "activations"
        return {"setup": "optimizer_state", "batch": "batch"}.get(self.phase, "attention_and_temporaries")


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
    grad_q = _round_up(m, block_i) * _round_up(k, 32)
    out_in_registers = half and max(k, kv) <= block_i
    grad_kv = 0 if out_in_registers else block_j * (_round_up(k, block_i) + _round_up(kv, block_i))
    return 4 * b * h * (grad_q + grad_kv + m)


def _mem_efficient_alignment(dtype: torch.dtype) -> int:
    return 8 if dtype in (torch.float16, torch.bfloat16) else 4


class _CudaAttentionRouting(TorchFunctionMode):
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


class _TraceGradScaler(torch.amp.GradScaler):
    """GradScaler whose step is always taken: the real one reads found_inf with .item(), which a fake
    tensor cannot answer. CUDA's update is in place on two scalars, so only the bookkeeping is reset.
    TrainStep calls unscale_ first at the boundary (enabled or not), which marks where it starts."""

    def __init__(self, tracker: _AllocationTracker, enabled: bool):
        super().__init__("cpu", enabled=enabled)
        self._tracker = tracker

    def unscale_(self, optimizer) -> None:
        self._tracker.mark_boundary()
        super().unscale_(optimizer)

    def _maybe_opt_step(self, optimizer, optimizer_state, *args, **kwargs):
        return optimizer.step(*args, **kwargs)

    def update(self, new_scale=None) -> None:
        if self._enabled:
            from torch.amp.grad_scaler import _refresh_per_optimizer_state
            self._per_optimizer_states = defaultdict(_refresh_per_optimizer_state)


def _in_move_order(module: nn.Module) -> Iterator[torch.Tensor]:
    """Parameters and buffers in the order `model.to(device)` allocates them (children first)."""
    for child in module.children():
        yield from _in_move_order(child)
    yield from (p for p in module._parameters.values() if p is not None)
    yield from (b for b in module._buffers.values() if b is not None)


def _worst_case_batch(cfg: TrainConfig, num_classes: int):
    from asl_ray.data.dataset import Batch
    x = torch.zeros(cfg.batch_size, cfg.max_len, NUM_FEATURE_CHANNELS)
    mask = torch.ones(cfg.batch_size, cfg.max_len, dtype=torch.bool)
    y = torch.zeros(cfg.batch_size, dtype=torch.long).clamp_(max=num_classes - 1)
    return Batch(x, mask, y)


def _set_phase_hooks(model: nn.Module, optimizer: torch.optim.Optimizer, tracker: _AllocationTracker) -> None:
    def forward_starts(*_):
        tracker.start("forward")

    def step_starts(*_):
        tracker.start("optimizer")

    model.register_forward_pre_hook(forward_starts)
    optimizer.register_step_pre_hook(step_starts)


def _use_cuda_defaults(optimizer: torch.optim.Optimizer) -> None:
    """On CUDA tensors torch's Adam-family optimizers default to the foreach implementation."""
    for group in optimizer.param_groups:
        if group.get("foreach") is None and not group.get("fused"):
            group["foreach"] = True


def _relabel_optimizer_state(optimizer: torch.optim.Optimizer, tracker: _AllocationTracker) -> None:
    for state in optimizer.state.values():
        for name, value in state.items():
            # Non-capturable Adam-family optimizers keep `step` as a CPU scalar even for CUDA params.
            tracker.relabel(value, _HOST if name == "step" else "optimizer_state")


def trace_training_step(cfg: TrainConfig, num_classes: int = 250) -> Trace:
    """Run setup and one micro-batch that ends its window (forward, backward, unscale, clip, step,
    zero_grad) of the real TrainStep under FakeTensorMode; return every allocation and free, labelled."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from asl_ray.model import GISLRModel
    from asl_ray.train.loop import TrainStep
    from asl_ray.train.optim import make_optimizer
    from asl_ray.train.runtime import Runtime, make_grad_scaler

    cfg = dataclasses.replace(cfg, inject_oom_at_step=0, inject_nan_at_step=0, compile=False)
    fake, tracker = FakeTensorMode(), _AllocationTracker()
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad(), \
            _forget_new_fake_dispatch_entries(FakeTensorMode):
        with fake:
            model = GISLRModel.from_config(cfg, num_classes).train()
        model.late_dropout_active = True  # worst case: the late dropout's mask is kept too
        with fake, tracker, _CudaAttentionRouting():
            for t in _in_move_order(model):
                tracker.record(t, "parameters")
            # Lookahead's slow weights are made here (phase setup). Its pull-back every k steps makes a
            # one-parameter temporary at a time: not traced (a third of the step's ops, ~1 MiB).
            optimizer, _ = make_optimizer(model, cfg)
            _use_cuda_defaults(optimizer)
            _set_phase_hooks(model, optimizer, tracker)
            hooks = [p.register_post_accumulate_grad_hook(tracker.grad_ready) for p in model.parameters()]
            scaler = _TraceGradScaler(tracker, enabled=make_grad_scaler(cfg.precision, "cpu").is_enabled())
            runtime = Runtime(device=torch.device("cpu"), precision=cfg.precision, pin_memory=False)
            step = TrainStep(model, optimizer, scaler, runtime, cfg)
            window_start = len(tracker.events)
            tracker.start("batch")
            step(_worst_case_batch(cfg, num_classes), 1, True)
            _relabel_optimizer_state(optimizer, tracker)
            for name in ("_scale", "_growth_tracker"):  # the loss scale (fp16 only): two scalars
                tracker.relabel(getattr(scaler, name, None), "attention_and_temporaries")
            tracker.recording = False
            events = list(tracker.events)
            # Parts of a fake autograd graph can outlive the trace (model.py's BatchNorm keeps an output
            # on ctx, a cycle through C++ that Python's GC frees late): they must not keep the
            # tracker's event list alive through the parameters' hooks.
            for hook in hooks:
                hook.remove()
            tracker.release()
    if tracker.boundary_start is None:
        raise RuntimeError("VRAM trace: TrainStep never called scaler.unscale_ at the accumulation boundary")
    ws, bs = window_start, tracker.boundary_start
    position = _alloc_positions(Trace(events, 0, 0))
    events = [e for part in (events[:ws], events[ws:bs], events[bs:]) for e in _canonical_free_order(part, position)]
    return Trace(events, ws, bs)


@contextlib.contextmanager
def _forget_new_fake_dispatch_entries(mode_class) -> Iterator[None]:
    """FakeTensorMode memoises op results in a process-wide dict that is never trimmed (~1.7 MiB per
    trace here). A search estimates hundreds of configs in one process, so a trace keeps its entries
    (the repeated blocks hit them) only while it runs."""
    cache = getattr(mode_class, "cache", None)
    before = set(cache) if isinstance(cache, dict) else None
    try:
        yield
    finally:
        if before is not None:
            for key in [k for k in cache if k not in before]:
                cache.pop(key, None)


def _canonical_free_order(events: list[tuple[int, Any]], position: dict[int, int]) -> list[tuple[int, Any]]:
    """Sort each run of frees by allocation order. Tensors released together (a graph node's saved
    tensors, autocast's cache, which is a hash map) die in an arbitrary order; the allocator ends in
    the same state whatever the order, and sorted runs make traces comparable."""
    out: list[tuple[int, Any]] = []
    run: list[tuple[int, Any]] = []
    for event in events:
        if event[0] == FREE:
            run.append(event)
            continue
        out += sorted(run, key=lambda e: position[id(e[1])])
        run = []
        out.append(event)
    out += sorted(run, key=lambda e: position[id(e[1])])
    return out


# ---- the replay --------------------------------------------------------------------------------

_MIN_BLOCK = 512  # every allocation is rounded up to this
_SMALL_SIZE = 1 * MiB  # requests up to this come from the small pool
_SMALL_SEGMENT = 2 * MiB
_LARGE_SEGMENT = 20 * MiB  # for large requests below _MIN_LARGE_ALLOC
_MIN_LARGE_ALLOC = 10 * MiB
_ROUND_LARGE = 2 * MiB


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class CachingAllocatorModel:
    """CUDA's caching allocator (c10/cuda/CUDACachingAllocator.cpp) for one stream, reduced to what
    sets `max_memory_reserved`: size rounding, pools, segment sizes, best-fit, split and merge."""

    def __init__(self) -> None:
        self.reserved = 0
        self._free = {True: [], False: []}  # small pool? -> sorted [(size, segment, offset)]
        self._blocks: list[dict[int, list]] = []  # per segment: offset -> [size, is_free]
        self._ends: list[dict[int, int]] = []  # per segment: end offset -> start offset
        self._small_segment: list[bool] = []
        self._where: dict[Any, tuple[int, int]] = {}  # allocation key -> (segment, offset)

    @staticmethod
    def block_size(nbytes: int) -> int:
        return max(_MIN_BLOCK, _round_up(nbytes, _MIN_BLOCK))

    @staticmethod
    def segment_size(size: int) -> int:
        if size <= _SMALL_SIZE:
            return _SMALL_SEGMENT
        return _LARGE_SEGMENT if size < _MIN_LARGE_ALLOC else _round_up(size, _ROUND_LARGE)

    def malloc(self, key: Any, nbytes: int) -> None:
        size = self.block_size(nbytes)
        small = size <= _SMALL_SIZE
        pool = self._free[small]
        i = bisect.bisect_left(pool, (size, -1, -1))
        if i < len(pool):  # best fit: the smallest cached block that is large enough
            block_size, seg, offset = pool.pop(i)
            self._remove_block(seg, offset)
        else:
            block_size, seg, offset = self.segment_size(size), self._new_segment(small), 0
            self.reserved += block_size
        remaining = block_size - size
        if remaining >= _MIN_BLOCK if small else remaining > _SMALL_SIZE:
            self._add_block(seg, offset, size, is_free=False)
            self._add_block(seg, offset + size, remaining, is_free=True)
        else:
            self._add_block(seg, offset, block_size, is_free=False)
        self._where[key] = (seg, offset)

    def free(self, key: Any) -> None:
        seg, offset = self._where.pop(key)
        size = self._remove_block(seg, offset)
        following = self._blocks[seg].get(offset + size)
        if following is not None and following[1]:
            size += self._take_free(seg, offset + size)
        start = self._ends[seg].get(offset)
        if start is not None and self._blocks[seg][start][1]:
            size += self._take_free(seg, start)
            offset = start
        self._add_block(seg, offset, size, is_free=True)

    def _new_segment(self, small: bool) -> int:
        self._blocks.append({})
        self._ends.append({})
        self._small_segment.append(small)
        return len(self._blocks) - 1

    def _add_block(self, seg: int, offset: int, size: int, is_free: bool) -> None:
        self._blocks[seg][offset] = [size, is_free]
        self._ends[seg][offset + size] = offset
        if is_free:
            bisect.insort(self._free[self._small_segment[seg]], (size, seg, offset))

    def _remove_block(self, seg: int, offset: int) -> int:
        size = self._blocks[seg].pop(offset)[0]
        del self._ends[seg][offset + size]
        return size

    def _take_free(self, seg: int, offset: int) -> int:
        size = self._blocks[seg][offset][0]
        pool = self._free[self._small_segment[seg]]
        pool.pop(bisect.bisect_left(pool, (size, seg, offset)))
        return self._remove_block(seg, offset)


REPLAYED_WINDOWS = 3  # the first window creates optimizer state; later ones show the steady state


def accumulation_window(trace: Trace) -> list[tuple[str, list[tuple[int, Any, str]]]]:
    """The loop's window of two micro-batches, built from the traced one, as (stage, events) with
    each event (kind, allocation, the micro-batch that owns the allocation):
    - 'first': the traced forward/backward (no gradients yet: autograd's outputs become .grad);
      what the traced step kept until its boundary (the batch, the loss) is freed when it returns;
    - 'accumulating': the same with the gradients already there: each incoming gradient is added
      into .grad in place and freed, and AccumulateGrad makes no copies;
    - 'boundary': unscale, clip, optimizer step, zero_grad (which frees the first one's gradients)."""
    traced = trace.events[trace.window_start:trace.boundary_start]
    boundary = trace.events[trace.boundary_start:]
    made_before_boundary = {id(a) for kind, a in traced if kind == ALLOC}
    kept_to_boundary = [a for kind, a in boundary
                        if kind == FREE and id(a) in made_before_boundary and a.part != "gradients"]
    first = [(kind, a, "first") for kind, a in traced if kind != GRAD_READY]
    first += [(FREE, a, "first") for a in kept_to_boundary]
    accumulating = []
    for kind, item in traced:
        if kind == GRAD_READY:
            if item.grad is not None and not item.grad.by_accumulate_grad:
                accumulating.append((FREE, item.grad, "accumulating"))  # `grad += incoming`; incoming freed
        elif not item.by_accumulate_grad:
            accumulating.append((kind, item, "accumulating"))
    closing = []
    for kind, a in boundary:
        if id(a) not in made_before_boundary:
            owner = "boundary"
        else:
            owner = "first" if a.part == "gradients" else "accumulating"
        closing.append((kind, a, owner))
    return [("first", first), ("accumulating", accumulating), ("boundary", closing)]


class _LiveBytes:
    """Live bytes per part, remembering the split at the moment of most live bytes."""

    def __init__(self) -> None:
        self.by_part: Counter = Counter()
        self.total = 0
        self.peak = -1
        self.at_peak: dict[str, int] = {}

    def add(self, part: str, nbytes: int) -> None:
        self.by_part[part] += nbytes
        self.total += nbytes
        if self.total > self.peak:
            self.peak, self.at_peak = self.total, dict(self.by_part)

    def remove(self, part: str, nbytes: int) -> None:
        self.by_part[part] -= nbytes
        self.total -= nbytes


def replay_through_allocator(trace: Trace, windows: int = REPLAYED_WINDOWS) -> tuple[int, dict[str, int]]:
    """(peak reserved bytes, live bytes per part at the moment of most live bytes) over the setup
    and `windows` accumulation windows."""
    persistent = _never_freed(trace.events)
    allocator, live = CachingAllocatorModel(), _LiveBytes()
    first_time: set[int] = set()  # persistent allocations already made once

    def apply(kind: int, alloc: _Alloc, key: Any, owner: str) -> None:
        if alloc.part == _HOST:
            return
        if alloc in persistent:
            if id(alloc) in first_time:
                return  # optimizer state, workspaces, the loss scale: created once
            first_time.add(id(alloc))
            key = id(alloc)
        # In the accumulating micro-batch, what became .grad in the first one is a temporary.
        part = "attention_and_temporaries" if owner == "accumulating" and alloc.part == "gradients" else alloc.part
        if kind == ALLOC:
            allocator.malloc(key, alloc.nbytes)
            live.add(part, alloc.nbytes)
        else:
            allocator.free(key)
            live.remove(part, alloc.nbytes)

    for kind, alloc in trace.events[:trace.window_start]:
        apply(kind, alloc, id(alloc), "setup")
    stages = accumulation_window(trace)
    for window in range(windows):
        for stage, events in stages:
            for kind, alloc, owner in events:
                apply(kind, alloc, (window, owner, id(alloc)), owner)
    return allocator.reserved, live.at_peak


def _never_freed(events: list[tuple[int, Any]]) -> set:
    freed = {id(a) for kind, a in events if kind == FREE}
    return {a for kind, a in events if kind == ALLOC and id(a) not in freed}
