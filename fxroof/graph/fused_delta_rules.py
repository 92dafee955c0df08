"""The gated delta rule (Gated DeltaNet, Kimi Delta Attention) captured as the kernels a GPU runs,
not as transformers' loops over chunks and tokens.

Qwen3-Next, Qwen3.5, Olmo-Hybrid and their kin mix tokens with the gated delta rule, Kimi Linear
and its kin with its per-channel form. On a GPU these run flash-linear-attention's (FLA's) Triton
kernels: `chunk_gated_delta_rule` / `chunk_kda` over a prompt (a chain of chunked kernels whose
products run on tensor cores) and `fused_recurrent_*` (one kernel) for a decode step. transformers
calls them through module-level functions (`torch_chunk_gated_delta_rule`, ...) whose CPU and
meta fallback loops over 64-token chunks and, traced, unrolls a 63-step triangular solve: a graph
that grows with the prompt, hundreds of small kernels a layer that no deployment launches. While
a capture runs, fxroof.graph.fused_recurrences puts `chunked` and `recurrent` below in their
place: one op each, costed as FLA's kernels (fxroof.cost.formulas.recurrent).

The ops' own implementation is the recurrence token by token, which the chunked form computes
exactly (strategies that trace on real values run it); the chunked op's backward
(fxroof::chunked_delta_rule_backward, FLA's backward kernels in a training step) is its
vector-Jacobian product.
"""
from __future__ import annotations

import torch

from fxroof.graph.reference_vjp import gradients_like, optional_vjp, present

L2_EPS = 1e-6     # transformers' (and FLA's) l2norm epsilon


def _reference(q, k, v, g, beta, initial_state, l2norm):
    """The output (in q's dtype) and last state (fp32) of the rule, token by token, as
    transformers' recurrent fallback computes them (differentiable). q, k: (batch, tokens, key
    heads, K); v: (batch, tokens, heads, V), heads a multiple of key heads; g: the log decay,
    (batch, tokens, heads) or per key channel (batch, tokens, heads, K); beta: (batch, tokens,
    heads); initial_state: (batch, heads, K, V) or None."""
    dtype = q.dtype
    heads = v.shape[-2]
    if k.shape[-2] != heads:    # grouped: each key head serves consecutive value heads
        q, k = (x.repeat_interleave(heads // k.shape[-2], dim=2) for x in (q, k))
    q, k, v, g, beta = (x.float() for x in (q, k, v, g, beta))
    if l2norm:
        q, k = (x * torch.rsqrt((x * x).sum(-1, keepdim=True) + L2_EPS) for x in (q, k))
    q = q * q.shape[-1] ** -0.5
    state = (v.new_zeros(v.shape[0], heads, k.shape[-1], v.shape[-1]) if initial_state is None
             else initial_state.float())
    outputs = []
    for t in range(v.shape[1]):
        decay = g[:, t].exp()
        state = state * (decay[..., None, None] if decay.dim() == 2 else decay[..., None])
        key = k[:, t, :, :, None]
        delta = (v[:, t] - (state * key).sum(-2)) * beta[:, t, :, None]
        state = state + key * delta[:, :, None, :]
        outputs.append((state * q[:, t, :, :, None]).sum(-2))
    out = torch.stack(outputs, dim=1) if outputs else v.new_zeros(v.shape)
    return out.to(dtype), state


def _fake_outputs(q, k, v, output_final_state):
    last = (v.shape[0], v.shape[-2], k.shape[-1], v.shape[-1]) if output_final_state else (0,)
    return q.new_empty(v.shape), v.new_empty(last, dtype=torch.float32)


# The schemas spelled out, as fused_scans' are: inference from annotations varies across torch
@torch.library.custom_op("fxroof::chunked_delta_rule", mutates_args=(), schema=(
    "(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor? initial_state, bool l2norm, "
    "bool output_final_state, int chunk_size) -> (Tensor, Tensor)"))
def chunked_delta_rule(q, k, v, g, beta, initial_state, l2norm, output_final_state, chunk_size):
    """FLA's chunk_gated_delta_rule / chunk_kda: the output (batch, tokens, heads, V) in q's
    dtype and the last state (batch, heads, K, V) in fp32, empty unless asked for."""
    out, state = _reference(q, k, v, g, beta, initial_state, l2norm)
    return out, state if output_final_state else state.new_empty(0)


@chunked_delta_rule.register_fake
def _(q, k, v, g, beta, initial_state, l2norm, output_final_state, chunk_size):
    return _fake_outputs(q, k, v, output_final_state)


@torch.library.custom_op("fxroof::recurrent_delta_rule", mutates_args=(), schema=(
    "(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor? initial_state, bool l2norm, "
    "bool output_final_state) -> (Tensor, Tensor)"))
def recurrent_delta_rule(q, k, v, g, beta, initial_state, l2norm, output_final_state):
    """FLA's fused_recurrent_gated_delta_rule / fused_recurrent_kda (a decode step): as
    chunked_delta_rule, one kernel walking the tokens."""
    out, state = _reference(q, k, v, g, beta, initial_state, l2norm)
    return out, state if output_final_state else state.new_empty(0)


@recurrent_delta_rule.register_fake
def _(q, k, v, g, beta, initial_state, l2norm, output_final_state):
    return _fake_outputs(q, k, v, output_final_state)


@torch.library.custom_op("fxroof::chunked_delta_rule_backward", mutates_args=(), schema=(
    "(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor? initial_state, "
    "bool l2norm, int chunk_size) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"))
def chunked_delta_rule_backward(dout, q, k, v, g, beta, initial_state, l2norm, chunk_size):
    """The gradients of q, k, v, g, beta and the initial state (empty where none was given), as
    FLA's chunked backward returns them; here the reference's vector-Jacobian product."""
    return optional_vjp(lambda *args: _reference(*args, l2norm)[0],
                        [q, k, v, g, beta, initial_state], dout, q)


@chunked_delta_rule_backward.register_fake
def _(dout, q, k, v, g, beta, initial_state, l2norm, chunk_size):
    return gradients_like([q, k, v, g, beta, initial_state], q)


CHUNKED = torch.ops.fxroof.chunked_delta_rule
RECURRENT = torch.ops.fxroof.recurrent_delta_rule
BACKWARD = torch.ops.fxroof.chunked_delta_rule_backward


def _save(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:6])
    ctx.l2norm, ctx.chunk_size = inputs[6], inputs[8]


def _backward(ctx, dout, dlast):
    # a training step keeps no cache: nothing reads the last state, whose gradient is not taken
    saved = ctx.saved_tensors
    grads = BACKWARD(dout, *saved, ctx.l2norm, ctx.chunk_size)
    return (*present(saved, grads), None, None, None)


chunked_delta_rule.register_autograd(_backward, setup_context=_save)


def chunked(query, key, value, g, beta, chunk_size=64, initial_state=None,
            output_final_state=False, use_qk_l2norm_in_kernel=False, **_):
    """`torch_chunk_gated_delta_rule`'s and `chunk_kimi_delta_attention`'s signature (varlen and
    the fallback's other options ignored: one batch of equal lengths)."""
    out, last = CHUNKED(query, key, value, g, beta, initial_state,
                        bool(use_qk_l2norm_in_kernel), bool(output_final_state), int(chunk_size))
    return out, last if output_final_state else None


def recurrent(query, key, value, g, beta, initial_state=None, output_final_state=False,
              use_qk_l2norm_in_kernel=False, **_):
    """`torch_recurrent_gated_delta_rule`'s and `recurrent_kimi_delta_attention`'s signature."""
    out, last = RECURRENT(query, key, value, g, beta, initial_state,
                          bool(use_qk_l2norm_in_kernel), bool(output_final_state))
    return out, last if output_final_state else None


# transformers' module-level functions each replaces (fxroof.graph.fused_recurrences)
REPLACEMENTS = {"torch_chunk_gated_delta_rule": chunked,
                "torch_recurrent_gated_delta_rule": recurrent,
                "chunk_kimi_delta_attention": chunked,
                "recurrent_kimi_delta_attention": recurrent}
