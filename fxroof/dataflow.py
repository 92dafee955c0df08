"""Who reads what: the facts about an annotated graph that fusion decides on.

Views are looked through: every tensor an op reads is traced back to its root, the output of an
op (one element of it for ops returning tuples) or a graph input, and remembered with the view
actually read (its shape and strides say how many bytes the read really touches).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import networkx as nx
import torch
import torch.fx as fx

from .cost import COST_KEY, FREE_CATEGORIES, Cost
from .tensors import footprint, numel, tensors_in

aten = torch.ops.aten

# Copies with a library kernel of their own: gathers (indirect reads), scatters (writes at
# data-dependent places, which consumers can only read once the whole scatter is done) and ops
# whose output size depends on the data.
GATHERS = frozenset({aten.embedding, aten.embedding_bag, aten._embedding_bag, aten.index_select,
                     aten.gather, aten.take_along_dim, aten.index})
SCATTERS = frozenset({aten.index_put, aten._index_put_impl_, aten._unsafe_index_put,
                      aten.index_copy, aten.index_add, aten.index_fill, aten.scatter,
                      aten.scatter_add, aten.scatter_reduce, aten.masked_scatter})
DATA_DEPENDENT = frozenset({aten.masked_select, aten.nonzero, aten._local_scalar_dense, aten.item})
SOLO_CATEGORIES = frozenset({"matmul", "conv", "attention", "collective", "other"})
REDUCTION_CATEGORIES = frozenset({"reduction", "norm"})

Key = tuple   # (root node name, output index or None): one tensor in memory


@dataclass
class Op:
    """One node that is not a view, with what fusion needs to know about it."""
    index: int
    node: fx.Node
    cost: Cost
    kind: str                  # "pointwise", "reduction", "create" (reads nothing) or "solo"
    rank: str                  # how strongly it names a kernel: solo, norm, reduction, pointwise...
    space: int                 # iteration space: output numel, input numel for reductions
    out_spaces: tuple          # numel of each output
    module: str
    solo_reason: str = ""
    keys: tuple = ()           # the tensors it makes
    reads: list = field(default_factory=list)   # (key, tensor read) per input, views looked through
    outputs_returned: bool = False


@dataclass
class Facts:
    gm: fx.GraphModule
    ops: list                  # Op, in graph order
    producers: list            # op index -> distinct op indices it reads from, in argument order
    consumers: list            # op index -> set of op indices reading what it makes
    readers: dict              # key -> op indices reading that tensor, in graph order
    deps: nx.DiGraph           # op index -> op index, data dependencies (and mutation order)
    base: dict                 # key -> the tensor as it lies in memory
    producer: dict             # key -> op index making it (absent for graph inputs)
    returned: set              # keys the graph returns

    def bytes_read(self, members: set) -> int:
        """Distinct tensors from outside `members`, each once, at the footprint of the views read
        (capped at the tensor's own). Creation ops are recomputed by fusing readers, not read."""
        views: dict = {}
        for i in members:
            reader = self.ops[i]
            for key, t in reader.reads:
                p = self.producer.get(key)
                if p in members or (p is not None and self.ops[p].kind == "create"
                                    and reader.kind != "solo"):
                    continue
                views.setdefault(key, {})[_signature(t)] = footprint(t)
        total = 0
        for key, seen in views.items():
            base = self.base.get(key)
            read = sum(seen.values())
            total += min(read, footprint(base)) if base is not None else read
        return total

    def bytes_written(self, members: set) -> int:
        """Tensors made in `members` and used outside them or returned, each once."""
        total = 0
        for i in members:
            op = self.ops[i]
            if op.cost.bytes_written == 0:    # allocations, asserts: nothing reaches memory
                continue
            for key in op.keys:
                outside = [r for r in self.readers.get(key, ()) if r not in members]
                if op.kind == "create":       # recomputed by fusing readers: only solo ones read it
                    outside = [r for r in outside if self.ops[r].kind == "solo"]
                if outside or key in self.returned:
                    total += footprint(self.base[key])
        return total


def graph_facts(gm: fx.GraphModule) -> Facts:
    ops: list[Op] = []
    roots: dict[fx.Node, list] = {}       # node -> [(key, tensor)] it stands for
    base: dict = {}
    producer: dict = {}
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            roots[node] = _own(node, base)
        elif node.op == "call_function":
            cost = node.meta.get(COST_KEY)
            if cost is None:
                raise ValueError(f"node has no cost; run annotate(gm) first: {node.format_node()}")
            if cost.category in FREE_CATEGORIES:
                roots[node] = _through_view(node, roots)
                continue
            op = _op(len(ops), node, cost)
            roots[node] = _own(node, base)
            op.keys = tuple(k for k, _ in roots[node])
            for k in op.keys:
                producer[k] = op.index
            if op.kind != "create":
                op.reads = [r for arg in node.all_input_nodes for r in roots.get(arg, ())]
                if op.kind == "pointwise" and op.reads and all(
                        k in producer and ops[producer[k]].kind == "create" for k, _ in op.reads):
                    op.kind = "create"    # work on created values only: recomputed, never read
            ops.append(op)

    returned = {k for n in gm.graph.nodes if n.op == "output"
                for arg in n.all_input_nodes for k, _ in roots.get(arg, ())}
    deps = nx.DiGraph()
    deps.add_nodes_from(range(len(ops)))
    producers: list = [[] for _ in ops]
    consumers: list = [set() for _ in ops]
    readers: dict = {}
    mutated: dict = {}                    # key -> last op that wrote it in place
    for op in ops:
        for key, _ in op.reads:
            readers.setdefault(key, [])
            if not readers[key] or readers[key][-1] != op.index:
                readers[key].append(op.index)
            for p in (producer.get(key), mutated.get(key)):
                if p is not None and p != op.index:
                    deps.add_edge(p, op.index)
                    consumers[p].add(op.index)
                    if p not in producers[op.index]:
                        producers[op.index].append(p)
        if mutates(op.node):
            for key, _ in op.reads[:1]:   # earlier readers read it before this write
                for r in readers.get(key, ()):
                    if r != op.index:
                        deps.add_edge(r, op.index)
                        consumers[r].add(op.index)
                        if r not in producers[op.index]:
                            producers[op.index].append(r)
                mutated[key] = op.index
        op.outputs_returned = any(k in returned for k in op.keys)
    return Facts(gm, ops, producers, consumers, readers, deps, base, producer, returned)


# -- helpers -------------------------------------------------------------------------------------

def _own(node: fx.Node, base: dict) -> list:
    """The tensors a node makes, each under its own key."""
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        found = [((node.name, None), val)]
    elif isinstance(val, (tuple, list)):
        found = [((node.name, i), t) for i, t in enumerate(val) if isinstance(t, torch.Tensor)]
    else:
        found = []
    base.update(found)
    return found


def _through_view(node: fx.Node, roots: dict) -> list:
    """A view stands for the tensor it aliases; getitem picks one element of a tuple output."""
    val = node.meta.get("val")
    if node.target is operator.getitem:
        source, index = node.args[0], node.args[1]
        found = roots.get(source, [])
        own = [(k, t) for k, t in found if k == (source.name, index)]   # an op's tuple output
        if own:
            return [(own[0][0], val if isinstance(val, torch.Tensor) else own[0][1])]
        return [(k, val) for k, _ in found[:1] if isinstance(val, torch.Tensor)]
    sources = [r for arg in node.all_input_nodes for r in roots.get(arg, ())]
    if not sources:
        return []
    key = sources[0][0]
    return [(key, t) for t in tensors_in(val)]


def _op(index: int, node: fx.Node, cost: Cost) -> Op:
    outs = tensors_in(node.meta.get("val"))
    ins = tensors_in(fx.node.map_arg((node.args, node.kwargs), lambda n: n.meta.get("val")))
    out_spaces = tuple(numel(t) for t in outs)
    packet = getattr(node.target, "overloadpacket", None)
    kind, rank, reason = _classify(node, cost, packet)
    if kind == "reduction":
        space = max((numel(t) for t in ins), default=0)
    else:
        space = max(out_spaces, default=0)
    return Op(index, node, cost, kind, rank, space, out_spaces, module_path(node), reason)


def _classify(node: fx.Node, cost: Cost, packet) -> tuple[str, str, str]:
    """(kind, rank, reason it stays alone) for one op."""
    name = getattr(packet, "__name__", str(node.target))
    if cost.note == "allocation only" or (cost.category == "pointwise" and cost.bytes_read == 0):
        return "create", "create", ""   # full, arange, zeros_like: the input gives a shape only
    if mutates(node):
        return "solo", "solo", f"in-place write ({name})"
    if not cost.known:
        return "solo", "solo", f"no cost formula ({name})"
    if cost.category in SOLO_CATEGORIES:
        what = cost.category if cost.category != "other" else f"op {name}"
        return "solo", "solo", f"library {what}"
    for ops, what in ((GATHERS, "gather"), (SCATTERS, "scatter"),
                      (DATA_DEPENDENT, "op with data-dependent output")):
        if packet in ops:
            return "solo", "solo", f"library {what} ({name})"
    if cost.category in REDUCTION_CATEGORIES:
        return "reduction", cost.category, ""
    return "pointwise", "copy" if cost.category == "copy" else "pointwise", ""


def mutates(node: fx.Node) -> bool:
    """The op writes one of its arguments in place (its schema says so)."""
    schema = getattr(node.target, "_schema", None)
    return schema is not None and any(
        a.alias_info is not None and a.alias_info.is_write for a in schema.arguments)


def module_path(node: fx.Node) -> str:
    """The path of the innermost module that made `node` ("" for the top level)."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def _signature(t: torch.Tensor) -> tuple:
    """Which bytes of its base a view addresses: equal signatures read the same bytes."""
    try:
        offset = int(t.storage_offset())
    except (RuntimeError, TypeError, NotImplementedError):
        offset = 0
    return tuple(int(s) for s in t.shape), tuple(int(s) for s in t.stride()), offset
