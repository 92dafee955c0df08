"""Fused attention (scaled_dot_product_attention and the kernels it dispatches to).

FLOPs follow PyTorch's dense convention: Q@K^T plus P@V, 2 FLOPs per multiply-add, and a causal
mask does not halve the count (the row says "causal" so readers know). With GQA/MQA every query
head still attends over all keys, so the count uses the query heads. Bytes are those of a fused
(flash-style) kernel: Q, K, V and the mask read once, the output written once; the S x S score
matrix never reaches memory.
"""
from __future__ import annotations

import math

import torch

from ..cost import Cost
from ..tensors import dtype_name, footprint
from .registry import OpCall, formula

aten = torch.ops.aten


def attention_flops(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> int:
    batch_heads = math.prod(int(s) for s in q.shape[:-2])   # (B, Hq) of q: (B, Hq, Sq, D)
    s_q, d_qk = int(q.shape[-2]), int(q.shape[-1])
    s_k, d_v = int(k.shape[-2]), int(v.shape[-1])
    return 2 * batch_heads * s_q * s_k * d_qk + 2 * batch_heads * s_q * s_k * d_v


def _attention_cost(call: OpCall) -> Cost:
    q, k, v = call.args[0], call.args[1], call.args[2]
    note = []
    if call.get("is_causal", False):
        note.append("causal")
    if call.get("attn_mask") is not None or call.get("attn_bias") is not None:
        note.append("masked")
    if q.dim() >= 3 and k.dim() >= 3 and int(k.shape[-3]) != int(q.shape[-3]):
        note.append(f"gqa {int(q.shape[-3])}q/{int(k.shape[-3])}kv")
    out = call.outputs[0]   # auxiliary outputs (logsumexp, seeds) are small; count the main one
    return Cost(attention_flops(q, k, v), call.bytes_read(), footprint(out), "attention",
                dtype_name(q.dtype), note=", ".join(note))


@formula(aten.scaled_dot_product_attention, aten._scaled_dot_product_flash_attention,
         aten._scaled_dot_product_efficient_attention, aten._scaled_dot_product_cudnn_attention,
         aten._scaled_dot_product_flash_attention_for_cpu, aten._scaled_dot_product_attention_math,
         category="attention")
def sdpa(call: OpCall):
    return _attention_cost(call)
