"""Turn a model and example inputs into a torch.fx graph of aten ops with fake-tensor metadata.

Strategies, first that works: torch.export (non-strict) -> make_fx -> make_fx with top-k routing
assumed (only where those stopped on a data-dependent value, e.g. a loop over the experts a router
picked; first where the caller gives a routing: fxroof.graph.routing) -> make_fx on the example's
values (only where the others stopped on a value, or left sizes standing for one, and every weight
and input has a value: a branch on a tensor value goes as the example's went, a size read from one
is the example's number; the capture line names where) -> fx.symbolic_trace lowered by make_fx.
Every call_function node of the result carries meta["val"]. The user's model is never changed:
export and make_fx work on fake copies of parameters (values copied, never shared), and module
modes are restored.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
from torch.multiprocessing.reductions import StorageWeakRef

from fxroof.errors import one_line
from fxroof.graph.autocast import autocast_notes, cuda_autocast_as_cpu
from fxroof.graph.compiled_branches import transformers_compiling
from fxroof.graph.engine_kernels import engine_kernels
from fxroof.graph.attention_path import (fused_output_layouts, math_attention_notes,
                                         spell_out_math_attention)
from fxroof.graph.routing import RoutedFakeMode, Routing, assumed_routing
from fxroof.graph.routing import parse as parse_routing
from fxroof.graph.tensors import tensors_in

WRAPPED = "model"   # attribute under which capture nests the user's model
# What a workload states about itself, for the report: a tuple of lines a module of the model
# carries under this attribute (the --hf builder says a vision-language model's prompt is text)
STATED_NOTES = "fxroof_notes"
ROUTED = "fxroof.routed"   # gm.meta key: a top-k had its routing assumed while tracing
READ = "fxroof.read"   # gm.meta key: where the model read a tensor value (example values)


class CaptureError(RuntimeError):
    """No capture strategy worked. The message names each strategy and its cause."""

    def __init__(self, what: str, attempts: list[tuple[str, BaseException]]):
        self.attempts = attempts
        causes = [one_line(err, innermost=True, name=True, width=300) for _, err in attempts]
        if cause := _data_dependent([err for _, err in attempts]):
            super().__init__(f"could not capture {what}: {cause}")
        elif len(attempts) == 1:
            super().__init__(f"could not capture {what}: {attempts[0][0]}: {causes[0]}")
        elif len(set(map(_unnamed, causes))) == 1:     # every strategy stopped on the same call
            super().__init__(f"could not capture {what}: {_unnamed(causes[-1])} (every capture "
                             f"strategy stopped there: {', '.join(n for n, _ in attempts)})")
        else:
            super().__init__("\n".join([f"could not capture {what}:"] + [
                f"  {name}: {cause}" for (name, _), cause in zip(attempts, causes)]))


def _unnamed(cause: str) -> str:
    """A cause without the name of the function that raised it, which symbolic tracing gives
    bare ("forward() missing ...") where the other strategies qualify it."""
    return re.sub(r"\b\w+\.(\w+\(\))", r"\1", cause)


# Where torch says a trace stopped: "# File: path:12 in forward, code: if x.sum() > 0:" in the
# partial graph torch.export keeps, or the "File "path", line 12, in forward" of its message.
_WHERE = (re.compile(r"# File: (?P<file>.+?):(?P<line>\d+) in (?P<fn>\w+), code: (?P<code>.*)"),
          re.compile(r'File "(?P<file>.+?)", line (?P<line>\d+), in (?P<fn>\w+)'))


def _data_dependent(errors: list) -> str:
    """One line for a model whose forward depends on tensor values (an `if` on a tensor, a
    size from `.item()`): no graph can stand for every input, and torch's own account is
    dozens of lines. "" for any other failure."""
    errors = [e for e in errors if type(e).__name__ == "GuardOnDataDependentSymNode"]
    if not errors:
        return ""
    what = ("branches on a tensor value" if "guard on data-dependent" in str(errors[0])
            else "uses a tensor value as a size or number (.item())")
    # the last line the partial graph reached, else the call torch names; not this file's
    found = [m for pattern, texts in zip(_WHERE, ([getattr(e, "partial_fx_graph", "") or ""
                                                     for e in errors], map(str, errors)))
             for text in texts for m in reversed(list(pattern.finditer(text)))
             if Path(m["file"]).resolve() != Path(__file__).resolve()]
    if not found:
        return f"forward {what}; the graph fxroof captures must not depend on tensor data"
    m = found[0]
    code = f" ({m['code'].strip()})" if "code" in m.groupdict() else ""
    return (f"{m['fn']} {what} at {Path(m['file']).name}:{m['line']}{code}; the graph fxroof "
            f"captures must not depend on tensor data")


@dataclass(frozen=True)
class Captured:
    gm: fx.GraphModule
    strategy: str                 # "torch.export", "make_fx", "symbolic_trace" or "graph"
    weights: frozenset            # placeholder names holding parameters, buffers and constants
    name: str                     # the model's class name, for reports
    routing: str = ""             # the routing assumed to trace data-dependent experts, or ""
    notes: tuple = ()             # what the trace changed that the report must say


def capture(model, args=(), kwargs=None, routing: Routing | str | None = None) -> Captured:
    """`model` (an nn.Module, a callable, an aten fx.GraphModule or an ExportedProgram) as an
    aten graph, or a CaptureError naming each strategy tried and why it failed. Where tracing
    stops on a value no fake tensor has (an expert loop over the experts a router picked), it
    traces again with the top-k routing assumed (fxroof.graph.routing); a routing given is
    traced first, its values reaching grouped experts' offsets too."""
    assumed = parse_routing(routing)    # a bad spec fails before any trace
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
    stated = tuple(dict.fromkeys(line for m in model.modules()
                                 for line in getattr(m, STATED_NOTES, ())))
    own = model, args, kwargs
    tensors = [*model.parameters(), *model.buffers(), *tensors_in((args, kwargs))]
    if any(t.device.type == "meta" for t in tensors) and not is_dtensor_model(model):
        # Capture a copy whose meta tensors are fake CPU tensors (FakeCopier says why). DTensor
        # weights keep their own device handling in _make_fx.
        fake = FakeCopier()
        model, args, kwargs = fake.copy(model), fake.inputs(args), fake.inputs(kwargs)
    routed, example = f"make_fx, {assumed.label} routing", ON_EXAMPLE_VALUES
    strategies = [("torch.export", _export), ("make_fx", _inference(_make_fx)),
                  ("symbolic_trace",
                   _inference(lambda m, a, k: _make_fx(fx.symbolic_trace(m), a, k)))]
    strategies.insert(0 if routing is not None else 2,
                      (routed, lambda *_: _make_fx_routed(*own, assumed)))
    if routing is None and not any(t.device.type == "meta" or isinstance(t, FakeTensor)
                                   for t in tensors):
        strategies.insert(3, (example, lambda *_: _make_fx_routed(*own, None)))
    seen: list = []
    with preserved_modes(model), quiet_torch(), cuda_autocast_as_cpu(seen), \
            engine_kernels():
        for strategy, fn in strategies:
            if strategy in (routed, example) and routing is None and not _data_dependent(
                    [e for _, e in attempts]) and not any(isinstance(e, ValuedSizes)
                                                          for _, e in attempts):
                continue    # nothing failed on a value the routing or the example could give
            try:
                gm, weights = fn(model, args, kwargs)
                if seen and strategy == "torch.export":    # it keeps autocast as a region
                    raise ValueError("autocast regions: make_fx records their casts")
                if strategy not in (routed, example) and valued_sizes(gm):
                    # the routing's or the example's turn next: no later pass can size these
                    raise ValuedSizes("sizes depend on tensor values")
                used = gm.meta.get(ROUTED, False)    # else values made from constants only
                if strategy == example:
                    strategy = _example_strategy(gm.meta[READ])
                elif strategy == routed and not used:
                    strategy = "make_fx"
                done = finish_graph(gm, strategy, weights, name, assumed.label if used else "")
                return dataclasses.replace(done,
                                           notes=stated + autocast_notes(seen) + done.notes)
            except Exception as e:   # each strategy's failure is reported, not raised alone
                attempts.append((strategy, e))
    raise CaptureError(name, attempts)


class FakeCopier:
    """Fake tensors (shapes, no data) standing for the model's weights and the inputs, all in one
    FakeTensorMode. Meta tensors become fake CPU tensors: on the meta device PyTorch computes
    scaled_dot_product_attention by its unfused math path, on a CPU by a fused kernel, which is
    what a deployment runs."""

    def __init__(self, mode: FakeTensorMode | None = None, values: bool = False):
        self.mode = mode or FakeTensorMode(allow_non_fake_inputs=True)
        self.values = values    # each fake carries a copy of its tensor's value (never the tensor)

    def tensor(self, t: torch.Tensor) -> torch.Tensor:
        if isinstance(t, FakeTensor):
            return t
        device = "cpu" if t.device.type == "meta" else t.device
        with self.mode:
            f = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=device)
        f = torch.nn.Parameter(f, t.requires_grad) if isinstance(t, torch.nn.Parameter) else f
        if self.values:    # and make_fx, faking its inputs again, gets this fake back
            f.real_tensor = t.detach().clone()
            self.mode.fake_tensor_converter.set_tensor_memo(f, f)
        return f

    def copy(self, model: torch.nn.Module, memo: dict | None = None) -> torch.nn.Module:
        """A deep copy whose weights are fake: no weight is copied, whatever the device. memo:
        deepcopy's, from `memo(model)` with objects added that are not to be copied as they
        are."""
        return copy.deepcopy(model, memo if memo is not None else self.memo(model))

    def memo(self, model: torch.nn.Module) -> dict:
        """deepcopy's memo that puts fakes for the model's weights, and for the meta tensors its
        modules keep as plain attributes (RecurrentGemma's recurrent states, made by its first
        step): a meta tensor among fake CPU ones would fail every op it meets."""
        plain = (v for m in model.modules() for v in vars(m).values()
                 if isinstance(v, torch.Tensor) and v.device.type == "meta")
        return {id(t): self.tensor(t) for t in (*model.parameters(), *model.buffers(), *plain)}

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
        return tuple(tensor_leaves(super().forward(*args, **kwargs)))


def tensor_leaves(obj, depth: int = 0) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    items = (obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple))
             else vars(obj).values() if hasattr(obj, "__dict__") else ())
    return [t for item in items for t in tensor_leaves(item, depth + 1)] if depth <= 8 else []


def _export(model, args, kwargs):
    if is_dtensor_model(model):
        raise RuntimeError("DTensor weights: torch.export records DTensor ops at global shapes; "
                           "make_fx traces one rank's local ops")
    ep = torch.export.export(TensorOutputs(model), args, kwargs, strict=False)
    return ep.graph_module, _weight_names(ep.graph_signature)


def _weight_names(sig) -> frozenset:
    """Placeholders that hold the model's own state: parameters, buffers and tensor constants."""
    return (frozenset(sig.inputs_to_parameters) | frozenset(sig.inputs_to_buffers)
            | frozenset(sig.inputs_to_lifted_tensor_constants))


def _inference(trace):
    """`trace` with grad off, as a forward runs for inference: kernels PyTorch picks by whether
    an input requires grad are picked as inference picks them (its CPU attention takes the math
    path for a mask made from parameters, where a GPU under no_grad runs a fused kernel). The
    traces on example values keep grad on: PyTorch's real-tensor propagation fails without."""
    def traced(model, args, kwargs):
        with torch.no_grad():
            return trace(model, args, kwargs)
    return traced


def _make_fx(model, args, kwargs):
    wrapped = TensorOutputs(model)
    # DTensor weights (a model parallelized with DTensor) enter as their local shards and are
    # wrapped back inside the trace, so the graph's placeholders have this rank's shapes.
    state, wrap = local_shards({**dict(wrapped.named_parameters(remove_duplicate=False)),
                                 **dict(wrapped.named_buffers(remove_duplicate=False))})

    def run(state, args, kwargs):
        return torch.func.functional_call(wrapped, wrap(state), args, kwargs)

    run._orig_mod = wrapped    # make_fx records module paths relative to `_orig_mod`
    with transformers_compiling():      # the branches torch.export's trace takes
        gm = make_fx(run, tracing_mode="fake", record_module_stack=True)(state, args, kwargs)
    placeholders = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    return gm, frozenset(placeholders[:len(state)])


def _make_fx_routed(model, args, kwargs, routing: Routing | None):
    """make_fx with top-k routing assumed: fresh fakes (no values: the model's own weights are
    never read) in a mode whose ShapeEnv holds the sizes that follow from the routing. Without
    a routing, the fakes carry copies of the example's values instead: a branch on a tensor
    value goes the way the example went, a data-dependent size is the example's."""
    if is_dtensor_model(model):
        # the shards tensor_parallel made live in a routed mode already: trace them there
        mode = _shard_mode(model)
        if routing is None or not isinstance(mode, RoutedFakeMode):
            raise RuntimeError("a tensor-parallel model is traced with an assumed routing only")
        fake = FakeCopier(mode)
    else:
        fake = FakeCopier(RoutedFakeMode(example=routing is None), values=routing is None)
        model, args, kwargs = fake.copy(model), fake.inputs(args), fake.inputs(kwargs)
    with assumed_routing(routing or Routing(), fake.mode) as topk:
        gm, weights = _make_fx(model, args, kwargs)
    _settle(gm, fake.mode)
    for t in tensors_in([n.meta.get("val") for n in gm.graph.nodes]) if routing is None else ():
        if t.numel() > 1 << 16:   # weights, activations: their values have done their work
            t.real_tensor = None
    gm.meta[ROUTED] = topk.used
    gm.meta[READ] = fake.mode.read
    return gm, weights


def _shard_mode(model) -> FakeTensorMode | None:
    """The fake mode of a DTensor model's local shards."""
    for t in (*model.parameters(), *model.buffers()):
        local = getattr(t, "_local_tensor", t)
        if isinstance(local, FakeTensor):
            return local.fake_mode
    return None


class ValuedSizes(RuntimeError):
    """A graph captured with sizes that stand for values the model read."""


def valued_sizes(gm: fx.GraphModule) -> bool:
    """Whether a tensor's size is a symbol standing for a value the model read (all others are
    static): a graph no later pass can size."""
    return any(isinstance(s, torch.SymInt) for n in gm.graph.nodes
               for t in tensors_in(n.meta.get("val")) for s in (*t.shape, *t.stride()))


# The capture line of a graph traced on the example's values begins so: the graph holds the
# example's branches and sizes, so it runs for real on those inputs (fxroof.measure.runner)
ON_EXAMPLE_VALUES = "make_fx on example values"


def _example_strategy(read: list) -> str:
    """The capture line of a graph traced on the example's values: where the model read one."""
    more = f" and {len(read) - 3} more" if len(read) > 3 else ""
    return (f"{ON_EXAMPLE_VALUES}: branches and sizes at {', '.join(read[:3])}{more} "
            f"follow the example inputs")


def _settle(gm: fx.GraphModule, mode: FakeTensorMode) -> None:
    """Give every tensor sized by a data-dependent value (one the routing gave) plain sizes, its
    views still sharing one storage, so no later pass meets a symbolic size; drop the reads of
    values that only steered Python (`if expert == n:`): no graph op uses them."""
    bases: dict = {}

    def plain(t: torch.Tensor) -> torch.Tensor:
        sizes = (*t.shape, *t.stride(), t.storage_offset(), t.untyped_storage().nbytes())
        if not any(isinstance(s, torch.SymInt) for s in sizes):
            return t
        key = StorageWeakRef(t.untyped_storage())
        if key not in bases:
            bases[key] = torch.empty(int(sizes[-1]), dtype=torch.uint8, device=t.device)
        return bases[key].view(t.dtype).as_strided(
            [int(s) for s in t.shape], [int(s) for s in t.stride()], int(t.storage_offset()))

    with mode:
        for node in list(gm.graph.nodes):
            if node.target is torch.ops.aten._local_scalar_dense.default and not node.users:
                gm.graph.erase_node(node)
            elif "val" in node.meta:
                node.meta["val"] = pytree.tree_map_only(torch.Tensor, plain, node.meta["val"])
    gm.recompile()


def _dtensor_types() -> tuple:
    """(DTensor,), or () in a torch built without distributed: isinstance(x, ()) is False."""
    if not torch.distributed.is_available():
        return ()
    from torch.distributed.tensor import DTensor
    return (DTensor,)


def local_shards(tensors: dict):
    """DTensors replaced by their local shards, and the function that wraps shards back into
    DTensors inside the trace (from_local without checks: no collective runs)."""
    specs = {k: dtensor_spec(t) for k, t in tensors.items() if isinstance(t, _dtensor_types())}
    local = {k: t.to_local() if k in specs else t for k, t in tensors.items()}

    def wrap(ts: dict) -> dict:
        return {k: as_dtensor(t, specs[k]) if k in specs else t for k, t in ts.items()}
    return local, wrap


def dtensor_spec(t) -> tuple:
    """What makes DTensor `t` again around another local tensor (as_dtensor)."""
    return type(t), t.device_mesh, t.placements, t.shape, t.stride()


def as_dtensor(local: torch.Tensor, spec: tuple):
    """`local` as this rank's shard of a DTensor laid out as `spec` says; no collective runs."""
    cls, mesh, placements, shape, stride = spec
    return cls.from_local(local, mesh, placements, run_check=False, shape=shape, stride=stride)


def is_dtensor_model(model) -> bool:
    return any(isinstance(t, _dtensor_types()) for t in (*model.parameters(), *model.buffers()))


# --- finishing ------------------------------------------------------------------------------

def finish_graph(gm: fx.GraphModule, strategy: str, weights: frozenset, name: str,
                 routing: str = "") -> Captured:
    """Copy the graph (so annotations never touch the caller's), inline wrapper subgraphs and
    make module paths read as the user's own (no wrapper prefix)."""
    graph = fx.Graph()
    graph.output(graph.graph_copy(gm.graph, {}))
    own = fx.GraphModule(gm, graph)
    _inline_subgraphs(own)
    _drop_unread_allocations(own)
    math_attention = spell_out_math_attention(own)
    fused_output_layouts(own)
    for node in own.graph.nodes:
        if stack := node.meta.get("nn_module_stack"):
            node.meta["nn_module_stack"] = {k: (_strip(p), cls) for k, (p, cls) in stack.items()}
    missing = [n for n in own.graph.nodes if n.op == "call_function" and "val" not in n.meta
               and isinstance(n.target, torch._ops.OpOverload)]
    if missing:
        raise CaptureError(name, [(strategy, RuntimeError(
            f"{len(missing)} nodes have no shape metadata, e.g. {missing[0].format_node()}"))])
    return Captured(own, strategy, weights, name, routing, math_attention_notes(math_attention))


def _drop_unread_allocations(gm: fx.GraphModule) -> None:
    """Remove what is computed from the graph's own allocations alone (no input, weight or state
    behind it) and read by nothing: work no model's eager run does, recorded from PyTorch's C++.
    make_fx's trace of batch norm holds `_batch_norm_impl_index`'s zero-element `reserve`; under
    torch 2.11, DTensor's sharding propagation runs each op of a tensor-parallel model once more
    on empty tensors of the unsplit shapes, to infer its output, and make_fx records those ops
    too (a colwise linear's whole product beside its shard's). An eager report would charge each
    a kernel. A write into such a tensor (an in-place op) is kept."""
    made = set()    # nodes computed from in-graph allocations alone (sizes aside)
    for node in gm.graph.nodes:
        if node.op == "call_function" and all(
                a in made for a in node.all_input_nodes
                if not isinstance(a.meta.get("val"), (int, torch.SymInt))):
            made.add(node)
    for node in reversed(list(gm.graph.nodes)):
        if node in made and not node.users and not node.is_impure():
            gm.graph.erase_node(node)
    gm.recompile()


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
    # torch.export prints its partial graph to stderr on a failure the error already reports
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        for lg in levels:
            lg.setLevel(logging.CRITICAL)
        try:
            yield
        finally:
            for lg, level in levels.items():
                lg.setLevel(level)

