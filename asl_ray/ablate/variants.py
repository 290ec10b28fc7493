"""The ablations: each flips one optimisation of the base config, with the seed's claim where it made one.

Every ratio is variant / base, so a claim is written as the range the variant's ratio should fall in if
the claim holds (e.g. "mixed precision is 30-50% faster" -> fp32 runs at 1/1.5..1/1.3 of fp16's speed).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from asl_ray.config import TrainConfig


@dataclass(frozen=True)
class Claim:
    text: str
    """The seed's words."""
    speed_ratio: Optional[tuple[float, float]] = None
    """Range of variant/base samples/s the claim implies (None: the claim says nothing about speed)."""
    memory_ratio: Optional[tuple[float, float]] = None
    """Range of variant/base peak memory the claim implies."""


@dataclass(frozen=True)
class Ablation:
    name: str
    """Short, unique: what the variant is (`fp32`, `workers=0`)."""
    overrides: Mapping[str, Any]
    """TrainConfig keys changed from the base."""
    needs_cuda: bool = False
    """The switch does nothing on a CPU (no autocast, cuDNN, pinned copies or caching allocator there)."""
    claim: Optional[Claim] = None
    note: str = ""
    """What else to know when reading its ratio."""

    def config(self, base: TrainConfig) -> TrainConfig:
        return base.with_overrides(self.overrides, source=f"ablation {self.name}")

    def applies_to(self, base: TrainConfig) -> bool:
        """False when the base already has this setting (the variant would be the base again)."""
        return any(getattr(base, k) != v for k, v in self.overrides.items())


MIXED_PRECISION = Claim("mixed precision: 30-50% faster, 50% less memory",
                        speed_ratio=(1 / 1.5, 1 / 1.3), memory_ratio=(1.8, 2.2))
COMPILE = Claim("torch.compile: 20-30% faster forward", speed_ratio=(1.2, 1.3))
BASE_CLAIM = "~2-3 batches/s on an RTX 4070 at batch 12; 8-10 GB used of 12"


def ablations_for(base: TrainConfig) -> list[Ablation]:
    """One switch at a time, written against `base` (the seed's default unless --config says otherwise)."""
    mixed = base.precision in ("fp16", "bf16")
    out = [
        Ablation("fp32", {"precision": "fp32"}, needs_cuda=True, claim=MIXED_PRECISION if mixed else None),
        Ablation("fp16", {"precision": "fp16"}, needs_cuda=True),
        Ablation("bf16", {"precision": "bf16"}, needs_cuda=True),
        _accumulation(base),
        Ablation(f"compile={'off' if base.compile else 'on'}", {"compile": not base.compile},
                 claim=None if base.compile else COMPILE),
        Ablation(f"cudnn.benchmark={'off' if base.cudnn_benchmark else 'on'}",
                 {"cudnn_benchmark": not base.cudnn_benchmark}, needs_cuda=True),
        Ablation(f"pinned+non_blocking={'off' if base.pin_memory else 'on'}", {"pin_memory": not base.pin_memory},
                 needs_cuda=True),
        *[Ablation(f"workers={w}", {"num_workers": w}) for w in (0, 2, 4)],
        Ablation("empty_cache=never" if base.empty_cache_every else "empty_cache=every50",
                 {"empty_cache_every": 0 if base.empty_cache_every else 50}, needs_cuda=True),
        Ablation("pad=batch_max" if base.pad_to == "max_len" else "pad=max_len",
                 {"pad_to": "batch_max" if base.pad_to == "max_len" else "max_len"}),
        Ablation(f"bucketing={'off' if base.length_bucketing else 'on'}", {"length_bucketing": not base.length_bucketing}),
        Ablation("pad=batch_max" if base.pad_to == "ladder" else "pad=ladder",
                 {"pad_to": "batch_max" if base.pad_to == "ladder" else "ladder"},
                 note="ladder: at most 12 padded lengths (asl_ray/ladder.py)"),
        Ablation("compile+ladder", {"compile": True, "pad_to": "ladder"},
                 note="static lengths, one compilation per rung; the result's compile_seconds says how long"),
        Ablation("compile=reduce-overhead", {"compile": True, "compile_mode": "reduce-overhead", "pad_to": "ladder"},
                 needs_cuda=True, note="CUDA graphs, one per captured ladder shape"),
        # Fewer launches in eager (bench/launches.py counts them); persistent workers only matter across epochs.
        *[Ablation(f"{name}={'off' if getattr(base, name) else 'on'}", {name: not getattr(base, name)})
          for name in ("foreach_optimizer", "features_on_device", "persistent_workers", "host_step_counts",
                       "foreach_grad_accumulation")],
    ]
    return [a for a in out if a.applies_to(base)]


def _accumulation(base: TrainConfig) -> Ablation:
    """Accumulation 1 vs 4 at the same effective batch: the other side of the base's setting."""
    eff = base.effective_batch_size()
    if base.gradient_accumulation_steps == 1:
        if eff % 4:
            return Ablation("accum=4", {"gradient_accumulation_steps": 1})  # the base again: dropped
        return Ablation("accum=4", {"batch_size": eff // 4, "gradient_accumulation_steps": 4},
                        note=f"batch {eff // 4} x 4 = the base's effective batch {eff}")
    return Ablation("accum=1", {"batch_size": eff, "gradient_accumulation_steps": 1},
                    note=f"batch {eff} x 1 = the base's effective batch {eff} (BatchNorm sees {eff} samples)")


def select(ablations: list[Ablation], only: list[str], skip: list[str]) -> list[Ablation]:
    """Filter by name; unknown names raise ValueError listing the known ones."""
    known = [a.name for a in ablations]
    unknown = [n for n in [*only, *skip] if n not in known]
    if unknown:
        raise ValueError(f"unknown ablation(s) {', '.join(unknown)} (known: {', '.join(known)})")
    return [a for a in ablations if (not only or a.name in only) and a.name not in skip]
