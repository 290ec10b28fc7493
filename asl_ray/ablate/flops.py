"""FLOPs per training sample (counted on real batches), the card's peak, and model FLOPs utilisation.

Counting uses `torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions, attention; elementwise
work and the optimizer are not counted, as is usual for MFU). One correction: torch's formula for
`convolution_backward` ignores `groups`, which makes a depthwise convolution's backward look ~hidden
times too expensive (1.9 GFLOPs instead of 10 MFLOPs per sample at length 64, dim 192); the formula
below counts each gradient as one forward convolution, as for a dense one.
"""
from __future__ import annotations

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
