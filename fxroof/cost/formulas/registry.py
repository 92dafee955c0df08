"""One registry of per-op cost formulas, keyed by aten OpOverloadPacket.

A formula sees shapes only (fake or meta tensors) and returns either the FLOPs of the op, in which
case bytes are counted the default way (each distinct input read once at its real footprint, each
output written once), or a full Cost when the op moves bytes differently (views, gathers, in-place
writes).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Union

import torch
import torch.fx as fx

from fxroof.cost.record import CATEGORIES, Cost
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
        return tensors_in((self.args, self.kwargs))

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
        for op in ops:
            key = _packet(op)
            if key in FORMULAS:
                raise ValueError(f"a formula for {key} is already registered "
                                 f"({FORMULAS[key].fn.__module__}.{FORMULAS[key].fn.__qualname__})")
            FORMULAS[key] = Entry(f, category)
        return f

    return decorate(fn) if fn is not None else decorate


formula = register_formula  # the short name the built-in formula files use


def lookup(op) -> Entry | None:
    """op's formula; an in-place op ("hardswish_") without one of its own takes its functional
    op's: the same work, written over its input."""
    packet, name = _packet(op), getattr(_packet(op), "__name__", "")
    return FORMULAS.get(packet) or (FORMULAS.get(getattr(torch.ops.aten, name[:-1], None))
                                    if name.endswith("_") and not name.startswith("_") else None)
