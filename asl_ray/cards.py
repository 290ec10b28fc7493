"""Target cards: named profiles, `auto` (the device this process will use), or a plain GiB figure.

The one card catalogue: memory as CUDA sees it (`CARDS`), dense FLOP peaks (`PEAK_TFLOPS`), names and aliases,
each figure with its source. A card's `total_bytes` is what CUDA can allocate on it (the total `torch.cuda.mem_get_info()`
reports), not nvidia-smi's figure: the driver keeps a few hundred MiB of the latter for itself.
`usable_bytes` leaves `headroom` for the desktop's display and other processes.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Optional

from asl_ray.config import UserInputError

MiB = 1024 ** 2
GiB = 1024 ** 3

# CUDA context + the kernels torch loads lazily for this model (cuBLAS/cuDNN handles included),
# i.e. what nvidia-smi shows for the process beyond torch.cuda.memory_reserved(). Source: public
# reports for CUDA 12 with lazy module loading (default since CUDA 11.7) range 300-600 MiB on
# Ampere/Ada/Hopper; 500 MiB is the conservative end for consumer cards. Unmeasured here.
CUDA_CONTEXT_BYTES = 500 * MiB
DEFAULT_HEADROOM_MB = 512


@dataclass(frozen=True)
class CardProfile:
    """A retail/cloud card as the tool knows it."""
    nvidia_smi_mib: int
    """Total memory nvidia-smi shows (the driver's figure)."""
    cuda_total_mib: int
    """Total `torch.cuda.mem_get_info()` reports, i.e. what CUDA can allocate at most."""
    compute_capability: tuple[int, int]
    """(major, minor): picks the cuBLAS workspace size (constants.cublas_workspace_bytes)."""
    source: str
    """Where cuda_total_mib comes from: 'reported: ...' (a published torch figure) or 'computed: ...'."""


# CUDA-visible totals. Reported figures: Linux torch.cuda.mem_get_info() totals from public user reports
# (a 12 GB Ada card ~270 MiB below nvidia-smi, RTX 4090 ~357 MiB below,
# A100-80GB ~800 MiB below). Every other card is COMPUTED: its nvidia-smi total minus the reported
# reserve of the reported card of the nearest size (270 MiB up to 16 GB, 357 MiB for 24 GB,
# 800 MiB for 40-80 GB, scaled by size above 80 GB). Unmeasured by this project:
# bench/vram_accuracy.py prints the real figure of the card it runs on.
CARDS = {
    "rtx4070": CardProfile(12282, 12010, (8, 9),
                           "reported: a 12 GB Ada card's mem_get_info() total, 12,010 MiB (a public user report)"),
    "rtx3060": CardProfile(12288, 12018, (8, 6), "computed: 12288 - 270 MiB (as the 12 GB Ada card)"),
    "rtx4060ti": CardProfile(16380, 16110, (8, 9), "computed: 16380 - 270 MiB"),
    "rtx4080": CardProfile(16376, 16106, (8, 9), "computed: 16376 - 270 MiB"),
    "rtx4090": CardProfile(24564, 24207, (8, 9), "reported: nvidia-smi 24564 - 357 MiB (a public user report)"),
    "t4": CardProfile(15360, 15090, (7, 5), "computed: 15360 - 270 MiB"),
    "l4": CardProfile(23034, 22677, (8, 9), "computed: 23034 - 357 MiB (as the RTX 4090)"),
    "a10g": CardProfile(23028, 22671, (8, 6), "computed: 23028 - 357 MiB (as the RTX 4090)"),
    "a100-40gb": CardProfile(40960, 40160, (8, 0), "computed: 40960 - 800 MiB (as the A100-80GB)"),
    "a100-80gb": CardProfile(81920, 81120, (8, 0), "reported: nvidia-smi 81920 - 800 MiB (a public user report)"),
    "h100": CardProfile(81559, 80759, (9, 0), "computed: 81559 - 800 MiB (as the A100-80GB)"),
    "h100-pcie": CardProfile(81559, 80759, (9, 0), "computed: 81559 - 800 MiB (as the A100-80GB)"),
    "h200": CardProfile(143771, 142365, (9, 0), "computed: 143771 - 800 MiB x 143771/81920"),
    "h200-nvl": CardProfile(143771, 142365, (9, 0), "computed: as the H200 SXM (the same 141 GB)"),
}
PEAK_TFLOPS = {
    # Dense peak TFLOP/s by precision, each with its source; the MFU figure of the ablation divides by these.
    # NVIDIA Ada GPU Architecture whitepaper (v2.01), GeForce appendix table: "Peak FP16 Tensor TFLOPS
    # with FP32 Accumulate" 165.2/330.4 (dense/sparse), "Peak FP32 TFLOPS (non-Tensor)" 82.6.
    "rtx4090": {"fp16": 165.2, "bf16": 165.2, "fp32": 82.6},
    # Same whitepaper/table, RTX 4080 (16 GB): 97.5 fp32-accumulate dense, 48.7 fp32 (76 SMs, 2505 MHz).
    "rtx4080": {"fp16": 97.5, "bf16": 97.5, "fp32": 48.7},
    # RTX 4070 (AD104, 46 SMs, 2475 MHz boost; launched after the whitepaper, so not in its table):
    # 46 x 2.475 GHz x 512 = 58.3 dense fp32-accumulate; fp32 5888 cores x 2 x 2.475 GHz = 29.1 (the
    # figure this row wrongly used for fp16 before). Cross-check: NVIDIA's spec page lists 466 "AI
    # TOPS" (FP8, sparse) = 8 x 58.3.
    "rtx4070": {"fp16": 58.3, "bf16": 58.3, "fp32": 29.1},
    # RTX 4060 Ti (AD106, 34 SMs, 2535 MHz; not in the whitepaper's table): 34 x 2.535 x 512 = 44.1;
    # fp32 4352 x 2 x 2.535 = 22.1. Cross-check: 353 "AI TOPS" on NVIDIA's spec page = 8 x 44.1.
    "rtx4060ti": {"fp16": 44.1, "bf16": 44.1, "fp32": 22.1},
    # RTX 3060 (GA106, 28 SMs, 1777 MHz): not in the NVIDIA Ampere GA102 whitepaper, which gives the
    # per-SM rate (RTX 3090: 71 dense fp32-accumulate at 82 SMs, 1695 MHz = 512/clk/SM):
    # 28 x 1.777 x 512 = 25.5; fp32 3584 x 2 x 1.777 = 12.7. Derived, not a datasheet row.
    "rtx3060": {"fp16": 25.5, "bf16": 25.5, "fp32": 12.7},
    # NVIDIA A100 Tensor Core GPU datasheet: BF16/FP16 Tensor 312 (624 sparse), FP32 19.5.
    "a100-80gb": {"fp16": 312.0, "bf16": 312.0, "fp32": 19.5},
    # NVIDIA H100 datasheet / Hopper whitepaper: SXM5 FP16/BF16 Tensor 1,979 sparse = 989.4 dense,
    # FP32 66.9 ("67"); PCIe 1,513 sparse = 756.5 dense, FP32 51.2 ("51").
    "h100": {"fp16": 989.4, "bf16": 989.4, "fp32": 66.9},
    "h100-pcie": {"fp16": 756.5, "bf16": 756.5, "fp32": 51.2},
    # NVIDIA H200 datasheet: SXM FP16/BF16 Tensor 1,979 sparse = 989.4 dense (the H100 SXM's GH100 at the
    # same clock), FP32 67; H200 NVL 1,671 sparse = 835.5 dense, FP32 60.
    "h200": {"fp16": 989.4, "bf16": 989.4, "fp32": 66.9},
    "h200-nvl": {"fp16": 835.5, "bf16": 835.5, "fp32": 60.0},
    # NVIDIA L4 datasheet: FP16/BF16 Tensor 242 sparse = 121 dense, FP32 30.3.
    "l4": {"fp16": 121.0, "bf16": 121.0, "fp32": 30.3},
    # NVIDIA T4 datasheet: mixed precision (FP16/FP32) 65, FP32 8.1; Turing has no bf16 tensor cores.
    "t4": {"fp16": 65.0, "bf16": math.nan, "fp32": 8.1},
    # Not listed, so MFU says "no datasheet peak": A10G (AWS's GA102 part; NVIDIA publishes no datasheet
    # for it, and the A10's 125 has a different SM count and clock), RTX 4070 Ti/SUPER, 4080 SUPER, laptop parts.
}
# (regex on the lower-cased name without "nvidia", key). First match wins; a variant (Ti, SUPER, laptop)
# has other SM counts and clocks, so it must not fall through to the base model's row.
_NAME_PATTERNS = [(r"laptop|mobile|max-q", None), (r"\bh200 nvl\b", "h200-nvl"), (r"\bh200\b", "h200"),
                  (r"\bh100 pcie\b", "h100-pcie"), (r"\bh100\b", "h100"), (r"\ba100\b", "a100-80gb"),
                  (r"\b4060 ti\b", "rtx4060ti"), (r"\b(4070|4080|4090) (ti|super)\b", None),
                  (r"\b4070\b", "rtx4070"), (r"\b4080\b", "rtx4080"), (r"\b4090\b", "rtx4090"),
                  (r"\b3060 ti\b", None), (r"\b3060\b", "rtx3060"), (r"\bl4\b", "l4"), (r"\bt4\b", "t4")]


def datasheet_peak_tflops(device_name: str, precision: str) -> Optional[float]:
    """The card's dense peak for `precision`, from its name as torch/nvidia-smi print it; None if unknown."""
    name = device_name.lower().replace("nvidia", " ")
    for pattern, key in _NAME_PATTERNS:
        if re.search(pattern, name):
            if key is None:
                return None
            value = PEAK_TFLOPS[key][precision]
            return None if math.isnan(value) else value
    return None


CARD_TOTAL_MIB = {name: p.cuda_total_mib for name, p in CARDS.items()}
"""Card name -> CUDA-visible total in MiB (kept for callers of the earlier table)."""
CARD_ALIASES = {"a100": "a100-40gb", "a100-40": "a100-40gb", "a100-80": "a100-80gb", "h100-80gb": "h100",
                "h100-sxm": "h100",
                "4070": "rtx4070", "rtx-4070": "rtx4070", "4090": "rtx4090", "3060": "rtx3060"}


class CardError(UserInputError):
    pass


@dataclass(frozen=True)
class Card:
    name: str
    """The profile's name, the device's name (auto) or 'NGiB'."""
    total_bytes: int
    """What this process can have on the card, its CUDA context included (CUDA-visible total, less
    what other processes hold for `auto`)."""
    headroom_bytes: int = DEFAULT_HEADROOM_MB * MiB
    """Kept free for the desktop and other processes."""
    compute_capability: Optional[tuple[int, int]] = None
    """(major, minor), None if unknown (a plain size): unknown takes the larger cuBLAS workspace."""
    note: str = ""
    """Where the total comes from, and for `auto` what else holds memory on the device."""

    @property
    def usable_bytes(self) -> int:
        return self.total_bytes - self.headroom_bytes

    def describe(self) -> str:
        cc = f", sm_{self.compute_capability[0]}{self.compute_capability[1]}" if self.compute_capability else ""
        text = (f"{self.name}: {self.total_bytes / GiB:.2f} GiB total as CUDA sees it{cc}, "
                f"{self.usable_bytes / GiB:.2f} GiB usable ({self.headroom_bytes / MiB:.0f} MiB headroom)")
        return f"{text}; {self.note}" if self.note else text


def resolve_card(spec: str, headroom_mb: float = DEFAULT_HEADROOM_MB) -> Card:
    """'rtx4070' | 'auto' | '12' / '12GiB' (a plain size) -> Card. Raises CardError naming the spec."""
    key = spec.strip().lower()
    if not isinstance(headroom_mb, (int, float)) or not math.isfinite(headroom_mb) or headroom_mb < 0:
        raise CardError(f"--headroom-mb: must be a finite number >= 0, got {headroom_mb!r}")
    headroom = int(headroom_mb * MiB)
    if key == "auto":
        card = detect_card(headroom)
    else:
        size = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(gib|gb|g)?", key)
        if size:
            card = Card(f"{size.group(1)}GiB", int(float(size.group(1)) * GiB), headroom)
        else:
            key = CARD_ALIASES.get(key, key)
            if key not in CARDS:
                raise CardError(f"unknown card {spec!r}: use one of {', '.join(sorted(CARDS))}, "
                                f"'auto', or a size in GiB such as 12")
            profile = CARDS[key]
            card = Card(key, profile.cuda_total_mib * MiB, headroom, profile.compute_capability, profile.source)
    if card.usable_bytes <= 0:
        raise CardError(f"card {spec!r}: headroom {headroom_mb} MiB leaves no usable memory")
    return card


def detect_card(headroom_bytes: int = DEFAULT_HEADROOM_MB * MiB) -> Card:
    """The device this process will use (torch's current device, i.e. the first one
    CUDA_VISIBLE_DEVICES leaves visible), sized by what is free on it now."""
    try:
        import torch
        available = torch.cuda.is_available()
    except Exception:  # a broken driver install raises instead of answering False
        available = False
    if not available:
        raise CardError("--gpu auto: no NVIDIA GPU visible to torch (CUDA_VISIBLE_DEVICES="
                        f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); name a card such as rtx4070 "
                        f"or a size in GiB")
    device = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(device)
    free, total = torch.cuda.mem_get_info(device)  # creates this process's context: it is in `total - free`
    others = _other_processes(str(getattr(props, "uuid", "")))
    return card_from_device_memory(props.name, total, free, (props.major, props.minor), headroom_bytes, others)


def card_from_device_memory(name: str, total: int, free: int, compute_capability: tuple[int, int],
                            headroom_bytes: int, others: Optional[list[tuple[int, int]]] = None) -> Card:
    """A Card for a device with `total` CUDA-visible bytes of which `free` are free now, this process's
    context already made. `others`: (pid, bytes) of the other processes NVML sees on it, or None if
    NVML cannot say. What the others hold is taken off the total; this process's own context is not
    (the estimate counts it)."""
    held = max(0, total - free)
    if others is None:
        held_by_others = max(0, held - CUDA_CONTEXT_BYTES)
        detail = (f"{held / MiB:.0f} MiB in use now, {held_by_others / MiB:.0f} MiB of it taken as other "
                  f"processes' (this process's context assumed {CUDA_CONTEXT_BYTES / MiB:.0f} MiB; NVML unavailable)")
    else:
        held_by_others = min(held, sum(nbytes for _, nbytes in others))
        listed = ", ".join(f"pid {pid} {nbytes / MiB:.0f} MiB" for pid, nbytes in others) or "none"
        detail = f"other processes hold {held_by_others / MiB:.0f} MiB ({listed})"
    note = f"CUDA total {total / MiB:.0f} MiB, free {free / MiB:.0f} MiB; {detail}"
    return Card(name, total - held_by_others, headroom_bytes, tuple(compute_capability), note)


def _other_processes(uuid: str) -> Optional[list[tuple[int, int]]]:
    """(pid, bytes) of the compute processes other than this one on the device with this UUID (how NVML
    and torch agree on a device whatever CUDA_VISIBLE_DEVICES renumbers); None if NVML cannot tell."""
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        want = uuid.lower().removeprefix("gpu-")
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            found = pynvml.nvmlDeviceGetUUID(handle)
            found = (found.decode() if isinstance(found, bytes) else found).lower().removeprefix("gpu-")
            if want and found == want:
                procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
                return [(p.pid, int(p.usedGpuMemory or 0)) for p in procs if p.pid != os.getpid()]
        return None
    except Exception:
        return None
    finally:
        pynvml.nvmlShutdown()
