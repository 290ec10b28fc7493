"""The VRAM estimator on CPU: exact parameter/optimizer bytes, monotone in the knobs, cached, fit checks."""
from __future__ import annotations

import dataclasses
import json
import time
from itertools import chain

import pytest
import torch

from asl_ray.config import TrainConfig
from asl_ray.model import GISLRModel
from asl_ray.train.optim import make_optimizer
from asl_ray.vram import constants
from asl_ray.vram import estimate as E
from asl_ray.cards import resolve_card
from asl_ray.vram.fit import fits, largest_batch_that_fits

NUM_CLASSES = 20
SMALL = TrainConfig(dim=64, depth=1, max_len=64, batch_size=8, gradient_accumulation_steps=1)


def small(**overrides) -> TrainConfig:
    return dataclasses.replace(SMALL, **overrides)


def estimate(cfg: TrainConfig) -> E.VramEstimate:
    return E.estimate_peak_vram(cfg, NUM_CLASSES)


pytestmark = pytest.mark.usefixtures("private_vram_cache")  # conftest.py: a disk cache of this module's own


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _real_optimizer_state_bytes(cfg: TrainConfig) -> int:
    """Device bytes of the real optimizer after one step (RAdam/AdamW keep `step` on the host on CUDA)."""
    torch.manual_seed(0)
    model = GISLRModel.from_config(cfg, NUM_CLASSES)
    optimizer, lookahead = make_optimizer(model, cfg)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    state = [v for s in optimizer.state.values() for k, v in s.items() if k != "step" and torch.is_tensor(v)]
    return _nbytes(state) + (_nbytes(lookahead.slow) if lookahead else 0)


@pytest.mark.parametrize("optimizer,lookahead", [("radam", True), ("adamw", False)])
def test_parameter_gradient_and_optimizer_bytes_match_the_real_model(optimizer, lookahead):
    cfg = small(optimizer=optimizer, lookahead=lookahead)
    model = GISLRModel.from_config(cfg, NUM_CLASSES)
    parts = estimate(cfg).breakdown
    assert parts["parameters"] == _nbytes(chain(model.parameters(), model.buffers()))
    assert parts["gradients"] == _nbytes(model.parameters())
    assert parts["optimizer_state"] == _real_optimizer_state_bytes(cfg)
    expected_state_copies = 3 if lookahead else 2  # exp_avg, exp_avg_sq (+ slow weights), all fp32
    assert parts["optimizer_state"] == expected_state_copies * _nbytes(model.parameters())


def test_breakdown_parts_are_ordered_and_sum_to_the_total():
    est = estimate(SMALL)
    assert tuple(est.breakdown) == E.PARTS
    assert sum(est.breakdown.values()) == est.total_bytes
    assert all(v >= 0 for v in est.breakdown.values())
    assert est.breakdown["cuda_context"] == constants.CUDA_CONTEXT_BYTES
    assert est.breakdown["activations"] > 0 and est.breakdown["batch"] > 0
    table = est.table()
    assert "MiB" in table and "activations" in table and "total" in table


@pytest.mark.parametrize("field,lo,hi", [("batch_size", 8, 24), ("dim", 32, 64), ("max_len", 64, 128)])
def test_estimate_grows_with_batch_dim_and_max_len(field, lo, hi):
    a, b = estimate(small(**{field: lo})), estimate(small(**{field: hi}))
    assert b.breakdown["activations"] > a.breakdown["activations"]
    assert b.total_bytes > a.total_bytes


def test_batch_size_estimates_from_two_traces_equal_a_direct_trace():
    for b in (3, 5):  # two traces of this shape fit the batch-size template
        estimate(small(max_len=48, batch_size=b))
    templated = estimate(small(max_len=48, batch_size=11))
    assert "2 traced batch sizes" in templated.method
    direct_trace = E.trace_training_step(small(max_len=48, batch_size=11), NUM_CLASSES)
    reserved, at_peak = E.replay_through_allocator(direct_trace)
    assert {k: at_peak.get(k, 0) for k in E._TRACED_PARTS} == {k: templated.breakdown[k] for k in E._TRACED_PARTS}
    assert reserved == sum(templated.breakdown[k] for k in (*E._TRACED_PARTS, "allocator_overhead"))


def test_mixed_precision_shrinks_the_estimate():
    cfg = small(max_len=128, batch_size=16)
    fp32, fp16, bf16 = (estimate(dataclasses.replace(cfg, precision=p)) for p in ("fp32", "fp16", "bf16"))
    for mixed in (fp16, bf16):
        assert mixed.breakdown["activations"] < fp32.breakdown["activations"]
        # fp16 alone adds cuDNN's conv-workspace bound (its own line, tests/test_cudnn_workspace.py).
        assert mixed.total_bytes - mixed.breakdown["cudnn_workspace"] < fp32.total_bytes
        assert mixed.breakdown["autocast_weight_copies"] > 0
    assert fp32.breakdown["autocast_weight_copies"] == 0


def test_gradient_accumulation_does_not_change_the_estimate():
    one, eight = small(gradient_accumulation_steps=1), small(gradient_accumulation_steps=8)
    assert E.cache_key(one, NUM_CLASSES) == E.cache_key(eight, NUM_CLASSES)
    first = estimate(one)
    E.clear_memory_cache()
    recomputed = E._compute(eight, NUM_CLASSES)  # traced afresh, no cache involved
    assert recomputed.total_bytes == first.total_bytes
    assert recomputed.breakdown == first.breakdown


def test_compile_is_accepted_and_adds_its_kernels():
    eager, compiled = estimate(SMALL), estimate(small(compile=True))
    assert compiled.breakdown["torch_compile"] == constants.TORCH_COMPILE_EXTRA_BYTES > 0
    assert compiled.total_bytes == eager.total_bytes + constants.TORCH_COMPILE_EXTRA_BYTES
    assert eager.breakdown["torch_compile"] == 0


def test_results_are_cached_in_memory_and_on_disk():
    cfg = small(batch_size=6)
    first = estimate(cfg)
    started = time.perf_counter()
    again = estimate(cfg)
    assert time.perf_counter() - started < 0.05
    assert again.cache == "memory" and again.total_bytes == first.total_bytes
    assert again.breakdown == first.breakdown

    path = E.cache_file()
    entries = json.loads(path.read_text())["entries"]
    assert E.cache_key(cfg, NUM_CLASSES) in entries
    E.clear_memory_cache()
    from_disk = estimate(cfg)
    assert from_disk.cache == "disk"
    assert from_disk.total_bytes == first.total_bytes and from_disk.breakdown == first.breakdown


def test_a_damaged_cache_file_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("ASL_RAY_CACHE_DIR", str(tmp_path))
    (tmp_path / "vram-estimates.json").write_text("{not json")
    E.clear_memory_cache()
    est = estimate(SMALL)
    assert est.total_bytes > 0
    assert json.loads((tmp_path / "vram-estimates.json").read_text())["entries"]
    E.clear_memory_cache()


def test_cache_dir_follows_xdg_and_the_override(monkeypatch, tmp_path):
    monkeypatch.delenv("ASL_RAY_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert E.cache_file() == tmp_path / "xdg" / "asl_ray" / "vram-estimates.json"
    monkeypatch.setenv("ASL_RAY_CACHE_DIR", str(tmp_path / "mine"))
    assert E.cache_file() == tmp_path / "mine" / "vram-estimates.json"


def _assert_boundary(cfg: TrainConfig, card, largest: int, high: int) -> None:
    if largest == 0:
        assert not fits(dataclasses.replace(cfg, batch_size=1), card, NUM_CLASSES)
        return
    assert fits(dataclasses.replace(cfg, batch_size=largest), card, NUM_CLASSES)
    if largest < high:
        assert not fits(dataclasses.replace(cfg, batch_size=largest + 1), card, NUM_CLASSES)


def test_largest_batch_on_a_tiny_card():
    nothing_fits = resolve_card("1")  # 1 GiB minus 512 MiB headroom: less than the CUDA context needs
    assert largest_batch_that_fits(SMALL, nothing_fits, num_classes=NUM_CLASSES) == 0
    assert not fits(SMALL, nothing_fits, NUM_CLASSES)

    card = resolve_card("1", headroom_mb=0)
    cfg = small(max_len=256)
    largest = largest_batch_that_fits(cfg, card, num_classes=NUM_CLASSES)
    assert 1 <= largest < 512
    _assert_boundary(cfg, card, largest, 512)


def test_largest_batch_of_the_default_config_on_an_rtx4070():
    card = resolve_card("rtx4070")
    cfg = TrainConfig()
    assert fits(cfg, card, NUM_CLASSES)
    largest = largest_batch_that_fits(cfg, card, high=4096, num_classes=NUM_CLASSES)
    assert cfg.batch_size < largest < 4096
    _assert_boundary(cfg, card, largest, 4096)


def test_largest_batch_rejects_a_bad_range():
    with pytest.raises(ValueError):
        largest_batch_that_fits(SMALL, resolve_card("rtx4070"), low=8, high=4)


# ---- two figures, the fit rule, per-architecture workspaces, the real shape sequence ------

def test_fit_verdict_uses_the_least_need_under_free_and_retry_not_the_unconstrained_peak():
    from asl_ray.cards import Card
    cfg = small(max_len=256, batch_size=48)
    est = estimate(cfg)
    assert est.need_bytes <= est.reserved_peak_bytes()
    assert est.fit_bytes() == est.need_bytes + constants.CUDA_CONTEXT_BYTES + est.margin_bytes()
    assert est.margin_bytes() >= constants.FIT_MARGIN_FRACTION * est.need_bytes > 0
    assert est.fit_bytes() < est.total_bytes  # near the limit the allocator releases its cache and retries
    between = Card("between", (est.fit_bytes() + est.total_bytes) // 2, headroom_bytes=0)
    assert fits(cfg, between, NUM_CLASSES)  # the unconstrained peak alone would have said no
    assert not fits(cfg, Card("short", est.fit_bytes() - 1, headroom_bytes=0), NUM_CLASSES)
    table = est.table()
    assert "least need under free-and-retry" in table and "max_memory_reserved" in table


def test_cublas_workspace_follows_the_compute_capability():
    assert constants.cublas_workspace_bytes((8, 9)) == 4096 * 1024 * 2 + 16 * 1024 * 8  # RTX 4070: 8.125 MiB
    assert constants.cublas_workspace_bytes((8, 0)) == constants.CUBLAS_WORKSPACE_BYTES_DEFAULT
    assert constants.cublas_workspace_bytes((9, 0)) == 32 * 2 ** 20  # H100/H200
    assert constants.cublas_workspace_bytes(None) == 32 * 2 ** 20  # unknown: the larger, errs safe
    ada, hopper = (E.estimate_peak_vram(SMALL, NUM_CLASSES, cc) for cc in ((8, 9), (9, 0)))
    per_handle = constants.CUBLAS_WORKSPACE_BYTES_SM90_AND_LATER - constants.CUBLAS_WORKSPACE_BYTES_DEFAULT
    handles = constants.CUBLAS_HANDLES_PER_STEP
    assert hopper.breakdown["cublas_workspace"] - ada.breakdown["cublas_workspace"] == handles * per_handle
    assert E.cache_key(SMALL, NUM_CLASSES, (8, 9)) != E.cache_key(SMALL, NUM_CLASSES, (9, 0))


def test_drawn_lengths_follow_the_padding_mode_and_the_loops_sampler():
    from asl_ray.ladder import length_ladder
    from asl_ray.vram.shapes import drawn_lengths
    cfg = small(max_len=384, batch_size=12)
    assert drawn_lengths(dataclasses.replace(cfg, pad_to="max_len")) == (384,) * 6
    ladder = drawn_lengths(dataclasses.replace(cfg, pad_to="ladder"))
    assert set(ladder) <= set(length_ladder(384)) and len(set(ladder)) > 1
    bucketed = drawn_lengths(dataclasses.replace(cfg, pad_to="ladder", length_bucketing=True))
    assert bucketed != ladder and set(bucketed) <= set(length_ladder(384))
    # A batch larger than an epoch's draws still gives every micro-batch a length (the next epochs).
    assert len(drawn_lengths(dataclasses.replace(cfg, pad_to="ladder", batch_size=4096))) == 6


def test_real_shape_sequence_is_replayed_and_its_fragmentation_reported():
    est = estimate(small(max_len=256, batch_size=16, pad_to="ladder"))
    assert "lengths " in est.method and "eval" in est.method
    assert est.breakdown["fragmentation"] >= 0
    assert sum(est.breakdown.values()) == est.total_bytes
    fixed_only = estimate(small(max_len=256, batch_size=16, pad_to="max_len"))
    # Same tensors at max_len: the breakdown's traced parts agree; only the sequence's extra differs.
    assert {k: est.breakdown[k] for k in E._TRACED_PARTS} == {k: fixed_only.breakdown[k] for k in E._TRACED_PARTS}


def test_reduce_overhead_compile_adds_static_inputs_per_captured_shape_and_the_stable_grads():
    from asl_ray.ladder import length_ladder
    cfg = small(compile=True, pad_to="ladder")
    default = estimate(cfg)
    graphs = estimate(dataclasses.replace(cfg, compile_mode="reduce-overhead"))
    shapes = len(length_ladder(cfg.max_len))
    extra = shapes * default.breakdown["batch"] + default.breakdown["parameters"]  # .grad kept all run long
    assert graphs.breakdown["torch_compile"] - default.breakdown["torch_compile"] == extra
    assert graphs.fit_bytes() - default.fit_bytes() == extra
    assert "CUDA graphs" in graphs.method


def test_the_verdict_replays_at_the_cards_own_limit():
    from asl_ray.cards import Card
    from asl_ray.vram.fit import fits_within
    cfg = small(max_len=128, batch_size=24)
    est = estimate(cfg)
    usable = est.fit_bytes()
    limit = usable - est.fixed_bytes() - est.margin_bytes()
    assert limit == est.need_bytes  # at exactly the fit figure the cap is the least need ...
    assert E.runs_within(cfg, NUM_CLASSES, None, limit)  # ... which the replay runs within
    assert fits_within(cfg, usable, NUM_CLASSES) == (True, est.fit_bytes())
    assert not E.runs_within(cfg, NUM_CLASSES, None, est.need_bytes - 4 * 2 ** 20)
    assert fits(cfg, Card("exact", usable, headroom_bytes=0), NUM_CLASSES)


def test_a_fresh_process_reads_the_fit_verdict_from_disk_without_tracing(monkeypatch):
    """The search's driver answers every plan's fit before launch; the trial's worker, a fresh process, must
    get the same verdict from the disk cache instead of tracing again (that cost ~8 s a trial)."""
    from asl_ray.vram.fit import fits_within
    cfg = small(batch_size=6)
    usable = 4 * 1024 * constants.MiB
    first = fits_within(cfg, usable, NUM_CLASSES)
    assert first[0]  # a verdict that needs the capped replay too, not only the estimate
    E.clear_memory_cache()  # as a new process: nothing in memory, the disk file re-read

    def no_tracing(*args, **kwargs):
        raise AssertionError("traced although the answer was on disk")
    monkeypatch.setattr(E, "_trace_for", no_tracing)
    assert fits_within(cfg, usable, NUM_CLASSES) == first
