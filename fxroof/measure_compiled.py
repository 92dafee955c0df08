"""Measured truth for compiled mode: the model under torch.compile, timed, beside fxroof's
compiled-mode prediction (the kernels a fusing compiler would emit, on the chip).

    m = measure_compiled(model, args, kwargs)   # chip: calibrated on this machine (cached)
    print(m)                                    # predicted, measured, error, compile time

A compiled program runs its fused kernels without stopping between them, so there is no
node-by-node view here: the whole forward is timed (`warmup` untimed runs after the first call,
which compiles, then `repeat` timed ones; a GPU is synchronized before each clock stop) and
compared with the prediction in total. The prediction is fxroof's own fusion of the captured
graph, not Inductor's: tests/test_inductor.py shows the two agree on bytes within 10%.

The CUDA path (torch.cuda.synchronize around each run) has not been run by fxroof's tests,
which run on CPU only.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .chips import Chip
from .machine import cpu_threads
from .measure import (_device_name, _sync, checked_call, predicted, relative_error,
                      wall_stats)
from .report import Report
from .units import percent, seconds

__all__ = ["CompiledMeasurement", "measure_compiled"]


@dataclass(frozen=True)
class CompiledMeasurement:
    model: str
    capture: str
    chip: Chip
    device: str
    warmup: int
    repeat: int
    predicted_s: float    # fxroof's compiled-mode time of the whole graph
    measured_s: float     # median wall time of the compiled forward
    best_s: float         # fastest run
    spread: float         # interquartile range / median of the runs
    compile_s: float      # the first call: compiling and one run
    report: Report | None = field(default=None, compare=False, repr=False)

    @property
    def error(self) -> float:
        """(predicted - measured) / measured: +0.2 = predicted 20% slow."""
        return relative_error(self.predicted_s, self.measured_s)

    def to_dict(self) -> dict:
        share = self.report.regime_share if self.report is not None else {}
        return {"schema": "fxroof.measurement.compiled/1", "model": self.model,
                "capture": self.capture, "chip": self.chip.to_dict(), "device": self.device,
                "warmup": self.warmup, "repeat": self.repeat, "predicted_s": self.predicted_s,
                "measured_s": self.measured_s, "error": self.error, "best_s": self.best_s,
                "spread": self.spread, "compile_s": self.compile_s,
                "kernels": len(self.report.kernels) if self.report is not None else None,
                "regime_share": share}

    def __str__(self) -> str:
        lines = [f"fxroof measure · {self.model} on {self.device} · predicted on "
                 f"{self.chip.title} (compiled)",
                 f"predicted {seconds(self.predicted_s)} · measured {seconds(self.measured_s)} "
                 f"(torch.compile, median of {self.repeat}, best {seconds(self.best_s)}, spread "
                 f"{percent(self.spread)}) · error {100 * self.error:+.0f}%",
                 f"compiled in {seconds(self.compile_s)}"]
        if self.report is not None:
            r = self.report
            parts = ", ".join(f"{k} {percent(v)}" for k, v in r.regime_share.items() if v)
            lines.append(f"predicted: {len(r.kernels)} fused kernels from {len(r.nodes)} ops; "
                         f"{parts}")
        return "\n".join(lines)


def measure_compiled(model, args=(), kwargs=None, *, chip: "str | Chip | None" = None,
                     warmup: int = 3, repeat: int = 20, threads: int | None = None
                     ) -> CompiledMeasurement:
    """Time `model` under torch.compile on its own device and compare with fxroof's compiled-mode
    prediction. Arguments as fxroof.measure.measure; the model must be an nn.Module or a
    function with real tensors. The model itself is not changed (torch.compile wraps it)."""
    args, kwargs = checked_call(args, kwargs, warmup, repeat)
    if not callable(model) or isinstance(model, torch.export.ExportedProgram):
        raise ValueError("measure_compiled needs an nn.Module or a function to compile")
    with cpu_threads(threads):
        p = predicted(model, args, kwargs, chip, "compiled")
        device = p.device
        compiled = torch.compile(model)
        walls = []
        with torch.no_grad():
            t0 = time.perf_counter()
            compiled(*args, **kwargs)
            _sync(device)
            compile_s = time.perf_counter() - t0
            for _ in range(warmup):
                compiled(*args, **kwargs)
            _sync(device)
            for _ in range(repeat):
                t0 = time.perf_counter()
                compiled(*args, **kwargs)
                _sync(device)
                walls.append(time.perf_counter() - t0)
        where = _device_name(device)
    wall, best, spread = wall_stats(walls)
    return CompiledMeasurement(
        model=p.name, capture=p.strategy, chip=p.report.chip, device=where, warmup=warmup,
        repeat=repeat, predicted_s=p.report.time_s, measured_s=wall, best_s=best, spread=spread,
        compile_s=compile_s, report=p.report)
