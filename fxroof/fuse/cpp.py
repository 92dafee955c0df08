"""The C++ backend's kernels that fusion's groups do not make, as Inductor's CPU code runs them:
copies of their own (a cat's view inputs, a matmul's operands a view cannot fold) and a softmax
split at its exp. The rules and the figures: docs/fusion.md."""
from __future__ import annotations

import torch
import torch.fx as fx

from fxroof.cost.formulas.matmul import fold_copy_bytes
from fxroof.cost.record import COST_KEY, FREE_CATEGORIES
from fxroof.fuse.dataflow import Facts
from fxroof.graph.aten_ops import aten
from fxroof.graph.tensors import numel

# Kernel.reason of the copies (Kernel.nodes: the tensor copied) and of a softmax's first part
CAT_COPY = "cat input that is a view: a copy of its own (C++ backend)"
FOLD_COPY = "matmul operand a view cannot fold: a copy of its own (C++ backend)"
SOFTMAX_SPLIT = "softmax input read with a broadcast: its exp written before the sum (C++ backend)"
SOFTMAX = frozenset({aten._softmax, aten.softmax})


def copies(f: Facts, ops: list) -> list[tuple]:
    """(node name, bytes read = bytes written, dtype, reason, module) per copy of its own among
    the group `ops` (op indices): each input of a cat that is a view of a tensor made outside
    the group, or a graph input (nothing to compute), written into the result (Inductor's
    ConcatKernel); each operand a view cannot fold for a matmul's mm/bmm (the copy its formula
    counts)."""
    names, found = {f.ops[i].node.name for i in ops}, []
    for op in (f.ops[i] for i in ops):
        if op.node.target is aten.cat.default:
            moved = [(arg, CAT_COPY, numel(arg.meta["val"])) for arg in op.node.args[0]
                     if arg.op == "placeholder" or _view_of_outside(arg, names)]
        elif op.node.target is aten.matmul.default and op.cost.note:
            a, b = (arg.meta["val"] for arg in op.node.args[:2])   # as the formula folds them
            both = b.dim() > 2
            batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]) if both else None
            moved = [(arg, FOLD_COPY, fold_copy_bytes(t, batch) // t.element_size())
                     for arg, t in list(zip(op.node.args[:2], (a, b)))[:1 + both]]
        else:
            continue
        found += [(arg.name, n * arg.meta["val"].element_size(), op.cost.dtype, why, op.module)
                  for arg, why, n in moved if n]
    return found


def _view_of_outside(node: fx.Node, names: set) -> bool:
    root = node
    while root.op == "call_function" and root.meta[COST_KEY].category in FREE_CATEGORIES:
        root = root.all_input_nodes[0]
    return root is not node and root.name not in names


def softmax_head(f: Facts, ops: list) -> list:
    """The ops before a softmax in the group `ops` when one of them reads a tensor broadcast
    over its loop (a mask, a bias), not a created one: Inductor then writes the softmax's exp
    between the max and the sum, a kernel boundary. [] where it does not."""
    members = set(ops)
    for i in ops:
        if getattr(f.ops[i].node.target, "overloadpacket", None) not in SOFTMAX:
            continue
        head, stack = set(), [i]
        while stack:
            stack += [p for p in f.deps.pred[stack.pop()] if p in members and p not in head]
            head.update(stack)
        if any(numel(t) < op.space and f.ops[f.producer.get(key, i)].kind != "create"
               for op in (f.ops[h] for h in head) for key, t in op.reads):
            return sorted(head)
    return []
