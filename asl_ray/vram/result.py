"""The VRAM estimate's result: bytes per part, the unconstrained peak, the least need and the fit rule."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from asl_ray.vram import constants
from asl_ray.vram.constants import MiB

PART_LABELS = {
    "parameters": "parameters + BN buffers (fp32)",
    "gradients": "gradients (fp32)",
    "optimizer_state": "optimizer state (+ Lookahead slow weights)",
    "autocast_weight_copies": "mixed-precision weight copies",
    "activations": "activations saved for backward",
    "attention_and_temporaries": "attention scratch + temporaries",
    "batch": "batch (features, mask, labels)",
    "cublas_workspace": "cuBLAS/cuBLASLt workspaces",
    "allocator_overhead": "caching allocator rounding + segment slack",
    "fragmentation": "fragmentation (real shape sequence + evaluation)",
    "cudnn_workspace": "cuDNN conv workspace (bound: cudnn_workspace_cap_mb)",
    "cuda_context": "CUDA context",
    "torch_compile": "torch.compile kernels",
}
PARTS = tuple(PART_LABELS)
_TRACED_PARTS = PARTS[:8]  # the parts the allocator replay sees; the rest are fixed terms


@dataclass(frozen=True)
class VramEstimate:
    total_bytes: int
    """Unconstrained peak as nvidia-smi shows it: max_memory_reserved + CUDA context (+ compile kernels)."""
    breakdown: dict[str, int]
    """Bytes per part (keys in PARTS order); the parts sum to total_bytes."""
    seconds: float
    """Wall time this call took (a cached answer takes milliseconds)."""
    method: str
    cache: str = ""
    """Where the answer came from: '' (computed by this call), 'memory' or 'disk'."""
    need_bytes: int = 0
    """Least allocator limit under which the real shape sequence runs, free-and-retry included
    (context not included): what the card must leave to the caching allocator."""
    compute_capability: Optional[tuple[int, int]] = None
    """The card architecture the cuBLAS workspaces were sized for (None: unknown, the larger)."""

    @property
    def total_mib(self) -> float:
        return self.total_bytes / MiB

    def reserved_peak_bytes(self) -> int:
        """What torch.cuda.max_memory_reserved() will show (no context, no compile kernels)."""
        return self.total_bytes - self.fixed_bytes()

    def fixed_bytes(self) -> int:
        """The CUDA context and torch.compile's kernels: outside the caching allocator."""
        return self.breakdown.get("cuda_context", 0) + self.breakdown.get("torch_compile", 0)

    def margin_bytes(self) -> int:
        return -(-int(self.need_bytes * constants.FIT_MARGIN_FRACTION * 1_000_000) // 1_000_000)

    def fit_bytes(self) -> int:
        """What the fit verdict compares with a card's usable memory: least need + context + compile
        kernels + FIT_MARGIN_FRACTION of the need."""
        return self.need_bytes + self.fixed_bytes() + self.margin_bytes()

    def fits(self, usable_bytes: int) -> bool:
        return self.fit_bytes() <= usable_bytes

    def table(self) -> str:
        width = max(len(label) for label in PART_LABELS.values())
        lines = []
        for key, nbytes in self.breakdown.items():
            share = 100.0 * nbytes / self.total_bytes if self.total_bytes else 0.0
            lines.append(f"{PART_LABELS.get(key, key):<{width}}  {nbytes / MiB:>10.1f} MiB  {share:5.1f}%")
        lines.append(f"{'total: unconstrained peak (+ context)':<{width}}  {self.total_mib:>10.1f} MiB"
                     f"  (max_memory_reserved {self.reserved_peak_bytes() / MiB:.1f} MiB)")
        lines.append(f"{'least need under free-and-retry':<{width}}  {self.need_bytes / MiB:>10.1f} MiB"
                     f"  (+ context/kernels {self.fixed_bytes() / MiB:.1f} + margin "
                     f"{100 * constants.FIT_MARGIN_FRACTION:.0f}% {self.margin_bytes() / MiB:.1f}"
                     f" = {self.fit_bytes() / MiB:.1f} MiB to fit)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"total_bytes": self.total_bytes, "breakdown": dict(self.breakdown), "seconds": self.seconds,
                "method": self.method, "need_bytes": self.need_bytes,
                "reserved_peak_bytes": self.reserved_peak_bytes(), "fit_bytes": self.fit_bytes(),
                "compute_capability": list(self.compute_capability) if self.compute_capability else None}
