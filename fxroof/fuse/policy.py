"""What stays a kernel of its own: the one place fusion's policy on single ops is written.

Library ops (matmul, conv, attention, collectives), gathers and scatters, ops whose output size
depends on the data, in-place writes into graph inputs, state or views, and ops without a formula
run as kernels of their own; an in-place write over a whole intermediate is its functional op
(as torch.compile's functionalization makes it);
creation ops are recomputed by the kernels that read them; the rest fuse as pointwise work or
as reductions.
"""
from __future__ import annotations

import math
import os
import sys

import torch
import torch.fx as fx

from fxroof.cost import Cost
from fxroof.cost.record import (CATEGORIES, FREE_CATEGORIES, GENERATED_CATEGORIES,
                                dequantizing)
from fxroof.cost.formulas.memory import GATHERS
from fxroof.cost.whatif import EIGHT_BIT
from fxroof.graph.aten_ops import aten
from fxroof.graph.nodes import mutates

# Copies with a library kernel of their own: gathers (indirect reads), scatters (writes at
# data-dependent places, which consumers can only read once the whole scatter is done) and ops
# whose output size depends on the data.
SCATTERS = frozenset({aten.index_put, aten._index_put_impl_, aten._unsafe_index_put,
                      aten.index_copy, aten.index_add, aten.index_fill, aten.scatter,
                      aten.scatter_add, aten.scatter_reduce, aten.masked_scatter})
DATA_DEPENDENT = frozenset({aten.masked_select, aten.nonzero, aten._local_scalar_dense, aten.item})
# the categories that run a library's kernel each: neither generated code nor free
SOLO_CATEGORIES = frozenset(CATEGORIES) - GENERATED_CATEGORIES - FREE_CATEGORIES
REDUCTION_CATEGORIES = frozenset({"reduction", "norm"})


# Gathers Inductor lowers to indirect loads inside the kernel that reads them, on its Triton
# and C++ backends alike (lowering.py's embedding and index: a Pointwise over
# ops.indirect_indexing).
INLINE_GATHERS = frozenset({aten.embedding, aten.index_select, aten.gather, aten.take_along_dim,
                            aten.index})


# Inductor's decompositions under coordinate descent tuning (torch/_inductor/decomposition.py, mm
# and bmm; "Our matrix vector multiplies only achieve peak bandwidth with coordinate descent
# tuning"): on a GPU a product of one row (or one column) is a multiply and a sum, a Triton
# reduction that its producers fuse into (a weight's dtype cast, a gather of experts' weights),
# not a cuBLAS call. addmm keeps the library kernel.
ONE_ROW_PRODUCTS = frozenset({aten.mm, aten.bmm, aten.linear, aten.einsum})


# int4 weights run a library kernel of their own over packed weights (gpt-fast's and torchao's
# int4 linears call tinygemm, aten._weight_int4pack_mm), which Inductor does not decompose
PACKED_INT4 = dequantizing("int4")


def coordinate_descent_tuning() -> bool:
    """Whether torch.compile in this process tunes Inductor's kernels by coordinate descent
    (torch._inductor.config.coordinate_descent_tuning, as gpt-fast and torchao's generate.py
    set it, or TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1): read where the config was imported,
    so that fxroof does not import Inductor for it."""
    config = sys.modules.get("torch._inductor.config")
    if config is not None:
        return bool(getattr(config, "coordinate_descent_tuning", False))
    return os.environ.get("TORCHINDUCTOR_COORDINATE_DESCENT_TUNING") == "1"


def one_row_product(node: fx.Node) -> bool:
    """A product Inductor decomposes into a reduction under coordinate descent tuning: mm of one
    row or one column, bmm of one row or column a batch, a linear without bias over one row or
    to one output (it lowers to mm)."""
    packet = getattr(node.target, "overloadpacket", None)
    if packet not in ONE_ROW_PRODUCTS:
        return False
    if packet is aten.einsum:
        return _one_row_einsum(node)
    a, b = (arg.meta.get("val") if isinstance(arg, fx.Node) else None for arg in node.args[:2])
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return False
    try:
        if packet is aten.mm:
            return int(a.shape[0]) == 1 or int(b.shape[1]) == 1
        if packet is aten.bmm:
            return int(a.shape[1]) == 1 or int(b.shape[2]) == 1
        if len(node.args) > 2 and node.args[2] is not None or node.kwargs.get("bias") is not None:
            return False                                  # linear with a bias: addmm
        return a.numel() == int(a.shape[-1]) or int(b.shape[0]) == 1
    except (TypeError, ValueError):                       # symbolic shapes: not known to be 1
        return False


def _one_row_einsum(node: fx.Node) -> bool:
    """A two-operand einsum (torch.einsum runs it as one bmm, batch by rows by columns) whose
    rows (the first operand's indices kept in the output that the second lacks) or columns
    (the second's that the first lacks) number one: gpt-fast's experts, 'ti,taoi->tao' on one
    token."""
    equation, operands = node.args[0], node.args[1]
    if not isinstance(equation, str) or len(operands) != 2 or "..." in equation:
        return False
    vals = [o.meta.get("val") if isinstance(o, fx.Node) else None for o in operands]
    lhs, arrow, out = equation.replace(" ", "").partition("->")
    terms = lhs.split(",")
    if not arrow or len(terms) != 2 or not all(isinstance(v, torch.Tensor) for v in vals):
        return False
    try:
        sizes = {c: int(n) for term, v in zip(terms, vals) for c, n in zip(term, v.shape)}
    except (TypeError, ValueError):                       # symbolic shapes
        return False
    (a, b), kept = terms, set(out)
    rows = [sizes[c] for c in a if c in kept and c not in b]
    columns = [sizes[c] for c in b if c in kept and c not in a]
    return math.prod(rows) == 1 or math.prod(columns) == 1


def functional_packet(packet):
    """The op an in-place op becomes when functionalized (`relu_` -> `relu`)."""
    return getattr(aten, getattr(packet, "__name__", "").removesuffix("_"), packet)


def classify(node: fx.Node, cost: Cost, packet, *, functional: bool = False,
             inline_gathers: bool = False, decompose_products: bool = False
             ) -> tuple[str, str, str]:
    """(kind, rank, reason it stays alone) for one op; `functional`: an in-place op that
    functionalization would turn into its functional op (it writes over an intermediate);
    `inline_gathers`: INLINE_GATHERS fuse as copies (compiled code; else library kernels);
    `decompose_products`: one-row products are reductions (coordinate descent tuning)."""
    name = getattr(packet, "__name__", str(node.target))
    if cost.note == "allocation only" or (cost.category == "pointwise" and cost.bytes_read == 0):
        return "create", "create", ""   # full, arange, zeros_like: the input gives a shape only
    if functional:
        name, packet = name.removesuffix("_"), functional_packet(packet)
    elif mutates(node):
        return "solo", "solo", f"in-place write ({name})"
    if not cost.known:
        return "solo", "solo", f"no cost formula ({name})"
    # 8-bit products (an fp8 or w8a8 what-if) are library calls whatever their rows
    # (torch._scaled_mm, torch._int_mm), as packed int4 weights' are
    if decompose_products and cost.category == "matmul" and one_row_product(node) \
            and cost.variant != PACKED_INT4 and cost.dtype not in EIGHT_BIT:
        return "reduction", "reduction", ""
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


