"""Matrix products. FLOPs = 2 per multiply-add; a bias add is not counted (PyTorch's convention)."""
from __future__ import annotations

import math

import torch

from ..cost import Cost
from ..tensors import dtype_name, numel
from .registry import OpCall, formula

aten = torch.ops.aten


def _matmul_cost(call: OpCall, flops: int, a: torch.Tensor) -> Cost:
    return Cost(flops, call.bytes_read(), call.bytes_written(), "matmul", dtype_name(a.dtype))


@formula(aten.mm, aten._int_mm, category="matmul")
def mm(call: OpCall):
    a, b = call.args[0], call.args[1]
    m, k = a.shape
    n = b.shape[1]
    return _matmul_cost(call, 2 * m * k * n, a)  # (M,K) @ (K,N)


@formula(aten.addmm, category="matmul")
def addmm(call: OpCall):
    a, b = call.args[1], call.args[2]
    return _matmul_cost(call, 2 * a.shape[0] * a.shape[1] * b.shape[1], a)


@formula(aten.bmm, category="matmul")
def bmm(call: OpCall):
    a, b = call.args[0], call.args[1]
    batch, m, k = a.shape
    return _matmul_cost(call, 2 * batch * m * k * b.shape[2], a)  # (B,M,K) @ (B,K,N)


@formula(aten.baddbmm, category="matmul")
def baddbmm(call: OpCall):
    a, b = call.args[1], call.args[2]
    batch, m, k = a.shape
    return _matmul_cost(call, 2 * batch * m * k * b.shape[2], a)


@formula(aten.linear, category="matmul")
def linear(call: OpCall):
    x = call.args[0]
    # x (..., K) @ w.T (K, N): every output element is a K-long dot product.
    return _matmul_cost(call, 2 * numel(call.out) * x.shape[-1], x)


def _fold_copy_bytes(t: torch.Tensor, batch=None) -> int:
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
    k = a.shape[-1]
    cost = _matmul_cost(call, 2 * max(numel(call.out), 1) * k, a)
    if a.dim() > 2 and b.dim() > 2:
        batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        copies = _fold_copy_bytes(a, batch) + _fold_copy_bytes(b, batch)
    elif a.dim() > 2:
        copies = _fold_copy_bytes(a)
    else:
        copies = 0
    return cost.replace(bytes_read=cost.bytes_read + copies,
                        bytes_written=cost.bytes_written + copies,
                        note="copies operands to fold the batch" if copies else "")


@formula(aten.mv, aten.addmv, aten.dot, aten.vdot, category="matmul")
def matvec(call: OpCall):
    tensors = [t for t in call.args if isinstance(t, torch.Tensor)]
    mat, vec = tensors[-2], tensors[-1]
    return _matmul_cost(call, 2 * numel(mat) if mat.dim() == 2 else 2 * numel(vec), mat)


@formula(aten._scaled_mm, category="matmul")
def scaled_mm(call: OpCall):
    a, b = call.args[0], call.args[1]
    return _matmul_cost(call, 2 * a.shape[0] * a.shape[1] * b.shape[1], a)


def _einsum_letters(term: str, t: torch.Tensor, sizes: dict[str, int]) -> list[str]:
    """Index names of one operand; the dims under '...' get private names '_0', '_1', ..."""
    named = term.replace("...", "")
    hidden = [f"_{i}" for i in range(t.dim() - len(named))] if "..." in term else []
    before, _, after = term.partition("...")
    letters = list(before) + hidden + list(after) if "..." in term else list(term)
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
        return _matmul_cost(call, numel(operands[0]), operands[0])
    keep = set(out.replace("...", "")) | {c for c in sizes if c.startswith("_")}
    flops, current = 0, sets[0]
    for i, nxt in enumerate(sets[1:], start=1):
        joint = current | nxt
        flops += 2 * math.prod(sizes[c] for c in joint)
        current = joint & (keep | set().union(*sets[i + 1:]))
    return _matmul_cost(call, flops, operands[0])
