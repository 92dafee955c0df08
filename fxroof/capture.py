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
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx

from .tensors import tensors_in

WRAPPED = "model"   # attribute under which capture nests the user's model


class CaptureError(RuntimeError):
    """No capture strategy worked. The message names each strategy and its cause."""

    def __init__(self, what: str, attempts: list[tuple[str, BaseException]]):
        self.attempts = attempts
        lines = [f"could not capture {what}:"]
        lines += [f"  {name}: {_cause(err)}" for name, err in attempts]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Captured:
    gm: fx.GraphModule
    strategy: str                 # "torch.export", "make_fx", "symbolic_trace" or "graph"
    weights: frozenset            # placeholder names holding parameters, buffers and constants
    name: str                     # the model's class name, for reports


def capture(model, args=(), kwargs=None) -> Captured:
    args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
    kwargs = dict(kwargs or {})
    if isinstance(model, torch.export.ExportedProgram):
        sig = model.graph_signature
        weights = _weight_names(sig)
        return finish_graph(model.graph_module, "torch.export", weights, "ExportedProgram")
    if isinstance(model, fx.GraphModule) and is_aten_graph(model):
        weights = frozenset(n.name for n in model.graph.nodes if n.op == "get_attr")
        return finish_graph(model, "graph", weights, type(model).__name__)
    name = type(model).__name__
    if not isinstance(model, torch.nn.Module):
        if not callable(model):
            raise CaptureError(name, [("input", TypeError(
                "expected an nn.Module, an fx.GraphModule, an ExportedProgram or a callable"))])
        name = getattr(model, "__name__", name)
        model = FunctionModule(model)

    attempts: list[tuple[str, BaseException]] = []
    if _on_meta(model, args, kwargs):
        # Capture a copy whose meta tensors are fake CPU tensors (FakeCopier says why).
        fake = FakeCopier()
        model, args, kwargs = fake.copy(model), fake.inputs(args), fake.inputs(kwargs)
    with preserved_modes(model), quiet_torch():
        for strategy, fn in (("torch.export", _export), ("make_fx", _make_fx),
                             ("symbolic_trace", _symbolic_trace)):
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
        if isinstance(t, torch.nn.Parameter):
            return torch.nn.Parameter(f, requires_grad=t.requires_grad)
        return f

    def copy(self, model: torch.nn.Module) -> torch.nn.Module:
        """A deep copy whose weights are fake: no weight is copied, whatever the device."""
        memo = {id(t): self.tensor(t) for t in (*model.parameters(), *model.buffers())}
        return copy.deepcopy(model, memo)

    def inputs(self, obj):
        if isinstance(obj, torch.Tensor):
            return self.tensor(obj)
        if isinstance(obj, (list, tuple)):
            return type(obj)(self.inputs(x) for x in obj)
        if isinstance(obj, dict):
            return {k: self.inputs(v) for k, v in obj.items()}
        return obj


def _on_meta(model, args, kwargs) -> bool:
    """Meta tensors anywhere, in a model whose weights are plain tensors (DTensor weights keep
    their own device handling in _make_fx)."""
    tensors = [*model.parameters(), *model.buffers(), *tensors_in((args, kwargs))]
    return any(t.device.type == "meta" for t in tensors) and not _is_dtensor_model(model)


# --- strategies -----------------------------------------------------------------------------

class TensorOutputs(torch.nn.Module):
    """Wraps the user's model so the output is a flat tuple of tensors.

    Hugging Face models return ModelOutput objects holding caches of custom classes that
    torch.export cannot flatten; the tensors inside are all the analysis needs.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        setattr(self, WRAPPED, model)

    def forward(self, *args, **kwargs):
        return tuple(_tensor_leaves(getattr(self, WRAPPED)(*args, **kwargs)))


class FunctionModule(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def _tensor_leaves(obj, depth: int = 0) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if obj is None or depth > 8 or isinstance(obj, (str, bytes, int, float, bool)):
        return []
    if isinstance(obj, dict):
        items = obj.values()
    elif isinstance(obj, (list, tuple)):
        items = obj
    elif hasattr(obj, "__dict__"):
        items = vars(obj).values()
    else:
        return []
    return [t for item in items for t in _tensor_leaves(item, depth + 1)]


def _export(model, args, kwargs):
    if _is_dtensor_model(model):
        raise RuntimeError("DTensor weights: torch.export records DTensor ops at global shapes; "
                           "make_fx traces one rank's local ops")
    ep = torch.export.export(TensorOutputs(model), args, kwargs, strict=False)
    sig = ep.graph_signature
    return ep.graph_module, _weight_names(sig)


def _weight_names(sig) -> frozenset:
    """Placeholders that hold the model's own state: parameters, buffers and tensor constants."""
    return (frozenset(sig.inputs_to_parameters) | frozenset(sig.inputs_to_buffers)
            | frozenset(sig.inputs_to_lifted_tensor_constants))


def _make_fx(model, args, kwargs):
    params = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers(remove_duplicate=False))
    wrapped = TensorOutputs(model)
    # DTensor weights (a model parallelized with DTensor) enter as their local shards and are
    # wrapped back inside the trace, so the graph's placeholders have this rank's shapes.
    (params, wrap_params), (buffers, wrap_buffers) = _local_shards(params), _local_shards(buffers)

    def run(params, buffers, args, kwargs):
        params, buffers = wrap_params(params), wrap_buffers(buffers)
        state = {f"{WRAPPED}.{k}": v for k, v in {**params, **buffers}.items()}
        return torch.func.functional_call(wrapped, state, args, kwargs)

    run._orig_mod = wrapped    # make_fx records module paths relative to `_orig_mod`
    gm = make_fx(run, tracing_mode="fake", record_module_stack=True)(params, buffers, args, kwargs)
    placeholders = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    return gm, frozenset(placeholders[:len(params) + len(buffers)])


def _local_shards(tensors: dict):
    """DTensors replaced by their local shards, and the function that wraps shards back into
    DTensors inside the trace (from_local without checks: no collective runs)."""
    if not torch.distributed.is_available():
        return tensors, lambda ts: ts
    from torch.distributed.tensor import DTensor
    specs = {k: (t.device_mesh, t.placements, t.shape, t.stride())
             for k, t in tensors.items() if isinstance(t, DTensor)}
    if not specs:
        return tensors, lambda ts: ts
    local = {k: t.to_local() if k in specs else t for k, t in tensors.items()}

    def wrap(ts: dict) -> dict:
        return {k: DTensor.from_local(t, *specs[k][:2], run_check=False, shape=specs[k][2],
                                      stride=specs[k][3]) if k in specs else t
                for k, t in ts.items()}
    return local, wrap


def _is_dtensor_model(model) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor
    return any(isinstance(t, DTensor) for t in (*model.parameters(), *model.buffers()))


def _symbolic_trace(model, args, kwargs):
    return _make_fx(fx.symbolic_trace(model), args, kwargs)


# --- finishing ------------------------------------------------------------------------------

def finish_graph(gm: fx.GraphModule, strategy: str, weights: frozenset, name: str) -> Captured:
    """Copy the graph (so annotations never touch the caller's), inline wrapper subgraphs and
    make module paths read as the user's own (no wrapper prefix)."""
    graph = fx.Graph()
    output = graph.graph_copy(gm.graph, {})
    graph.output(output)
    own = fx.GraphModule(gm, graph)
    _inline_subgraphs(own)
    for node in own.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if stack:
            node.meta["nn_module_stack"] = {k: (_strip(path), cls) for k, (path, cls) in stack.items()}
    missing = [n for n in own.graph.nodes if n.op == "call_function" and "val" not in n.meta
               and isinstance(n.target, torch._ops.OpOverload)]
    if missing:
        raise CaptureError(name, [(strategy, RuntimeError(
            f"{len(missing)} nodes have no shape metadata, e.g. {missing[0].format_node()}"))])
    return Captured(own, strategy, weights, name)


def _strip(path: str) -> str:
    if path == WRAPPED:
        return ""
    return path[len(WRAPPED) + 1:] if path.startswith(WRAPPED + ".") else path


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
        env = dict(zip([p for p in sub.graph.nodes if p.op == "placeholder"], node.args[sub_at + 1:]))
        result = None
        with graph.inserting_before(node):
            for inner in sub.graph.nodes:
                if inner.op == "placeholder":
                    continue
                if inner.op == "output":
                    result = fx.node.map_arg(inner.args[0], lambda n: env[n])
                    break
                env[inner] = graph.node_copy(inner, lambda n: env[n])
        for user in list(node.users):   # users are getitem(node, i)
            user.replace_all_uses_with(result[user.args[1]])
            graph.erase_node(user)
        graph.erase_node(node)
    gm.recompile()


def is_aten_graph(gm: fx.GraphModule) -> bool:
    calls = [n for n in gm.graph.nodes if n.op in ("call_function", "call_module", "call_method")]
    return bool(calls) and all(
        n.op == "call_function" and "val" in n.meta for n in calls)


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
    loggers = [logging.getLogger(name) for name in _NOISY]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _cause(err: BaseException) -> str:
    """The one line that says why: the innermost message, first line, trimmed."""
    while err.__cause__ is not None and str(err.__cause__):
        err = err.__cause__
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    return f"{type(err).__name__}: {text[:300]}"
