"""FLOPs per training sample (counted on real batches), the card's peak, and model FLOPs utilisation.

Counting uses `torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions, attention; elementwise
work and the optimizer are not counted, as is usual for MFU). One correction: torch's formula for
`convolution_backward` ignores `groups`, which makes a depthwise convolution's backward look ~hidden
times too expensive (1.9 GFLOPs instead of 10 MFLOPs per sample at length 64, dim 192); the formula
below counts each gradient as one forward convolution, as for a dense one.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from itertools import islice
from typing import Optional

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from asl_ray.config import TrainConfig
from asl_ray.data.cache import SequenceCache
from asl_ray.data.dataset import SequenceDataset, make_loader, split_of
from asl_ray.model import GISLRModel

aten = torch.ops.aten

# Dense (no sparsity) peaks in TFLOP/s, at the boost clock. "fp16"/"bf16" = tensor cores with fp32
# accumulation (what PyTorch's autocast matmuls use). GeForce cards run fp32-accumulate at HALF their
# fp16-accumulate rate; the data-centre parts (A100, H100/H200, L4, T4) at the full rate. "fp32" = the
# CUDA cores (PyTorch leaves TF32 matmuls off by default). Where a source gives the sparse figure only,
# the dense one is half of it. Each row names its source; the PDFs could not be opened where this was
# written, so every row was cross-checked as SMs x boost clock x per-SM rate (Ada/Ampere GeForce: 512
# dense fp16-with-fp32-accumulate FLOP/clk/SM, 256 fp32 FLOP/clk/SM) and against published copies of
# the tables (e.g. 4090 165.2, 4080 97.4, 4070 58 fp16 tensor).
PEAK_TFLOPS = {
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
    "a100": {"fp16": 312.0, "bf16": 312.0, "fp32": 19.5},
    # NVIDIA H100 datasheet / Hopper whitepaper: SXM5 FP16/BF16 Tensor 1,979 sparse = 989.4 dense,
    # FP32 66.9 ("67"); PCIe 1,513 sparse = 756.5 dense, FP32 51.2 ("51").
    "h100-sxm": {"fp16": 989.4, "bf16": 989.4, "fp32": 66.9},
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
                  (r"\bh100 pcie\b", "h100-pcie"), (r"\bh100\b", "h100-sxm"), (r"\ba100\b", "a100"),
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


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """Each requested gradient (input, weight) costs one forward convolution; w_shape already holds
    in_channels / groups, so grouped and depthwise convolutions come out right."""
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed=transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def flop_counter() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping={aten.convolution_backward: _conv_backward_flop})


@dataclass(frozen=True)
class FlopsPerSample:
    forward: float
    """Forward FLOPs per sample, as executed (padded to the batch as the config pads)."""
    train: float
    """Forward + backward FLOPs per sample (what MFU is measured against)."""
    samples: int
    mean_padded_length: float
    mean_real_length: float

    @property
    def padding_share(self) -> float:
        """Fraction of the executed frames that are padding."""
        return 1 - self.mean_real_length / self.mean_padded_length


def count_flops_per_sample(cfg: TrainConfig, cache: SequenceCache, batches: int = 8) -> FlopsPerSample:
    """Count on `batches` real training batches of `cfg` (its padding, bucketing and max_len), on the CPU."""
    torch.manual_seed(cfg.seed)
    train_idx, _ = split_of(cfg, cache.participants)
    data = SequenceDataset(cache, train_idx, cfg.with_overrides({"num_workers": 0}), train=True)
    loader = make_loader(data, cfg.with_overrides({"num_workers": 0}), train=True, pin_memory=False)
    model = GISLRModel.from_config(cfg, cache.num_classes).train()
    forward = total = 0
    samples = padded = real = 0
    for batch in islice(loader, batches):
        batch = batch.to(torch.device("cpu"))  # as the loop: features_on_device batches hold positions, the model computes the 708
        with flop_counter() as fwd:
            logits = model(batch.x, batch.mask)
        with flop_counter() as bwd:
            torch.nn.functional.cross_entropy(logits.float(), batch.y).backward()
        model.zero_grad(set_to_none=True)
        forward += fwd.get_total_flops()
        total += fwd.get_total_flops() + bwd.get_total_flops()
        samples += len(batch)
        padded += batch.mask.numel()
        real += int(batch.mask.sum())
    return FlopsPerSample(forward=forward / samples, train=total / samples, samples=samples,
                          mean_padded_length=padded / samples, mean_real_length=real / samples)


def measured_matmul_tflops(device: torch.device, precision: str, size: Optional[int] = None,
                           seconds: float = 0.5) -> float:
    """What a large square matmul reaches here: the practical ceiling for a loop of matmuls."""
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    if device.type == "cpu":
        dtype = torch.float32  # CPU runs fp32 (see Runtime)
    size = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b
    sync()
    per_round = 10 if device.type == "cuda" else 1
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(per_round):
            a @ b
        runs += per_round
        sync()
    return 2 * size ** 3 * runs / (time.perf_counter() - started) / 1e12
