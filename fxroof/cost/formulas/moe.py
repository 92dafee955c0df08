"""Mixture-of-experts matmuls: grouped GEMMs, one matrix product per expert in one call.

`aten._grouped_mm(a, b, offs)`: rows (or, 2D x 2D, the contraction) of `a` split into groups at
`offs`, each group multiplied by its own matrix. Every routed token-expert row is multiplied
once, so the FLOPs do not depend on the routing. The bytes do: a group with no rows reads no
weights. Where `offs` has a value (traced with routing assumed, fxroof.graph.routing) the groups
with rows are counted; else balanced routing is assumed, the M rows spread uniformly at random
over the G groups, touching G*(1-(1-1/G)^M) of them (rounded; within one of E*(1-(1-k/E)^T)
for T tokens choosing k distinct experts each). Transformers' stand-in for the aten op
(`transformers::grouped_mm_fallback`, the same call) costs the same.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from fxroof.cost.formulas.registry import RULES, Entry, OpCall, formula
from fxroof.graph.aten_ops import aten
from fxroof.graph.routing import Routing
from fxroof.graph.tensors import dtype_name, footprint, numel


@formula(aten._grouped_mm, category="matmul")
def grouped_mm(call: OpCall):
    a, b, offs = call.args[0], call.args[1], call.get("offs")
    if a.dim() == 2 and b.dim() == 2:      # groups split the contraction: (G, M, N) out
        flops = 2 * int(a.shape[0]) * int(a.shape[1]) * int(b.shape[1])
    else:                                 # (M, K) x (G, K, N), (G, M, K) x (K, N), batched
        flops = 2 * numel(call.outputs[0]) * int(a.shape[-1])
    cost = call.cost(flops, "matmul", dtype_name(a.dtype))
    if a.dim() != 2 or b.dim() != 3 or offs is None:
        return cost
    groups, touched = int(b.shape[0]), _groups_with_rows(offs, int(a.shape[0]))
    unread = footprint(b) - math.ceil(footprint(b) * touched / groups)
    note = f"expert weights read: {touched} of {groups} experts (routing assumed)"
    return dataclasses.replace(cost, bytes_read=cost.bytes_read - unread, note=note)


def _groups_with_rows(offs: torch.Tensor, rows: int) -> int:
    """Groups with at least one row: from offs's value where it has one, else balanced."""
    value = getattr(offs, "real_tensor", None)
    if value is not None:
        return int((value.diff(prepend=value.new_zeros(1)) > 0).sum())
    return Routing().experts_touched(rows, 1, int(offs.shape[0]))


_FALLBACK = Entry(grouped_mm, "matmul")
RULES.append(lambda op: _FALLBACK if op.name() == "transformers::grouped_mm_fallback" else None)
