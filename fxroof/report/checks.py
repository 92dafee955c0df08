"""Pre-deployment checks: budgets a report must meet, each failing with a one-line reason.

    result = report.check(max_time_ms=20, max_regime_share={"overhead": 0.2})
    assert result.ok, result

Memory fit is on by default; the dtype lint warns unless asked to fail.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from fxroof.chips.timing import REGIMES
from fxroof.cost.record import MATRIX_CATEGORIES
from fxroof.report.units import percent, seconds, share, si

LINT_LEVELS = ("off", "warn", "fail")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    message: str
    level: str = "fail"      # "fail": a broken budget fails the run; "warn": reported only

    @property
    def failed(self) -> bool:
        return not self.ok and self.level == "fail"

    def __str__(self) -> str:
        mark = "ok  " if self.ok else ("FAIL" if self.level == "fail" else "warn")
        return f"{mark} {self.name}: {self.message}"


@dataclass(frozen=True)
class CheckResult:
    checks: tuple
    report: object = field(default=None, repr=False, compare=False)   # the Report checked

    @property
    def ok(self) -> bool:
        return not any(c.failed for c in self.checks)

    def __str__(self) -> str:
        return "\n".join(str(c) for c in self.checks)

    def to_dict(self) -> dict:
        """Schema "fxroof.check/1": the verdict, each check, and the report they were run on,
        so that a CI job keeps one file."""
        out = {"schema": "fxroof.check/1", "ok": self.ok,
               "checks": [{**c.__dict__, "failed": c.failed} for c in self.checks]}
        if self.report is not None:
            out["report"] = self.report.to_dict()
        return out


def run_checks(report, *, max_time_ms: float | None = None, min_coverage: float | None = None,
               memory_fit: bool = True, max_regime_share: dict | None = None,
               lint: str = "warn") -> CheckResult:
    if lint not in LINT_LEVELS:
        raise ValueError(f"lint must be one of {', '.join(LINT_LEVELS)}, got {lint!r}")
    for regime, limit in (max_regime_share or {}).items():
        if regime not in REGIMES:
            raise ValueError(f"unknown regime {regime!r}; expected one of {', '.join(REGIMES)}")
        _budget(f"the {regime} share", limit, 1.0)
    _budget("max_time_ms", max_time_ms, math.inf)
    _budget("min_coverage", min_coverage, 1.0)
    checks = []
    if max_time_ms is not None:
        t = report.time_s * 1e3
        checks.append(Check("time", t <= max_time_ms,
                            f"{seconds(report.time_s)} predicted, budget {max_time_ms:g} ms"))
    if min_coverage is not None:
        unknown = ", ".join(report.unknown_ops) or "none"
        checks.append(Check("coverage", report.coverage >= min_coverage,
                            f"{share(report.coverage)} of ops have a formula, budget "
                            f"{share(min_coverage)} (no formula: {unknown})"))
    if memory_fit:
        checks.append(_memory(report))
    for regime, limit in (max_regime_share or {}).items():
        part = report.regime_share[regime]
        checks.append(Check(f"{regime} share", part <= limit,
                            f"{percent(part)} of time is {regime}-bound, budget {percent(limit)}"))
    if lint != "off":
        checks += [dataclasses.replace(c, level="fail" if lint == "fail" else "warn")
                   for c in _dtype_lint(report)]
    return CheckResult(tuple(checks), report)


def _budget(name: str, value, most: float) -> None:
    """A budget that cannot be meant is a usage error, not a failed check: a share above 1 (95
    meaning 95%?), a negative or NaN time."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not 0 <= value <= most):
        raise ValueError(f"{name} must be "
                         f"{'a share from 0 to 1' if most == 1.0 else 'a number >= 0'}, got {value!r}")


def _memory(report) -> Check:
    m, capacity = report.memory, report.chip.mem_bytes
    parts = [f"weights {si(m.weights, 'B')}", f"KV {si(m.kv_cache, 'B')}",
             f"activations {si(m.activations, 'B')}"]
    parts += [f"{name} {si(size, 'B')}" for name, size in (
        ("gradients", m.gradients), ("optimizer state", m.optimizer), ("inputs", m.inputs))
        if size > 0.01 * m.total]     # a training step's, and inputs worth naming
    sign = "<=" if report.fits else ">"
    return Check("memory fit", report.fits,
                 f"{si(m.total, 'B')} {sign} {si(capacity, 'B')} on {report.chip.name} "
                 f"({', '.join(parts)})")


def _dtype_lint(report) -> list:
    """fp32 matmuls where the chip has faster half-precision matrix units; large upcasts."""
    chip, found = report.chip, []
    half = chip.half_dtype()
    speedup = chip.matrix_flops(half) / chip.matrix_flops("fp32")
    def fp32_matrix(k):
        return k.category in MATRIX_CATEGORIES and k.dtype == "fp32"
    fp32 = [k for k in report.kernels if fp32_matrix(k)]
    if speedup >= 2:
        part = sum(t for k, t in zip(report.kernels, report.summary.attributed)
                   if fp32_matrix(k)) / (report.time_s or 1.0)
        found.append(Check("dtype: fp32 matmuls", not fp32,
                           f"{len(fp32)} fp32 matrix kernels ({percent(part)} of time) run at "
                           f"{chip.name}'s fp32 rate; {half} peak is {speedup:.0f}x higher"
                           if fp32 else "no fp32 matrix kernels"))
    upcasts = [n for n in report.nodes if n.op in ("_to_copy", "to") and n.dtype == "fp32"
               and n.bytes_read and n.bytes_written >= 2 * n.bytes_read]
    moved = sum(n.bytes_read + n.bytes_written for n in upcasts)
    part = moved / (report.bytes or 1)
    found.append(Check("dtype: upcasts", part <= 0.05,
                       f"{len(upcasts)} half-to-fp32 copies move {si(moved, 'B')} "
                       f"({percent(part)} of unfused bytes; limit 5%)"))
    return found
