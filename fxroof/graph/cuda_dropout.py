"""Dropout in a training step as a GPU runs it, traced where there is none.

`F.dropout` in training mode is one kernel on a GPU and three on a CPU. ATen's `dropout` calls
the fused `native_dropout` (its output and a one-byte mask written together; one
`native_dropout_backward` multiplies the gradient by the mask) only for CUDA and other device
tensors, 0 < p < 1 and a non-empty input (`is_fused_kernel_acceptable`,
aten/src/ATen/native/Dropout.cpp); any other tensor, a CPU's or the fake ones a step is traced on,
takes `_dropout_impl`: a noise tensor of the input's dtype filled by `bernoulli_`, divided by
1 - p, multiplied into the input, and saved for the backward's own multiply. Traced on fake
tensors for a GPU, a BERT step's attention dropout was three fp32 passes and a fp32 mask over
every score. Within `cuda_dropout()`, F.dropout takes the fused op where CUDA's ATen would.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F


@contextmanager
def cuda_dropout():
    """Within: F.dropout(x, p, training=True) with 0 < p < 1 on a non-empty tensor traces as
    CUDA's fused native_dropout; every other call as before."""
    original = F.dropout

    def dropout(input, p=0.5, training=True, inplace=False):
        if not (training and 0 < p < 1 and isinstance(input, torch.Tensor) and input.numel()):
            return original(input, p, training, inplace)
        out = torch.native_dropout(input, p, True)[0]
        return input.copy_(out) if inplace else out

    F.dropout = dropout
    try:
        yield
    finally:
        F.dropout = original
