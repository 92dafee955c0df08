"""Pass 2: group annotated nodes into the kernels a fusing compiler (torch.compile's Inductor)
would emit, and count each kernel's bytes as that compiler would move them.

Reads node.meta["fxroof.cost"] (annotate.py); writes node.meta["fxroof.kernel"] = the index of the
node's kernel in the returned tuple, on every node that is not a view. Changes nothing else.
dataflow.py holds the graph facts, policy.py what stays a kernel of its own, reach.py the cycle
test of horizontal fusion, cpp.py the C++ backend's kernels beyond its groups, this file the
decisions, for Inductor's Triton (GPU) or C++ (CPU) code generator. The rules, and where they
differ from Inductor's: docs/fusion.md.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import networkx as nx
import torch
import torch.fx as fx

from fxroof.cost.record import (COST_KEY, DEQUANTIZED, FREE_CATEGORIES, KERNEL_KEY,
                                 dequantizing)
from fxroof.fuse.dataflow import Facts, Op, graph_facts
from fxroof.fuse import cpp
from fxroof.fuse.reach import SiblingReach
from fxroof.graph.nodes import FOREACH_KEY

__all__ = ["Kernel", "fuse", "unfused"]


@dataclass(frozen=True)
class Kernel:
    nodes: tuple[str, ...]  # fx node names of its ops, in graph order (views are not listed)
    category: str         # the main node's category
    flops: int
    bytes_read: int
    bytes_written: int
    dtype: str            # the main node's compute dtype
    reason: str           # why the kernel ends where it ends
    module: str = ""      # the main node's module path ("" for the top level)
    known: bool = True    # every node has a cost formula
    views: int = 0        # eager only: view ops the model calls just before this one (no kernel,
                          # but each is a dispatch from Python)
    space: int = 0        # elements of its loop (output numel; a reduction's input numel)
    main: str = ""        # the node that names it (a fused kernel's library op or reduction)
    variant: str = ""     # a decomposed product that casts 8-bit weights up as it reads them:
                          # a dequantizing kernel (Cost.variant's names)

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written


def unfused(gm: fx.GraphModule, foreach: bool = False) -> tuple[Kernel, ...]:
    """Eager mode: one kernel per op that is not a view, FLOPs and bytes straight from its Cost;
    with `foreach`, a training step's optimizer runs each update op once over every parameter
    of a dtype (torch.optim's foreach path, its default on GPUs). Writes nothing into the graph
    (node.meta["fxroof.kernel"] is fuse()'s)."""
    ops, views = graph_facts(gm).ops, _views_before(gm)
    kernels = [Kernel((op.node.name,), op.cost.category, op.cost.flops, op.cost.bytes_read,
                      op.cost.bytes_written, op.cost.dtype, "eager: one kernel per op",
                      op.module, op.cost.known, views.get(op.node.name, 0), op.space)
               for op in ops]
    if not foreach:
        return tuple(kernels)
    merged: list = []           # kernels, and lists of the kernels one foreach op runs
    at: dict = {}               # FOREACH_KEY -> its list's place in `merged`
    for kernel, op in zip(kernels, ops):
        key = op.node.meta.get(FOREACH_KEY)
        if key is None:
            merged.append(kernel)
        elif key in at:
            merged[at[key]].append(kernel)
        else:
            at[key] = len(merged)
            merged.append([kernel])
    return tuple(k if isinstance(k, Kernel) else replace(
        k[0], nodes=tuple(n for x in k for n in x.nodes), flops=sum(x.flops for x in k),
        bytes_read=sum(x.bytes_read for x in k), bytes_written=sum(x.bytes_written for x in k),
        known=all(x.known for x in k), views=sum(x.views for x in k),
        space=sum(x.space for x in k),
        reason=f"eager: one foreach op over {len(k)} tensors") for k in merged)


# Graph nodes that stand for no call in the model's code: export's own checks and aliases, and
# the size queries a symbolic capture records (x.shape is no call).
_NOT_CALLED = frozenset({"_assert_tensor_metadata", "_assert_scalar", "alias", "lift_fresh_copy",
                         "sym_size", "sym_stride", "sym_numel", "sym_storage_offset"})


def _whole_slice(node: fx.Node) -> bool:
    """A slice that keeps every element (`cache[:batch]` at the full batch): torch.export drops
    it or writes an alias, a sweep's symbolic capture keeps it; counted as neither does."""
    if node.target.overloadpacket.__name__ != "slice" or not isinstance(node.args[0], fx.Node):
        return False
    out, src = node.meta.get("val"), node.args[0].meta.get("val")
    return isinstance(out, torch.Tensor) and isinstance(src, torch.Tensor) and \
        out.shape == src.shape and out.stride() == src.stride() and \
        out.storage_offset() == src.storage_offset()


def _views_before(gm: fx.GraphModule) -> dict[str, int]:
    """{op node name: aten view ops run since the op before it, in graph order}; views after the
    last op count with it. Python's getitem on an op's tuple of outputs is no call of its own."""
    counts, pending, last = {}, 0, None
    for node in gm.graph.nodes:
        cost = node.meta.get(COST_KEY) if node.op == "call_function" else None
        if cost is None:
            continue
        if cost.category not in FREE_CATEGORIES:
            counts[node.name], pending, last = pending, 0, node.name
        elif isinstance(node.target, torch._ops.OpOverload) and \
                node.target.overloadpacket.__name__ not in _NOT_CALLED and not _whole_slice(node):
            pending += 1
    if pending and last is not None:
        counts[last] += pending
    return counts


BACKENDS = ("triton", "cpp")   # Inductor's code generators: GPUs, CPUs


def fuse(gm: fx.GraphModule, *, matmul_epilogues: bool = False, backend: str = "triton",
         decompose_products: bool = False, stored: dict | None = None) -> tuple[Kernel, ...]:
    """Compiled mode: the kernels a fusing compiler would emit, in graph (topological) order.
    backend: the code generator whose fusions to follow, "triton" (GPU) or "cpp" (CPU).
    decompose_products: Triton only, products of one row run as reductions, as Inductor
    decomposes them under coordinate descent tuning (policy.one_row_product).
    stored: {graph input name: stored bytes / bytes as captured}, a what-if's quantized weights
    (WhatIf.stored), which a fused kernel reads at their stored size."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    # Inductor lowers embedding and index to indirect loads in the kernel that reads them on
    # both backends (lowering.py: a Pointwise over ops.indirect_indexing)
    facts = graph_facts(gm, inline_gathers=True,
                        decompose_products=decompose_products and backend == "triton",
                        stored=stored)
    fuser = _Fuser(facts, matmul_epilogues, backend == "cpp")
    fuser.run()
    for node in gm.graph.nodes:
        node.meta.pop(KERNEL_KEY, None)
    kernels: list[Kernel] = []
    for g in fuser.ordered_groups():
        for kernel, ops in fuser.kernels(g):
            for i in ops:
                facts.ops[i].node.meta[KERNEL_KEY] = len(kernels)
            kernels.append(kernel)
    return tuple(kernels)


# 8-bit weights a model stores and casts up in its forward (gpt-fast's int8 linears and experts:
# `self.weight.to(dtype=input.dtype)`): the formats a dequantizing kernel reads
_CAST_FROM = {torch.int8: "int8", torch.float8_e4m3fn: "fp8", torch.float8_e5m2: "fp8"}
_DEQUANT_VARIANTS = frozenset(dequantizing(w) for w in DEQUANTIZED)
_CASTS = frozenset({torch.ops.aten._to_copy.default, torch.ops.aten.to.dtype,
                    torch.ops.aten.to.dtype_layout, torch.ops.prims.convert_element_type.default})


def _dequantizing(main: Op, ops: list) -> str:
    """A decomposed product (a reduction whose node is a matmul) fused with a cast of 8-bit
    values up, or with a what-if's dequantizing gather of its weights: the dequantizing kernel
    gpt-fast runs (chips/expected.DEQUANT_STREAM_SHARE)."""
    if main.kind != "reduction" or main.node.meta[COST_KEY].category != "matmul":
        return ""
    for op in ops:
        if op.cost.variant in _DEQUANT_VARIANTS:
            return op.cost.variant
        source = op.node.args[0] if op.node.args else None
        val = source.meta.get("val") if isinstance(source, fx.Node) else None
        if op.node.target in _CASTS and isinstance(val, torch.Tensor) \
                and val.dtype in _CAST_FROM:
            return dequantizing(_CAST_FROM[val.dtype])
    return ""


def _sizes(g: _Group) -> str:
    """A reduction group's spaces as a reader checks them: "16384 -> 4096" elements."""
    return " and ".join(sorted(f"{max(g.spaces)} -> {s}" for s in g.spaces if s != max(g.spaces))
                        ) or f"{g.space} -> {g.space}"


# -- grouping ------------------------------------------------------------------------------------

# Which node names a kernel: library ops, then norms, reductions, pointwise, copies, creations.
_RANK = {"solo": 0, "norm": 1, "reduction": 2, "pointwise": 3, "copy": 4, "create": 5}


@dataclass
class _Group:
    ops: list                  # op indices, in graph order once finished
    space: int                 # the iteration space of its loop
    spaces: frozenset          # spaces it can absorb: {space}, or a reduction's input and output
    red: bool = False          # holds a reduction or norm
    lib: bool = False          # holds a library op (a matmul taking epilogues)
    create: bool = False       # holds creation ops only
    cat: bool = False          # holds a cat whose result the C++ backend writes (see why_not)
    first: int = 0             # its first op's index
    # the compiled program it runs in: torch.compile compiles a training step's forward, its
    # backward (AOTAutograd's two graphs) and the optimizer apart, and no kernel spans two
    program: str = ""


class _Fuser:
    ROUNDS = 10   # Inductor's fuse_nodes runs up to 10 rounds too

    def __init__(self, facts: Facts, matmul_epilogues: bool, cpp: bool):
        self.f = facts
        self.epilogues, self.cpp = matmul_epilogues, cpp
        self.group_of = list(range(len(facts.ops)))     # op index -> group id (its first seed)
        self.groups = {op.index: self._seed(op) for op in facts.ops}
        self.g = nx.DiGraph(facts.deps)                 # group graph, kept acyclic
        self.rank = {op.index: op.index for op in facts.ops}   # a topological rank per group

    def _seed(self, op: Op) -> _Group:
        lib = op.kind == "solo" and self.epilogues and op.cost.category == "matmul"
        red = op.kind == "reduction"
        spaces = frozenset({op.space, *op.out_spaces}) if red else frozenset({op.space})
        cat = self.cpp and op.kind == "pointwise" and op.node.target is torch.ops.aten.cat.default
        return _Group([op.index], op.space, spaces, red=red, lib=lib,
                      create=op.kind == "create", cat=cat, first=op.index, program=op.program)

    # -- the passes --
    def run(self) -> None:
        for _ in range(self.ROUNDS):
            if not self._vertical() + self._horizontal():
                break

    def _vertical(self) -> int:
        merged = 0
        for op in self.f.ops:
            for p in self.f.deps.pred[op.index]:
                a, b = self.group_of[p], self.group_of[op.index]
                if a != b and self.why_not(a, b, op) is None:
                    self._merge(a, b)
                    merged += 1
        return merged

    def _horizontal(self) -> int:
        merged = 0
        f = self.f
        for key, readers in f.readers.items():
            if key in f.producer and f.ops[f.producer[key]].kind == "create":
                continue    # recomputed by each reader: no shared read to save
            gids = list(dict.fromkeys(self.group_of[r] for r in readers))
            if len(gids) < 2:
                continue
            reach, every = SiblingReach(self.g, self.rank, gids), (1 << len(gids)) - 1
            for i, a in enumerate(gids):
                # Pairs in reader order, as a search per pair would take them, skipping the
                # siblings a reaches through a third group (refused, whatever else they share).
                a = self.group_of[a]
                todo = every & ~((2 << i) - 1) & ~reach.beyond(a)
                while todo:
                    j = (todo & -todo).bit_length() - 1
                    b = self.group_of[gids[j]]
                    if a != b and self._sibling_why_not(a, b, reach) is None:
                        kept = self._merge(a, b)
                        reach.merged(kept, b if kept == a else a)
                        a = kept
                        merged += 1
                        todo = every & ~reach.beyond(a)   # paths through the merged group
                    todo &= ~((2 << j) - 1)
        return merged

    # -- the rules --
    def _fusable(self, gid: int) -> bool:
        g = self.groups[gid]
        return g.lib or self.f.ops[g.ops[0]].kind != "solo"

    def why_not(self, a: int, b: int, consumer: Op) -> str | None:
        """None if producer group a may merge with consumer group b, else the reason it may not."""
        ga, gb = self.groups[a], self.groups[b]
        if not self._fusable(a):
            return f"library {self.f.ops[ga.ops[0]].cost.category}"
        if not self._fusable(b):
            return f"feeds {consumer.node.name} ({consumer.solo_reason})"
        if gb.lib:
            return f"feeds {consumer.node.name} (a matmul with epilogues takes no prologue)"
        if ga.program != gb.program and not ga.create:
            return f"{ga.program} and {gb.program} compile apart"
        if ga.cat:    # Inductor's C++ backend lowers cat to a kernel per input, never inlined
            return f"cat result read by {consumer.node.name} (C++ backend)"
        if ga.lib:
            if gb.red:
                return f"reduction {consumer.node.name} cannot be a matmul epilogue"
            if gb.space != ga.space:
                return f"different iteration space ({ga.space} vs {gb.space} elements)"
        elif not (ga.create or self._exclusive(a, b) or self._same_space(ga, gb)):
            return self._mismatch(ga, gb, consumer)
        return "would create a cycle" if self._between(a, b) is None else None

    def _sibling_why_not(self, a: int, b: int, reach: SiblingReach) -> str | None:
        ga, gb = self.groups[a], self.groups[b]
        if ga.lib or gb.lib or not (self._fusable(a) and self._fusable(b)):
            return "library op"
        if ga.program != gb.program:
            return f"{ga.program} and {gb.program} compile apart"
        if ga.create or gb.create or not self._same_space(ga, gb):
            return "different iteration space"
        if self.cpp and (ga.cat or gb.cat or ga.space != gb.space):
            return "different loop nest (C++ backend)"   # no reduction beside its output's work
        return "would create a cycle" if reach.blocked(a, b) else None

    @staticmethod
    def _same_space(ga: _Group, gb: _Group) -> bool:
        if ga.red != gb.red:    # a reduction also takes work over its output's space
            red, pw = (ga, gb) if ga.red else (gb, ga)
            return pw.space in red.spaces
        if ga.red:   # Inductor fuses reductions of the same outputs over the same inputs only
            return ga.spaces == gb.spaces
        return ga.space == gb.space

    def _mismatch(self, ga: _Group, gb: _Group, consumer: Op) -> str:
        if ga.red and gb.red:
            return (f"reduction output used by reduction {consumer.node.name} of other "
                    f"outputs or reduced elements ({_sizes(gb)} vs {_sizes(ga)})")
        if ga.red:
            return (f"reduction output used by {consumer.node.name} over a different "
                    f"iteration space ({gb.space} vs {ga.space} elements)")
        return f"different iteration space ({ga.space} vs {gb.space} elements)"

    def _exclusive(self, a: int, b: int) -> bool:
        """Group a is pointwise work read by group b alone: it can be inlined into b's loop."""
        return not self.groups[a].red and not any(
            self.f.ops[i].outputs_returned or any(self.group_of[r] not in (a, b)
                                                  for r in self.f.deps.succ[i])
            for i in self.groups[a].ops)

    def _between(self, a: int, b: int):
        """The groups that must move for a and b to sit side by side in topological order:
        (b and its ancestors, a and its descendants) with ranks between a's and b's; None if a
        path joins a and b through a third group (merging them would close a cycle).

        The group graph keeps a valid topological rank per group, so a path from a to b can only
        pass through groups ranked between them: the searches stay inside that window (the
        dynamic topological order of Pearce and Kelly, with merging in place of a new edge).
        """
        rank, succ, pred = self.rank, self.g.succ, self.g.pred
        if rank[a] > rank[b]:
            a, b = b, a
        lo, hi = rank[a], rank[b]
        down, stack = {a}, [a]
        while stack:
            x = stack.pop()
            for y in succ[x]:
                if y == b:
                    if x != a:
                        return None
                elif y not in down and rank[y] < hi:
                    down.add(y)
                    stack.append(y)
        up, stack = {b}, [b]
        while stack:
            x = stack.pop()
            for y in pred[x]:
                if y != a and y not in up and rank[y] > lo:
                    up.add(y)
                    stack.append(y)
        return a, b, up, down

    def _merge(self, a: int, b: int) -> int:
        """Merge group b into a or a into b (the one ranked first is kept); the id kept."""
        first, last, up, down = self._between(a, b)
        # Re-rank the window: b's ancestors, then the merged pair, then a's descendants.
        slots = sorted(self.rank[x] for x in up | down)
        moved = sorted(up, key=self.rank.get) + sorted(down, key=self.rank.get)
        for x, r in zip(moved, slots):
            self.rank[x] = r
        self.rank[first] = self.rank[last]       # adjacent now: last ends `up`, first starts `down`
        if first != a:
            a, b = b, a
        ga, gb = self.groups[a], self.groups.pop(b)
        del self.rank[b]
        # The merged loop: a reduction's, a library op's, the one not recomputing created values,
        # or for pointwise work the later group's (an inlined producer runs inside it).
        if ga.red or gb.red:
            space = max(g.space for g in (ga, gb) if g.red)
        elif ga.lib or gb.lib:
            space = ga.space if ga.lib else gb.space
        elif ga.create or gb.create:
            space = gb.space if ga.create else ga.space
        else:
            space = gb.space if gb.first > ga.first else ga.space
        ga.spaces = (ga.spaces if ga.red else frozenset()) | (gb.spaces if gb.red else frozenset())
        ga.spaces = ga.spaces or frozenset({space})
        ga.ops += gb.ops
        ga.space, ga.red, ga.lib = space, ga.red or gb.red, ga.lib or gb.lib
        ga.program = gb.program if ga.create else ga.program    # a created value goes along
        ga.create, ga.first = ga.create and gb.create, min(ga.first, gb.first)
        ga.cat = ga.cat or gb.cat
        for i in gb.ops:
            self.group_of[i] = a
        g = self.g
        g.add_edges_from((p, a) for p in g.predecessors(b) if p != a)
        g.add_edges_from((a, s) for s in g.successors(b) if s != a)
        g.remove_node(b)
        return a

    # -- results --
    def ordered_groups(self) -> list[_Group]:
        order = nx.lexicographical_topological_sort(self.g, key=lambda gid: self.groups[gid].first)
        groups = [self.groups[gid] for gid in order]
        for g in groups:
            g.ops.sort()
        return groups

    def kernels(self, g: _Group) -> list[tuple[Kernel, list]]:
        """g's kernels, each with the op indices it runs: g's one, after the C++ backend's
        copies of their own (which take their bytes from it) or split where it splits a
        softmax."""
        kernel = self.kernel(g)
        copies = [Kernel((name,), "copy", 0, n, n, dtype, why, module) for name, n, dtype, why,
                  module in cpp.copies(self.f, g.ops)] if self.cpp else []
        if copies:    # the same data, moved by more kernels
            return [(c, []) for c in copies] + [(replace(
                kernel, bytes_read=max(0, kernel.bytes_read - sum(c.bytes_read for c in copies)),
                bytes_written=kernel.bytes_written - sum(c.bytes_written for c in copies)),
                g.ops)]
        head = cpp.softmax_head(self.f, g.ops) if self.cpp else []
        if not head:
            return [(kernel, g.ops)]
        tail = [i for i in g.ops if i not in head]
        return [(self.kernel(g, head, cpp.SOFTMAX_SPLIT), head), (self.kernel(g, tail), tail)]

    def kernel(self, g: _Group, ops: list | None = None, reason: str = "") -> Kernel:
        """The kernel of g, or of its ops `ops` (reason: why that part ends)."""
        f = self.f
        ops = [f.ops[i] for i in (g.ops if ops is None else ops)]
        main = min(ops, key=lambda op: (_RANK[op.rank], op.index))
        members = {op.index for op in ops}
        read, written = (main.cost.bytes_read, main.cost.bytes_written) if len(ops) == 1 and \
            main.kind == "solo" else (f.bytes_read(members), f.bytes_written(members))
        return Kernel(tuple(op.node.name for op in ops), main.cost.category,
                      sum(op.cost.flops for op in ops), read, written, main.cost.dtype,
                      reason or self._reason(g, main), main.module,
                      all(op.cost.known for op in ops), space=g.space, main=main.node.name,
                      variant=_dequantizing(main, ops))

    def _reason(self, g: _Group, main: Op) -> str:
        gid = self.group_of[g.ops[0]]
        if not self._fusable(gid):
            return main.solo_reason
        outside = sorted({c for i in g.ops for c in self.f.deps.succ[i]} - set(g.ops))
        if why := next(filter(None, (self.why_not(gid, self.group_of[c], self.f.ops[c])
                                     for c in outside)), None):
            return why
        if any(self.f.ops[i].outputs_returned for i in g.ops):
            return "output of graph"
        return "single op" if len(g.ops) == 1 else "end of graph"

