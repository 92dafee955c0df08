"""Running a captured graph for real: the graph fxroof analyzes, the real value of each of its
placeholders, and timed runs of it node by node beside a forward timed whole.

Calibration (microbench.py) and measured runs (runs.py) share this, so that a probe
and a user's model run and are timed the same way.
- Placeholders: for torch.export, the graph signature says which real tensor each stands for
  (parameters and persistent buffers from `ep.state_dict`, lifted constants and non-persistent
  buffers from `ep.constants`, user inputs from the flattened (args, kwargs), constant inputs
  from the signature). A make_fx graph's are the flattened (parameters, buffers, args, kwargs) of
  the call it traced. Every value is checked against its placeholder's shape and dtype first.
- Per node: an fx.Interpreter marks the clock around each call_function (machine.marker):
  perf_counter on a CPU; on a GPU a pair of CUDA events, read once the run is over, so a node's
  time is the stream time between its events (its kernels, or the host's launch gap when the
  host is the limit).
- Runs of the graph and of the forward take turns, so both see the same machine.
"""
from __future__ import annotations

import dataclasses
import functools

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch.export.graph_signature import ConstantArgument, InputKind

from fxroof.errors import one_line
from fxroof.graph.capture import (ON_EXAMPLE_VALUES, FunctionModule, TensorOutputs, capture,
                                  is_aten_graph, preserved_modes, quiet_torch, valued_sizes)
from fxroof.graph.tensors import tensors_in
from fxroof.measure.machine import elapsed, marker, minor_faults, span


class MeasureError(ValueError):
    """The graph cannot be run for real as given; the message names the placeholder, node or
    tensor (a ValueError: the command line reports it in one line)."""


def checked_call(args, kwargs, warmup: int = 0, repeat: int = 1, model=None
                 ) -> tuple[tuple, dict]:
    """(args as a tuple, kwargs as a dict), once repeat, warmup and the tensors are checked: a
    meta tensor has no data, so a run on it would time nothing and call that a measurement."""
    state = list(model.state_dict().values()) if isinstance(model, torch.nn.Module) else []
    if model is not None and any(t.is_meta for t in tensors_in([args, kwargs, state])):
        raise MeasureError("the model or its inputs are on the meta device: there is nothing to "
                           "run; build them with real tensors (bundled models: --set device=cpu)")
    if repeat < 1 or warmup < 0:
        raise ValueError(f"need repeat >= 1 and warmup >= 0, got repeat={repeat}, warmup={warmup}")
    return (tuple(args) if isinstance(args, (tuple, list)) else (args,)), dict(kwargs or {})


def program(model, args: tuple, kwargs: dict):
    """(The captured graph fxroof analyzes, named after the model; the real value of each of its
    placeholders)."""
    if isinstance(model, torch.export.ExportedProgram):
        return _from_program(model, args, kwargs)
    name = getattr(model, "__name__", type(model).__name__)
    if isinstance(model, fx.GraphModule) and is_aten_graph(model):
        captured = capture(model)   # an aten graph already: its placeholders are the inputs
        return captured, check_values(captured.gm, pytree.tree_leaves((args, kwargs)))
    if not isinstance(model, torch.nn.Module) and callable(model):
        model = FunctionModule(model)
    if isinstance(model, torch.nn.Module):
        try:
            with preserved_modes(model), quiet_torch():
                ep = torch.export.export(TensorOutputs(model), args, kwargs, strict=False)
        except Exception:   # capture() below tries export again and then its fallbacks
            pass
        else:
            # sizes standing for values the model read (Reformer's buckets): no pass can size
            # them; capture() traces on the example's values instead, as analyze does
            if not valued_sizes(ep.graph_module):
                return _from_program(ep, args, kwargs, name)
    captured = dataclasses.replace(capture(model, args, kwargs), name=name)
    # a graph traced on these very inputs' values holds their branches and sizes: it runs
    if captured.strategy not in ("make_fx", "symbolic_trace") and \
            not captured.strategy.startswith(ON_EXAMPLE_VALUES):
        raise MeasureError(f"cannot run a graph captured with {captured.strategy} for real")
    traced = fx.symbolic_trace(model) if captured.strategy == "symbolic_trace" else model
    values = pytree.tree_leaves((dict(traced.named_parameters(remove_duplicate=False)),
                                 dict(traced.named_buffers(remove_duplicate=False)), args, kwargs))
    return captured, check_values(captured.gm, values)


def _from_program(ep, args, kwargs, name: str = "ExportedProgram"):
    captured = dataclasses.replace(capture(ep), name=name)
    user = iter(pytree.tree_leaves((args, kwargs)))
    values = []
    for spec in ep.graph_signature.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            given = next(user, None)    # a constant's value was baked in: keep the signature's
            values.append(spec.arg.value if isinstance(spec.arg, ConstantArgument) else given)
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER) and spec.target in ep.state_dict:
            values.append(ep.state_dict[spec.target])
        elif spec.target in ep.constants:   # lifted constants, non-persistent buffers
            values.append(ep.constants[spec.target])
        else:
            raise MeasureError(f"no real value for placeholder {spec.arg.name} ({spec.kind.name})")
    return captured, check_values(captured.gm, values)


def check_values(gm: fx.GraphModule, values: list) -> list:
    """The values, once each one matches its placeholder's recorded shape and dtype."""
    holders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(holders) != len(values):
        raise MeasureError(f"the graph has {len(holders)} placeholders but {len(values)} real "
                           f"values were found for them")
    for node, value in zip(holders, values):
        fake = node.meta.get("val")
        got = (tuple(value.shape), value.dtype) if isinstance(value, torch.Tensor) else value
        if isinstance(fake, torch.Tensor) and got != (tuple(map(int, fake.shape)), fake.dtype):
            raise MeasureError(f"placeholder {node.name} expects {tuple(fake.shape)} "
                               f"{fake.dtype}, the real value is {got!r}")
    return values


def forward_of(model, args: tuple, kwargs: dict):
    """The model's own forward on its real inputs, as a call of no arguments."""
    module = model.module() if isinstance(model, torch.export.ExportedProgram) else model
    return functools.partial(module, *args, **kwargs)


def device_of(values) -> torch.device:
    cuda = {v.device for v in values if isinstance(v, torch.Tensor) and v.device.type == "cuda"}
    if len(cuda) > 1:
        raise MeasureError(f"the graph's tensors are on several GPUs: {sorted(map(str, cuda))}")
    return next(iter(cuda), torch.device("cpu"))


def timed_runs(device: torch.device, warmup: int, repeat: int, *, forward=None,
               gm: fx.GraphModule | None = None, values=()) -> tuple[list, list, list]:
    """`warmup` untimed runs then `repeat` timed ones of `forward()` (wall seconds, the device
    synchronized) and of `gm` node by node on `values`, taking turns.
    Returns (wall seconds per run, [{node name: seconds} per run], minor page faults of each
    timed forward), each empty if not asked (the faults where the platform counts none)."""
    timed = _TimedInterpreter(gm, device) if gm is not None else None
    walls, runs, faults = [], [], []
    with torch.no_grad():
        for _ in range(warmup + repeat):
            if forward is not None:
                before = minor_faults()
                walls.append(elapsed(forward, device))
                if before is not None:
                    faults.append(minor_faults() - before)
            if timed is not None:
                runs.append(timed.timed_run(values))
    return walls[warmup:], runs[warmup:], faults[warmup:]


class _TimedInterpreter(fx.Interpreter):
    """Runs the graph with real tensors, timing every call_function node."""

    def __init__(self, gm: fx.GraphModule, device: torch.device):
        super().__init__(gm)
        self.mark = marker(device)
        self.marks: list = []        # (node name, start mark, end mark)

    def run_node(self, n: fx.Node):
        if n.op != "call_function":
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        start = self.mark()
        out = n.target(*args, **kwargs)
        self.marks.append((n.name, start, self.mark()))
        return out

    def timed_run(self, values) -> dict:
        """{node name: seconds} for one run."""
        self.marks = []
        try:
            self.run(*values)
        except Exception as e:
            node = self.marks[-1][0] if self.marks else "the first node"
            raise MeasureError(f"running the graph failed after {node}: "
                               f"{one_line(e, name=True)}") from e
        return {name: span(start, end) for name, start, end in self.marks}
