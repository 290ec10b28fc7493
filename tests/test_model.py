import pytest
import torch

from asl_ray.config import TrainConfig
from asl_ray.model import GISLRModel, MaskedBatchNorm, _MaskedBatchNormFn, count_parameters


def test_reference_size_is_about_1_84_million_parameters():
    model = GISLRModel.from_config(TrainConfig(), num_classes=250)
    trainable = count_parameters(model)
    with_bn_stats = trainable + sum(b.numel() for b in model.buffers())
    assert abs(trainable - 1.84e6) / 1.84e6 < 0.01
    assert abs(with_bn_stats - 1.84e6) / 1.84e6 < 0.005  # Keras counts BN moving stats too


def test_layout_depth_follows_config():
    model = GISLRModel.from_config(TrainConfig(dim=384, depth=4, batch_size=8), num_classes=250)
    assert len(model.blocks) == 16
    assert count_parameters(model) > 4 * 1.84e6


def test_masked_batchnorm_backward_matches_numerical_gradient():
    x = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: _MaskedBatchNormFn.apply(x, mask, w, b, 1e-3)[0], (x, w, b))


def test_masked_batchnorm_statistics_ignore_padding():
    bn = MaskedBatchNorm(3).train()
    real = torch.randn(2, 4, 3)
    padded = torch.cat([real, torch.full((2, 6, 3), 1e4)], dim=1)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[:, :4] = True
    out = bn(padded, mask)
    ref = torch.nn.functional.batch_norm(real.reshape(-1, 3), None, None, training=True, eps=bn.eps)
    torch.testing.assert_close(out[:, :4].reshape(-1, 3), ref, rtol=1e-4, atol=1e-4)


def _padding_pair(model):
    x = torch.randn(2, 10, 708)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 6:] = False
    x[1, 6:] = 0
    xp = torch.cat([x, 100 * torch.randn(2, 7, 708)], dim=1)  # garbage in the padding must not matter
    mp = torch.zeros(2, 17, dtype=torch.bool)
    mp[:, :10] = mask
    return model(x, mask), model(xp, mp)


def test_padding_does_not_change_output_in_eval():
    torch.manual_seed(0)
    a, b = _padding_pair(GISLRModel(20).eval())
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_padding_does_not_change_output_in_training_mode():
    torch.manual_seed(0)
    model = GISLRModel(20, drop_path=0.0, attn_dropout=0.0, late_dropout=0.0).train()
    a, b = _padding_pair(model)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_padding_up_to_the_ladder_rung_is_inert():
    from asl_ray.data.dataset import pad_to_batch_max
    torch.manual_seed(0)
    samples = [(torch.randn(n, 708).numpy(), 0) for n in (21, 13, 30)]
    exact = TrainConfig(max_len=384, pad_to="batch_max").pad_length(30)
    rung = TrainConfig(max_len=384, pad_to="ladder").pad_length(30)
    assert (exact, rung) == (30, 32)
    model = GISLRModel(20, dim=32, depth=1, drop_path=0.0, attn_dropout=0.0, late_dropout=0.0)
    for mode in (model.train, model.eval):
        mode()
        a, b = (pad_to_batch_max(samples, n) for n in (exact, rung))
        torch.testing.assert_close(model(a.x, a.mask), model(b.x, b.mask), rtol=1e-5, atol=1e-5)


def test_depthwise_conv_is_causal():
    from asl_ray.model import causal_depthwise_conv
    h, w = torch.randn(3, 23, 8), torch.randn(8, 1, 5)
    out = causal_depthwise_conv(h, w)
    assert out.shape == h.shape
    assert torch.equal(out[:, 0], h[:, 0] * w[:, 0, -1])  # frame 0 sees only itself
    later = h.clone()
    later[:, 10:] += 1.0
    torch.testing.assert_close(causal_depthwise_conv(later, w)[:, :10], out[:, :10])  # nor any later frame


@pytest.mark.slow
def test_compiled_model_does_not_recompile_for_new_lengths():
    # Batches are padded to their longest sequence, so lengths vary batch to batch; a recompile per
    # length (8 of them and dynamo falls back to eager) would make compile=True slower than eager.
    import torch._dynamo
    from asl_ray.model import GISLRModel
    torch._dynamo.reset()
    model = GISLRModel.from_config(TrainConfig(dim=32, depth=1, max_len=128, drop_path=0.0, attn_dropout=0.0,
                                               late_dropout=0.0), 5)  # no dropout: outputs compare
    compiled = torch.compile(model, dynamic=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for length in (17, 29, 40):
            x, mask = torch.randn(2, length, 708), torch.ones(2, length, dtype=torch.bool)
            mask[1, length // 2:] = False
            out = compiled(x, mask)
            out.sum().backward()
            torch.testing.assert_close(out, model(x, mask), rtol=1e-4, atol=1e-4)


def test_with_targets_the_model_returns_its_label_smoothed_loss_in_fp32():
    torch.manual_seed(0)
    model = GISLRModel(7, dim=32, depth=1, label_smoothing=0.25).eval()
    x, mask, y = torch.randn(3, 12, 708), torch.ones(3, 12, dtype=torch.bool), torch.tensor([0, 3, 6])
    logits = model(x, mask)
    loss = model(x, mask, y)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.25))
    assert not torch.allclose(loss, torch.nn.functional.cross_entropy(logits, y))  # the smoothing is applied
