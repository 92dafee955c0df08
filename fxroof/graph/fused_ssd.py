"""Mamba-2's chunked scan (state space duality, SSD) captured as the kernels a GPU runs, not as
transformers' fallback.

Mamba-2, Nemotron-H, Bamba, Granite 4 (GraniteMoeHybrid), Zamba2 and Falcon-H1 call a
module-level `mamba2_chunk_scan`, which runs mamba_ssm's `mamba_chunk_scan_combined` (five Triton
kernels: the decays' cumulative sums, each chunk's state, the state passing between chunks, the
chunk's C B^T, the output) where that package is installed. On CPU or meta tensors the fallback
computes the same in fp32 with einsums over chunk-by-chunk tensors of C x C scores for every head
(C: the chunk, 256 in Mamba-2's configs): a Mamba-2 2.7B over 8,192 tokens came out at 298 ms on
an H100, three fifths of it this fallback's fp32 einsums and their intermediates, where the kernels
compute the scores once per group in 16 bits. While a capture runs (fxroof.graph.fused_recurrences)
`ssd_scan` below takes its place: one op, costed as mamba_ssm's kernels
(fxroof.cost.formulas.recurrent).

The op's own implementation is the recurrence token by token, which the chunked form computes
exactly; its backward (fxroof::ssd_chunk_scan_backward, mamba_ssm's backward kernels in a training
step) is that recurrence's vector-Jacobian product.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fxroof.graph.reference_vjp import gradients_like, optional_vjp, present


def _reference(x, dt, A, B, C, D, dt_bias, initial_states, dt_softplus, dt_min, dt_max):
    """The output (in x's dtype) and last state (fp32) of the scan, token by token. x: (batch,
    tokens, heads, P); dt: (batch, tokens, heads); A, dt_bias: (heads,); B, C: (batch, tokens,
    groups, N), heads a multiple of groups; D: (heads,) or (heads, P); initial_states: (batch,
    heads, P, N) or None."""
    dtype, heads = x.dtype, x.shape[2]
    dt = dt.float() + (dt_bias.float() if dt_bias is not None else 0.0)
    if dt_softplus:
        dt = F.softplus(dt)
    dt = dt.clamp(dt_min, dt_max)
    B, C = (t.float().repeat_interleave(heads // t.shape[2], dim=2) for t in (B, C))
    x = x.float()
    state = (x.new_zeros(x.shape[0], heads, x.shape[3], B.shape[-1]) if initial_states is None
             else initial_states.float())
    outputs = []
    for t in range(x.shape[1]):
        decay = torch.exp(dt[:, t] * A.float())[..., None, None]
        push = (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        state = state * decay + push
        outputs.append((state * C[:, t, :, None, :]).sum(-1))
    y = torch.stack(outputs, dim=1) if outputs else x.new_zeros(x.shape)
    if D is not None:
        y = y + x * (D.float()[:, None] if D.dim() == 1 else D.float())
    return y.to(dtype), state


@torch.library.custom_op("fxroof::ssd_chunk_scan", mutates_args=(), schema=(
    "(Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C, int chunk_size, Tensor? D, "
    "Tensor? dt_bias, Tensor? initial_states, bool dt_softplus, float dt_min, float dt_max, "
    "bool return_final_states) -> (Tensor, Tensor)"))
def ssd_chunk_scan(x, dt, A, B, C, chunk_size, D, dt_bias, initial_states, dt_softplus, dt_min,
                   dt_max, return_final_states):
    """mamba_ssm's mamba_chunk_scan_combined: the output (batch, tokens, heads, P) in x's dtype
    and the last state (batch, heads, P, N) in fp32, empty unless asked for."""
    y, state = _reference(x, dt, A, B, C, D, dt_bias, initial_states, dt_softplus, dt_min,
                          dt_max)
    return y, state if return_final_states else state.new_empty(0)


@ssd_chunk_scan.register_fake
def _(x, dt, A, B, C, chunk_size, D, dt_bias, initial_states, dt_softplus, dt_min, dt_max,
      return_final_states):
    last = (x.shape[0], x.shape[2], x.shape[3], B.shape[-1]) if return_final_states else (0,)
    return x.new_empty(x.shape), x.new_empty(last, dtype=torch.float32)


@torch.library.custom_op("fxroof::ssd_chunk_scan_backward", mutates_args=(), schema=(
    "(Tensor dy, Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C, int chunk_size, Tensor? D, "
    "Tensor? dt_bias, Tensor? initial_states, bool dt_softplus, float dt_min, float dt_max) -> "
    "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"))
def ssd_chunk_scan_backward(dy, x, dt, A, B, C, chunk_size, D, dt_bias, initial_states,
                            dt_softplus, dt_min, dt_max):
    """The gradients of x, dt, A, B, C, D, dt_bias and the initial states (empty for those not
    given), as mamba_ssm's backward kernels return them; here the reference's vector-Jacobian
    product."""
    return optional_vjp(lambda *args: _reference(*args, dt_softplus, dt_min, dt_max)[0],
                        [x, dt, A, B, C, D, dt_bias, initial_states], dy, x)


@ssd_chunk_scan_backward.register_fake
def _(dy, x, dt, A, B, C, chunk_size, D, dt_bias, initial_states, dt_softplus, dt_min, dt_max):
    return gradients_like([x, dt, A, B, C, D, dt_bias, initial_states], x)


OP = torch.ops.fxroof.ssd_chunk_scan
BACKWARD = torch.ops.fxroof.ssd_chunk_scan_backward


def _save(ctx, inputs, output):
    ctx.save_for_backward(*(inputs[i] for i in (0, 1, 2, 3, 4, 6, 7, 8)))
    ctx.chunk_size = inputs[5]
    ctx.options = inputs[9:12]


def _backward(ctx, dy, dlast):
    # a training step keeps no cache: nothing reads the last state, whose gradient is not taken
    x, dt, A, B, C, D, dt_bias, initial = ctx.saved_tensors
    grads = BACKWARD(dy, x, dt, A, B, C, ctx.chunk_size, D, dt_bias, initial, *ctx.options)
    dx, ddt, dA, dB, dC, dD, dbias, dinitial = present(ctx.saved_tensors, grads)
    return dx, ddt, dA, dB, dC, None, dD, dbias, dinitial, None, None, None, None


ssd_chunk_scan.register_autograd(_backward, setup_context=_save)


def ssd_scan(hidden_states, dt, A, B, C, chunk_size, D=None, dt_bias=None, initial_states=None,
             dt_softplus=False, dt_limit=(0.0, float("inf")), return_final_states=False, **_):
    """`mamba2_chunk_scan`'s signature (mamba_ssm's z gate and varlen options ignored: the
    fallback takes neither)."""
    y, last = OP(hidden_states, dt, A, B, C, int(chunk_size), D, dt_bias, initial_states,
                 bool(dt_softplus), float(dt_limit[0]), float(dt_limit[1]),
                 bool(return_final_states))
    return (y, last) if return_final_states else y


# transformers' module-level functions it replaces (fxroof.graph.fused_recurrences)
REPLACEMENTS = {"mamba2_chunk_scan": ssd_scan}
