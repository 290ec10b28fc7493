"""Where a run executes, as objects: device, autocast, grad scaler, pinned copies, compile.

The loop never branches on CPU vs GPU; it asks the Runtime. On CPU, mixed precision is off (CPU
autocast is slower than fp32 here), the scaler is a disabled GradScaler and copies are blocking.
"""
from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from asl_ray.cards import CUDA_CONTEXT_BYTES, MiB, CardError
from asl_ray.config import TrainConfig
from asl_ray.ladder import length_ladder
from asl_ray.train.cudnn_workspace import cap_cudnn_workspace

_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def make_grad_scaler(precision: str, device_type: str) -> torch.amp.GradScaler:
    """Loss scaling only for fp16: bf16 has fp32's exponent range and needs none."""
    return torch.amp.GradScaler(device_type, enabled=precision == "fp16")


def indexed_device(device: torch.device | str) -> torch.device:
    """`device` with its index: a bare 'cuda' is the current CUDA device. torch.cuda.set_device and
    set_per_process_memory_fraction refuse a CUDA device without an index."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def emulate_card_memory(usable_bytes: float, device) -> float:
    """Cap this process's CUDA caching allocator so the run fits or fails as on a card with
    `usable_bytes` in all (context included). Returns the fraction set. Speed is not emulated.

    The fraction is exact, with no floor: a floor (0.01 is ~810 MiB of an H100) would override a small cap
    and make "fits and runs" trivially true."""
    device = indexed_device(device)
    total = torch.cuda.get_device_properties(device).total_memory
    allowed = usable_bytes - CUDA_CONTEXT_BYTES
    if allowed <= 0:
        raise CardError(f"card emulation: {usable_bytes / MiB:.0f} MiB leaves nothing beyond the CUDA context "
                        f"({CUDA_CONTEXT_BYTES / MiB:.0f} MiB)")
    fraction = min(1.0, allowed / total)
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction


@dataclass
class Runtime:
    device: torch.device
    precision: str  # the precision actually used (fp32 on CPU)
    pin_memory: bool

    @classmethod
    def create(cls, cfg: TrainConfig, device: torch.device | None = None) -> "Runtime":
        device = indexed_device(device or torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        on_cuda = device.type == "cuda"
        if on_cuda:
            torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
            cap_cudnn_workspace(cfg.cudnn_workspace_cap_mb)
            torch.cuda.set_device(device)
        return cls(device=device, precision=cfg.precision if on_cuda else "fp32",
                   pin_memory=cfg.pin_memory and on_cuda)

    @property
    def non_blocking(self) -> bool:
        # Only a pinned source makes a host-to-device copy truly asynchronous.
        return self.pin_memory

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=_AUTOCAST_DTYPES[self.precision],
                              enabled=self.precision != "fp32")

    def grad_scaler(self) -> torch.amp.GradScaler:
        return make_grad_scaler(self.precision, self.device.type)

    def compile_mode(self, cfg: TrainConfig) -> str:
        """The torch.compile mode this device runs: CUDA graphs (reduce-overhead) exist on CUDA only."""
        return cfg.compile_mode if self.device.type == "cuda" else "default"

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def empty_cache(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


class CompileClock:
    """Wall time and count of torch.compile's compilations (dynamo's trace and inductor's codegen, the
    backward's lazy compile and CUDA-graph recordings included) while its module is the one running."""

    def __init__(self):
        self.seconds = 0.0
        self.compilations = 0
        self._started: Optional[float] = None

    def start(self) -> None:
        self._started = time.perf_counter()

    def end(self) -> None:
        if self._started is not None:
            self.seconds += time.perf_counter() - self._started
            self.compilations += 1
            self._started = None


_running_clock: list[Optional[CompileClock]] = [None]  # the clock of the compiled module called last


def _clock_start(_args) -> None:
    if _running_clock[0] is not None:
        _running_clock[0].start()


def _clock_end(_args) -> None:
    if _running_clock[0] is not None:
        _running_clock[0].end()


def _register_clock_callbacks() -> None:
    # Dynamo's callbacks are process-wide: registered once, they feed whichever module ran last (a lazy
    # backward compile follows its own forward). torch._dynamo.reset() clears them, so look, not remember.
    from torch._dynamo.callback import callback_handler
    if _clock_start not in callback_handler.start_callbacks:
        callback_handler.register_start_callback(_clock_start)
    if _clock_end not in callback_handler.end_callbacks:
        callback_handler.register_end_callback(_clock_end)


def out_of_memory_in(error: BaseException) -> Optional[BaseException]:
    """The OutOfMemoryError behind `error` (itself, a cause/context, or dynamo's wrapped inner exception)."""
    seen: set[int] = set()
    todo: list[Optional[BaseException]] = [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, torch.OutOfMemoryError):
            return e
        todo += [e.__cause__, e.__context__, getattr(e, "inner_exception", None)]
    return None


class EagerFallback(nn.Module):
    """Runs the compiled module; if compiling fails, warns once and runs the eager one from then on.

    An out-of-memory error is never a compile failure: it propagates (as the OutOfMemoryError itself, even
    when dynamo wrapped it) to the loop's OOM guard, so a config that does not fit ends as OOM instead of
    running on in eager with a different memory profile.
    """

    def __init__(self, eager: nn.Module, compiled: nn.Module, mode: str = "default",
                 dynamic_batch: bool = False):
        super().__init__()
        self.eager = eager
        self._compiled = [compiled]  # a list keeps it out of state_dict and parameters()
        self.failed = False
        self.mode = mode
        """The torch.compile mode actually run."""
        self.dynamic_batch = dynamic_batch
        self.clock = CompileClock()
        _register_clock_callbacks()

    def forward(self, *args, **kwargs):
        if not self.failed:
            if self.dynamic_batch:
                # Time lengths are static (one graph per ladder rung); the batch dimension is symbolic so
                # the last, partial batch of an epoch and the validation batches compile no new graph.
                for a in args:
                    if isinstance(a, torch.Tensor) and a.dim() > 0:
                        torch._dynamo.maybe_mark_dynamic(a, 0)
            if self.mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs are done with
            _running_clock[0] = self.clock
            try:
                return self._compiled[0](*args, **kwargs)
            except Exception as e:  # torch._dynamo / inductor raise many types; any but OOM means "use eager"
                self.fall_back(e)
        return self.eager(*args, **kwargs)

    def fall_back(self, error: Exception) -> None:
        """Run eager from now on because compiling (or running compiled code) raised `error`; an
        out-of-memory error behind it is raised instead (as the OutOfMemoryError itself)."""
        oom = out_of_memory_in(error)
        if oom is not None:
            if oom is error:
                raise error
            raise oom from error
        self.failed = True
        cause = getattr(error, "inner_exception", None) or error  # dynamo's wrapper says only "backend raised"
        warnings.warn(f"torch.compile failed, continuing in eager mode: {type(cause).__name__}: "
                      f"{str(cause).splitlines()[0] if str(cause) else ''}", RuntimeWarning, stacklevel=3)

    @property
    def replays_cuda_graphs(self) -> bool:
        """Whether the backward's outputs live in a CUDA graph's memory pool, which the next replay
        overwrites (reduce-overhead; even after a fall back, the grads it made stay where they are)."""
        return self.mode == "reduce-overhead"


def with_eager_fallback(model: nn.Module, micro_batch: Callable[[], torch.Tensor]) -> torch.Tensor:
    """`micro_batch()` (forward and backward); if the compiled backward fails (inductor compiles it lazily, at
    the first backward of each graph, after the forward succeeded), that micro-batch again in eager. The
    failed backward ran no kernel of the compiled graph, so no parameter's .grad holds part of it."""
    if not isinstance(model, EagerFallback) or model.failed:
        return micro_batch()
    try:
        return micro_batch()
    except Exception as e:
        if model.failed:  # the forward already fell back and the eager pass raised: a real error
            raise
        model.fall_back(e)
        return micro_batch()


def needs_stable_grads(model: nn.Module) -> bool:
    """CUDA graphs hand the backward's gradients out in their memory pool. With .grad None, AccumulateGrad
    keeps such an output as .grad, and the next micro-batch's replay overwrites it (torch's cudagraph_trees
    error for gradient accumulation). Zeroed .grad buffers allocated outside capture are added into
    instead, which is torch's own advice there."""
    return isinstance(model, EagerFallback) and model.replays_cuda_graphs


def compile_metrics(module: nn.Module) -> dict[str, Any]:
    """What the run's result records about compilation (zeros and 'off' for an eager module)."""
    if not isinstance(module, EagerFallback):
        return {"compile_mode": "off", "compile_seconds": 0.0, "compilations": 0, "compile_failed": False}
    return {"compile_mode": module.mode, "compile_seconds": round(module.clock.seconds, 3),
            "compilations": module.clock.compilations, "compile_failed": module.failed}


def compile_shape_budget(cfg: TrainConfig) -> Optional[int]:
    """Most graphs a run compiles under a static-length pad mode: one per rung and mode (train, eval; each
    twice when the late dropout switches on mid-run); None under 'batch_max' (dynamic lengths)."""
    if cfg.pad_to == "batch_max":
        return None
    rungs = len(length_ladder(cfg.max_len)) if cfg.pad_to == "ladder" else 1
    return rungs * (4 if cfg.late_dropout_start_epoch > 0 else 2)


def maybe_compile(model: nn.Module, enabled: bool, mode: str = "default",
                  static_shapes: Optional[int] = None) -> nn.Module:
    """The module the loop calls: eager, or compiled in `mode`.

    static_shapes: None compiles with dynamic shapes (lengths vary batch to batch); a number compiles
    static time lengths (dynamic=False, the batch dimension symbolic) and lets dynamo keep that many
    graphs: its default recompile limit (8) would otherwise silently send a 12-rung ladder to eager.
    """
    if not enabled:
        return model
    try:
        if static_shapes is not None:
            # +2: a batch of one sample specializes its batch dimension (one graph more per such length)
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, static_shapes + 2)
        compiled = torch.compile(model, mode=None if mode == "default" else mode,
                                 dynamic=static_shapes is None)
    except Exception as e:
        warnings.warn(f"torch.compile unavailable, running eager: {e}", RuntimeWarning, stacklevel=2)
        return model
    return EagerFallback(model, compiled, mode=mode, dynamic_batch=static_shapes is not None)


def compile_for(model: nn.Module, cfg: TrainConfig, runtime: "Runtime") -> nn.Module:
    """`maybe_compile` as `cfg` and the device ask: the mode the device can run, static lengths unless
    pad_to is 'batch_max'."""
    return maybe_compile(model, cfg.compile, runtime.compile_mode(cfg), compile_shape_budget(cfg))
