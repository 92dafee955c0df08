"""Recurrent layers (aten.lstm, gru, rnn_tanh, rnn_relu: every layer, direction and time step in
one op), costed as the matrix products they run plus the gates' pointwise work.

Each weight matrix of `params` (per layer and direction: the input projection (gates*H, in), the
hidden one (gates*H, H or proj_size), and with proj_size the projection (proj_size, H)) multiplies
one vector per token: 2 * tokens * rows * cols FLOPs, biases not counted (PyTorch's convention).
On top, per token, layer, direction and hidden unit, the gate work (counts beside _GATES).
Tokens: batch * steps for padded input, the packed length for a PackedSequence (the .data form).
"""
from __future__ import annotations

import torch

from fxroof.cost.formulas.registry import OpCall, formula
from fxroof.graph import fused_scans
from fxroof.graph.tensors import numel

aten = torch.ops.aten

# (gate blocks in the stacked weights, gate FLOPs per token and hidden unit)
_GATES = {
    # sum the two projections (4 gates), 3 sigmoids + 1 tanh, c = f*c + i*g (3), h = o*tanh(c) (2)
    "lstm": (4, 13),
    # sum the projections of r and z (2), 2 sigmoids, n = tanh(x_n + r*h_n) (3),
    # h = (1 - z)*n + z*h (4)
    "gru": (3, 11),
    # sum the two projections, the activation
    "rnn_tanh": (1, 2), "rnn_relu": (1, 2),
}


@formula(aten.lstm, aten.gru, aten.rnn_tanh, aten.rnn_relu, category="matmul")
def recurrent(call: OpCall):
    x = call.args[0]
    tokens = numel(x) // int(x.shape[-1])
    matrices = [w for w in call.get("params") if w.dim() == 2]
    blocks, per_unit = _GATES[call.op.overloadpacket.__name__]
    hidden = int(matrices[1].shape[0]) // blocks     # the first hidden-to-hidden weight
    runs = int(call.get("num_layers")) * (2 if call.get("bidirectional") else 1)
    return 2 * tokens * sum(numel(w) for w in matrices) + per_unit * tokens * hidden * runs


# oneDNN's one layer, one direction of a recurrent layer (what an LSTM's CPU path calls once the
# layer is decomposed); mode numbers cuDNN's: 0 relu, 1 tanh, 2 LSTM, 3 GRU.
_MODES = ("rnn_relu", "rnn_tanh", "lstm", "gru")


@formula(aten.mkldnn_rnn_layer, category="matmul")
def mkldnn_rnn_layer(call: OpCall):
    x = call.args[0]
    tokens = numel(x) // int(x.shape[-1])
    per_unit = _GATES[_MODES[int(call.get("mode"))]][1]
    weights = numel(call.get("weight0")) + numel(call.get("weight1"))
    return 2 * tokens * weights + per_unit * tokens * int(call.get("hidden_size"))


def _scan_work(call: OpCall) -> tuple[int, int]:
    """(state elements, per-token work) of a selective scan's call: batch x channels x tokens x
    state size, and batch x channels x tokens times the FLOPs of dt's bias (1) and softplus (1),
    D * u added (2) and the gate's silu and product (2), where given."""
    u, a = call.get("u"), call.get("A")
    tokens = numel(u)                                        # batch x channels x tokens
    extra = sum(n for n, given in ((1, call.get("delta_bias") is not None),
                                   (1, bool(call.get("delta_softplus"))),
                                   (2, call.get("D") is not None),
                                   (2, call.get("z") is not None)) if given)
    return tokens * int(a.shape[-1]), extra * tokens


@formula(fused_scans.OP, category="other")
def selective_scan(call: OpCall):
    """mamba_ssm's selective scan, one kernel (fxroof.graph.fused_scans): per batch, channel,
    token and state element, decay = exp(A * dt) (2), push = dt * B * u (2), h = decay * h +
    push (2), y += C * h (2); the per-token work once (_scan_work), one FLOP each as pointwise
    ops count. Bytes: inputs read and outputs written once, the state kept on chip."""
    elements, per_token = _scan_work(call)
    return 8 * elements + per_token


@formula(fused_scans.BACKWARD, category="other")
def selective_scan_backward(call: OpCall):
    """The scan's backward, one kernel (mamba_ssm's), counted by hand from the recurrence: per
    state element, the states recomputed (decay, push, update: 6), the reverse recurrence dh =
    decay * dh + C * dy (3), C's gradient h * dy summed (2), the decay's to A and dt (dh *
    h_prev, times decay, times dt or A, summed: 7), the push's to B, dt and u (9): 27; the
    per-token work twice."""
    elements, per_token = _scan_work(call)
    return 27 * elements + 2 * per_token
