"""Matrix products. FLOPs = 2 per multiply-add; a bias add is not counted (PyTorch's convention)."""
from __future__ import annotations

import math

import torch

from fxroof.cost.formulas.registry import OpCall, formula
from fxroof.graph.aten_ops import aten
from fxroof.graph.tensors import dtype_name, numel


# args[0] is the term added
_ADDED_TO = frozenset({aten.addmm, aten.baddbmm, aten.addmv, aten._addmm_activation})


@formula(aten.mm, aten._int_mm, aten._scaled_mm, aten._scaled_mm_v2, aten.addmm, aten.bmm,
         aten.baddbmm, aten.linear, aten.mv, aten.addmv, aten.dot, aten.vdot,
         aten._addmm_activation, aten._mixed_dtypes_linear,
         # weight-only quantized products: x (M, K) by packed weights, out (M, N)
         aten._weight_int8pack_mm, aten._weight_int4pack_mm, aten._weight_int4pack_mm_for_cpu,
         aten._weight_int4pack_mm_with_scales_and_zeros, aten._dyn_quant_matmul_4bit,
         category="matmul")
def product(call: OpCall):
    """Every output element is a dot product along the first operand's last dim, K long:
    (M, K) @ (K, N), batched, a vector, x (..., K) @ w.T alike."""
    a = call.args[1] if getattr(call.op, "overloadpacket", None) in _ADDED_TO else call.args[0]
    cost = call.cost(2 * numel(call.outputs[0]) * int(a.shape[-1]), "matmul", dtype_name(a.dtype))
    if getattr(call.op, "overloadpacket", None) is aten.linear and a.dim() > 2:
        # F.linear on a batched input is torch.matmul's fold (at::linear): a strided input that
        # no view flattens is copied first, as matmul below copies it
        copies = fold_copy_bytes(a)
        if copies:
            return cost.with_copy(copies, "copies its input to fold the batch")
    return cost


@formula(aten.addbmm, category="matmul")
def addbmm(call: OpCall):
    """The batch of products (B, M, K) @ (B, K, N) summed into one (M, N)."""
    a, b = call.args[1], call.args[2]
    return call.cost(2 * numel(a) * int(b.shape[-1]), "matmul", dtype_name(a.dtype))


@formula(aten.addr, category="pointwise")
def outer(call: OpCall):
    return call.cost(2 * numel(call.outputs[0]), "pointwise")   # a multiply-add per element


@formula(aten._cdist_forward, aten._pdist_forward, category="other")
def distances(call: OpCall):
    """Pairwise p-norm distances: per pair and coordinate a difference, a power and a sum.
    cdist (B, P, M) x (B, R, M): B*P*R pairs; pdist (N, M): N(N-1)/2."""
    x = call.inputs[0]
    pairs = numel(call.outputs[0])
    return call.cost(3 * pairs * int(x.shape[-1]), "other")


def fold_copy_bytes(t: torch.Tensor, batch=None) -> int:
    """Bytes of the contiguous copy torch.matmul makes when a view cannot fold `t` for mm/bmm
    (a transposed head split, a broadcast batch). batch=None: fold (..., M, K) into (B*M, K)."""
    target = t if batch is None else t.expand(*batch, *t.shape[-2:])
    try:
        target.view(-1, t.shape[-1]) if batch is None else target.view(-1, *t.shape[-2:])
        return 0
    except (RuntimeError, ValueError):   # fake tensors raise ValueError, real ones RuntimeError
        return numel(target) * t.element_size()


@formula(aten.matmul, category="matmul")
def matmul(call: OpCall):
    """torch.matmul folds batched operands into mm/bmm; where a view cannot do that, it copies."""
    a, b = call.args[0], call.args[1]
    cost = call.cost(2 * max(numel(call.out), 1) * a.shape[-1], "matmul")
    if a.dim() > 2 and b.dim() > 2:
        batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        copies = fold_copy_bytes(a, batch) + fold_copy_bytes(b, batch)
    elif a.dim() > 2:
        copies = fold_copy_bytes(a)
    else:
        copies = 0
    return cost.with_copy(copies, "copies operands to fold the batch")


def _einsum_letters(term: str, t: torch.Tensor, sizes: dict[str, int]) -> list[str]:
    """Index names of one operand; the dims under '...' get private names '_0', '_1', ..."""
    before, dots, after = term.partition("...")
    hidden = [f"_{i}" for i in range(t.dim() - len(before + after))] if dots else []
    letters = [*before, *hidden, *after]
    for c, size in zip(letters, t.shape):
        sizes[c] = int(size)
    return letters


@formula(aten.einsum, category="matmul")
def einsum(call: OpCall):
    """Contract operands left to right, as torch.einsum does without opt_einsum.

    Each pairwise step is a batched matmul over every index either side holds: 2 FLOPs per point
    of that joint index space.
    """
    equation, operands = call.args[0].replace(" ", ""), list(call.args[1])
    lhs, arrow, out = equation.partition("->")
    if not arrow:  # implicit output: the letters that appear once
        out = "".join(c for c in lhs if c.isalpha() and lhs.count(c) == 1)
    sizes: dict[str, int] = {}
    sets = [set(_einsum_letters(term, t, sizes)) for term, t in zip(lhs.split(","), operands)]
    if len(sets) == 1:
        return call.cost(numel(operands[0]), "matmul")
    keep = set(out.replace("...", "")) | {c for c in sizes if c.startswith("_")}
    flops, current = 0, sets[0]
    for i, nxt in enumerate(sets[1:], start=1):
        joint = current | nxt
        flops += 2 * math.prod(sizes[c] for c in joint)
        current = joint & (keep | set().union(*sets[i + 1:]))
    return call.cost(flops, "matmul")
