"""The roofline picture: the chip's roofs and every kernel as a point (matplotlib, optional)."""
from __future__ import annotations

from pathlib import Path

from fxroof.chips.timing import REGIMES, attainable_flops
from fxroof.report.units import seconds

COLORS = {"compute": "#d62728", "memory": "#1f77b4", "communication": "#9467bd",
          "overhead": "#7f7f7f"}


def plot_roofline(report, path, *, title: str | None = None) -> Path:
    """Write the roofline of `report` to `path` (.png or .svg, from the suffix).

    x: arithmetic intensity (FLOP/byte); y: attained FLOP/s (the kernel's FLOPs over its predicted
    time). Roofs: the matrix peak at the model's main dtype and the vector peak, each meeting the
    bandwidth slope at its ridge point. Points are sized by their share of time and coloured by
    regime; kernels without FLOPs (copies, views) cannot sit on a log axis and are counted in the
    legend instead.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")        # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plot_roofline needs matplotlib: pip install 'fxroof[plot]'") from e
    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg"):
        raise ValueError(f"plot_roofline writes .png or .svg, got {path.name!r}")

    chip, dtype = report.chip, report.matrix_dtype
    placed = [k for k in report.kernels if k.flops > 0 and k.bytes > 0 and k.time_s > 0]
    lo = min([k.intensity for k in placed] + [0.1]) / 2
    hi = max([k.intensity for k in placed] + [chip.ridge(dtype) * 4]) * 2
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]

    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.plot(xs, [attainable_flops(chip, "matmul", dtype, x) for x in xs], color="black",
            label=f"matrix roof, {dtype} ({chip.matrix_flops(dtype) / 1e12:.0f} TFLOP/s)")
    ax.plot(xs, [attainable_flops(chip, "pointwise", dtype, x) for x in xs], color="black",
            linestyle="--", label=f"vector roof ({chip.vector_flops / 1e12:.0f} TFLOP/s)")
    total = report.time_s or 1.0
    for regime in REGIMES:
        ks = [k for k in placed if k.regime == regime]
        if ks:
            ax.scatter([k.intensity for k in ks], [k.flops / k.time_s for k in ks],
                       s=[10 + 400 * k.time_s / total for k in ks], color=COLORS[regime],
                       alpha=0.6, edgecolors="none", label=f"{regime}-bound ({len(ks)})")
    skipped = len(report.kernels) - len(placed)
    if skipped:
        ax.scatter([], [], color="white", label=f"{skipped} kernel{'s' * (skipped > 1)} without FLOPs not shown")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("attained FLOP/s")
    ax.set_title(title or f"{report.model} on {chip.title} ({report.mode}): "
                 f"{report.regime}-bound, {seconds(report.time_s)}")
    ax.grid(True, which="both", alpha=0.2)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with matplotlib.rc_context({"svg.fonttype": "none"}):   # SVG text stays text, searchable
        fig.savefig(path)
    plt.close(fig)
    return path
