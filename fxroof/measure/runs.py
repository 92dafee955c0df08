"""Measured truth: a model run for real beside fxroof's prediction of the same graph.

    m = measure(model, args, kwargs)          # eager: node by node, beside the eager prediction
    m = measure_compiled(model, args, kwargs) # the model under torch.compile, beside the compiled
    print(m)                                  # total, per regime, the nodes that miss most

Eager: the total is the model's own eager forward, timed in turns with the graph run node by node
(runner.py): its median is `measured_s`, its fastest run `best_s`, the spread of the runs
`spread` (other work on a shared machine shows there first). Each node's figure is its median.
The prediction is `analyze(..., mode="eager")` of the same graph: one kernel per op.

Compiled: a compiled program runs its fused kernels without stopping between them, so the whole
forward is timed, the first call (which compiles) apart. The prediction is fxroof's own fusion of
the captured graph, not Inductor's; inductor.py cross-checks the two. Either way the chip is, by
default, calibrated on this machine (once per process).
"""
from __future__ import annotations

import dataclasses
import functools
import re
import statistics
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from tabulate import tabulate

from fxroof.chips import Chip
from fxroof.chips.timing import REGIMES
from fxroof.graph.capture import Captured
from fxroof.measure.calibrate import calibrate
from fxroof.measure.machine import cpu_threads, device_label, elapsed
from fxroof.measure.runner import (MeasureError, checked_call, device_of, forward_of, program,
                                   timed_runs)
from fxroof.pipeline import Target, report_of
from fxroof.report.records import Report
from fxroof.report.units import percent, seconds

__all__ = ["CompiledMeasurement", "MeasureError", "Measured", "Measurement", "NodeTiming",
           "local_chip", "measure", "measure_compiled", "predicted", "relative_error"]


def relative_error(predicted: float, measured: float) -> float:
    """(predicted - measured) / measured; 0 when both are 0, inf when only measured is."""
    if measured == 0:
        return 0.0 if predicted == 0 else float("inf")
    return (predicted - measured) / measured


def side_by_side(predicted_s: float, measured_s: float) -> list[str]:
    return [seconds(predicted_s), seconds(measured_s),
            f"{relative_error(predicted_s, measured_s):+.0%}"]


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


@dataclass(frozen=True, kw_only=True)
class Measured:
    """A model's forward timed for real beside fxroof's prediction of it, in either mode (each
    names its JSON form's SCHEMA)."""
    model: str
    capture: str
    chip: Chip
    device: str
    warmup: int
    repeat: int
    predicted_s: float    # fxroof's time of the whole graph
    measured_s: float     # median wall time of the forward
    best_s: float = 0.0   # fastest wall time: what the machine does undisturbed
    spread: float = 0.0   # interquartile range of the wall times / their median: the noise
    # minor page faults a forward on a CPU (median): first touches of memory the allocator
    # handed back to the system and took again, time no prediction holds (0: none counted)
    page_faults: float = 0.0
    report: Report | None = field(default=None, compare=False, repr=False)  # the prediction

    @property
    def error(self) -> float:
        """(predicted - measured) / measured for the whole forward: +0.2 = predicted 20% slow."""
        return relative_error(self.predicted_s, self.measured_s)

    def to_dict(self) -> dict:
        plain = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                 if f.name not in ("chip", "report", "rows")}
        return {"schema": self.SCHEMA, **plain, "chip": self.chip.to_dict(), "error": self.error}

    def _head(self, mode: str, how: str = "") -> list[str]:
        """The first lines of the printed form: what ran where, and the totals."""
        mismatch = _thread_mismatch(self.device, self.chip.title)
        faults = (f"{self.page_faults:,.0f} page faults a forward: first touches of memory the "
                  f"allocator gave back to the system and took again, time the prediction does "
                  f"not hold (glibc's: MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ set "
                  f"high keep it)" if self.page_faults >= PAGE_FAULTS_WORTH_A_NOTE else "")
        return [f"fxroof measure · {self.model} on {self.device} · predicted on "
                f"{self.chip.title} ({mode})",
                f"predicted {seconds(self.predicted_s)} · measured {seconds(self.measured_s)} "
                f"({how}median of {self.repeat}, best {seconds(self.best_s)}, spread "
                f"{percent(self.spread)}) · error {self.error:+.0%}",
                *(f"note: {n}" for n in (mismatch, faults) if n)]


@dataclass(frozen=True, kw_only=True)
class Measurement(Measured):
    SCHEMA: ClassVar[str] = "fxroof.measurement/1"
    rows: tuple           # NodeTiming, graph order
    nodes_s: float        # sum of the per-node medians of `rows`
    views_s: float        # sum of the per-node medians of view nodes (fxroof counts them free)
    views: int = 0        # view nodes run (getitem, view, transpose...): free in fxroof's model

    def by_regime(self) -> dict:
        """Per predicted regime: predicted and measured time of its nodes, and the error.
        Measured figures here are per-node medians, so they add up to `nodes_s`."""
        return totals_by(self.rows, "regime", REGIMES)

    def by_category(self) -> dict:
        """Per op category (matmul, attention, pointwise, ...), like `by_regime`."""
        return totals_by(self.rows, "category", sorted({r.category for r in self.rows}))

    def to_dict(self) -> dict:
        return super().to_dict() | {"by_regime": self.by_regime(),
                                    "by_category": self.by_category(),
                                    "nodes": [r.to_dict() for r in self.rows]}

    def __str__(self) -> str:
        def groups(key, by):
            return tabulate([[k, v["nodes"], *side_by_side(v["predicted_s"], v["measured_s"])]
                             for k, v in by.items()],
                            [key, "nodes", "predicted", "measured", "error"], disable_numparse=True)
        worst = sorted(self.rows, key=lambda r: -abs(r.predicted_s - r.measured_s))[:10]
        nodes = [[r.name, r.op, r.regime, *side_by_side(r.predicted_s, r.measured_s)] for r in worst]
        return "\n".join([
            *self._head("eager"),
            f"nodes run one by one: {seconds(self.nodes_s)} in {len(self.rows)} ops"
            f" + {seconds(self.views_s)} in {self.views} views",
            "", "By predicted regime", groups("regime", self.by_regime()),
            "", "By op category", groups("category", self.by_category()),
            "", "Largest misses",
            tabulate(nodes, ["node", "op", "regime", "predicted", "measured", "error"],
                     disable_numparse=True)])


# Page faults a forward worth a line: at 1-3 us each (1.4 on a 2-vCPU VM), 100 are 0.1-0.3 ms
PAGE_FAULTS_WORTH_A_NOTE = 100


def _thread_mismatch(device: str, chip_title: str) -> str:
    """Why a CPU prediction may be off: the chip was calibrated on another thread count."""
    ran, calibrated = (re.search(r"(\d+) threads?\b", text) for text in (device, chip_title))
    if ran and calibrated and ran.group(1) != calibrated.group(1):
        return (f"the chip was calibrated on {calibrated.group(0)} and this ran on "
                f"{ran.group(0)}: measure with --threads {calibrated.group(1)}, or calibrate "
                f"with --threads {ran.group(1)}")
    return ""


def totals_by(rows, key: str, order) -> dict:
    out = {}
    for value in order:
        group = [r for r in rows if getattr(r, key) == value]
        if group:
            p, m = sum(r.predicted_s for r in group), sum(r.measured_s for r in group)
            out[value] = {"nodes": len(group), "predicted_s": p, "measured_s": m,
                          "error": relative_error(p, m)}
    return out


@functools.lru_cache(maxsize=None)
def local_chip(device: str = "cpu", threads: int | None = None) -> Chip:
    """A chip calibrated on this machine for `device` at `threads` CPU threads, measured once
    per process."""
    return calibrate(device, threads=threads)


@dataclass(frozen=True)
class Predicted:
    """The graph a measurement runs (named after the model), its real placeholder values, their
    device as a measured run names it, and fxroof's prediction."""
    captured: Captured
    values: list
    device: torch.device
    where: str
    report: Report

    def measured(self, kind: type, walls: list, warmup: int, repeat: int, faults=(), **fields):
        """A `kind` of Measured: these wall times (and the page faults of each run, on a CPU)
        beside this prediction."""
        wall = statistics.median(walls)
        fields["page_faults"] = statistics.median(faults) if faults and \
            self.device.type == "cpu" else 0.0
        quartiles = statistics.quantiles(walls, n=4) if len(walls) > 1 else [wall] * 3
        return kind(model=self.captured.name, capture=self.captured.strategy,
                    chip=self.report.chip, device=self.where, warmup=warmup, repeat=repeat,
                    predicted_s=self.report.time_s, measured_s=wall, best_s=min(walls),
                    spread=(quartiles[2] - quartiles[0]) / wall if wall else 0.0,
                    report=self.report, **fields)


def predicted(model, args: tuple, kwargs: dict, chip, mode: str) -> Predicted:
    """Capture `model`, find the real value of each placeholder and predict it in `mode` on
    `chip` (None: this machine's device calibrated, for the thread count in use)."""
    captured, values = program(model, args, kwargs)
    device = device_of(values)
    if chip is None:
        chip = local_chip(device.type, torch.get_num_threads() if device.type == "cpu" else None)
    return Predicted(captured, values, device, device_label(device),
                     report_of(captured, Target(chip=chip, mode=mode)))


def measure(model, args=(), kwargs=None, *, chip: str | Chip | None = None, warmup: int = 3,
            repeat: int = 20, threads: int | None = None) -> Measurement:
    """Run `model` for real on its own device and compare with fxroof's eager prediction.

    model: an nn.Module (or an ExportedProgram / aten GraphModule) with real tensors on the device
    it should run on; args, kwargs: its real inputs. chip: what the prediction uses; by default a
    chip calibrated on this machine for the model's device and thread count (calibrated once per
    process, then cached). threads: CPU threads torch uses while measuring (default: unchanged).
    """
    args, kwargs = checked_call(args, kwargs, warmup, repeat, model)
    with cpu_threads(threads):
        p = predicted(model, args, kwargs, chip, "eager")
        walls, runs, faults = timed_runs(p.device, warmup, repeat,
                                         forward=forward_of(model, args, kwargs),
                                         gm=p.captured.gm, values=p.values)
    medians = {n: statistics.median(run[n] for run in runs) for n in runs[0]}
    kernels = {k.nodes[0]: k for k in p.report.kernels}
    rows = tuple(NodeTiming(n.name, n.op, n.module, n.category, kernels[n.name].regime,
                            kernels[n.name].time_s, medians.get(n.name, 0.0))
                 for n in p.report.nodes if n.name in kernels)
    views = {n: t for n, t in medians.items() if n not in {r.name for r in rows}}
    return p.measured(Measurement, walls, warmup, repeat, faults, rows=rows,
                      nodes_s=sum(r.measured_s for r in rows), views_s=sum(views.values()),
                      views=len(views))


@dataclass(frozen=True, kw_only=True)
class CompiledMeasurement(Measured):
    SCHEMA: ClassVar[str] = "fxroof.measurement.compiled/1"
    compile_s: float      # the first call: compiling and one run

    def to_dict(self) -> dict:
        r = self.report
        return super().to_dict() | {"kernels": len(r.kernels) if r is not None else None,
                                    "regime_share": r.regime_share if r is not None else {}}

    def __str__(self) -> str:
        r, lines = self.report, [*self._head("compiled", "torch.compile, "),
                                 f"compiled in {seconds(self.compile_s)}"]
        if r is not None:
            parts = ", ".join(f"{k} {percent(v)}" for k, v in r.regime_share.items() if v)
            lines.append(f"predicted: {len(r.kernels)} fused kernels from {len(r.nodes)} ops; "
                         f"{parts}")
        return "\n".join(lines)


def measure_compiled(model, args=(), kwargs=None, *, chip: str | Chip | None = None,
                     warmup: int = 3, repeat: int = 20, threads: int | None = None,
                     graphs: bool = False) -> CompiledMeasurement:
    """Time `model` under torch.compile on its own device and compare with fxroof's compiled-mode
    prediction. Arguments as `measure`; the model must be an nn.Module or a
    function with real tensors. The model itself is not changed (torch.compile wraps it).
    graphs: compile with mode="reduce-overhead" (CUDA graphs, on a GPU) beside the cudagraphs
    prediction."""
    args, kwargs = checked_call(args, kwargs, warmup, repeat, model)
    if not callable(model) or isinstance(model, torch.export.ExportedProgram):
        raise ValueError("measure_compiled needs an nn.Module or a function to compile")
    with cpu_threads(threads):
        p = predicted(model, args, kwargs, chip, "cudagraphs" if graphs else "compiled")
        compiled = torch.compile(model, mode="reduce-overhead" if graphs else None)
        forward = functools.partial(compiled, *args, **kwargs)
        with torch.no_grad():
            compile_s = elapsed(forward, p.device)
        walls, _runs, faults = timed_runs(p.device, warmup, repeat, forward=forward)
    return p.measured(CompiledMeasurement, walls, warmup, repeat, faults, compile_s=compile_s)
