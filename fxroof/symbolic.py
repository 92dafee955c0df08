"""Capture a workload once with symbolic sizes, then report it at many values of one option.

The engine behind fxroof.sweep and fxroof.llm. How, and why this way (torch 2.13; figures from bench/bench_sweep.py, Llama-2-7B decode on meta):
- The workload is built at every value (a meta model builds in ~20 ms) and the inputs compared:
  the tensor dims and Python ints that differ are the swept ones.
- The model is traced once with make_fx (pre-dispatch: the IR torch.export records) on fake
  inputs whose swept dims share one ShapeEnv symbol (duck sizing: dims equal at the traced value
  get one symbol, and a value where they differ is caught below). Every shape in the graph is
  then a formula in the symbols and each assumption the trace made is a guard. This costs about
  one static torch.export; torch.export's own dynamic_shapes cost 4-5x one (one symbol per dim,
  equalities found by guards), more than the whole budget of an 11-point sweep.
- A value is checked against the guards by substitution. If all hold, each node's shapes,
  strides and storage are its formulas evaluated at the value (meta tensors, ~20 ms for 7B).
  If only layout guards fail (torch's stride helpers asking "is this size 1?", so batch 1), the
  graph is re-run on fake tensors of that value (FakeTensorProp, ~0.5 s): its ops are right there,
  but the strides, hence which reshapes copy, must be worked out again. Any other failing guard,
  or a failed symbolic capture, and the value is captured on its own (a note says so): slower,
  never wrong.
- Then annotate, fuse and the report run as in fxroof.analyze, on the graph's new metadata.
"""
from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass
from typing import Any, Callable

import sympy
import torch
import torch.utils._pytree as pytree
from torch._dispatch.python import enable_python_dispatcher
from torch._dynamo.source import ConstantSource
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext
from torch.fx.passes.fake_tensor_prop import FakeTensorProp
from torch.multiprocessing.reductions import StorageWeakRef

from .api import analyze, report_of
from .capture import Captured, finish_graph, preserved_modes, quiet_torch, TensorOutputs
from .chips import chip as find_chip
from .report import Report
from .roofline import MODES
from .whatif import parse as parse_quantization
from .workload import load

__all__ = ["Evaluator", "Point", "builder", "items_of", "no_full_gc"]

Build = Callable[[Any], tuple]   # value -> (model, args, kwargs)


@dataclass(frozen=True)
class Point:
    """One value of the swept option and the report at it."""
    value: Any
    report: Report
    items: int              # tokens (or samples) one step processes: what throughput counts
    note: str = ""          # set when this value was captured on its own, and why

    @property
    def time_s(self) -> float:
        return self.report.time_s

    @property
    def regime(self) -> str:
        return self.report.regime

    @property
    def throughput(self) -> float:
        """Items a second: beside time_s, the latency / throughput trade-off."""
        return self.items / self.time_s if self.time_s else 0.0

    def to_dict(self) -> dict:
        r = self.report
        return {"value": self.value, "time_s": r.time_s, "regime": r.regime,
                "regime_share": r.regime_share, "flops": r.flops, "bytes": r.summary.bytes,
                "intensity": None if r.intensity == float("inf") else r.intensity,
                "items": self.items, "throughput": self.throughput,
                "memory": r.memory.to_dict(), "note": self.note}


def builder(workload, variable: str, options: dict | None = None) -> Build:
    """value -> (model, args, kwargs): the workload (a spec string or a function) at that value."""
    options = dict(options or {})
    if isinstance(workload, str):
        return lambda value: _normalise(load(workload, {**options, variable: value}))
    if callable(workload):
        return lambda value: _normalise(workload(**{**options, variable: value}))
    raise TypeError("workload must be a workload spec (path/to/file.py[:FUNC]) or a function "
                    "returning (model, args[, kwargs])")


def _normalise(result) -> tuple:
    if not isinstance(result, tuple) or len(result) not in (2, 3):
        raise TypeError("a workload returns (model, args) or (model, args, kwargs)")
    model, args, kwargs = (*result, {}) if len(result) == 2 else result
    args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
    return model, args, dict(kwargs or {})


def items_of(args, kwargs) -> tuple[int, str]:
    """(tokens, "tokens") if the first tensor input holds token ids (integers, B x T), else
    (its leading dim, "samples")."""
    first = next((t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)),
                 None)
    if first is None or first.dim() == 0:
        return 1, "samples"
    if not (first.is_floating_point() or first.is_complex()):
        return first.numel(), "tokens"
    return int(first.shape[0]), "samples"


def _params(model) -> dict:
    tensors = {**dict(model.named_parameters(remove_duplicate=False)),
               **dict(model.named_buffers(remove_duplicate=False))}
    return {k: (tuple(t.shape), t.dtype) for k, t in tensors.items()}


def _swept(inputs: list) -> set:
    """(leaf index, dim) of each tensor dim, (leaf index, None) of each int, that differs."""
    flat = [pytree.tree_flatten(x) for x in inputs]
    if any(spec != flat[0][1] for _, spec in flat):
        raise RuntimeError("the inputs change structure with the value")
    swept = set()
    for i, leaf in enumerate(flat[0][0]):
        others = [leaves[i] for leaves, _ in flat[1:]]
        if isinstance(leaf, torch.Tensor):
            if any(not isinstance(o, torch.Tensor) or o.dtype != leaf.dtype or o.dim() != leaf.dim()
                   for o in others):
                raise RuntimeError(f"input {i} changes type or rank with the value")
            swept |= {(i, d) for d in range(leaf.dim()) if any(o.shape[d] != leaf.shape[d]
                                                               for o in others)}
        elif type(leaf) is int and all(type(o) is int for o in others):
            swept |= {(i, None)} if any(o != leaf for o in others) else set()
        elif any(o != leaf for o in others):
            raise RuntimeError(f"input {i} changes in a way a symbol cannot stand for")
    return swept


# -- capturing once -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Symbolic:
    """The graph traced once with symbolic sizes, and what the trace assumed."""
    captured: Captured
    spec: Any                        # pytree spec of (args, kwargs)
    leaves: list                     # the traced value's input leaves
    symbols: dict                    # (leaf index, dim or None for an int) -> sympy symbol
    guards: list                     # (sympy boolean, where it was added)
    templates: list                  # per graph node: its meta["val"] as formulas (see _template)
    storages: list                   # per storage the templates name: its size in bytes, a formula
    weights: list                    # the model's parameters then buffers, in placeholder order
    params: dict                     # name -> (shape, dtype): the model must stay the same


def _symbolic_capture(model, args, kwargs, swept: set) -> _Symbolic:
    env = ShapeEnv(specialize_zero_one=False)   # a size-1 question becomes a guard, not a given
    mode = FakeTensorMode(shape_env=env, allow_non_fake_inputs=True)
    wrapped = TensorOutputs(model)
    params = dict(wrapped.named_parameters(remove_duplicate=False))
    buffers = dict(wrapped.named_buffers(remove_duplicate=False))
    leaves, spec = pytree.tree_flatten((args, kwargs))
    symbols, fakes = {}, []
    with env.suppress_guards():      # making the inputs asks layout questions, not the model
        for i, leaf in enumerate(leaves):
            source = ConstantSource(f"input{i}")
            if isinstance(leaf, torch.Tensor):
                dims = [DimDynamic.DUCK if (i, d) in swept else DimDynamic.STATIC
                        for d in range(leaf.dim())]
                context = StatelessSymbolicContext(dynamic_sizes=dims,
                                                   constraint_sizes=[None] * leaf.dim())
                fake = mode.from_tensor(leaf, source=source, symbolic_context=context)
                symbols.update({(i, d): fake.shape[d].node.expr for d in range(leaf.dim())
                                if (i, d) in swept})
                fakes.append(_fakes(mode, [fake])[0])
            elif (i, None) in swept:
                symbols[(i, None)] = env.create_symbol(leaf, source, dynamic_dim=DimDynamic.DUCK)
                fakes.append(env.create_symintnode(symbols[(i, None)], hint=leaf, source=source))
            else:
                fakes.append(leaf)
        weights = _fakes(mode, [*params.values(), *buffers.values()])
    fake_args, fake_kwargs = pytree.tree_unflatten(fakes, spec)

    def run(params, buffers, args, kwargs):
        return torch.func.functional_call(wrapped, {**params, **buffers}, args, kwargs)

    run._orig_mod = wrapped    # make_fx records module paths relative to `_orig_mod`
    with preserved_modes(model), quiet_torch(), enable_python_dispatcher(), mode:
        gm = make_fx(run, record_module_stack=True, pre_dispatch=True)(
            dict(zip(params, weights)), dict(zip(buffers, weights[len(params):])),
            fake_args, fake_kwargs)
    names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    captured = finish_graph(gm, "make_fx", frozenset(names[:len(params) + len(buffers)]),
                       type(model).__name__)
    guards = [(g.expr, g.sloc) for g in env.guards]
    guards += [(a.expr, "runtime assert") for asserts in env.deferred_runtime_asserts.values()
               for a in asserts]
    storages: dict = {}
    templates = [_template(n.meta.get("val"), env, storages) for n in captured.gm.graph.nodes]
    return _Symbolic(captured, spec, leaves, symbols, guards, templates, list(storages.values()),
                     [*params.values(), *buffers.values()], _params(model))


# Meta tensors are traced as fake CPU tensors, as fxroof.capture does: on the meta device PyTorch
# takes other paths (scaled_dot_product_attention's unfused math path, another output layout).


def _fakes(mode: FakeTensorMode, tensors: list) -> list:
    """Fresh fakes with the sizes and strides of `tensors` (meta ones on the CPU), one per tensor
    object, each storage sized by its strides (a fake made from a real tensor has a storage size
    of its own, a symbol no swept value fixes)."""
    memo: dict = {}
    with mode:
        for t in tensors:
            if isinstance(t, torch.Tensor) and id(t) not in memo:
                memo[id(t)] = torch.empty_strided(
                    t.shape, t.stride(), dtype=t.dtype,
                    device="cpu" if t.device.type == "meta" else t.device)
    return [memo[id(t)] if isinstance(t, torch.Tensor) else t for t in tensors]


def _formula(x, env: ShapeEnv):
    return env.replace(x.node.expr) if isinstance(x, (torch.SymInt, torch.SymBool)) else x


def _template(val, env: ShapeEnv, storages: dict):
    """A node's value with every size a formula: ("tensor", storage, shape, stride, offset,
    dtype), ("sym", formula), ("seq", type, items) or ("const", value)."""
    if isinstance(val, torch.Tensor):
        key = StorageWeakRef(val.untyped_storage())
        if key not in storages:
            storages[key] = (len(storages), _formula(val.untyped_storage().nbytes(), env))
        return ("tensor", storages[key][0], tuple(_formula(s, env) for s in val.shape),
                tuple(_formula(s, env) for s in val.stride()),
                _formula(val.storage_offset(), env), val.dtype)
    if isinstance(val, (torch.SymInt, torch.SymBool)):
        return ("sym", _formula(val, env), type(val))
    if isinstance(val, (list, tuple)):
        return ("seq", type(val), [_template(v, env, storages) for v in val])
    return ("const", val)


def _layout_only(where) -> bool:
    """A guard torch's stride helpers added while working out a fake tensor's layout."""
    loc = getattr(where, "framework_loc", None)
    return "_prims_common" in (getattr(loc, "filename", "") or "").replace("\\", "/") and (
        "contiguous" in (getattr(loc, "name", "") or ""))


# -- reporting at a value -------------------------------------------------------------------------


class Evaluator:
    """A workload captured once with one option symbolic, reported at any value of it.

    A process, not a record: it holds the captured graph, whose metadata each report rewrites.
    """

    def __init__(self, build: Build, variable: str, probes, *, chip="h100-sxm",
                 mode: str = "compiled", matmul_epilogues: bool = False, quantize=None,
                 tp: int = 1):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        self.build, self.variable, self.chip, self.mode = build, variable, find_chip(chip), mode
        self.matmul_epilogues, self.quantize = matmul_epilogues, parse_quantization(quantize)
        self.tp = tp
        self.built: dict = {}
        self.why_not = ""                # why symbolic capture was not used
        self._prop = None                # (fake mode, weight fakes) for re-propagation
        probes = list(dict.fromkeys(probes))
        for v in probes:
            self.built[v] = build(v)
        if tp != 1:
            # One rank of a split model is traced inside a fake process group, with DTensors
            # the symbolic tracer does not take: each value is analyzed on its own.
            self.sym = None
            self.why_not = f"tensor parallel (tp={tp}): each value captured on its own"
            return
        try:
            self.sym = self._capture(probes)
        except Exception as e:   # every value is then captured on its own, and we say why
            self.sym = None
            self.why_not = f"symbolic capture failed ({_one_line(e)}): each value captured alone"

    @property
    def method(self) -> str:
        return "symbolic" if self.sym is not None else "per-point"

    @property
    def unit(self) -> str:
        return items_of(*next(iter(self.built.values()))[1:])[1]

    def _capture(self, probes) -> _Symbolic:
        swept = _swept([self.built[v][1:] for v in probes])
        if len({str(_params(self.built[v][0])) for v in probes}) > 1:
            raise RuntimeError(f"the model's parameters change with {self.variable}")
        leaves = {v: pytree.tree_leaves(self.built[v][1:]) for v in probes}
        # Trace where every swept size is >= 2: 0 and 1 are special to PyTorch's shapes.
        generic = [v for v in probes if all(
            (leaves[v][i] if d is None else leaves[v][i].shape[d]) >= 2 for i, d in swept)]
        at = (generic or probes)[len(generic or probes) // 2]
        return _symbolic_capture(*self.built[at], swept)

    def point(self, value) -> Point:
        if value not in self.built:
            self.built[value] = self.build(value)
        model, args, kwargs = self.built[value]
        items = items_of(args, kwargs)[0]
        note = ""
        if self.sym is not None:
            why, values, exact = self._fits(model, args, kwargs)
            if why is None:
                try:
                    self._substitute(values) if exact else self._propagate(args, kwargs)
                    return Point(value, report_of(self.sym.captured, self.chip, self.mode,
                                                  self.matmul_epilogues, self.quantize), items)
                except Exception as e:   # these shapes were refused: capture instead
                    why = f"re-evaluation failed ({_one_line(e)})"
            note = f"captured on its own: {why}"
        report = analyze(model, args, kwargs, chip=self.chip, mode=self.mode,
                         matmul_epilogues=self.matmul_epilogues, quantize=self.quantize,
                         tp=self.tp)
        return Point(value, report, items, note)

    def _fits(self, model, args, kwargs):
        """(None, symbol values, all guards hold) if the graph stands for these inputs,
        else (the reason it does not, None, False)."""
        sym = self.sym
        leaves, spec = pytree.tree_flatten((args, kwargs))
        if spec != sym.spec or _params(model) != sym.params:
            return "the inputs' structure or the model changed", None, False
        values: dict = {}
        for i, (leaf, old) in enumerate(zip(leaves, sym.leaves)):
            if isinstance(old, torch.Tensor) or isinstance(leaf, torch.Tensor):
                if not (isinstance(old, torch.Tensor) and isinstance(leaf, torch.Tensor)
                        and leaf.dim() == old.dim() and leaf.dtype == old.dtype):
                    return f"input {i} changed type, dtype or rank", None, False
                pairs = [(d, int(leaf.shape[d]), int(old.shape[d])) for d in range(old.dim())]
            else:
                pairs = [(None, leaf, old)]
            for d, new, was in pairs:
                s = sym.symbols.get((i, d))
                if s is None and new != was:
                    return f"input {i} is {new!r} where the trace had {was!r}", None, False
                if s is not None and values.setdefault(s, new) != new:
                    return f"sizes that were equal when traced differ ({s})", None, False
        exact = True
        at = {s: sympy.Integer(v) for s, v in values.items()}
        for expr, where in sym.guards:
            held = expr.xreplace(at)
            if held not in (sympy.true, True):
                if held in (sympy.false, False) and _layout_only(where):
                    exact = False
                    continue
                return f"the trace assumed {expr}", None, False
        return None, values, exact

    def _substitute(self, values: dict) -> None:
        """Every node's meta["val"]: its formulas evaluated, as meta tensors sharing storage as
        the traced ones did."""
        memo: dict = {}
        values = {k: sympy.Integer(v) for k, v in values.items()}

        def num(e):
            if not isinstance(e, sympy.Basic):
                return e
            if e not in memo:
                memo[e] = e.xreplace(values)
                if not memo[e].is_number:
                    raise ValueError(f"{e} is not fixed by the swept value")
            return memo[e]

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
            self._prop = (mode, _fakes(mode, self.sym.weights))
        mode, weights = self._prop
        inputs = _fakes(mode, pytree.tree_leaves((args, kwargs)))
        with quiet_torch(), enable_python_dispatcher():
            FakeTensorProp(self.sym.captured.gm, mode).propagate_dont_convert_inputs(
                *weights, *inputs)


@contextlib.contextmanager
def no_full_gc():
    """Python's full (oldest-generation) collections put off while a sweep runs, young ones kept.

    Each value makes tens of thousands of short-lived reference cycles (closures, mostly) that
    young collections free; the full collections they also set off walked every object of the
    captured graph again and again, a quarter of an 11-point Llama-2-7B sweep. Thresholds are
    restored after; the next full collection then runs once, when Python decides.
    """
    old = gc.get_threshold()
    gc.set_threshold(old[0], old[1], 1 << 30)
    try:
        yield
    finally:
        gc.set_threshold(*old)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else ''}"
