"""Measured truth, compiled mode: the model under torch.compile, timed, beside fxroof's
compiled-mode prediction (the kernels a fusing compiler would emit, on the chip).

    m = measure_compiled(model, args, kwargs)   # chip: calibrated on this machine (cached)
    print(m)                                    # predicted, measured, error, compile time

A compiled program runs its fused kernels without stopping between them, so there is no
node-by-node view: the whole forward is timed, the first call (which compiles) apart. The
prediction is fxroof's own fusion of the captured graph, not Inductor's; inductor.py cross-checks
the two.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import torch

from fxroof.chips import Chip
from fxroof.measure.machine import cpu_threads, elapsed
from fxroof.measure.nodes import Measured, predicted
from fxroof.measure.runner import checked_call, timed_runs
from fxroof.report.units import percent, seconds

__all__ = ["CompiledMeasurement", "measure_compiled"]


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
                     warmup: int = 3, repeat: int = 20, threads: int | None = None
                     ) -> CompiledMeasurement:
    """Time `model` under torch.compile on its own device and compare with fxroof's compiled-mode
    prediction. Arguments as `fxroof.measure.nodes.measure`; the model must be an nn.Module or a
    function with real tensors. The model itself is not changed (torch.compile wraps it)."""
    args, kwargs = checked_call(args, kwargs, warmup, repeat)
    if not callable(model) or isinstance(model, torch.export.ExportedProgram):
        raise ValueError("measure_compiled needs an nn.Module or a function to compile")
    with cpu_threads(threads):
        p = predicted(model, args, kwargs, chip, "compiled")
        forward = functools.partial(torch.compile(model), *args, **kwargs)
        with torch.no_grad():
            compile_s = elapsed(forward, p.device)
        walls, _runs = timed_runs(p.device, warmup, repeat, forward=forward)
    return p.measured(CompiledMeasurement, walls, warmup, repeat, compile_s=compile_s)
