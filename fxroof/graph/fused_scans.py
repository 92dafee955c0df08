"""Mamba's selective scan captured as the one kernel a GPU runs, not as a loop over the tokens.

transformers' Mamba, Falcon-Mamba, Jamba and Zamba call a module-level `mamba_selective_scan`
(modeling_*.py), which runs mamba_ssm's fused CUDA kernel (selective_scan_fn) where that package
is installed, and on CPU or meta tensors a reference loop with a few ops per token and layer: a
graph, an analysis time and a launch count that grow with the prompt (a 64-layer model over
1,024 tokens, some 330,000 ops), none of which a GPU deployment runs. While a capture runs, each
loaded module's `mamba_selective_scan` calls `fxroof::selective_scan` instead
(fxroof.graph.fused_recurrences), one op costed as the fused kernel
(fxroof.cost.formulas.recurrent); restored on exit, the model untouched.

The op's own implementation is the same recurrence, for strategies that trace on real values;
its backward (fxroof::selective_scan_backward, mamba_ssm's backward kernel in a training step)
is that recurrence's vector-Jacobian product.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fxroof.graph.reference_vjp import gradients_like, optional_vjp, present

NAME = "mamba_selective_scan"    # the function transformers' Mamba-1 mixers call


def _reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """y and the last state of the scan, as transformers' loop computes them (differentiable)."""
    if delta_bias is not None:
        delta = delta + delta_bias[:, None].to(delta.dtype)
    if delta_softplus:
        delta = F.softplus(delta)
    decay = torch.exp(A[None, :, None, :] * delta[..., None])               # (b, d, l, n)
    push = delta[..., None] * B.transpose(1, 2)[:, None].float() * u[..., None].float()
    state = u.new_zeros((u.shape[0], u.shape[1], A.shape[-1]), dtype=torch.float32)
    ys = []
    for t in range(u.shape[2]):
        state = decay[:, :, t] * state + push[:, :, t]
        ys.append((state * C[:, None, :, t].float()).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(u.shape, dtype=torch.float32)
    if D is not None:
        y = y + u * D[None, :, None]
    if z is not None:
        y = y * F.silu(z)
    return y.to(u.dtype), state


# The schemas spelled out: inferring them from annotations varies across the torch versions
# fxroof takes (>= 2.5)
@torch.library.custom_op("fxroof::selective_scan", mutates_args=(), schema=(
    "(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, "
    "Tensor? delta_bias, bool delta_softplus, bool return_last_state) -> (Tensor, Tensor)"))
def selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    """u, delta, z: (batch, dim, length); A: (dim, state); B, C: (batch, state, length); D,
    delta_bias: (dim,). Returns y (batch, dim, length) and the last state (batch, dim, state),
    empty unless asked for: mamba_ssm's selective_scan_fn's arguments and results."""
    y, state = _reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return y, state.to(u.dtype) if return_last_state else u.new_empty(0)


OP = torch.ops.fxroof.selective_scan


@selective_scan.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    last = (u.shape[0], u.shape[1], A.shape[-1]) if return_last_state else (0,)
    return u.new_empty(u.shape), u.new_empty(last)


@torch.library.custom_op("fxroof::selective_scan_backward", mutates_args=(), schema=(
    "(Tensor dy, Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, "
    "Tensor? delta_bias, bool delta_softplus) -> "
    "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"))
def selective_scan_backward(dy, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """The gradients of u, delta, A, B, C, D, z and delta_bias (empty for those not given), as
    mamba_ssm's backward kernel returns them; here the reference's vector-Jacobian product."""
    return optional_vjp(lambda *args: _reference(*args, delta_softplus)[0],
                        [u, delta, A, B, C, D, z, delta_bias], dy, u)


BACKWARD = torch.ops.fxroof.selective_scan_backward


@selective_scan_backward.register_fake
def _(dy, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    return gradients_like([u, delta, A, B, C, D, z, delta_bias], u)


def _save(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:8])
    ctx.softplus = inputs[8]


def _backward(ctx, dy, dlast):
    # a training step keeps no cache: nothing reads the last state, whose gradient is not taken
    saved = ctx.saved_tensors
    grads = BACKWARD(dy, *saved, ctx.softplus)
    return (*present(saved, grads), None, None)


selective_scan.register_autograd(_backward, setup_context=_save)


def _scan(hidden_states, dt, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
          return_last_state=False, **_):
    """`mamba_selective_scan`'s signature (its torch-only options ignored: one kernel)."""
    y, last = OP(hidden_states, dt, A, B, C, D, z, delta_bias, bool(delta_softplus),
                 bool(return_last_state))
    return (y, last) if return_last_state else y


# transformers' module-level functions it replaces (fxroof.graph.fused_recurrences)
REPLACEMENTS = {NAME: _scan}
