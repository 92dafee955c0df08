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

from ..cost import CATEGORIES, Cost
from ..tensors import dtype_name, footprint, tensors_in

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

    def get(self, name: str, default=None):
        """An argument by schema name, whether it was passed by position or keyword."""
        if name in self.kwargs:
            return self.kwargs[name]
        schema = getattr(self.op, "_schema", None)
        if schema is not None:
            for i, arg in enumerate(schema.arguments):
                if arg.name == name:
                    if i < len(self.args):
                        return self.args[i]
                    break
        return default

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

    def bytes_read(self) -> int:
        return sum(footprint(t) for t in self.inputs)

    def bytes_written(self) -> int:
        return sum(footprint(t) for t in self.outputs)


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
    return FORMULAS.get(_packet(op))
