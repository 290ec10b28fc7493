"""Target cards: named profiles, `auto` (the card in this machine, via pynvml), or a plain GiB figure.

Totals are what the driver reports (nvidia-smi's "MiB" column) for the common retail/cloud models.
`usable_bytes` leaves `headroom` for the desktop's display and other processes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

MiB = 1024 ** 2
GiB = 1024 ** 3
DEFAULT_HEADROOM_MB = 512

CARD_TOTAL_MIB = {
    "rtx4070": 12282, "rtx3060": 12288, "rtx4060ti": 16380, "rtx4080": 16376, "rtx4090": 24564,
    "t4": 15360, "l4": 23034, "a10g": 23028, "a100-40gb": 40960, "a100-80gb": 81920, "h100": 81559,
}
CARD_ALIASES = {"a100": "a100-40gb", "a100-40": "a100-40gb", "a100-80": "a100-80gb", "h100-80gb": "h100",
                "4070": "rtx4070", "rtx-4070": "rtx4070", "4090": "rtx4090", "3060": "rtx3060"}


class CardError(ValueError):
    pass


@dataclass(frozen=True)
class Card:
    name: str
    total_bytes: int
    headroom_bytes: int = DEFAULT_HEADROOM_MB * MiB

    @property
    def usable_bytes(self) -> int:
        return self.total_bytes - self.headroom_bytes

    def describe(self) -> str:
        return (f"{self.name}: {self.total_bytes / GiB:.2f} GiB total, {self.usable_bytes / GiB:.2f} GiB usable "
                f"({self.headroom_bytes / MiB:.0f} MiB headroom)")


def resolve_card(spec: str, headroom_mb: float = DEFAULT_HEADROOM_MB) -> Card:
    """'rtx4070' | 'auto' | '12' / '12GiB' (a plain size) -> Card. Raises CardError naming the spec."""
    key = spec.strip().lower()
    headroom = int(headroom_mb * MiB)
    if headroom < 0:
        raise CardError(f"--headroom-mb: must be >= 0, got {headroom_mb}")
    if key == "auto":
        name, total = detect_card()
        return Card(name, total, headroom)
    size = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(gib|gb|g)?", key)
    if size:
        card = Card(f"{size.group(1)}GiB", int(float(size.group(1)) * GiB), headroom)
    else:
        key = CARD_ALIASES.get(key, key)
        if key not in CARD_TOTAL_MIB:
            raise CardError(f"unknown card {spec!r}: use one of {', '.join(sorted(CARD_TOTAL_MIB))}, "
                            f"'auto', or a size in GiB such as 12")
        card = Card(key, CARD_TOTAL_MIB[key] * MiB, headroom)
    if card.usable_bytes <= 0:
        raise CardError(f"card {spec!r}: headroom {headroom_mb} MiB leaves no usable memory")
    return card


def detect_card(index: int = 0) -> tuple[str, int]:
    """(name, total bytes) of GPU `index`, read with pynvml; CardError if there is none."""
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception as e:
        raise CardError(f"--gpu auto: no NVIDIA GPU found (NVML unavailable: {type(e).__name__}); "
                        f"name a card such as rtx4070 or a size in GiB") from None
    try:
        if pynvml.nvmlDeviceGetCount() <= index:
            raise CardError("--gpu auto: NVML sees no GPU; name a card such as rtx4070 or a size in GiB")
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(handle)
        name = name.decode() if isinstance(name, bytes) else name
        return name, int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
    finally:
        pynvml.nvmlShutdown()


def emulate_card_memory(usable_bytes: float, device) -> float:
    """Cap this process's CUDA caching allocator so the run fits or fails as on a card with
    `usable_bytes` in all (context included). Returns the fraction set. Speed is not emulated."""
    import torch
    from asl_ray.vram.constants import CUDA_CONTEXT_BYTES
    total = torch.cuda.get_device_properties(device).total_memory
    fraction = max(0.01, min(1.0, (usable_bytes - CUDA_CONTEXT_BYTES) / total))
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction
