"""The roofline picture: the chip's roofs and every kernel as a point (matplotlib, optional)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from fxroof.chips.timing import REGIMES, attainable_flops
from fxroof.graph.nodes import fold_layers
from fxroof.report.tables import plural
from fxroof.report.units import percent, seconds

# The regime is the marker's shape, the category its colour: what bounds a kernel, and what it is.
MARKERS = {"compute": "^", "memory": "o", "communication": "s", "overhead": "D"}
LABELLED = 5       # the costliest kernels named beside their point


def plot_roofline(report, path, *, title: str | None = None) -> Path:
    """Write the roofline of `report` to `path` (.png or .svg, from the suffix).

    x: arithmetic intensity (FLOP/byte); y: attained FLOP/s (the kernel's FLOPs over its predicted
    time). Roofs: the matrix peak at the model's main dtype and the vector peak, each meeting the
    bandwidth slope at its ridge point. Points are sized by their share of time, coloured by
    category, shaped by regime, the costliest few named; kernels without FLOPs (copies, views)
    cannot sit on a log axis and are counted in the legend instead.
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
    time_of = Counter()
    for k in placed:
        time_of[k.category] += k.time_s
    colour = {c: plt.get_cmap("tab10")(i % 10) for i, (c, _) in enumerate(time_of.most_common())}
    for regime in REGIMES:
        if ks := [k for k in placed if k.regime == regime]:
            ax.scatter([k.intensity for k in ks], [k.flops / k.time_s for k in ks],
                       s=[10 + 400 * k.time_s / total for k in ks], marker=MARKERS[regime],
                       c=[colour[k.category] for k in ks], alpha=0.6, edgecolors="none")
            ax.scatter([], [], marker=MARKERS[regime], color="grey",
                       label=f"{regime}-bound ({len(ks)})")
    for c in colour:
        ax.scatter([], [], color=colour[c], label=f"{c} ({sum(k.category == c for k in placed)})")
    named: dict = {}        # one label for a kernel repeated in every layer (same point)
    for k in sorted(placed, key=lambda k: -k.time_s):
        named.setdefault((k.op, fold_layers(k.module)), k)
    for k in list(named.values())[:LABELLED]:
        right = k.intensity > (lo * hi) ** 0.5         # text toward the plot's middle
        ax.annotate(f"{k.op} {k.module.rsplit('.', 1)[-1]} {percent(k.time_s / total)}",
                    (k.intensity, k.flops / k.time_s), xytext=(-4 if right else 4, 4),
                    textcoords="offset points", ha="right" if right else "left", fontsize=7)
    skipped = len(report.kernels) - len(placed)
    if skipped:
        ax.scatter([], [], color="white",
                   label=f"{plural(skipped, 'kernel')} without FLOPs not shown")
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
