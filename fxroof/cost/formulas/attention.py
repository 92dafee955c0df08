"""Fused attention (scaled_dot_product_attention and the kernels it dispatches to).

FLOPs follow PyTorch's dense convention: Q@K^T plus P@V, 2 FLOPs per multiply-add, and a causal
mask does not halve the count (the row says "causal" so readers know). With GQA/MQA every query
head still attends over all keys, so the count uses the query heads. Bytes are those of a fused
(flash-style) kernel: Q, K, V and the mask read once, the output written once; the S x S score
matrix never reaches memory.
"""
from __future__ import annotations

import math

from fxroof.cost.formulas.registry import OpCall, formula
from fxroof.cost.record import Cost
from fxroof.graph import flash_attention, latent_attention
from fxroof.graph.aten_ops import aten
from fxroof.graph.tensors import dtype_name, footprint


@formula(aten.scaled_dot_product_attention, aten._scaled_dot_product_flash_attention,
         aten._scaled_dot_product_efficient_attention, aten._scaled_dot_product_cudnn_attention,
         aten._scaled_dot_product_flash_attention_for_cpu, aten._scaled_dot_product_attention_math,
         aten._scaled_dot_product_fused_attention_overrideable, category="attention")
def sdpa(call: OpCall) -> Cost:
    q, k, v = call.args[0], call.args[1], call.args[2]
    note = []
    if call.get("is_causal", False):
        note.append("causal")
    if call.get("attn_mask") is not None or call.get("attn_bias") is not None:
        note.append("masked")
    if q.dim() >= 3 and k.dim() >= 3 and int(k.shape[-3]) != int(q.shape[-3]):
        note.append(f"gqa {int(q.shape[-3])}q/{int(k.shape[-3])}kv")
    queries = math.prod(int(s) for s in q.shape[:-1])       # of every head: B * Hq * Sq
    # Q @ K^T and P @ V: each query against every key, over q's and v's head dims
    flops = 2 * queries * int(k.shape[-2]) * (int(q.shape[-1]) + int(v.shape[-1]))
    out = call.outputs[0]   # auxiliary outputs (logsumexp, seeds) are small; count the main one
    return Cost(flops, call.bytes_read(), footprint(out), "attention", dtype_name(q.dtype),
                note=", ".join(note), exponentials=queries * int(k.shape[-2]),
                causal=bool(call.get("is_causal", False)))


@formula(latent_attention.OP, category="attention")
def absorbed_latent_attention(call: OpCall) -> Cost:
    """FlashMLA's decode attention over the latent cache (fxroof.graph.latent_attention): each
    query head against every latent row, scores over the latent and its rotary part, the output
    over the latent (the products of `sdpa` above). Bytes: the latent rows and their rotary part
    read once for all the heads, as the shared head they are."""
    q_latent, q_rot, kv_latent = call.args[0], call.args[1], call.args[2]
    batch, heads, rows, rank = (int(s) for s in q_latent.shape)
    keys = int(kv_latent.shape[-2])
    depth = keys * (2 * rank + int(q_rot.shape[-1]))   # multiply-adds a query row and head
    flops = 2 * batch * heads * rows * depth
    # FlashMLA's blocks take the heads sharing a latent row as their rows: (batch, heads x
    # queries, rank) of output, each element `depth / rank` multiply-adds deep
    return Cost(flops, call.bytes_read(), footprint(call.outputs[0]), "attention",
                dtype_name(q_latent.dtype), note=f"latent, {heads} heads",
                exponentials=batch * heads * rows * keys,
                grid=(batch, heads * rows, rank, max(1, round(depth / rank))))


@formula(flash_attention.OP, category="attention")
def engine_flash_attention(call: OpCall) -> Cost:
    """A flash kernel for attention transformers writes out in full (fxroof.graph.
    flash_attention: FlashAttention-3 with sinks, a sliding window's bounds): the products of
    `sdpa` above, every query head against every key; a sink is one more exponential a row.
    Bytes: q, k, v (the k/v heads once) and the sinks read, the output written; the mask
    transformers builds is not read, the kernel bounding a causal or sliding-window layer's keys
    itself (`window`); a chunked layer's chunks come as its batch (`chunk`, named in the note)."""
    q, k, v, sinks = call.args[0], call.args[1], call.args[2], call.args[3]
    queries, keys = math.prod(int(s) for s in q.shape[:-1]), int(k.shape[-2])
    flops = 2 * queries * keys * (int(q.shape[-1]) + int(v.shape[-1]))
    read = sum(t.numel() * t.element_size() for t in (q, k, v, sinks) if t is not None)
    causal, window = bool(call.args[6]), int(call.args[7])
    chunk = int(call.get("chunk", 0) or 0)      # its batch: a chunked layer's chunks
    note = ", ".join(filter(None, (sinks is not None and "sinks", causal and "causal",
                                   window and f"window {window}", chunk and f"chunk {chunk}",
                                   int(k.shape[-3]) != int(q.shape[-3])
                                   and f"gqa {int(q.shape[-3])}q/{int(k.shape[-3])}kv")))
    # a causal kernel aligns its queries with the last keys (a decode step's one query sees all)
    return Cost(flops, read, footprint(call.outputs[0]), "attention", dtype_name(q.dtype),
                note=note, exponentials=queries * (keys + (sinks is not None)),
                causal=causal and int(q.shape[-2]) > 1, window=window)
