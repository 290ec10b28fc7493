"""The cuDNN conv workspace is bounded, not guessed: the run caps it (CUDNN_CONV_WSCAP_DBG) and the VRAM
estimate adds exactly that cap, to the unconstrained peak and to the need, where cuDNN runs the conv."""
from __future__ import annotations

import dataclasses
import logging
import os

import pytest

from asl_ray.config import ConfigError, TrainConfig
from asl_ray.train.cudnn_workspace import CUDNN_WORKSPACE_CAP_ENV, cap_cudnn_workspace
from asl_ray.vram import constants
from asl_ray.vram import estimate as E
from asl_ray.vram.constants import MiB

SMALL = TrainConfig(dim=32, depth=1, max_len=32, batch_size=4, gradient_accumulation_steps=1)


pytestmark = pytest.mark.usefixtures("private_vram_cache")  # conftest.py: a disk cache of this module's own


@pytest.mark.parametrize("precision,channels,cap,expected_mib", [
    ("fp16", 64, 64, 64),
    ("fp16", 64, 63, 64),  # a block above 10 MiB is rounded up to 2 MiB
    ("fp16", 32, 1, 2),
    ("fp16", 31, 64, 0),   # under 32 channels ATen runs its own depthwise kernel, not cuDNN
    ("bf16", 64, 64, 0),   # use_cudnn_depthwise admits fp16 only
    ("fp32", 64, 64, 0),
    ("fp16", 64, 0, 0),    # a zero cap leaves only workspace-free algorithms
])
def test_bound_is_the_cap_where_cudnn_runs_the_conv(precision, channels, cap, expected_mib):
    assert constants.cudnn_workspace_bound_bytes(precision, channels, cap) == expected_mib * MiB


def test_the_estimate_adds_the_cap_to_peak_and_need_and_nothing_else():
    capped = E.estimate_peak_vram(dataclasses.replace(SMALL, cudnn_workspace_cap_mb=64), 20)
    none = E.estimate_peak_vram(dataclasses.replace(SMALL, cudnn_workspace_cap_mb=0), 20)
    assert capped.breakdown["cudnn_workspace"] == 64 * MiB and none.breakdown["cudnn_workspace"] == 0
    assert capped.total_bytes - none.total_bytes == 64 * MiB
    assert capped.need_bytes - none.need_bytes == 64 * MiB
    assert capped.reserved_peak_bytes() - none.reserved_peak_bytes() == 64 * MiB  # allocator memory, not fixed
    assert {k: v for k, v in capped.breakdown.items() if k != "cudnn_workspace"} == \
        {k: v for k, v in none.breakdown.items() if k != "cudnn_workspace"}
    assert "cuDNN conv workspace" in capped.table()


def test_fp32_is_unaffected_by_the_cap():
    fp32 = dataclasses.replace(SMALL, precision="fp32")
    a = E.estimate_peak_vram(dataclasses.replace(fp32, cudnn_workspace_cap_mb=64), 20)
    b = E.estimate_peak_vram(dataclasses.replace(fp32, cudnn_workspace_cap_mb=512), 20)
    assert a.breakdown["cudnn_workspace"] == 0 and a.total_bytes == b.total_bytes and a.need_bytes == b.need_bytes


def test_the_run_sets_the_cap_for_the_process(monkeypatch, caplog):
    monkeypatch.delenv(CUDNN_WORKSPACE_CAP_ENV, raising=False)
    cap_cudnn_workspace(64)
    assert os.environ[CUDNN_WORKSPACE_CAP_ENV] == "64"
    with caplog.at_level(logging.WARNING, logger="asl_ray.train.cudnn_workspace"):
        cap_cudnn_workspace(128)  # a different value in the environment is replaced, loudly
    assert os.environ[CUDNN_WORKSPACE_CAP_ENV] == "128" and "replaced by cudnn_workspace_cap_mb=128" in caplog.text


def test_a_negative_cap_names_the_key():
    with pytest.raises(ConfigError, match="cudnn_workspace_cap_mb: must be >= 0"):
        TrainConfig(cudnn_workspace_cap_mb=-1)
