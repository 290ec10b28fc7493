"""Each fewer-launches switch computes what the path it replaces computed; and the winner's attention scale."""
import copy
import math

import numpy as np
import pytest
import torch

from asl_ray.config import ConfigError, TrainConfig
from asl_ray.data import features as F
from asl_ray.data.dataset import SequenceDataset, make_loader, pad_to_batch_max
from asl_ray.model import GISLRModel, MultiHeadSelfAttention
from asl_ray.train.loop import TrainStep, accumulation_window
from asl_ray.train.optim import make_optimizer
from asl_ray.train.runtime import Runtime

CPU = Runtime(device=torch.device("cpu"), precision="fp32", pin_memory=False)


@pytest.mark.parametrize("name", ["foreach_optimizer", "features_on_device", "persistent_workers"])
def test_switches_are_validated_bool_fields(name):
    assert getattr(TrainConfig(), name) in (False, True)
    with pytest.raises(ConfigError, match=name):
        TrainConfig(**{name: "yes"})


def _trained_params(optimizer: str, foreach: bool, steps: int = 6):
    cfg = TrainConfig(dim=16, depth=1, num_heads=2, batch_size=3, gradient_accumulation_steps=2, drop_path=0.0,
                      attn_dropout=0.0, late_dropout=0.0, optimizer=optimizer, lookahead=True,
                      gradient_clip_val=0.05, foreach_optimizer=foreach,  # a clip that bites
                      host_step_counts=False)  # torch's RAdam, looped or foreach
    torch.manual_seed(0)
    model = GISLRModel.from_config(cfg, 5)
    opt, _ = make_optimizer(model, cfg)
    step = TrainStep(model, opt, CPU.grad_scaler(), CPU, cfg)
    g = torch.Generator().manual_seed(1)
    n = steps * 2
    for i in range(n):  # 6 steps: Lookahead (k=5) syncs its slow weights once
        batch = pad_to_batch_max([(torch.randn(9, 708, generator=g).numpy(), j % 5) for j in range(3)], 9)
        step(batch, *accumulation_window(i, n, 2))
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("optimizer", ["radam", "adamw"])
def test_foreach_optimizer_gives_the_same_weights(optimizer):
    loop, multi = _trained_params(optimizer, False), _trained_params(optimizer, True)
    for a, b in zip(loop, multi):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def _random_points(t, seed):
    rng = np.random.default_rng(seed)
    pts = rng.normal(0.5, 0.2, (t, F.NUM_POINTS, 2)).astype(np.float32)
    pts[rng.random((t, F.NUM_POINTS)) < 0.3] = np.nan  # missing points, as in real landmarks
    if t > 3:
        pts[1, :21] = np.nan  # a hand missing for a frame
    return pts


def test_motion_features_on_device_equal_the_host_features_bit_for_bit():
    points = [_random_points(t, seed=t) for t in (1, 2, 3, 17, 40)]
    for length in (40, 48):  # to the batch maximum and with extra padding (a ladder rung)
        host = pad_to_batch_max([(F.sequence_features(p), 0) for p in points], length)
        sent = pad_to_batch_max([(F.sequence_positions(p), 0) for p in points], length, positions_only=True)
        assert sent.x.shape[-1] == 236 and sent.x.numel() * 3 == host.x.numel()
        on_device = sent.to(torch.device("cpu"))
        assert on_device.positions_only and torch.equal(on_device.mask, host.mask)
        features = F.motion_features(on_device.x, on_device.mask)
        assert features.shape == host.x.shape and torch.equal(features, host.x)


def _first_batches(cache, cfg, epochs=2):
    train_idx = np.arange(len(cache.labels))[:24]
    data = SequenceDataset(cache, train_idx, cfg, train=True)
    loader = make_loader(data, cfg, train=True, pin_memory=False)
    out = []
    for epoch in range(epochs):
        data.set_epoch(epoch)
        loader.batch_sampler.set_epoch(epoch)
        out.append([b.to(torch.device("cpu")) for b in loader])
    return out


def test_features_on_device_through_the_loader_equal_the_host_path(synth_cache):
    cfg = TrainConfig(batch_size=8, num_workers=0, max_len=64)
    host = _first_batches(synth_cache, cfg, epochs=1)[0]
    device = _first_batches(synth_cache, cfg.with_overrides({"features_on_device": True}), epochs=1)[0]
    model = GISLRModel(10, dim=32, depth=1).eval()
    for a, b in zip(host, device):
        assert b.positions_only and torch.equal(F.motion_features(b.x, b.mask), a.x) and torch.equal(a.y, b.y)
        # the model takes the positions and computes the same features itself
        torch.testing.assert_close(model(b.x, b.mask), model(a.x, a.mask), rtol=0, atol=0)


def test_persistent_workers_see_each_new_epoch(synth_cache):
    """A persistent worker keeps its dataset copy: the epoch must reach it, or epoch 0's augmentations repeat."""
    cfg = TrainConfig(batch_size=8, num_workers=0, max_len=64)
    reference = _first_batches(synth_cache, cfg)
    persistent = _first_batches(synth_cache, cfg.with_overrides({"num_workers": 1, "persistent_workers": True}))
    for epoch in range(2):
        for a, b in zip(reference[epoch], persistent[epoch]):
            assert torch.equal(a.x, b.x), f"epoch {epoch}"


def test_attention_scales_logits_by_the_full_width():
    torch.manual_seed(0)
    dim, heads, b, t = 16, 4, 2, 6
    attn = MultiHeadSelfAttention(dim, heads, dropout=0.0).eval()
    x = torch.randn(b, t, dim)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 4:] = False

    def by_hand(scale):
        q, k, v = attn.qkv(x).view(b, t, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        logits = (q @ k.transpose(-1, -2)) * scale
        logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
        out = logits.softmax(-1) @ v
        return attn.proj(out.transpose(1, 2).reshape(b, t, dim))

    with torch.no_grad():
        got = attn(x, mask)
        torch.testing.assert_close(got, by_hand(dim ** -0.5), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(got, by_hand(1 / math.sqrt(dim // heads)), atol=1e-4)


def _textbook_masked_batchnorm(x, mask, weight, bias, eps):
    real = x[mask]  # (frames, C): the statistics see real frames only
    mean, var = real.mean(0), real.var(0, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def test_masked_batchnorm_matches_the_textbook_formula_forward_and_backward():
    from asl_ray.model import _MaskedBatchNormFn
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 5, dtype=torch.float64, generator=g, requires_grad=True)
    mask = torch.rand(3, 7, generator=g) > 0.3
    w = torch.randn(5, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, generator=g, requires_grad=True)
    gy = torch.randn(3, 7, 5, dtype=torch.float64, generator=g)
    ours = _MaskedBatchNormFn.apply(x, mask, w, b, 1e-3)[0]
    ref = _textbook_masked_batchnorm(x, mask, w, b, 1e-3)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    got = torch.autograd.grad(ours, (x, w, b), gy)
    want = torch.autograd.grad(ref, (x, w, b), gy)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_masked_batchnorm_training_step_launches_at_most_34_ops():
    from asl_ray.ablate.launches import count_dispatched
    from asl_ray.model import MaskedBatchNorm
    bn = MaskedBatchNorm(8).train()
    x = torch.randn(3, 5, 8, requires_grad=True)
    mask = torch.rand(3, 5) > 0.3
    y = torch.randn(3, 5, 8)
    harness = count_dispatched(lambda: (x * y).sum().backward())  # the loss around it, counted alone
    x.grad = None
    total = count_dispatched(lambda: (bn(x, mask) * y).sum().backward())
    assert total.launches() - harness.launches() <= 34  # the previous version: 46
