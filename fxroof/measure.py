"""Measured truth: run the captured graph for real, node by node, and put fxroof's eager-mode
prediction beside what the clock says.

    m = measure(model, args, kwargs)          # chip: calibrated on this machine (cached)
    print(m)                                  # total, per regime, the nodes that miss most
    m.error                                   # (predicted - measured) / measured

How it runs:
- The graph is the one fxroof analyzes. For torch.export (the first strategy) measure exports the
  model itself, keeps the ExportedProgram and hands it to `capture`, so the graph signature says
  which real tensor each placeholder stands for: parameters and persistent buffers from
  `ep.state_dict`, lifted constants and non-persistent buffers from `ep.constants`, user inputs
  from the flattened (args, kwargs) in order, constant (non-tensor) inputs from the signature.
  When export fails, `capture` falls back to make_fx, whose placeholders are the flattened
  (parameters, buffers, args, kwargs) of the call it traced, in that order. Every value is checked
  against its placeholder's shape and dtype before anything runs.
- Per node: an fx.Interpreter times each call_function (time.perf_counter around the call on CPU;
  a pair of CUDA events on GPU, read after one synchronize at the end of the run, so a node's time
  is the stream time between its events: its kernels, or the host's launch gap when the host is
  the bottleneck). `warmup` untimed runs, then `repeat` timed ones; each node's figure is its
  median.
- In total: the eager forward of the model itself (nn.Module call, torch.no_grad), timed `repeat`
  times interleaved with the graph runs so both see the same machine (a GPU is synchronized
  before the clock stops); its median is `measured_s`, its fastest run `best_s` and the spread of
  the runs `spread` (other work on a shared machine shows there first).
- The prediction is `analyze(..., mode="eager")` of the same graph on `chip`: one kernel per op.

The CUDA path (events, synchronize) is written with care but has not been run by fxroof's tests,
which only exercise the CPU; it needs a CUDA build of torch and a model and inputs on the GPU.
"""
from __future__ import annotations

import functools
import re
import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from tabulate import tabulate

from .api import report_of
from .capture import (FunctionModule, TensorOutputs, capture, is_aten_graph, preserved_modes,
                      quiet_torch)
from .calibrate import calibrate
from .machine import cpu_threads, device_name, threads_label
from .chips import Chip, chip as find_chip
from .report import Report
from .roofline import REGIMES
from .units import percent, seconds

__all__ = ["Measurement", "MeasureError", "NodeTiming", "local_chip", "measure", "program",
           "relative_error", "timed_runs"]


class MeasureError(RuntimeError):
    """The graph could not be run for real; the message names the placeholder or node."""


@dataclass(frozen=True)
class NodeTiming:
    """One node that is not a view: fxroof's eager kernel time beside the measured median."""
    name: str
    op: str
    module: str
    category: str
    regime: str           # the predicted regime of the node's eager kernel
    predicted_s: float
    measured_s: float

    @property
    def error(self) -> float:
        return relative_error(self.predicted_s, self.measured_s)

    def to_dict(self) -> dict:
        return {**self.__dict__, "error": self.error}


@dataclass(frozen=True)
class Measurement:
    model: str
    capture: str
    chip: Chip
    device: str
    warmup: int
    repeat: int
    rows: tuple           # NodeTiming, graph order
    predicted_s: float    # fxroof eager time of the whole graph
    measured_s: float     # median wall time of the model's own eager forward
    nodes_s: float        # sum of the per-node medians of `rows`
    views_s: float        # sum of the per-node medians of view nodes (fxroof counts them free)
    best_s: float = 0.0   # fastest wall time: what the machine does undisturbed
    spread: float = 0.0   # interquartile range of the wall times / their median: the noise
    views: int = 0        # view nodes run (getitem, view, transpose...): free in fxroof's model
    report: Report | None = field(default=None, compare=False, repr=False)  # the prediction

    @property
    def error(self) -> float:
        """(predicted - measured) / measured for the whole forward: +0.2 = predicted 20% slow."""
        return relative_error(self.predicted_s, self.measured_s)

    def by_regime(self) -> dict:
        """Per predicted regime: predicted and measured time of its nodes, and the error.
        Measured figures here are per-node medians, so they add up to `nodes_s`."""
        return _grouped(self.rows, "regime", REGIMES)

    def by_category(self) -> dict:
        """Per op category (matmul, attention, pointwise, ...), like `by_regime`."""
        return _grouped(self.rows, "category", sorted({r.category for r in self.rows}))

    def to_dict(self) -> dict:
        return {"schema": "fxroof.measurement/1", "model": self.model, "capture": self.capture,
                "chip": self.chip.to_dict(), "device": self.device, "warmup": self.warmup,
                "repeat": self.repeat, "predicted_s": self.predicted_s,
                "measured_s": self.measured_s, "error": self.error, "best_s": self.best_s,
                "spread": self.spread, "nodes_s": self.nodes_s,
                "views_s": self.views_s, "views": self.views, "by_regime": self.by_regime(),
                "by_category": self.by_category(),
                "nodes": [r.to_dict() for r in self.rows]}

    def __str__(self) -> str:
        head = (f"fxroof measure · {self.model} on {self.device} · predicted on {self.chip.title}"
                f" (eager)\npredicted {seconds(self.predicted_s)} · measured "
                f"{seconds(self.measured_s)} (median of {self.repeat}, best {seconds(self.best_s)},"
                f" spread {percent(self.spread)}) · error {_signed(self.error)}"
                f"\nnodes run one by one: {seconds(self.nodes_s)} in {len(self.rows)} ops"
                f" + {seconds(self.views_s)} in {self.views} views")
        mismatch = _thread_mismatch(self.device, self.chip.title)
        if mismatch:
            head += f"\nnote: {mismatch}"

        def groups(by):
            return [[k, v["nodes"], seconds(v["predicted_s"]), seconds(v["measured_s"]),
                     _signed(v["error"])] for k, v in by.items()]
        worst = sorted(self.rows, key=lambda r: -abs(r.predicted_s - r.measured_s))[:10]
        nodes = [[r.name, r.op, r.regime, seconds(r.predicted_s), seconds(r.measured_s),
                  _signed(r.error)] for r in worst]
        return "\n".join([
            head, "", "By predicted regime",
            tabulate(groups(self.by_regime()), ["regime", "nodes", "predicted", "measured",
                                                "error"], disable_numparse=True),
            "", "By op category",
            tabulate(groups(self.by_category()), ["category", "nodes", "predicted", "measured",
                                                  "error"], disable_numparse=True),
            "", "Largest misses",
            tabulate(nodes, ["node", "op", "regime", "predicted", "measured", "error"],
                     disable_numparse=True)])


def _thread_mismatch(device: str, chip_title: str) -> str:
    """Why a CPU prediction may be off: the chip was calibrated on another thread count."""
    ran, calibrated = (re.search(r"(\d+) threads?\b", text) for text in (device, chip_title))
    if ran and calibrated and ran.group(1) != calibrated.group(1):
        return (f"the chip was calibrated on {calibrated.group(0)} and this ran on "
                f"{ran.group(0)}: measure with --threads {calibrated.group(1)}, or calibrate "
                f"with --threads {ran.group(1)}")
    return ""


def _grouped(rows, key: str, order) -> dict:
    out = {}
    for value in order:
        group = [r for r in rows if getattr(r, key) == value]
        if group:
            p, m = sum(r.predicted_s for r in group), sum(r.measured_s for r in group)
            out[value] = {"nodes": len(group), "predicted_s": p, "measured_s": m,
                          "error": relative_error(p, m)}
    return out


def relative_error(predicted: float, measured: float) -> float:
    """(predicted - measured) / measured; 0 when both are 0, inf when only measured is."""
    if measured == 0:
        return 0.0 if predicted == 0 else float("inf")
    return (predicted - measured) / measured


def _signed(x: float) -> str:
    return ("+" if x >= 0 else "") + percent(x)


@functools.lru_cache(maxsize=None)
def local_chip(device: str = "cpu", threads: int | None = None) -> Chip:
    """A chip calibrated on this machine (fxroof.calibrate) for `device` at `threads` CPU threads,
    measured once per process."""
    return calibrate(device, threads=threads)


def measure(model, args=(), kwargs=None, *, chip: "str | Chip | None" = None, warmup: int = 3,
            repeat: int = 20, threads: int | None = None) -> Measurement:
    """Run `model` for real on its own device and compare with fxroof's eager prediction.

    model: an nn.Module (or an ExportedProgram / aten GraphModule) with real tensors on the device
    it should run on; args, kwargs: its real inputs. chip: what the prediction uses; by default a
    chip calibrated on this machine for the model's device and thread count (calibrated once per
    process, then cached). threads: CPU threads torch uses while measuring (default: unchanged).
    """
    args, kwargs = checked_call(args, kwargs, warmup, repeat)
    with cpu_threads(threads):
        p = predicted(model, args, kwargs, chip, "eager")
        walls, runs = timed_runs(p.captured.gm, p.values, p.device,
                                 _forward(model, args, kwargs), warmup, repeat)
        where = _device_name(p.device)
    report = p.report
    medians = {n: statistics.median(run[n] for run in runs) for n in runs[0]} if runs else {}

    kernels = {k.nodes[0]: k for k in report.kernels}
    rows = tuple(NodeTiming(n.name, n.op, n.module, n.category, kernels[n.name].regime,
                            kernels[n.name].time_s, medians.get(n.name, 0.0))
                 for n in report.nodes if n.name in kernels)
    counted = {r.name for r in rows}
    wall, best, spread = wall_stats(walls)
    return Measurement(
        model=p.name, capture=p.strategy, chip=report.chip, device=where, warmup=warmup,
        repeat=repeat, rows=rows, predicted_s=report.time_s, measured_s=wall,
        nodes_s=sum(r.measured_s for r in rows),
        views_s=sum(t for n, t in medians.items() if n not in counted),
        views=sum(1 for n in medians if n not in counted),
        best_s=best, spread=spread, report=report)


def checked_call(args, kwargs, warmup: int, repeat: int) -> tuple[tuple, dict]:
    """(args as a tuple, kwargs as a dict); repeat and warmup checked."""
    if repeat < 1 or warmup < 0:
        raise ValueError(f"need repeat >= 1 and warmup >= 0, got repeat={repeat}, warmup={warmup}")
    return (tuple(args) if isinstance(args, (tuple, list)) else (args,)), dict(kwargs or {})


@dataclass(frozen=True)
class Predicted:
    """The graph a measurement runs, its real placeholder values, and fxroof's prediction."""
    captured: object
    values: list
    strategy: str
    name: str
    device: torch.device
    report: Report


def predicted(model, args: tuple, kwargs: dict, chip, mode: str) -> Predicted:
    """Capture `model`, find the real value of each placeholder and predict it in `mode` on
    `chip` (None: this machine's device calibrated, for the thread count in use)."""
    captured, values, strategy, name = program(model, args, kwargs)
    device = _device_of(values)
    if chip is not None:
        target = find_chip(chip)
    else:
        threads_now = torch.get_num_threads() if device.type == "cpu" else None
        target = local_chip(device.type, threads_now)
    return Predicted(captured, values, strategy, name, device, report_of(captured, target, mode))


def wall_stats(walls: list) -> tuple[float, float, float]:
    """(median, fastest, interquartile range / median) of wall times."""
    wall = statistics.median(walls)
    quartiles = statistics.quantiles(walls, n=4) if len(walls) > 1 else [wall, wall, wall]
    return wall, min(walls), (quartiles[2] - quartiles[0]) / wall if wall else 0.0


def timed_runs(gm: fx.GraphModule, values: list, device: torch.device, forward=None,
               warmup: int = 3, repeat: int = 20) -> tuple[list, list]:
    """Wall times of `forward()` and per-node times of the graph run node by node, `repeat`
    times each after `warmup` untimed runs, interleaved so both see the same machine.
    Returns (wall seconds per run, [{node name: seconds} per run]); no walls without `forward`."""
    timed = _TimedInterpreter(gm, device)
    walls, runs = [], []
    with torch.no_grad():
        for _ in range(warmup):
            if forward is not None:
                forward()
            timed.run(*values)
        _sync(device)
        for _ in range(repeat):
            if forward is not None:
                t0 = time.perf_counter()
                forward()
                _sync(device)
                walls.append(time.perf_counter() - t0)
            runs.append(timed.timed_run(values))
    return walls, runs


# -- the graph and the real value of each placeholder -----------------------------------------

def program(model, args: tuple, kwargs: dict):
    """(Captured graph fxroof analyzes, which knows its weights; real placeholder values, capture
    strategy, model name)."""
    if isinstance(model, torch.export.ExportedProgram):
        return _from_program(model, args, kwargs, "ExportedProgram")
    if isinstance(model, fx.GraphModule) and is_aten_graph(model):
        captured = capture(model)   # an aten graph already: its placeholders are the inputs
        return (captured, _check(captured.gm, pytree.tree_leaves((args, kwargs))), "graph",
                type(model).__name__)
    name = type(model).__name__
    if not isinstance(model, torch.nn.Module) and callable(model):
        name, model = getattr(model, "__name__", name), FunctionModule(model)
    if isinstance(model, torch.nn.Module):
        try:
            with preserved_modes(model), quiet_torch():
                ep = torch.export.export(TensorOutputs(model), args, kwargs, strict=False)
        except Exception:   # capture() below tries export again and then its fallbacks
            ep = None
        if ep is not None:
            return _from_program(ep, args, kwargs, name)
    captured = capture(model, args, kwargs)
    if captured.strategy not in ("make_fx", "symbolic_trace"):
        raise MeasureError(f"cannot run a graph captured with {captured.strategy} for real")
    traced = fx.symbolic_trace(model) if captured.strategy == "symbolic_trace" else model
    params = dict(traced.named_parameters(remove_duplicate=False))
    buffers = dict(traced.named_buffers(remove_duplicate=False))
    values = pytree.tree_leaves((params, buffers, args, kwargs))
    return captured, _check(captured.gm, values), captured.strategy, name


def _from_program(ep, args, kwargs, name):
    from torch.export.graph_signature import InputKind
    captured = capture(ep)
    user = iter(pytree.tree_leaves((args, kwargs)))
    values = []
    for spec in ep.graph_signature.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            if isinstance(spec.arg, torch.export.graph_signature.ConstantArgument):
                next(user, None)         # the caller's value was baked in; keep the signature's
                values.append(spec.arg.value)
            else:
                values.append(next(user, None))
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER) and spec.target in ep.state_dict:
            values.append(ep.state_dict[spec.target])
        elif spec.target in ep.constants:   # lifted constants, non-persistent buffers
            values.append(ep.constants[spec.target])
        else:
            raise MeasureError(f"no real value for placeholder {spec.arg.name} ({spec.kind.name})")
    return captured, _check(captured.gm, values), "torch.export", name


def _check(gm: fx.GraphModule, values: list) -> list:
    """The values, once each one matches its placeholder's recorded shape and dtype."""
    holders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(holders) != len(values):
        raise MeasureError(f"the graph has {len(holders)} placeholders but {len(values)} real "
                           f"values were found for them")
    for node, value in zip(holders, values):
        fake = node.meta.get("val")
        if isinstance(fake, torch.Tensor):
            ok = (isinstance(value, torch.Tensor) and value.dtype == fake.dtype
                  and tuple(value.shape) == tuple(int(s) for s in fake.shape))
            if not ok:
                got = (f"{tuple(value.shape)} {value.dtype}" if isinstance(value, torch.Tensor)
                       else repr(value))
                raise MeasureError(f"placeholder {node.name} expects {tuple(fake.shape)} "
                                   f"{fake.dtype}, the real value is {got}")
    return values


def _forward(model, args, kwargs):
    if isinstance(model, torch.export.ExportedProgram):
        module = model.module()
        return lambda: module(*args, **kwargs)
    return lambda: model(*args, **kwargs)


def _device_of(values) -> torch.device:
    devices = {v.device for v in values if isinstance(v, torch.Tensor)}
    cuda = [d for d in devices if d.type == "cuda"]
    if len(cuda) > 1:
        raise MeasureError(f"the graph's tensors are on several GPUs: {sorted(map(str, cuda))}")
    return cuda[0] if cuda else torch.device("cpu")


def _device_name(device: torch.device) -> str:
    return device_name(device) + (f", {threads_label()}" if device.type == "cpu" else "")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- running node by node ---------------------------------------------------------------------

class _TimedInterpreter(fx.Interpreter):
    """Runs the graph with real tensors, timing every call_function node."""

    def __init__(self, gm: fx.GraphModule, device: torch.device):
        super().__init__(gm)
        self.cuda = device.type == "cuda"
        self.marks: list = []        # (node name, start, end): floats on CPU, events on GPU

    def run_node(self, n: fx.Node):
        if n.op != "call_function":
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = n.target(*args, **kwargs)
            end.record()
        else:
            start = time.perf_counter()
            out = n.target(*args, **kwargs)
            end = time.perf_counter()
        self.marks.append((n.name, start, end))
        return out

    def timed_run(self, values) -> dict:
        """{node name: seconds} for one run."""
        self.marks = []
        try:
            self.run(*values)
        except Exception as e:
            node = self.marks[-1][0] if self.marks else "the first node"
            raise MeasureError(f"running the graph failed after {node}: "
                               f"{type(e).__name__}: {e}") from e
        if self.cuda:
            torch.cuda.synchronize()
            return {name: s.elapsed_time(e) * 1e-3 for name, s, e in self.marks}
        return {name: e - s for name, s, e in self.marks}

