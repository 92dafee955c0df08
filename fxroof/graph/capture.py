"""Turn a model and example inputs into a torch.fx graph of aten ops with fake-tensor metadata.

Strategies, first that works: torch.export (non-strict) -> make_fx -> fx.symbolic_trace lowered by
make_fx. Every call_function node of the result carries meta["val"]. The user's model is never
changed: export and make_fx work on fake copies of parameters, and module modes are restored.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx

from fxroof.errors import one_line
from fxroof.graph.tensors import tensors_in

WRAPPED = "model"   # attribute under which capture nests the user's model


class CaptureError(RuntimeError):
    """No capture strategy worked. The message names each strategy and its cause."""

    def __init__(self, what: str, attempts: list[tuple[str, BaseException]]):
        self.attempts = attempts
        super().__init__("\n".join([f"could not capture {what}:"] + [
            f"  {name}: {one_line(err, innermost=True, name=True, width=300)}"
            for name, err in attempts]))


@dataclass(frozen=True)
class Captured:
    gm: fx.GraphModule
    strategy: str                 # "torch.export", "make_fx", "symbolic_trace" or "graph"
    weights: frozenset            # placeholder names holding parameters, buffers and constants
    name: str                     # the model's class name, for reports


def capture(model, args=(), kwargs=None) -> Captured:
    """`model` (an nn.Module, a callable, an aten fx.GraphModule or an ExportedProgram) as an
    aten graph, or a CaptureError naming each strategy tried and why it failed."""
    args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
    kwargs = dict(kwargs or {})
    if isinstance(model, torch.export.ExportedProgram):
        weights = _weight_names(model.graph_signature)
        return finish_graph(model.graph_module, "torch.export", weights, "ExportedProgram")
    if isinstance(model, fx.GraphModule) and is_aten_graph(model):
        weights = frozenset(n.name for n in model.graph.nodes if n.op == "get_attr")
        return finish_graph(model, "graph", weights, type(model).__name__)
    name = type(model).__name__
    if not isinstance(model, torch.nn.Module):
        if not callable(model):
            raise CaptureError(name, [("input", TypeError(
                "expected an nn.Module, an fx.GraphModule, an ExportedProgram or a callable"))])
        name, model = getattr(model, "__name__", name), FunctionModule(model)

    attempts: list[tuple[str, BaseException]] = []
    tensors = [*model.parameters(), *model.buffers(), *tensors_in((args, kwargs))]
    if any(t.device.type == "meta" for t in tensors) and not _is_dtensor_model(model):
        # Capture a copy whose meta tensors are fake CPU tensors (FakeCopier says why). DTensor
        # weights keep their own device handling in _make_fx.
        fake = FakeCopier()
        model, args, kwargs = fake.copy(model), fake.inputs(args), fake.inputs(kwargs)
    with preserved_modes(model), quiet_torch():
        for strategy, fn in (("torch.export", _export), ("make_fx", _make_fx), (
                "symbolic_trace", lambda m, a, k: _make_fx(fx.symbolic_trace(m), a, k))):
            try:
                gm, weights = fn(model, args, kwargs)
                return finish_graph(gm, strategy, weights, name)
            except Exception as e:   # each strategy's failure is reported, not raised alone
                attempts.append((strategy, e))
    raise CaptureError(name, attempts)


class FakeCopier:
    """Fake tensors (shapes, no data) standing for the model's weights and the inputs, all in one
    FakeTensorMode. Meta tensors become fake CPU tensors: on the meta device PyTorch computes
    scaled_dot_product_attention by its unfused math path, on a CPU by a fused kernel, which is
    what a deployment runs."""

    def __init__(self):
        self.mode = FakeTensorMode(allow_non_fake_inputs=True)

    def tensor(self, t: torch.Tensor) -> torch.Tensor:
        if isinstance(t, FakeTensor):
            return t
        device = "cpu" if t.device.type == "meta" else t.device
        with self.mode:
            f = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=device)
        return torch.nn.Parameter(f, t.requires_grad) if isinstance(t, torch.nn.Parameter) else f

    def copy(self, model: torch.nn.Module) -> torch.nn.Module:
        """A deep copy whose weights are fake: no weight is copied, whatever the device."""
        memo = {id(t): self.tensor(t) for t in (*model.parameters(), *model.buffers())}
        return copy.deepcopy(model, memo)

    def inputs(self, obj):
        """`obj` (nested lists, tuples and dicts) with each tensor a fake."""
        return pytree.tree_map_only(torch.Tensor, self.tensor, obj)


# --- strategies -----------------------------------------------------------------------------

class FunctionModule(torch.nn.Module):
    """A callable (a function, or the user's model) as a module, held under WRAPPED."""

    def __init__(self, fn):
        super().__init__()
        setattr(self, WRAPPED, fn)

    def forward(self, *args, **kwargs):
        return getattr(self, WRAPPED)(*args, **kwargs)


class TensorOutputs(FunctionModule):
    """Wraps the user's model so the output is a flat tuple of tensors.

    Hugging Face models return ModelOutput objects holding caches of custom classes that
    torch.export cannot flatten; the tensors inside are all the analysis needs.
    """

    def forward(self, *args, **kwargs):
        return tuple(_tensor_leaves(super().forward(*args, **kwargs)))


def _tensor_leaves(obj, depth: int = 0) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    items = (obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple))
             else vars(obj).values() if hasattr(obj, "__dict__") else ())
    return [t for item in items for t in _tensor_leaves(item, depth + 1)] if depth <= 8 else []


def _export(model, args, kwargs):
    if _is_dtensor_model(model):
        raise RuntimeError("DTensor weights: torch.export records DTensor ops at global shapes; "
                           "make_fx traces one rank's local ops")
    ep = torch.export.export(TensorOutputs(model), args, kwargs, strict=False)
    return ep.graph_module, _weight_names(ep.graph_signature)


def _weight_names(sig) -> frozenset:
    """Placeholders that hold the model's own state: parameters, buffers and tensor constants."""
    return (frozenset(sig.inputs_to_parameters) | frozenset(sig.inputs_to_buffers)
            | frozenset(sig.inputs_to_lifted_tensor_constants))


def _make_fx(model, args, kwargs):
    wrapped = TensorOutputs(model)
    # DTensor weights (a model parallelized with DTensor) enter as their local shards and are
    # wrapped back inside the trace, so the graph's placeholders have this rank's shapes.
    state, wrap = _local_shards({**dict(wrapped.named_parameters(remove_duplicate=False)),
                                 **dict(wrapped.named_buffers(remove_duplicate=False))})

    def run(state, args, kwargs):
        return torch.func.functional_call(wrapped, wrap(state), args, kwargs)

    run._orig_mod = wrapped    # make_fx records module paths relative to `_orig_mod`
    gm = make_fx(run, tracing_mode="fake", record_module_stack=True)(state, args, kwargs)
    placeholders = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    return gm, frozenset(placeholders[:len(state)])


def _dtensor_types() -> tuple:
    """(DTensor,), or () in a torch built without distributed: isinstance(x, ()) is False."""
    if not torch.distributed.is_available():
        return ()
    from torch.distributed.tensor import DTensor
    return (DTensor,)


def _local_shards(tensors: dict):
    """DTensors replaced by their local shards, and the function that wraps shards back into
    DTensors inside the trace (from_local without checks: no collective runs)."""
    specs = {k: (type(t), t.device_mesh, t.placements, t.shape, t.stride())
             for k, t in tensors.items() if isinstance(t, _dtensor_types())}
    local = {k: t.to_local() if k in specs else t for k, t in tensors.items()}

    def wrap(ts: dict) -> dict:
        return {k: specs[k][0].from_local(t, *specs[k][1:3], run_check=False, shape=specs[k][3],
                                          stride=specs[k][4]) if k in specs else t
                for k, t in ts.items()}
    return local, wrap


def _is_dtensor_model(model) -> bool:
    return any(isinstance(t, _dtensor_types()) for t in (*model.parameters(), *model.buffers()))


# --- finishing ------------------------------------------------------------------------------

def finish_graph(gm: fx.GraphModule, strategy: str, weights: frozenset, name: str) -> Captured:
    """Copy the graph (so annotations never touch the caller's), inline wrapper subgraphs and
    make module paths read as the user's own (no wrapper prefix)."""
    graph = fx.Graph()
    graph.output(graph.graph_copy(gm.graph, {}))
    own = fx.GraphModule(gm, graph)
    _inline_subgraphs(own)
    for node in own.graph.nodes:
        if stack := node.meta.get("nn_module_stack"):
            node.meta["nn_module_stack"] = {k: (_strip(p), cls) for k, (p, cls) in stack.items()}
    missing = [n for n in own.graph.nodes if n.op == "call_function" and "val" not in n.meta
               and isinstance(n.target, torch._ops.OpOverload)]
    if missing:
        raise CaptureError(name, [(strategy, RuntimeError(
            f"{len(missing)} nodes have no shape metadata, e.g. {missing[0].format_node()}"))])
    return Captured(own, strategy, weights, name)


def _strip(path: str) -> str:
    return "" if path == WRAPPED else path.removeprefix(WRAPPED + ".")


def _inline_subgraphs(gm: fx.GraphModule) -> None:
    """Replace torch.export's grad-mode and autocast wrappers by the ops they wrap.

    torch.export keeps `with torch.no_grad():` regions (e.g. rotary embeddings in Llama) as
    higher-order ops calling a submodule; fusion and costing need the ops inline.
    """
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or getattr(node.target, "__name__", "") not in (
                "wrap_with_set_grad_enabled", "wrap_with_autocast"):
            continue
        sub_at = next(i for i, a in enumerate(node.args)
                      if isinstance(a, fx.Node) and a.op == "get_attr")
        sub = getattr(gm, node.args[sub_at].target)
        _inline_subgraphs(sub)
        holders = [p for p in sub.graph.nodes if p.op == "placeholder"]
        with graph.inserting_before(node):    # the placeholders stand for the wrapper's arguments
            result = graph.graph_copy(sub.graph, dict(zip(holders, node.args[sub_at + 1:])))
        for user in list(node.users):   # users are getitem(node, i)
            user.replace_all_uses_with(result[user.args[1]])
            graph.erase_node(user)
        graph.erase_node(node)
    gm.recompile()


def is_aten_graph(gm: fx.GraphModule) -> bool:
    calls = [n for n in gm.graph.nodes if n.op.startswith("call_")]
    return bool(calls) and all(n.op == "call_function" and "val" in n.meta for n in calls)


@contextlib.contextmanager
def preserved_modes(model: torch.nn.Module):
    """Restore every submodule's training flag, whatever a strategy did."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


# Loggers that print a full traceback at ERROR level for a failure we report in one line.
_NOISY = ("torch._subclasses.fake_tensor", "torch.export", "torch._export",
          "torch.fx.experimental.symbolic_shapes", "torch._dynamo")


@contextlib.contextmanager
def quiet_torch():
    """Warnings off and torch's noisy loggers at CRITICAL, as they were again on exit."""
    levels = {lg: lg.level for lg in map(logging.getLogger, _NOISY)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in levels:
            lg.setLevel(logging.CRITICAL)
        try:
            yield
        finally:
            for lg, level in levels.items():
                lg.setLevel(level)

