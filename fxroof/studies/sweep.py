"""Sweeps: one workload reported at many values of one option (batch, seq, ctx), captured once.

    s = fxroof.sweep("models/llama.py", {"batch": [1, 2, 4, 8]}, options={"phase": "decode"})
    print(s)            # a row per value: time, regime, FLOP/B, throughput, memory
    s.to_dict()         # schema "fxroof.sweep/1"

Every value's report is the one fxroof.analyze gives there, but the model is captured once with
symbolic sizes where that is sound, not once a value (fxroof.studies.evaluator, docs/sweeps.md).
"""
from __future__ import annotations

from dataclasses import dataclass

from fxroof.chips import Chip
from fxroof.pipeline import Target, no_full_gc, target_of
from fxroof.report import tables
from fxroof.report.records import Report
from fxroof.report.units import percent, ratio, seconds, si
from fxroof.studies.evaluator import Evaluator, Point, builder
from fxroof.studies.workload import parse_value

__all__ = ["Point", "Sweep", "cells", "parse_over", "sweep", "title", "unfit_note"]


def title(study: str, r: Report, *parts: str, subject: str = "") -> str:
    """A study's first line: the model, chip, rank, mode, what the study varies, the what-if."""
    return " · ".join([f"fxroof {study} · {r.model}{subject} on {r.chip.title}"
                       f"{tables.rank_label(r)}", r.mode, *parts]
                      + ([f"what-if {r.whatif}"] if r.whatif else []))


def cells(r: Report) -> dict:
    """A report's figures as the studies' tables show them, by row name."""
    return {"time": seconds(r.time_s), "regime": f"{r.regime} {percent(r.regime_share[r.regime])}",
            "FLOPs": si(r.flops, "FLOP"), "bytes moved": si(r.summary.bytes, "B"),
            "FLOP/B": ratio(r.intensity), "weights": si(r.memory.weights, "B"),
            "KV cache": si(r.memory.kv_cache, "B"), "activations": si(r.memory.activations, "B"),
            "memory": si(r.memory.total, "B") + ("" if r.fits else " !")}


def unfit_note(chip: Chip) -> str:
    """The note beside a table whose '!' marks points that do not fit in the chip's memory."""
    return f"! needs more than {chip.name}'s {si(chip.mem_bytes, 'B')} of memory"


@dataclass(frozen=True)
class Sweep:
    """One workload at each value of one option, and how those values were captured."""
    variable: str
    points: tuple            # Point, in the order the values were given
    method: str              # "symbolic" (captured once) or "per-point" (captured at each value)
    unit: str                # "tokens" or "samples": what Point.items counts
    chip: Chip
    mode: str
    whatif: str = ""         # the quantization what-if applied at every value, "" for none
    notes: tuple = ()

    @classmethod
    def of(cls, ev: Evaluator, values) -> Sweep:
        """The evaluator's points at `values`, in that order."""
        points, t = tuple(ev.point(v) for v in values), ev.target
        return cls(ev.variable, points, "per-point" if ev.sym is None else "symbolic", ev.unit,
                   t.chip, t.mode, t.whatif, tuple(filter(None, [ev.why_not])))

    values = property(lambda self: tuple(p.value for p in self.points))

    def to_dict(self) -> dict:
        return {"schema": "fxroof.sweep/1", "variable": self.variable, "method": self.method,
                "unit": self.unit, "chip": self.chip.name, "mode": self.mode,
                "whatif": self.whatif, "notes": list(self.notes),
                "points": [{**p.to_dict(), "fits": p.report.fits} for p in self.points]}

    def __str__(self) -> str:
        first, chip = self.points[0].report, self.chip
        dtype = first.matrix_dtype
        head = [title("sweep", first, f"over {self.variable}", f"{self.method} capture"),
                f"{dtype} ridge {ratio(chip.ridge(dtype))} FLOP/B: kernels above it are "
                f"compute-bound, below it memory-bound"]
        # '*' captured on its own (a note says why), '!' does not fit in the chip's memory
        rows = []
        for p in self.points:
            c, mark = cells(p.report), ("*" if p.note else "") + ("" if p.report.fits else "!")
            rows.append([p.value, c["time"], c["regime"], c["FLOP/B"],
                         si(p.throughput, f"{self.unit[0]}/s"), c["weights"], c["KV cache"],
                         c["activations"], mark])
        table = tables.table(rows, [self.variable, "time", "regime", "FLOP/B", self.unit + "/s",
                                     "weights", "KV cache", "activ.", ""], "rrlrrrrrl")
        notes = [f"* {self.variable}={p.value}: {p.note}" for p in self.points if p.note]
        if not all(p.report.fits for p in self.points):
            notes.append(unfit_note(chip))
        notes += self.notes
        return "\n".join(tables.wrap(head) + ["", table]
                         + ([""] + tables.wrap(notes) if notes else []))


@no_full_gc()
def sweep(workload, over, *, options: dict | None = None, symbolic: bool = True,
          target: Target | None = None, **fields) -> Sweep:
    """Report `workload` at each value of one option, captured once where that is sound.

    workload: a workload spec ("path/to/file.py[:FUNC]") or a function returning
    (model, args[, kwargs]), called with `options` and the swept option as keywords.
    over: {"batch": [1, 2, 4]}, ("batch", [1, 2, 4]) or "batch=1,2,4".
    symbolic=False captures each value on its own (the reference the fast path is tested against).
    target: the Target, or its fields as keywords (chip=, mode=, quantize=, tp=, ...); with tp > 1
    each value is one rank, captured on its own.
    """
    variable, values = parse_over(over)
    if variable in (options or {}):      # the sweep would override it unseen
        raise ValueError(f"{variable} is the swept option, not also a fixed one "
                         f"(--set {variable}={options[variable]!r})")
    build = builder(workload, variable, options)
    return Sweep.of(Evaluator(build, variable, values, target_of(target, **fields), symbolic),
                    values)


def parse_over(over) -> tuple[str, tuple]:
    """("batch", (1, 2, 4)) from {"batch": [1, 2, 4]}, ("batch", [1, 2, 4]) or "batch=1,2,4"."""
    if isinstance(over, str):
        name, eq, text = over.partition("=")
        if not eq or not name.strip().isidentifier():
            raise ValueError(f"--over expects NAME=V1,V2,..., got {over!r}")
        over = (name.strip(), [parse_value(v.strip()) for v in text.split(",") if v.strip()])
    elif isinstance(over, dict) and len(over) != 1:
        raise ValueError(f"sweep one option at a time, got {', '.join(map(str, over))}")
    name, values = next(iter(over.items())) if isinstance(over, dict) else over
    values = tuple(values)
    if not values:
        raise ValueError(f"no values to sweep {name} over")
    return name, values
