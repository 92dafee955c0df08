"""One registry of per-op cost formulas, keyed by aten OpOverloadPacket.

A formula sees shapes only (fake or meta tensors) and returns either the FLOPs of the op, in which
case bytes are counted the default way (each distinct input read once at its real footprint, each
output written once), or a full Cost when the op moves bytes differently (views, gathers, in-place
writes). Coverage is by construction, not by list: an op with no formula of its own takes the
formula of the op it is a form of (in-place, operator alias, out=), or one a rule gives it
(its aten tags, its schema, its decomposition): see lookup.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Union

import torch
import torch.fx as fx

from fxroof.cost.record import CATEGORIES, Cost
from fxroof.graph.aten_ops import present
from fxroof.graph.tensors import dtype_name, footprint, tensors_in

Formula = Callable[["OpCall"], Union[int, Cost]]


@dataclass(frozen=True)
class Entry:
    fn: Formula
    category: str


FORMULAS: dict[torch._ops.OpOverloadPacket, Entry] = {}


@dataclass(frozen=True)
class OpCall:
    """One call of an op as the graph records it, with tensors standing for their fake values."""
    op: Any                      # torch._ops.OpOverload
    args: tuple
    kwargs: dict = field(default_factory=dict)
    out: Any = None

    @classmethod
    def of(cls, node: fx.Node, swap: dict | None = None) -> "OpCall":
        """The call `node` makes, its argument nodes standing as their fake values; `swap`
        replaces tensors (keyed by id) among the arguments and outputs by stand-ins."""
        def value(v):
            return swap.get(id(v), v) if swap and isinstance(v, torch.Tensor) else v
        out = node.meta.get("val")
        if swap and isinstance(out, (tuple, list)):
            out = type(out)(map(value, out))
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: value(n.meta.get("val")))
        return cls(node.target, args, kwargs, value(out))

    def get(self, name: str, default=None):
        """An argument by schema name, whether it was passed by position or keyword."""
        schema = getattr(self.op, "_schema", None)
        names = [arg.name for arg in schema.arguments] if schema is not None else []
        if name in names and names.index(name) < len(self.args):
            return self.args[names.index(name)]
        return self.kwargs.get(name, default)

    @property
    def inputs(self) -> list[torch.Tensor]:
        """The tensors the call reads: its arguments but an out= buffer, which it only writes."""
        schema = getattr(self.op, "_schema", None)
        outs = {a.name for a in schema.arguments if a.is_out} if schema is not None else ()
        return tensors_in((self.args, {k: v for k, v in self.kwargs.items() if k not in outs}))

    @property
    def outputs(self) -> list[torch.Tensor]:
        return tensors_in(self.out)

    @property
    def dtype(self) -> str:
        """Short name of the first input's dtype (of the first output for ops with no input)."""
        tensors = self.inputs or self.outputs
        return dtype_name(tensors[0].dtype) if tensors else ""

    @property
    def out_dtype(self) -> str:
        """Short name of the first output's dtype ("" for ops with no output)."""
        return dtype_name(self.outputs[0].dtype) if self.outputs else ""

    def bytes_read(self) -> int:
        return sum(footprint(t) for t in self.inputs)

    def bytes_written(self) -> int:
        return sum(footprint(t) for t in self.outputs)

    def cost(self, flops: int, category: str, dtype: str | None = None, **fields) -> Cost:
        """A Cost with the default bytes: each distinct input read once at its real footprint,
        each output written once; the dtype, unless given, the call's."""
        return Cost(flops, self.bytes_read(), self.bytes_written(), category,
                    self.dtype if dtype is None else dtype, **fields)


def _packet(op):
    return getattr(op, "overloadpacket", op)


def register_formula(*ops, category: str, fn: Formula | None = None):
    """Register `fn` as the cost formula of `ops` (aten packets or overloads). Usable as a decorator.

    Registering an op twice is an error: one op, one formula, one place to look.
    """
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")

    def decorate(f: Formula) -> Formula:
        for op in present(ops):           # an op this torch lacks has nothing to price
            key = _packet(op)
            if key in FORMULAS:
                raise ValueError(f"a formula for {key} is already registered "
                                 f"({FORMULAS[key].fn.__module__}.{FORMULAS[key].fn.__qualname__})")
            FORMULAS[key] = Entry(f, category)
        return f

    return decorate(fn) if fn is not None else decorate


formula = register_formula  # the short name the built-in formula files use


# Formulas by construction for ops with none registered, tried in order on the op and on each
# op it is a form of: (overload) -> Entry or None. The formula modules add them (pointwise by
# aten tag, views by schema, cost by decomposition); formulas/__init__.py fixes their order.
RULES: list[Callable[[torch._ops.OpOverload], Union[Entry, None]]] = []


def _functional(name: str) -> list[str]:
    """Names of the ops `name` is a form of, nearest first: an in-place op ("mul_", "__iand__")
    does its functional op's work written over its input; an operator alias ("__and__",
    "__lshift__") is its named op ("bitwise_and", "bitwise_left_shift")."""
    if name.startswith("__") and name.endswith("__"):
        word = name[2:-2]
        bare = word[1:] if word.startswith("i") and hasattr(torch.ops.aten, f"__{word[1:]}__") \
            else word
        named = {"lshift": "left_shift", "rshift": "right_shift"}.get(bare, bare)
        return [f"__{bare}__", f"bitwise_{named}"]
    return [name[:-1]] if name.endswith("_") else []


def lookup(op) -> Entry | None:
    """op's formula: the one registered for it or, first, for an op it is a form of
    (_functional); else the first a rule gives it or one of those ops, in its own overload or the
    functional overload of an out= variant."""
    packet = _packet(op)
    overload = getattr(op, "_overloadname", "default")
    namespace, _, name = getattr(packet, "_qualified_op_name", "").partition("::")
    forms = [packet, *(f for n in _functional(name)
                       if (f := getattr(getattr(torch.ops, namespace), n, None)) is not None)]
    registered = next((FORMULAS[f] for f in forms if f in FORMULAS), None)
    if registered is not None:
        return registered
    # an out= overload ("out", "Tensor_out") is its functional one's work ("default", "Tensor")
    names = dict.fromkeys([overload, "default" if overload == "out"
                           else overload.removesuffix("_out")])
    overloads = [o for f in forms for n in names
                 if isinstance(o := getattr(f, n, None), torch._ops.OpOverload)]
    # each rule over every form before the next rule: a tag beats a decomposition
    return next((e for rule in RULES for o in overloads if (e := rule(o)) is not None), None)


def call_cost(call: OpCall) -> Cost | None:
    """The call's Cost by its op's formula; None without one."""
    entry = lookup(call.op)
    result = entry.fn(call) if entry is not None else None
    return result if result is None or isinstance(result, Cost) else \
        call.cost(int(result), entry.category)
