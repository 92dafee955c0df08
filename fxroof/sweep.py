"""Sweeps: one workload reported at many values of one option (batch, seq, ctx), captured once.

    s = fxroof.sweep("models/llama.py", {"batch": [1, 2, 4, 8]}, options={"phase": "decode"})
    print(s)            # a row per value: time, regime, FLOP/B, throughput, memory
    s.to_dict()         # schema "fxroof.sweep/1"

Captured once with symbolic sizes where that is sound: fxroof/symbolic.py says how and why.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import tables
from .api import analyze
from .chips import Chip, chip as find_chip
from .symbolic import Evaluator, Point, builder, items_of, no_full_gc
from .units import percent, ratio, seconds, si
from .whatif import parse as parse_quantization
from .workload import parse_value

__all__ = ["Point", "Sweep", "parse_over", "sweep"]


@dataclass(frozen=True)
class Sweep:
    variable: str
    points: tuple            # Point, in the order the values were given
    method: str              # "symbolic" (captured once) or "per-point" (captured at each value)
    unit: str                # "tokens" or "samples": what Point.items counts
    chip: Chip
    mode: str
    whatif: str = ""         # the quantization what-if applied at every value, "" for none
    notes: tuple = ()

    @property
    def values(self) -> tuple:
        return tuple(p.value for p in self.points)

    def to_dict(self) -> dict:
        return {"schema": "fxroof.sweep/1", "variable": self.variable, "method": self.method,
                "unit": self.unit, "chip": self.chip.name, "mode": self.mode,
                "whatif": self.whatif, "notes": list(self.notes),
                "points": [p.to_dict() for p in self.points]}

    def __str__(self) -> str:
        first = self.points[0].report
        dtype = first.matrix_dtype
        head = [f"fxroof sweep · {first.model} on {self.chip.title}{tables.rank_label(first)} · "
                f"{self.mode} · over "
                f"{self.variable} · {self.method} capture"
                + (f" · what-if {self.whatif}" if self.whatif else ""),
                f"{dtype} ridge {ratio(self.chip.ridge(dtype))} FLOP/B: kernels above it are "
                f"compute-bound, below it memory-bound"]
        share = lambda p: percent(p.report.regime_share[p.regime])  # noqa: E731
        rows = [[p.value, seconds(p.time_s), f"{p.regime} {share(p)}",
                 ratio(p.report.intensity), si(p.throughput, f"{self.unit[0]}/s"),
                 si(p.report.memory.weights, "B"), si(p.report.memory.kv_cache, "B"),
                 si(p.report.memory.activations, "B"), _flags(p, self.chip)]
                for p in self.points]
        table = tables.table(rows, [self.variable, "time", "regime", "FLOP/B", self.unit + "/s",
                                     "weights", "KV cache", "activ.", ""],
                              ("right", "right", "left", "right", "right", "right", "right",
                               "right", "left"))
        notes = [f"* {self.variable}={p.value}: {p.note}" for p in self.points if p.note]
        if any(p.report.memory.total > self.chip.mem_bytes for p in self.points):
            notes.append(f"! needs more than {self.chip.name}'s {si(self.chip.mem_bytes, 'B')} "
                         f"of memory")
        notes += list(self.notes)
        return "\n".join(tables.wrap(head) + ["", table]
                         + ([""] + tables.wrap(notes) if notes else []))


def _flags(point, chip: Chip) -> str:
    """'*' captured on its own (a note says why), '!' does not fit in the chip's memory."""
    return ("*" if point.note else "") + ("!" if point.report.memory.total > chip.mem_bytes else "")


def sweep(workload, over, *, chip: "str | Chip" = "h100-sxm", mode: str = "compiled",
          options: dict | None = None, quantize=None, matmul_epilogues: bool = False,
          symbolic: bool = True, tp: int = 1) -> Sweep:
    """Report `workload` at each value of one option, captured once where that is sound.

    workload: a workload spec ("path/to/file.py[:FUNC]") or a function returning
    (model, args[, kwargs]), called with `options` and the swept option as keywords.
    over: {"batch": [1, 2, 4]}, ("batch", [1, 2, 4]) or "batch=1,2,4".
    quantize: a what-if (fxroof.whatif) applied at every value.
    symbolic=False captures each value on its own (the reference the fast path is tested against).
    tp: tensor-parallel degree, one rank analyzed at each value (fxroof.parallel); each value is
    then captured on its own.
    """
    variable, values = parse_over(over)
    build = builder(workload, variable, options)
    q = parse_quantization(quantize)
    target = find_chip(chip)
    if symbolic:
        with no_full_gc():
            ev = Evaluator(build, variable, values, chip=target, mode=mode,
                           matmul_epilogues=matmul_epilogues, quantize=q, tp=tp)
            points = tuple(ev.point(v) for v in values)
        method, unit, notes = ev.method, ev.unit, tuple(filter(None, [ev.why_not]))
    else:
        points = []
        for v in values:
            model, args, kwargs = build(v)
            report = analyze(model, args, kwargs, chip=target, mode=mode,
                             matmul_epilogues=matmul_epilogues, quantize=q, tp=tp)
            points.append(Point(v, report, items_of(args, kwargs)[0]))
            unit = items_of(args, kwargs)[1]
        points, method, notes = tuple(points), "per-point", ()
    return Sweep(variable, points, method, unit, target, mode, q.label if q else "", notes)


def parse_over(over) -> tuple[str, tuple]:
    """("batch", (1, 2, 4)) from {"batch": [1, 2, 4]}, ("batch", [1, 2, 4]) or "batch=1,2,4"."""
    if isinstance(over, str):
        name, eq, text = over.partition("=")
        values = tuple(parse_value(v.strip()) for v in text.split(",") if v.strip())
        if not eq or not name.strip().isidentifier() or not values:
            raise ValueError(f"--over expects NAME=V1,V2,..., got {over!r}")
        return name.strip(), values
    if isinstance(over, dict):
        if len(over) != 1:
            raise ValueError(f"sweep one option at a time, got {', '.join(map(str, over))}")
        (name, values), = over.items()
    else:
        name, values = over
    values = tuple(values)
    if not values:
        raise ValueError(f"no values to sweep {name} over")
    return name, values
