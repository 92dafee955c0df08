"""Capture a workload once with symbolic sizes: the graph every value of a sweep is read from.

The inputs built at several values are compared: the tensor dims and Python ints that differ are
swept. One make_fx trace (pre-dispatch, the IR torch.export records) on fakes whose swept dims
share ShapeEnv symbols turns every shape in the graph into a formula and every assumption into a
guard, for fxroof.studies.evaluator to check at each value. docs/sweeps.md says why this way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sympy
import torch
import torch.utils._pytree as pytree
from torch._dispatch.python import enable_python_dispatcher
from torch._dynamo.source import ConstantSource
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext
from torch.multiprocessing.reductions import StorageWeakRef

from fxroof.graph.capture import Captured, TensorOutputs, finish_graph, preserved_modes, quiet_torch
from fxroof.graph.compiled_branches import transformers_compiling
from fxroof.graph.engine_kernels import engine_kernels

__all__ = ["Symbolic", "fake_copies", "layout_only", "model_params", "size_at", "swept_inputs",
           "symbolic_capture"]


def _state(model) -> dict:
    """Parameters then buffers by name (a tied one under each of its names): placeholder order."""
    return {**dict(model.named_parameters(remove_duplicate=False)),
            **dict(model.named_buffers(remove_duplicate=False))}


def model_params(model) -> dict:
    return {k: (tuple(t.shape), t.dtype) for k, t in _state(model).items()}


def size_at(leaves: list, i: int, d: int | None) -> int:
    """What a swept (leaf index, dim) names in these input leaves: a tensor's dim, or an int."""
    return leaves[i] if d is None else int(leaves[i].shape[d])


def swept_inputs(inputs: list) -> set:
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
                raise RuntimeError(f"input {i} changes type, dtype or rank with the value")
            swept |= {(i, d) for d in range(leaf.dim()) if any(o.shape[d] != leaf.shape[d]
                                                               for o in others)}
        elif type(leaf) is int and all(type(o) is int for o in others):
            swept |= {(i, None)} if any(o != leaf for o in others) else set()
        elif any(isinstance(o, torch.Tensor) or o != leaf for o in others):
            raise RuntimeError(f"input {i} changes in a way a symbol cannot stand for")
    return swept


# -- capturing once -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Symbolic:
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


def symbolic_capture(model, args, kwargs, swept: set) -> Symbolic:
    env = ShapeEnv(specialize_zero_one=False)   # a size-1 question becomes a guard, not a given
    mode = FakeTensorMode(shape_env=env, allow_non_fake_inputs=True)
    wrapped = TensorOutputs(model)
    state = _state(wrapped)
    leaves, spec = pytree.tree_flatten((args, kwargs))
    symbols, fakes = {}, []
    with env.suppress_guards():      # making the inputs asks layout questions, not the model
        for i, leaf in enumerate(leaves):
            source = ConstantSource(f"input{i}")
            if isinstance(leaf, torch.Tensor):
                dims = [DimDynamic.DUCK if (i, d) in swept else DimDynamic.STATIC
                        for d in range(leaf.dim())]
                context = StatelessSymbolicContext(dynamic_sizes=dims)
                fake = mode.from_tensor(leaf, source=source, symbolic_context=context)
                symbols.update({(i, d): fake.shape[d].node.expr for d in range(leaf.dim())
                                if (i, d) in swept})
                fakes.append(fake_copies(mode, [fake])[0])
            elif (i, None) in swept:
                symbols[(i, None)] = env.create_symbol(leaf, source, dynamic_dim=DimDynamic.DUCK)
                fakes.append(env.create_symintnode(symbols[(i, None)], hint=leaf, source=source))
            else:
                fakes.append(leaf)
        weights = fake_copies(mode, list(state.values()))
    fake_args, fake_kwargs = pytree.tree_unflatten(fakes, spec)

    def run(state, args, kwargs):
        return torch.func.functional_call(wrapped, state, args, kwargs)

    run._orig_mod = wrapped    # make_fx records module paths relative to `_orig_mod`
    with preserved_modes(model), quiet_torch(), enable_python_dispatcher(), mode, \
            transformers_compiling(), engine_kernels():   # as analyze's capture runs
        gm = make_fx(run, record_module_stack=True, pre_dispatch=True)(
            dict(zip(state, weights)), fake_args, fake_kwargs)
    names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    captured = finish_graph(gm, "make_fx", frozenset(names[:len(state)]), type(model).__name__)
    guards = [(g.expr, g.sloc) for g in env.guards]
    guards += [(a.expr, "runtime assert") for asserts in env.deferred_runtime_asserts.values()
               for a in asserts]
    storages: dict = {}
    templates = [_template(n.meta.get("val"), env, storages) for n in captured.gm.graph.nodes]
    return Symbolic(captured, spec, leaves, symbols, guards, templates, list(storages.values()),
                    list(state.values()), model_params(model))


# Meta tensors are traced as fake CPU tensors, as fxroof.graph.capture does: on the meta device
# PyTorch takes other paths (scaled_dot_product_attention's unfused math path, another output
# layout).


def fake_copies(mode: FakeTensorMode, tensors: list) -> list:
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


def layout_only(where) -> bool:
    """A guard torch's stride helpers added while working out a fake tensor's layout."""
    loc = getattr(where, "framework_loc", None)
    return "_prims_common" in (getattr(loc, "filename", "") or "").replace("\\", "/") and (
        "contiguous" in (getattr(loc, "name", "") or ""))
