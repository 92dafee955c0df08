"""Recurrent layers (aten.lstm, gru, rnn_tanh, rnn_relu: every layer, direction and time step in
one op), costed as the matrix products they run plus the gates' pointwise work.

Each weight matrix of `params` (per layer and direction: the input projection (gates*H, in), the
hidden one (gates*H, H or proj_size), and with proj_size the projection (proj_size, H)) multiplies
one vector per token: 2 * tokens * rows * cols FLOPs, biases not counted (PyTorch's convention).
On top, per token, layer, direction and hidden unit, the gate work (counts beside _GATES).
Tokens: batch * steps for padded input, the packed length for a PackedSequence (the .data form).

Below them, the kernels fxroof captures in place of transformers' fallbacks for recurrent
mixers (fxroof.graph.fused_recurrences): Mamba's selective scan, Mamba-2's chunked scan, their
decode step's state update, the short convolution's window update, and the gated delta rule.
"""
from __future__ import annotations

from fxroof.cost.formulas.registry import OpCall, formula
from fxroof.cost.record import Cost
from fxroof.graph import (fused_conv_window, fused_delta_rules, fused_scans, fused_ssd,
                          fused_state_update)
from fxroof.graph.aten_ops import aten
from fxroof.graph.tensors import footprint, numel

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


def _channel_work(call: OpCall, bias: str, softplus: str) -> int:
    """FLOPs a Mamba scan or state update spends per channel and token beside its state: dt's
    bias (1) and softplus (1), D * u added (2) and the gate's silu and product (2), where given
    (`bias`, `softplus`: the names the op gives dt's)."""
    return sum(n for n, given in ((1, call.get(bias) is not None),
                                  (1, bool(call.get(softplus))),
                                  (2, call.get("D") is not None),
                                  (2, call.get("z") is not None)) if given)


def _scan_work(call: OpCall) -> tuple[int, int]:
    """(state elements, per-token work) of a selective scan's call: batch x channels x tokens x
    state size, and batch x channels x tokens times _channel_work."""
    u, a = call.get("u"), call.get("A")
    tokens = numel(u)                                        # batch x channels x tokens
    return tokens * int(a.shape[-1]), _channel_work(call, "delta_bias", "delta_softplus") * tokens


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


def _delta_rule_sizes(call: OpCall) -> tuple[int, int, int, int, int, int]:
    """(sequences x heads, tokens, key heads, K, V, decays per head and token: 1, or K for Kimi
    Delta Attention's per-channel decay) of a delta rule's call."""
    k, v, g = call.get("k"), call.get("v"), call.get("g")
    batch, tokens, heads, value_dim = (int(s) for s in v.shape)
    return (batch * heads, tokens, batch * int(k.shape[-2]), int(k.shape[-1]), value_dim,
            int(g.shape[-1]) if g.dim() == 4 else 1)


def _padded(tokens: int, chunk: int) -> int:
    return -(-tokens // chunk) * chunk


@formula(fused_delta_rules.CHUNKED, category="matmul")
def chunked_delta_rule(call: OpCall):
    """FLA's chunked gated delta rule over a prompt (fxroof.graph.fused_delta_rules): per
    sequence, head and token (padded to whole chunks of C), the products its kernels run on
    tensor cores: the chunk's k k^T (2CK), w and u through the inverted triangular system (2CK +
    2CV), the state's recurrence v - w S and S + k^T v (4KV), the output q S + (q k^T) v (2KV +
    2CK + 2CV): 6CK + 4CV + 6KV, the products transformers' traced loop runs too. As attention's
    softmax, the gates' pointwise work and the inversion of each chunk's triangular system (C^3/3
    a chunk, under 1% of the products at C = 64, K = V = 128) are not counted.
    Bytes: inputs once, the outputs, and what the chain of kernels writes and reads back (FLA,
    fla/ops/gated_delta_rule/chunk.py): the cumulated decays (fp32), k k^T (fp32) and its inverse,
    w, u, the per-chunk states S (K x V a chunk) and the corrected values, each once each way; k
    read again by three of the kernels; q and k l2-normalized by kernels of their own."""
    rows, tokens, key_rows, k_dim, v_dim, decays = _delta_rule_sizes(call)
    chunk = int(call.get("chunk_size")) or 64
    padded = _padded(tokens, chunk)
    flops = rows * padded * (6 * chunk * k_dim + 4 * chunk * v_dim + 6 * k_dim * v_dim)
    size = call.get("k").element_size()
    per_token = 4 * decays + 4 * chunk + size * (chunk + k_dim + 2 * v_dim) \
        + size * k_dim * v_dim // chunk
    staged = rows * padded * per_token                 # written once, read back once
    reread = 3 * key_rows * tokens * k_dim * size
    normed = 2 * key_rows * tokens * k_dim * size if call.get("l2norm") else 0
    return Cost(flops, call.bytes_read() + staged + reread + normed,
                call.bytes_written() + staged + normed, "matmul", call.dtype)


@formula(fused_delta_rules.RECURRENT, category="other")
def recurrent_delta_rule(call: OpCall):
    """FLA's fused recurrent kernel (a decode step), vector work: per sequence, head and token,
    the state decayed (KV, and its decays' exponentials), S^T k (2KV), the correction (v - S^T k)
    beta (2V), S + k delta^T (2KV), the output S^T q (2KV): 7KV + 2V; and per token q and k
    l2-normalized (3K each a key head, where asked) and q scaled (K a head). Bytes: inputs and
    outputs once, the state read and written whole."""
    rows, tokens, key_rows, k_dim, v_dim, decays = _delta_rule_sizes(call)
    normed = 6 * key_rows * tokens * k_dim if call.get("l2norm") else 0
    return (rows * tokens * (7 * k_dim * v_dim + 2 * v_dim + decays + k_dim)) + normed


@formula(fused_delta_rules.BACKWARD, category="matmul")
def chunked_delta_rule_backward(call: OpCall):
    """FLA's chunked backward (chunk_gated_delta_rule_bwd), its products counted by hand per
    sequence, head and padded token: w and u recomputed (2CK + 2CV) and the states with them
    (4KV); the local dv, (k q^T) do (2CK + 2CV); the states' gradients backward over the chunks
    with dv's correction (6KV); dq, dk, dw and the scores' gradient (6KV + 4CK + 2CV); the
    triangular system's backward: dA from dw and du (2CK + 2CV), the gradients through its inverse
    (2CK + 2CV, and A^T dA A^T: 4C^2), k's through k k^T (4CK): 16CK + 10CV + 16KV + 4C^2.
    Bytes: dout and the forward's inputs read, a gradient as large as each written, and the
    recomputed w, u, states and corrected values with dv, dw, dA and the states' gradients
    staged through memory once each way."""
    rows, tokens, _, k_dim, v_dim, decays = _delta_rule_sizes(call)
    chunk = int(call.get("chunk_size")) or 64
    padded = _padded(tokens, chunk)
    flops = rows * padded * (16 * chunk * k_dim + 10 * chunk * v_dim + 16 * k_dim * v_dim
                             + 4 * chunk * chunk)
    size = call.get("k").element_size()
    per_token = 4 * decays + 4 * chunk + size * (2 * k_dim + 3 * v_dim) \
        + 2 * size * k_dim * v_dim // chunk
    staged = rows * padded * per_token
    return Cost(flops, call.bytes_read() + staged, call.bytes_written() + staged, "matmul",
                call.dtype)


def _ssd_sizes(call: OpCall) -> tuple[int, int, int, int, int, int, int]:
    """(batch, tokens padded to whole chunks, heads, head size P, groups, state size N, chunk C)
    of a Mamba-2 scan's call."""
    x, b = call.get("x"), call.get("B")
    batch, tokens, heads, head_dim = (int(s) for s in x.shape)
    chunk = int(call.get("chunk_size")) or 256
    return (batch, _padded(tokens, chunk), heads, head_dim, int(b.shape[2]), int(b.shape[3]),
            chunk)


@formula(fused_ssd.OP, category="matmul")
def ssd_chunk_scan(call: OpCall):
    """mamba_ssm's chunked Mamba-2 scan (fxroof.graph.fused_ssd), per sequence and token padded
    to whole chunks of C: the products its kernels run on tensor cores, each chunk's state B^T x
    (2PN a head), the chunk's C B^T (2CN a group, shared by its heads), the output (C B^T . decay)
    x + C . state (2CP + 2PN a head): heads (4PN + 2CP) + groups 2CN. The decays' cumulative sums
    and the state passing between chunks are pointwise, not counted, as attention's softmax.
    Bytes: inputs once and the outputs, x, B and C read again by a second kernel each, and what
    the five kernels stage through memory (mamba_ssm, ops/triton/ssd_combined.py): dt and the
    cumulated decays (fp32), C B^T (fp32, C a token and group) and the chunks' states (fp32,
    heads x P x N a chunk, written by two kernels and read by two), each once each way."""
    batch, padded, heads, head_dim, groups, state, chunk = _ssd_sizes(call)
    flops = batch * padded * (heads * (4 * head_dim * state + 2 * chunk * head_dim)
                              + groups * 2 * chunk * state)
    staged = batch * padded * (2 * 4 * heads + 4 * groups * chunk) \
        + 2 * batch * (padded // chunk) * heads * head_dim * state * 4
    reread = sum(numel(call.get(name)) * call.get(name).element_size() for name in "xBC")
    return Cost(flops, call.bytes_read() + staged + reread, call.bytes_written() + staged,
                "matmul", call.dtype)


@formula(fused_ssd.BACKWARD, category="matmul")
def ssd_chunk_scan_backward(call: OpCall):
    """mamba_ssm's backward of the scan, its products counted by hand per sequence and padded
    token: the states and C B^T recomputed (2PN a head, 2CN a group); the states' gradients from
    dy (2PN); x's through the scores and the states ((C B^T . decay)^T dy: 2CP, B . dstates: 2PN);
    C's (dy . states^T: 2PN) and B's (x . dstates^T: 2PN); the scores' gradient dy x^T (2CP a
    head) and B's and C's through it (4CN a group): heads (10PN + 4CP) + groups 6CN. Bytes: dy and
    the inputs read, a gradient as large as each written, and the recomputed states and scores
    with their gradients staged through memory once each way."""
    batch, padded, heads, head_dim, groups, state, chunk = _ssd_sizes(call)
    flops = batch * padded * (heads * (10 * head_dim * state + 4 * chunk * head_dim)
                              + groups * 6 * chunk * state)
    staged = batch * padded * (2 * 4 * heads + 2 * 4 * groups * chunk) \
        + 4 * batch * (padded // chunk) * heads * head_dim * state * 4
    return Cost(flops, call.bytes_read() + staged, call.bytes_written() + staged, "matmul",
                call.dtype)


@formula(fused_state_update.OP, category="other")
def selective_state_update(call: OpCall):
    """mamba_ssm's selective_state_update, one kernel over a decode step's token
    (fxroof.graph.fused_state_update): per state element the decay exp(A dt) (2), the push dt B x
    (2), the update (2) and the output's product with C summed (2), as the scan counts them; per
    channel (Mamba-2: head and position) dt's bias and softplus (2), D x (2) and the gate (2),
    where given. Bytes: the inputs, the state among them, read once; the output and the state,
    written in place, written once."""
    x, state = call.get("x"), call.get("state")
    extra = _channel_work(call, "dt_bias", "dt_softplus")
    return Cost(8 * numel(state) + extra * numel(x), call.bytes_read(),
                call.bytes_written() + footprint(state), "other", call.dtype)


@formula(fused_conv_window.OP, category="other")
def causal_conv1d_update(call: OpCall):
    """causal-conv1d's window update, one kernel (fxroof.graph.fused_conv_window): per output
    element the taps' multiply-adds (2 each), the bias (1) and the activation (1) where given, as
    a convolution and pointwise ops count them. Bytes: the inputs, the window among them, read
    once; the output and the window, shifted in place, written once."""
    x, weight = call.get("x"), call.get("weight")
    per_output = 2 * int(weight.shape[-1]) + (call.get("bias") is not None) \
        + (call.get("activation") is not None)
    return Cost(per_output * numel(x), call.bytes_read(),
                call.bytes_written() + footprint(call.get("conv_state")), "other", call.dtype)
