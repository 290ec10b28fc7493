"""Step 1 of the VRAM estimate: trace one training step under FakeTensorMode.

The real model, optimizer and TrainStep run one micro-batch that ends its accumulation window on fake
`cpu` tensors (true shapes and dtypes, nothing allocated); a dispatch mode records every storage made
and freed, labelled by what it is, with CUDA's memory-efficient attention, optimizer defaults and
cuBLAS workspaces made to match. The result is a `Trace`: allocation events in program order, which
`asl_ray.vram.allocator` replays. See `asl_ray.vram.estimate` for the whole method.
"""
from __future__ import annotations

import contextlib
import dataclasses
import weakref
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
from torch import nn
from torch.utils._mode_utils import no_dispatch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from asl_ray.config import NUM_FEATURE_CHANNELS, TrainConfig
from asl_ray.vram import constants
from asl_ray.vram.attention import CudaAttentionRouting

# ---- the trace ---------------------------------------------------------------------------------

_HOST = "host"  # tensors that live on the host on CUDA (the optimizers' `step` counters)


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

    def __init__(self, cublas_workspace_bytes: int = constants.CUBLAS_WORKSPACE_BYTES_PER_HANDLE) -> None:
        super().__init__()
        self.cublas_workspace_bytes = cublas_workspace_bytes
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
        for nbytes in (self.cublas_workspace_bytes, constants.CUBLASLT_WORKSPACE_BYTES_PER_HANDLE):
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


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


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


def _worst_case_batch(cfg: TrainConfig, num_classes: int, length: Optional[int] = None,
                      batch_size: Optional[int] = None):
    """A batch padded to `length` (default max_len) with every frame valid."""
    from asl_ray.data.dataset import Batch
    length, batch_size = length or cfg.max_len, batch_size or cfg.batch_size
    x = torch.zeros(batch_size, length, NUM_FEATURE_CHANNELS)
    mask = torch.ones(batch_size, length, dtype=torch.bool)
    y = torch.zeros(batch_size, dtype=torch.long).clamp_(max=num_classes - 1)
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


def trace_training_step(cfg: TrainConfig, num_classes: int = 250, length: Optional[int] = None,
                        cublas_workspace_bytes: int = constants.CUBLAS_WORKSPACE_BYTES_PER_HANDLE) -> Trace:
    """Run setup and one micro-batch that ends its window (forward, backward, unscale, clip, step,
    zero_grad) of the real TrainStep under FakeTensorMode, its batch padded to `length` (default
    max_len); return every allocation and free, labelled."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from asl_ray.model import GISLRModel
    from asl_ray.train.loop import TrainStep
    from asl_ray.train.optim import make_optimizer
    from asl_ray.train.runtime import Runtime, make_grad_scaler

    cfg = dataclasses.replace(cfg, compile=False)
    fake, tracker = FakeTensorMode(), _AllocationTracker(cublas_workspace_bytes)
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad(), \
            _forget_new_fake_dispatch_entries(FakeTensorMode):
        with fake:
            model = GISLRModel.from_config(cfg, num_classes).train()
        model.late_dropout_active = True  # worst case: the late dropout's mask is kept too
        with fake, tracker, CudaAttentionRouting():
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
            step(_worst_case_batch(cfg, num_classes, length), 1, True)
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


def trace_evaluation(cfg: TrainConfig, num_classes: int, batch_size: int, length: Optional[int] = None) -> Trace:
    """One batch of the loop's evaluation pass (train/loop.py `evaluate`: inference mode, autocast,
    fp32 logits, summed loss) under FakeTensorMode: the allocations and frees of that batch only
    (the parameters already exist), as a Trace whose events are all its window."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from asl_ray.model import GISLRModel
    from asl_ray.train.runtime import Runtime

    cfg = dataclasses.replace(cfg, compile=False)
    fake, tracker = FakeTensorMode(), _AllocationTracker()
    tracker._cublas_handles.update({"main", "autograd"})  # made by the training steps before it
    runtime = Runtime(device=torch.device("cpu"), precision=cfg.precision, pin_memory=False)
    with torch.random.fork_rng(devices=[]), _forget_new_fake_dispatch_entries(FakeTensorMode):
        with fake:
            model = GISLRModel.from_config(cfg, num_classes).eval()
        with fake, tracker, CudaAttentionRouting(), torch.inference_mode():
            tracker.recording = False
            for t in _in_move_order(model):
                tracker.record(t, "parameters")
            tracker.recording = True
            tracker.start("forward")
            batch = _worst_case_batch(cfg, num_classes, length, batch_size)
            with runtime.autocast():
                logits = model(batch.x, batch.mask).float()
            loss = nn.CrossEntropyLoss(reduction="sum")(logits, batch.y)
            del logits, loss, batch
            tracker.recording = False
            events = list(tracker.events)
            tracker.release()
    position = _alloc_positions(Trace(events, 0, 0))
    return Trace(_canonical_free_order(events, position), 0, len(events))


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



# ---- batch-size templates ----------------------------------------------------------------------
# Every tensor of a step is (batch x something) or batch-independent, so the trace at any batch size
# follows from traces at two: after a second batch size of the same shape (a binary search over
# batch_size, say) further batch sizes are a replay away (milliseconds) instead of a trace (seconds).


class _BatchTemplate:
    """A trace whose allocation sizes are `intercept + slope * batch_size`, fitted from two traces
    that are identical but for those sizes."""

    def __init__(self, trace: "Trace", intercept: dict[int, int], slope: dict[int, int]):
        self.trace, self.intercept, self.slope = trace, intercept, slope

    @classmethod
    def fit(cls, a: tuple[int, "Trace"], b: tuple[int, "Trace"], exact: bool = True) -> Optional["_BatchTemplate"]:
        """`exact`: every size must be exactly affine (batch size); otherwise (lengths, where kernels
        round the time axis up to 16, 32 or 64 rows) sizes between and beyond are interpolated and
        rounded up to the next multiple of 512 B, the allocator's granule."""
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
            if not exact:
                per_sample = (item_b.nbytes - item_a.nbytes) / (batch_b - batch_a)
            elif rest or per_sample < 0 or item_a.nbytes - per_sample * batch_a < 0:
                return None
            intercept[id(item_a)] = item_a.nbytes - per_sample * batch_a
            slope[id(item_a)] = per_sample
        return cls(trace_a, intercept, slope)

    def at(self, batch_size: int) -> "Trace":
        renewed: dict[int, _Alloc] = {}
        events: list[tuple[int, Any]] = []
        for kind, item in self.trace.events:
            if kind == ALLOC:
                nbytes = self.intercept[id(item)] + self.slope[id(item)] * batch_size
                if not isinstance(nbytes, int):
                    nbytes = max(0, _round_up(int(-(-nbytes // 1)), 512))
                new = _Alloc(nbytes, item.part, item.by_accumulate_grad)
                renewed[id(item)] = new
                events.append((ALLOC, new))
            elif kind == FREE:
                events.append((FREE, renewed[id(item)]))
            else:
                events.append((GRAD_READY, _GradReady(None if item.grad is None else renewed[id(item.grad)])))
        return Trace(events, self.trace.window_start, self.trace.boundary_start)


def _alloc_positions(trace: "Trace") -> dict[int, int]:
    return {id(item): i for i, (kind, item) in enumerate(trace.events) if kind == ALLOC}
