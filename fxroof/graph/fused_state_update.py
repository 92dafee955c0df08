"""A Mamba layer's decode step (Mamba-1's and Mamba-2's) captured as the one kernel a GPU runs.

Over one new token a Mamba mixer updates its recurrent state once: transformers calls a
module-level `mamba_selective_state_update` (Mamba-1, Falcon-Mamba, Jamba, Zamba) or
`mamba2_selective_state_update` (Mamba-2, Nemotron-H, Bamba, Granite 4, Zamba2, Falcon-H1),
which runs mamba_ssm's `selective_state_update` Triton kernel where that package is installed
and otherwise a dozen small ops (a decay's exponential, the input pushed in, the state written
back, its product with C, the skip and the gate): in eager mode a dozen launches a layer where a
deployment makes one. While a capture runs (fxroof.graph.fused_recurrences) `state_update` below
takes their place: one op that writes the state in place, as the kernel does, costed as it
(fxroof.cost.formulas.recurrent).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _reference(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
    """The output (x's dtype) and new state (fp32) of one step. Mamba-1: state (batch,
    channels, N), x, dt, z (batch, channels), A (channels, N), B, C (batch, N), D, dt_bias
    (channels,). Mamba-2: state (batch, heads, P, N), x, dt (batch, heads, P), A (heads, P, N),
    B, C (batch, groups, N), D, dt_bias (heads, P)."""
    dt = dt.float() + (dt_bias.float() if dt_bias is not None else 0.0)
    if dt_softplus:
        dt = F.softplus(dt)
    if state.dim() == 3:
        B, C = B.float()[:, None, :], C.float()[:, None, :]
    else:   # groups shared by consecutive heads
        heads = state.shape[1]
        B, C = (t.float().repeat_interleave(heads // t.shape[1], dim=1)[:, :, None, :]
                for t in (B, C))
    new = state.float() * torch.exp(dt[..., None] * A.float()) \
        + dt[..., None] * B * x.float()[..., None]
    out = (new * C).sum(-1)
    if D is not None:
        out = out + x.float() * D.float()
    if z is not None:
        out = out * F.silu(z.float())
    return out.to(x.dtype), new


@torch.library.custom_op("fxroof::selective_state_update", mutates_args=("state",), schema=(
    "(Tensor(a!) state, Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C, Tensor? D, "
    "Tensor? z, Tensor? dt_bias, bool dt_softplus) -> Tensor"))
def selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
    """mamba_ssm's selective_state_update: writes the new state into `state`, returns the
    output (x's shape and dtype)."""
    out, new = _reference(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    state.copy_(new)
    return out


@selective_state_update.register_fake
def _(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
    return x.new_empty(x.shape)


OP = torch.ops.fxroof.selective_state_update


def state_update(state, hidden_states, dt, A, B, C, D=None, dt_bias=None, dt_softplus=False,
                 z=None, **_):
    """`mamba_selective_state_update`'s and `mamba2_selective_state_update`'s signature."""
    return OP(state, hidden_states, dt, A, B, C, D, z, dt_bias, bool(dt_softplus))


# transformers' module-level functions it replaces (fxroof.graph.fused_recurrences)
REPLACEMENTS = {"mamba_selective_state_update": state_update,
                "mamba2_selective_state_update": state_update}
