"""A workload reported at many values of one option, each report equal to fxroof.analyze's there.

Captured once with symbolic sizes where that is sound (fxroof.studies.symbolic); a value the
trace cannot stand for is captured on its own, with a note saying why. docs/sweeps.md says how a
value is checked against the trace and its shapes filled in, and why this way.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, Callable

import sympy
import torch
import torch.utils._pytree as pytree
from torch._dispatch.python import enable_python_dispatcher
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from fxroof.errors import one_line
from fxroof.graph.capture import quiet_torch
from fxroof.graph.tensors import tensors_in
from fxroof.pipeline import Target, analyze, report_of
from fxroof.report.records import Report
from fxroof.studies.symbolic import (Symbolic, fake_copies, layout_only, model_params, size_at,
                                     swept_inputs, symbolic_capture)
from fxroof.studies.workload import load, unpack

__all__ = ["Evaluator", "Point", "builder", "items_of", "totals"]

Build = Callable[[Any], tuple]   # value -> (model, args, kwargs)


class Unfit(Exception):
    """The captured graph does not stand for a value's inputs; the message says why."""


def totals(r: Report) -> dict:
    """A report's totals as every study's JSON holds them."""
    return {"time_s": r.time_s, "regime": r.regime, "regime_share": r.regime_share,
            "flops": r.flops, "bytes": r.summary.bytes, "memory": r.memory.to_dict()}


log = logging.getLogger("fxroof")


@dataclass(frozen=True)
class Point:
    """One value of the swept option and the report at it."""
    value: Any
    report: Report
    items: int              # tokens (or samples) one step processes: what throughput counts
    note: str = ""          # set when this value was captured on its own, and why

    time_s = property(lambda self: self.report.time_s)
    regime = property(lambda self: self.report.regime)

    # items a second: beside time_s, the latency / throughput trade-off
    throughput = property(lambda self: self.items / self.time_s if self.time_s else 0.0)

    def to_dict(self) -> dict:
        r = self.report
        return {"value": self.value, **totals(r),
                "intensity": None if r.intensity == float("inf") else r.intensity,
                "items": self.items, "throughput": self.throughput, "note": self.note}


def builder(workload, variable: str, options: dict | None = None) -> Build:
    """value -> (model, args, kwargs): the workload (a spec string or a function) at that value."""
    options = dict(options or {})
    call = (lambda **kw: load(workload, kw)) if isinstance(workload, str) else workload
    if not callable(call):
        raise TypeError("workload must be a workload spec (path/to/file.py[:FUNC]) or a function "
                        "returning (model, args[, kwargs])")
    return lambda value: unpack(call(**{**options, variable: value}), "a workload")


def items_of(args, kwargs) -> tuple[int, str]:
    """(tokens, "tokens") if the first tensor input holds token ids (integers, B x T), else
    (its leading dim, "samples")."""
    first = next(iter(tensors_in((args, kwargs))), None)
    if first is None or first.dim() == 0:
        return 1, "samples"
    if not (first.is_floating_point() or first.is_complex()):
        return first.numel(), "tokens"
    return int(first.shape[0]), "samples"


class Evaluator:
    """A workload captured once with one option symbolic, reported at any value of it, once.

    A process, not a record: it holds the captured graph, whose metadata each report rewrites.
    symbolic=False, or a tensor-parallel target, captures every value on its own.
    """

    def __init__(self, build: Build, variable: str, probes, target: Target,
                 symbolic: bool = True):
        self.build, self.variable, self.target = build, variable, target
        self.points: dict = {}           # value -> Point
        self.built: dict = {}            # value -> (model, args, kwargs) not reported yet
        self.sym: Symbolic | None = None
        self.why_not = ""                # why sym is None
        self.unit = "samples"            # what Point.items counts, set by each point
        self._prop = None                # (fake mode, weight fakes) for re-propagation
        if not symbolic:
            return
        if target.tp != 1:
            # One rank of a split model is traced inside a fake process group, with DTensors
            # the symbolic tracer does not take: each value is analyzed on its own.
            self.why_not = f"tensor parallel (tp={target.tp}): each value captured on its own"
            return
        if target.train:   # the symbolic tracer captures a forward, not a training step
            self.why_not = "training step: each value captured on its own"
            return
        if target.amp:     # analyze runs the forward under autocast, the symbolic tracer not
            self.why_not = f"amp={target.amp}: each value captured on its own"
            return
        self.built = {v: build(v) for v in dict.fromkeys(probes)}
        try:
            self.sym = self._capture()
        except Exception as e:   # every value is then captured on its own, and we say why
            self.why_not = (f"symbolic capture failed ({one_line(e, name=True, width=200)}): "
                            f"each value captured alone")

    def _capture(self) -> Symbolic:
        built = list(self.built.values())
        swept = swept_inputs([inputs for _, *inputs in built])
        if len({str(model_params(model)) for model, *_ in built}) > 1:
            raise RuntimeError(f"the model's parameters change with {self.variable}")
        # Trace where every swept size is >= 2: 0 and 1 are special to PyTorch's shapes.
        generic = [b for b in built if all(
            size_at(pytree.tree_leaves(b[1:]), i, d) >= 2 for i, d in swept)] or built
        return symbolic_capture(*generic[len(generic) // 2], swept)

    def point(self, value) -> Point:
        if value not in self.points:
            log.info("%s=%s ...", self.variable, value)     # progress: the CLI shows it on a TTY
            self.points[value] = self._point(value)
        return self.points[value]

    def _point(self, value) -> Point:
        model, args, kwargs = self.built.pop(value, None) or self.build(value)
        items, self.unit = items_of(args, kwargs)
        note = ""
        if self.sym is not None:
            try:
                values, exact = self._fits(model, args, kwargs)
                self._substitute(values) if exact else self._propagate(args, kwargs)
                return Point(value, report_of(self.sym.captured, self.target), items)
            except Exception as e:   # the trace does not stand for this value: capture it
                why = one_line(e) if isinstance(e, Unfit) else (
                    f"re-evaluation failed ({one_line(e, name=True, width=200)})")
                note = f"captured on its own: {why}"
        return Point(value, analyze(model, args, kwargs, target=self.target), items, note)

    def _fits(self, model, args, kwargs) -> tuple[dict, bool]:
        """(each symbol's value, whether every guard holds) if the graph stands for these inputs
        up to layout; else Unfit, saying why."""
        sym = self.sym
        if model_params(model) != sym.params:
            raise Unfit("the model changed")
        try:
            differ = swept_inputs([pytree.tree_unflatten(sym.leaves, sym.spec), (args, kwargs)])
        except RuntimeError as e:    # a change in structure, type, dtype or rank
            raise Unfit(str(e)) from None
        leaves = pytree.tree_leaves((args, kwargs))
        values: dict = {}                # symbol -> its value, a sympy.Integer
        # each size that differs from the trace, and each symbol; sorted: the same message each run
        for i, d in sorted(differ | sym.symbols.keys(), key=str):
            s, new = sym.symbols.get((i, d)), size_at(leaves, i, d)
            if s is None:
                was = size_at(sym.leaves, i, d)
                raise Unfit(f"input {i} is {new!r} where the trace had {was!r}")
            if values.setdefault(s, sympy.Integer(new)) != new:
                raise Unfit(f"sizes that were equal when traced differ ({s})")
        held = [(expr, expr.xreplace(values), where) for expr, where in sym.guards]
        for expr, h, where in held:
            # a failing layout guard ("is this size 1?"): the shapes stand, the strides are redone
            if h not in (sympy.true, True) and not (h in (sympy.false, False)
                                                    and layout_only(where)):
                raise Unfit(f"the trace assumed {expr}")
        return values, all(h in (sympy.true, True) for _, h, _ in held)

    def _substitute(self, values: dict) -> None:
        """Every node's meta["val"]: its formulas evaluated, as meta tensors sharing storage as
        the traced ones did."""
        @functools.cache
        def num(e):
            n = e.xreplace(values) if isinstance(e, sympy.Basic) else e
            if not getattr(n, "is_number", True):
                raise ValueError(f"{e} is not fixed by the swept value")
            return n

        bases = [torch.empty(int(num(size)), dtype=torch.uint8, device="meta")
                 for _, size in self.sym.storages]

        def make(t):
            kind = t[0]
            if kind == "tensor":
                _, s, shape, stride, offset, dtype = t
                base = bases[s] if dtype == torch.uint8 else bases[s].view(dtype)
                return base.as_strided([int(num(x)) for x in shape], [int(num(x)) for x in stride],
                                       int(num(offset)))
            if kind == "sym":
                return bool(num(t[1])) if t[2] is torch.SymBool else int(num(t[1]))
            if kind == "seq":
                return t[1](make(x) for x in t[2])
            return t[1]

        for node, t in zip(self.sym.captured.gm.graph.nodes, self.sym.templates):
            if node.op != "output":
                node.meta["val"] = make(t)

    def _propagate(self, args, kwargs) -> None:
        """Re-run the graph on fake tensors of these inputs: layouts worked out afresh."""
        if self._prop is None:    # one static mode for every value: its op cache is shared
            mode = FakeTensorMode(allow_non_fake_inputs=True)
            self._prop = (mode, fake_copies(mode, self.sym.weights))
        mode, weights = self._prop
        inputs = fake_copies(mode, pytree.tree_leaves((args, kwargs)))
        with quiet_torch(), enable_python_dispatcher():
            FakeTensorProp(self.sym.captured.gm, mode).propagate_dont_convert_inputs(
                *weights, *inputs)
