"""Dropout in a training step as a GPU runs it, traced where there is none.

`F.dropout` in training mode is one kernel on a GPU and three on a CPU. ATen's `dropout` calls
the fused `native_dropout` (its output and a one-byte mask written together; one
`native_dropout_backward` multiplies the gradient by the mask) only for CUDA and other device
tensors, 0 < p < 1 and a non-empty input (`is_fused_kernel_acceptable`,
aten/src/ATen/native/Dropout.cpp); any other tensor, a CPU's or the fake ones a step is traced on,
takes `_dropout_impl`: a noise tensor of the input's dtype filled by `bernoulli_`, divided by
1 - p, multiplied into the input, and saved for the backward's own multiply. Traced on fake
tensors for a GPU, a BERT step's attention dropout was three fp32 passes and a fp32 mask over
every attention score.

`F.scaled_dot_product_attention` with dropout is the same story one level up: the CPU's flash
kernel takes no dropout (sdp_utils_cpp.cpp, check_for_dropout), so a CPU trace runs the math
path, the scores and a dropout mask in memory, where CUDA's flash and memory-efficient kernels
draw the dropout inside the kernel from a seed (sdp_utils.cpp: both accept dropout_p, the
memory-efficient one in fp32 and with a mask). Within `cuda_dropout()` such a call traces as the
fused kernel that stands for CUDA's in every GPU trace, the CPU flash op, given its dropout_p.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from fxroof.graph.attention_path import FUSED_RANK

CPU_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default


@contextmanager
def cuda_dropout():
    """Within: F.dropout(x, p, training=True) with 0 < p < 1 on a non-empty tensor, not in
    place, traces as CUDA's fused native_dropout, and F.scaled_dot_product_attention with
    dropout as a fused attention kernel, where CUDA's ATen would; every other call as before."""
    dropout, attention = F.dropout, F.scaled_dot_product_attention

    def fused_dropout(input, p=0.5, training=True, inplace=False):
        # ATen's in-place dropout_ has no fused path on any device: it keeps the three ops
        if inplace or not (training and 0 < p < 1 and isinstance(input, torch.Tensor)
                           and input.numel()):
            return dropout(input, p, training, inplace)
        return torch.native_dropout(input, p, True)[0]

    def fused_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                        scale=None, enable_gqa=False):
        shaped = all(isinstance(t, torch.Tensor) and t.dim() == FUSED_RANK
                     for t in (query, key, value))
        if not (0 < dropout_p < 1 and shaped and query.shape[1] == key.shape[1] == value.shape[1]
                and (attn_mask is None or isinstance(attn_mask, torch.Tensor))):
            return attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                             is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            # as ATen's front end does before any fused kernel (convert_boolean_attn_mask)
            attn_mask = torch.where(attn_mask.logical_not(),
                                    torch.full((), float("-inf"), dtype=query.dtype,
                                               device=query.device),
                                    torch.zeros((), dtype=query.dtype, device=query.device))
        return CPU_FLASH(query, key, value, dropout_p, is_causal, attn_mask=attn_mask,
                         scale=scale)[0]

    F.dropout, F.scaled_dot_product_attention = fused_dropout, fused_attention
    try:
        yield
    finally:
        F.dropout, F.scaled_dot_product_attention = dropout, attention
