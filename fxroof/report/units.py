"""Human-readable numbers for tables: SI prefixes, one place."""
from __future__ import annotations

import math

_PREFIXES = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def si(value: float, unit: str, digits: int = 3) -> str:
    for scale, prefix in _PREFIXES:
        if abs(value) >= scale:
            return f"{value / scale:.{digits}g} {prefix}{unit}"
    return f"{value:.{digits}g} {unit}"


def seconds(value: float) -> str:
    value = float(f"{value:.3g}")      # three figures first: 0.9996 s reads 1 s, not 1e+03 ms
    if value >= 1000:                  # a long generation: 1,520 s, not 1.52e+03 s
        return f"{value:,.0f} s"
    if value >= 1:
        return f"{value:.3g} s"
    if value >= 1e-3:
        return f"{value * 1e3:.3g} ms"
    return f"{value * 1e6:.3g} µs"


def percent(value: float) -> str:
    return f"{100 * value:.0f}%"


def share(value: float) -> str:
    """A share that must not round to its bounds: 0.9973 is "99.7%", never "100%"."""
    text = percent(value)
    if text in ("0%", "100%") and 0 < value < 1:   # one decimal, rounded away from the bound
        tenths = math.floor(value * 1000) if value > 0.5 else math.ceil(value * 1000)
        return f"{tenths / 10:.1f}%"
    return text


def ratio(value: float) -> str:
    """FLOP/byte and similar: 3 significant digits below 100, whole numbers above."""
    if value == float("inf"):
        return "∞"
    return f"{value:.3g}" if value < 100 else f"{value:,.0f}"
