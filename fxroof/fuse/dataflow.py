"""Who reads what: the facts about an annotated graph that fusion decides on.

Views are looked through: every tensor an op reads is traced back to its root, the output of an
op (one element of it for ops returning tuples) or a graph input, and remembered with the view
actually read (its shape and strides say how many bytes the read really touches).
"""
from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass, field

import networkx as nx
import torch
import torch.fx as fx

from fxroof.cost.formulas import OpCall
from fxroof.cost.record import COST_KEY, FREE_CATEGORIES, Cost
from fxroof.fuse.policy import INLINE_GATHERS, SCATTERS, classify, functional_packet
from fxroof.graph.nodes import PHASE_KEY, module_path, mutates, written_args
from fxroof.graph.tensors import footprint, numel, tensors_in

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
    picked: int = 0            # an inlined gather: the bytes it reads of its source (first input)
    program: str = ""          # the compiled program it runs in: a training step's phase


@dataclass
class Facts:
    ops: list                  # Op, in graph order
    readers: dict              # key -> op indices reading that tensor, in graph order
    # op index -> op index: data dependencies (and mutation order); an op's predecessors are the
    # ops it reads from, in argument order, its successors those reading what it makes
    deps: nx.DiGraph
    base: dict                 # key -> the tensor as it lies in memory
    producer: dict             # key -> op index making it (absent for graph inputs)
    returned: set              # keys the graph returns
    # key -> stored bytes / bytes as captured: graph inputs a what-if quantized (WhatIf.stored)
    stored: dict = field(default_factory=dict)

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
                ratio = self.stored.get(key, 1.0)
                # an inlined gather's rows: its Cost's bytes, a what-if's quantization in them
                size = min(footprint(t), reader.picked / ratio) \
                    if reader.picked and t is reader.reads[0][1] else footprint(t)
                views.setdefault(key, {})[_signature(t)] = size
        return round(sum(min(sum(seen.values()), footprint(self.base[key]))
                         * self.stored.get(key, 1.0) for key, seen in views.items()))

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


def graph_facts(gm: fx.GraphModule, inline_gathers: bool = False,
                decompose_products: bool = False, stored: dict | None = None) -> Facts:
    """The facts fusion decides on; `inline_gathers`: gathers fuse as indirect loads (as
    Inductor's backends lower them) rather than run as library kernels; `decompose_products`:
    one-row products are reductions (policy.one_row_product), their Op's cost filed so;
    `stored`: {graph input name: stored bytes / bytes as captured} (WhatIf.stored)."""
    ops: list[Op] = []
    roots: dict[fx.Node, list] = {}       # node -> [(key, tensor)] it stands for
    base: dict = {}
    producer: dict = {}
    # An in-place write over a whole intermediate is its functional op, as functionalization makes
    # it: it makes a new tensor, which every later read of the old one reads instead.
    renamed: dict = {}                    # key written over -> the key of the op that did it
    functional: set = set()               # indices of those ops
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
            reads = [(_latest(k, renamed), t) for arg in node.all_input_nodes
                     for k, t in roots.get(arg, ())]
            written = _written_intermediate(node, roots, renamed, producer, base, cost)
            op = _op(len(ops), node, cost, functional=written is not None,
                     inline_gathers=inline_gathers, decompose_products=decompose_products)
            roots[node] = _own(node, base)
            op.keys = tuple(k for k, _ in roots[node])
            for k in op.keys:
                producer[k] = op.index
            if written is not None:
                renamed[written] = op.keys[0]
                functional.add(op.index)
            if op.kind != "create":
                op.reads = reads
                if op.kind != "solo" and getattr(node.target, "overloadpacket", None) in \
                        INLINE_GATHERS:   # fused only when inlined (classify)
                    op.picked = cost.bytes_read - sum(footprint(t) for _, t in reads[1:])
                if op.kind == "pointwise" and op.reads and all(
                        k in producer and ops[producer[k]].kind == "create" for k, _ in op.reads):
                    op.kind = "create"    # work on created values only: recomputed, never read
            ops.append(op)

    returned = {_latest(k, renamed) for n in gm.graph.nodes if n.op == "output"
                for arg in n.all_input_nodes for k, _ in roots.get(arg, ())}
    # inputs written in place (whole): their last values go back to the inputs' memory
    returned |= {_latest(k, renamed) for n in gm.graph.nodes if n.op in ("placeholder", "get_attr")
                 for k, _ in roots.get(n, ()) if k in renamed}
    deps = nx.DiGraph()
    deps.add_nodes_from(range(len(ops)))
    readers: dict = {}
    mutated: dict = {}                    # key -> last op that wrote it in place
    for op in ops:
        for key, _ in op.reads:
            if readers.setdefault(key, [])[-1:] != [op.index]:
                readers[key].append(op.index)
            deps.add_edges_from((p, op.index) for p in (producer.get(key), mutated.get(key))
                                if p is not None and p != op.index)
        if mutates(op.node) and op.index not in functional:
            for key, _ in op.reads[:1]:   # earlier readers read it before this write
                deps.add_edges_from((r, op.index) for r in readers.get(key, ()) if r != op.index)
                mutated[key] = op.index
        op.outputs_returned = any(k in returned for k in op.keys)
    return Facts(ops, readers, deps, base, producer, returned,
                 {(name, None): ratio for name, ratio in dict(stored or {}).items()})


# -- helpers -------------------------------------------------------------------------------------

def _own(node: fx.Node, base: dict) -> list:
    """The tensors a node makes, each under its own key."""
    val = node.meta.get("val")
    items = [(None, val)] if isinstance(val, torch.Tensor) else \
        enumerate(val) if isinstance(val, (tuple, list)) else ()
    found = [((node.name, i), t) for i, t in items if isinstance(t, torch.Tensor)]
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
    return [(key, t) for key, _ in sources[:1] for t in tensors_in(val)]


def _latest(key: Key, renamed: dict) -> Key:
    """The tensor that holds `key`'s value now: the last functional in-place write over it."""
    while key in renamed:
        key = renamed[key]
    return key


def _written_intermediate(node: fx.Node, roots: dict, renamed: dict, producer: dict,
                          base: dict, cost: Cost) -> Key | None:
    """The tensor an in-place op writes over, whole and as it lies, if an op made it, or if it
    is a graph input that a pointwise op writes (an optimizer's parameters and state: its last
    value is written back, graph_facts counts it returned); else None (a write into a view is a
    scatter into its base, and a scatter into an input writes only its rows)."""
    found = roots.get(node.args[0], ()) if written_args(node) == list(node.args[:1]) else ()
    if len(found) != 1 or not isinstance(node.meta.get("val"), torch.Tensor):
        return None
    key = _latest(found[0][0], renamed)
    if key not in producer and (cost.category not in ("pointwise", "copy")
                                or functional_packet(node.target.overloadpacket) in SCATTERS):
        return None
    return key if _signature(found[0][1]) == _signature(base[key]) else None


def _op(index: int, node: fx.Node, cost: Cost, *, functional: bool,
        inline_gathers: bool, decompose_products: bool = False) -> Op:
    out_spaces = tuple(numel(t) for t in tensors_in(node.meta.get("val")))
    kind, rank, reason = classify(node, cost, getattr(node.target, "overloadpacket", None),
                                  functional=functional, inline_gathers=inline_gathers,
                                  decompose_products=decompose_products)
    if kind == "reduction" and cost.category == "matmul":
        # a decomposed product: its kernel is a reduction, priced as one (no library tiles)
        cost = dataclasses.replace(cost, category="reduction")
    spaces = [numel(t) for t in OpCall.of(node).inputs] if kind == "reduction" else out_spaces
    return Op(index, node, cost, kind, rank, max(spaces, default=0), out_spaces,
              module_path(node), reason, program=node.meta.get(PHASE_KEY, ""))


def _signature(t: torch.Tensor) -> tuple:
    """Which bytes of its base a view addresses: equal signatures read the same bytes."""
    try:
        offset = int(t.storage_offset())
    except (RuntimeError, TypeError, NotImplementedError):
        offset = 0
    return tuple(int(s) for s in t.shape), tuple(int(s) for s in t.stride()), offset
