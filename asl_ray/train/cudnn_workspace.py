"""The cap on cuDNN's convolution workspace, which makes its memory a bound the VRAM estimate can count."""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

CUDNN_WORKSPACE_CAP_ENV = "CUDNN_CONV_WSCAP_DBG"
"""PyTorch's documented variable (docs: CUDA environment variables): cuDNN workspace per allocation, in MiB."""


def cap_cudnn_workspace(cap_mb: int) -> None:
    """Set the cap for this process. cuDNN reads it when it plans a convolution, so it must be in place before
    the first CUDA convolution; a different value already in the environment is replaced (TrainConfig is the
    single source of truth, and the VRAM estimate counts the config's cap), with a warning."""
    current = os.environ.get(CUDNN_WORKSPACE_CAP_ENV)
    if current is not None and current != str(cap_mb):
        log.warning("%s=%s in the environment replaced by cudnn_workspace_cap_mb=%d",
                    CUDNN_WORKSPACE_CAP_ENV, current, cap_mb)
    os.environ[CUDNN_WORKSPACE_CAP_ENV] = str(cap_mb)
