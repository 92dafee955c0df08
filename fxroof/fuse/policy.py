"""What stays a kernel of its own: the one place fusion's policy on single ops is written.

Library ops (matmul, conv, attention, collectives), gathers and scatters, ops whose output size
depends on the data, in-place writes into graph inputs, state or views, and ops without a formula
run as kernels of their own; an in-place write over a whole intermediate is its functional op
(as torch.compile's functionalization makes it);
creation ops are recomputed by the kernels that read them; the rest fuse as pointwise work or
as reductions.
"""
from __future__ import annotations

import torch.fx as fx

from fxroof.cost import Cost
from fxroof.cost.formulas.memory import GATHERS
from fxroof.graph.aten_ops import aten
from fxroof.graph.nodes import mutates

# Copies with a library kernel of their own: gathers (indirect reads), scatters (writes at
# data-dependent places, which consumers can only read once the whole scatter is done) and ops
# whose output size depends on the data.
SCATTERS = frozenset({aten.index_put, aten._index_put_impl_, aten._unsafe_index_put,
                      aten.index_copy, aten.index_add, aten.index_fill, aten.scatter,
                      aten.scatter_add, aten.scatter_reduce, aten.masked_scatter})
DATA_DEPENDENT = frozenset({aten.masked_select, aten.nonzero, aten._local_scalar_dense, aten.item})
SOLO_CATEGORIES = frozenset({"matmul", "conv", "attention", "collective", "other"})
REDUCTION_CATEGORIES = frozenset({"reduction", "norm"})


# Gathers Inductor lowers to indirect loads inside the kernel that reads them, on its Triton
# and C++ backends alike (lowering.py's embedding and index: a Pointwise over
# ops.indirect_indexing).
INLINE_GATHERS = frozenset({aten.embedding, aten.index_select, aten.gather, aten.take_along_dim,
                            aten.index})


def functional_packet(packet):
    """The op an in-place op becomes when functionalized (`relu_` -> `relu`)."""
    return getattr(aten, getattr(packet, "__name__", "").removesuffix("_"), packet)


def classify(node: fx.Node, cost: Cost, packet, *, functional: bool = False,
             inline_gathers: bool = False) -> tuple[str, str, str]:
    """(kind, rank, reason it stays alone) for one op; `functional`: an in-place op that
    functionalization would turn into its functional op (it writes over an intermediate);
    `inline_gathers`: INLINE_GATHERS fuse as copies (compiled code; else library kernels)."""
    name = getattr(packet, "__name__", str(node.target))
    if cost.note == "allocation only" or (cost.category == "pointwise" and cost.bytes_read == 0):
        return "create", "create", ""   # full, arange, zeros_like: the input gives a shape only
    if functional:
        name, packet = name.removesuffix("_"), functional_packet(packet)
    elif mutates(node):
        return "solo", "solo", f"in-place write ({name})"
    if not cost.known:
        return "solo", "solo", f"no cost formula ({name})"
    if cost.category in SOLO_CATEGORIES:
        what = cost.category if cost.category != "other" else f"op {name}"
        return "solo", "solo", f"library {what}"
    gathers = GATHERS - INLINE_GATHERS if inline_gathers else GATHERS
    for ops, what in ((gathers, "gather"), (SCATTERS, "scatter"),
                      (DATA_DEPENDENT, "op with data-dependent output")):
        if packet in ops:
            return "solo", "solo", f"library {what} ({name})"
    if cost.category in REDUCTION_CATEGORIES:
        return "reduction", cost.category, ""
    return "pointwise", "copy" if cost.category == "copy" else "pointwise", ""


