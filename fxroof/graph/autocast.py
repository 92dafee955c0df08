"""Autocast written for a GPU, traced where there is none.

A model (or a training step) whose forward runs under `torch.autocast("cuda", ...)` is traced on
CPU fake tensors, where CUDA's autocast turns itself off with a warning and every matmul would
stay in fp32: a silently wrong dtype. While tracing, CUDA autocast runs as CPU autocast of the
same dtype instead, so matrix ops (matmul, linear, convolution, attention) take that dtype as on a
GPU; CPU's policy keeps softmax, norms and losses in their input dtype where CUDA's runs them in
fp32, which the report's note says.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from fxroof.graph.tensors import dtype_name


@contextmanager
def cuda_autocast_as_cpu(seen: list):
    """Within: each autocast region entered appends (device, dtype) to `seen` (torch.export
    keeps a region whole rather than its casts, so capture then takes make_fx's graph), and
    where CUDA is not available, CUDA autocast regions run as CPU autocast of their dtype
    (CUDA's default float16 when none is given)."""
    autocast = torch.amp.autocast_mode.autocast
    original = autocast.__init__

    def __init__(self, device_type, dtype=None, enabled=True, cache_enabled=None):
        if enabled and device_type == "cuda" and not torch.cuda.is_available():
            dtype = dtype or torch.float16
            seen.append(("cuda", dtype))
            device_type = "cpu"
        elif enabled:
            seen.append((device_type, dtype))
        original(self, device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)

    autocast.__init__ = __init__
    try:
        yield
    finally:
        autocast.__init__ = original


def autocast_notes(seen: list) -> tuple:
    names = ", ".join(dict.fromkeys(dtype_name(d) for device, d in seen if device == "cuda"))
    return (f"the forward runs under CUDA autocast ({names}), traced here as CPU autocast: matrix "
            f"ops in {names} as on a GPU, but softmax, norms and losses in their input dtype "
            f"where CUDA's autocast runs them in fp32",) if names else ()
