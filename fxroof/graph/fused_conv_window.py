"""A decode step's short causal convolution captured as the one kernel a GPU runs.

Mamba's, Mamba-2's, the gated delta rule's and LFM2's mixers run a depthwise causal convolution
of a few taps before their recurrence; over one new token they shift its window of past inputs
by one and convolve it. transformers calls a module-level `causal_conv1d_update`, which runs the
causal-conv1d package's kernel where it is installed and otherwise four ops (the window and the
token joined, the window written back, the convolution, its activation): four launches a layer in
eager mode where a deployment makes one. While a capture runs (fxroof.graph.fused_recurrences)
`conv_update` below takes their place: one op that writes the window in place, as the kernel does
(fxroof.cost.formulas.recurrent).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _reference(conv_state, x, weight, bias, activation):
    """The output (x's dtype) and the shifted window of one step, as transformers' fallback
    computes them. conv_state: (batch, channels, window); x: (batch, channels, tokens); weight:
    (channels, taps); bias: (channels,) or None; activation: a transformers activation name."""
    joined = torch.cat([conv_state, x], dim=-1).to(weight.dtype)
    out = F.conv1d(joined, weight.unsqueeze(1), bias, padding=0, groups=x.shape[1])
    out = out[:, :, -x.shape[-1]:]
    if activation is not None:
        from transformers.activations import ACT2FN    # the names transformers' configs give
        out = ACT2FN[activation](out)
    return out.to(x.dtype), joined[:, :, -conv_state.shape[-1]:]


@torch.library.custom_op("fxroof::causal_conv1d_update", mutates_args=("conv_state",), schema=(
    "(Tensor(a!) conv_state, Tensor x, Tensor weight, Tensor? bias, str? activation) -> Tensor"))
def causal_conv1d_update(conv_state, x, weight, bias, activation):
    """causal-conv1d's causal_conv1d_update: shifts the window in `conv_state` by the new tokens,
    returns the convolution's output (x's shape and dtype)."""
    out, window = _reference(conv_state, x, weight, bias, activation)
    conv_state.copy_(window)
    return out


@causal_conv1d_update.register_fake
def _(conv_state, x, weight, bias, activation):
    return x.new_empty(x.shape)


OP = torch.ops.fxroof.causal_conv1d_update


def conv_update(hidden_states, conv_state, weight, bias=None, activation=None, **_):
    """transformers' `causal_conv1d_update` signature."""
    return OP(conv_state, hidden_states, weight, bias, activation)


# transformers' module-level functions it replaces (fxroof.graph.fused_recurrences)
REPLACEMENTS = {"causal_conv1d_update": conv_update}
