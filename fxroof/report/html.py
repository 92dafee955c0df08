"""A Report as one self-contained HTML page: no network, no libraries, inline SVG, CSS and JS.

The page holds the summary (tables.header), the roofline with every kernel as a point (hover:
op, module, FLOPs, bytes, time, regime), the kernel table (sortable by any column), the module
tree coloured by each module's main regime with its share of time, eager against compiled, and
the memory footprint. Kernels without FLOPs or bytes cannot sit on log axes: they are points in
a strip under the plot. The page is the report's mode, like the tables.
"""
from __future__ import annotations

import math
from collections import defaultdict
from html import escape
from pathlib import Path

from fxroof.chips.timing import REGIMES, attainable_flops
from fxroof.report.tables import header
from fxroof.report.units import percent, ratio, seconds, si

COLORS = {"compute": "#d62728", "memory": "#1f77b4", "communication": "#9467bd",
          "overhead": "#7f7f7f"}                   # one per regime, as tables.ANSI
W, H, PAD, TOP = 770, 420, 100, 16    # size, the margins left and below, the margin above
STRIP = H - PAD + 50                    # the no-FLOPs strip, under the axis title

STYLE = """body{font:14px system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
pre{background:#f6f6f6;padding:10px;white-space:pre-wrap}table{border-collapse:collapse}
td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}
td:first-child,td:nth-child(2),th:first-child,th:nth-child(2){text-align:left}
th{cursor:pointer;background:#eee}details{margin-left:16px}summary span{font-size:12px}
circle:hover{stroke:#000;stroke-width:2}.rg{display:inline-block;width:10px;height:10px}"""

# Sort the kernel table by the clicked column: numbers by data-v, text by content.
SCRIPT = """document.querySelectorAll('#kernels th').forEach((th,i)=>th.onclick=()=>{
const b=th.closest('table').tBodies[0],d=th.dataset.d=th.dataset.d=='1'?'-1':'1';
const v=r=>{const c=r.cells[i];return c.dataset.v!==undefined?+c.dataset.v:c.textContent};
[...b.rows].sort((x,y)=>(v(x)>v(y)?1:v(x)<v(y)?-1:0)*d).forEach(r=>b.appendChild(r))});"""


def _axis(lo: float, hi: float, size: float, flip: bool = False):
    """A log axis from lo..hi onto 0..size pixels (flip: upwards)."""
    span = math.log10(hi / lo)
    return lambda v: (1 - math.log10(v / lo) / span if flip else math.log10(v / lo) / span) * size


def _tip(k) -> str:
    return (f"{k.op} · {k.module or '(top level)'}\n{si(k.flops, 'FLOP')} · {si(k.bytes, 'B')}"
            f" · {ratio(k.intensity)} FLOP/B\n{seconds(k.time_s)} · {k.regime}-bound")


def roofline_svg(report) -> str:
    chip, dtype, kernels = report.chip, report.matrix_dtype, report.kernels
    placed = [k for k in kernels if k.flops > 0 and k.bytes > 0 and k.time_s > 0]
    peak = chip.matrix_flops(dtype)
    xlo = min([k.intensity for k in placed] + [0.1]) / 2
    xhi = max([k.intensity for k in placed] + [chip.ridge(dtype) * 4]) * 2
    ylo = min([k.flops / k.time_s for k in placed] + [xlo * chip.mem_bw]) / 2
    x = _axis(xlo, xhi, W - PAD - TOP)
    y = _axis(ylo, peak * 2, H - PAD - TOP, flip=True)
    out = [f'<svg id="roofline" width="{W}" '
           f'height="{STRIP + 26}" font-size="11">',
           f'<rect x="{PAD}" y="{TOP}" width="{W - PAD - TOP}" height="{H - PAD - TOP}" '
           'fill="none" stroke="#999"/>']
    for exp in range(math.ceil(math.log10(xlo)), math.floor(math.log10(xhi)) + 1):
        px = PAD + x(10 ** exp)
        out.append(f'<text x="{px:.1f}" y="{H - PAD + 14}" text-anchor="middle">'
                   f'{10.0 ** exp:g}</text>')
    for exp in range(math.ceil(math.log10(ylo)), math.floor(math.log10(peak * 2)) + 1):
        out.append(f'<text x="{PAD - 4}" y="{TOP + y(10 ** exp) + 4:.1f}" '
                   f'text-anchor="end">{si(10.0 ** exp, "FLOP/s")}</text>')
    roofs = (("matmul", "", f"matrix roof, {dtype}: {si(peak, 'FLOP/s')}"),
             ("pointwise", ' stroke-dasharray="5,4"', f"vector roof: "
              f"{si(chip.vector_flops, 'FLOP/s')}"))
    for n, (category, dash, label) in enumerate(roofs):
        xs = [xlo * (xhi / xlo) ** (i / 100) for i in range(101)]
        ys = [TOP + y(attainable_flops(chip, category, dtype, v)) for v in xs]
        points = " ".join(f"{PAD + x(v):.1f},{py:.1f}" for v, py in zip(xs, ys))
        out.append(f'<polyline points="{points}" fill="none" stroke="#000"{dash}/>'
                   f'<text x="{W - TOP - 4}" y="{ys[-1] - 4 if n == 0 else ys[-1] + 14:.1f}" '
                   f'text-anchor="end">{escape(label)}</text>')
    total, placed_ids, unplaced = report.time_s or 1.0, {id(k) for k in placed}, 0
    for i, k in enumerate(kernels):
        r = 3 + 12 * math.sqrt(k.time_s / total)
        if id(k) in placed_ids:
            cx, cy = PAD + x(k.intensity), TOP + y(k.flops / k.time_s)
        else:                         # no FLOPs or no bytes: the strip under the plot
            cx, cy = PAD + 6 + 8 * (unplaced % 80), STRIP
            unplaced += 1
        out.append(f'<circle class="k" data-i="{i}" cx="{cx:.1f}" cy="{cy:.1f}" r="{r:.1f}" '
                   f'fill="{COLORS[k.regime]}" fill-opacity="0.6"><title>{escape(_tip(k))}'
                   '</title></circle>')
    out += [f'<text x="{W / 2}" y="{H - PAD + 30}" text-anchor="middle">arithmetic intensity '
            '(FLOP/byte)</text>',
            f'<text x="14" y="{H / 2}" transform="rotate(-90 14 {H / 2})" '
            'text-anchor="middle">attained FLOP/s</text>',
            f'<text x="{PAD}" y="{STRIP + 20}">above: {unplaced} kernels without FLOPs or '
            'bytes</text>' if unplaced else "", "</svg>"]
    return "\n".join(out)


def kernel_table(report) -> str:
    total = report.time_s or 1.0
    heads = ("op", "module", "regime", "FLOPs", "bytes", "FLOP/B", "time", "share", "of roof")
    rows = []
    for k, step in zip(report.kernels, report.summary.attributed):   # step: its seconds, queued
        cells = [(None, k.op), (None, k.module or "-"), (None, k.regime),
                 (k.flops, si(k.flops, "F")), (k.bytes, si(k.bytes, "B")),
                 (k.intensity if k.bytes else 0, ratio(k.intensity)),
                 (k.time_s, seconds(k.time_s)), (step / total, percent(step / total)),
                 (k.roofline_fraction, percent(k.roofline_fraction))]
        rows.append("<tr>" + "".join(
            f"<td>{escape(text)}</td>" if value is None else
            f'<td data-v="{value:.6g}">{escape(text)}</td>' for value, text in cells) + "</tr>")
    return (f'<table id="kernels"><thead><tr>{"".join(f"<th>{h}</th>" for h in heads)}</tr>'
            f'</thead><tbody>\n' + "\n".join(rows) + "\n</tbody></table>")


def module_tree(report) -> str:
    """Nested <details>, one per module path prefix, coloured by the regime with most time."""
    time = defaultdict(lambda: defaultdict(float))
    for k, step in zip(report.kernels, report.summary.attributed):
        parts = k.module.split(".") if k.module else []
        for depth in range(len(parts) + 1):
            time[".".join(parts[:depth])][k.regime] += step
    total = report.time_s or 1.0

    def node(path: str) -> str:
        children = sorted((p for p in time if p and p.rpartition(".")[0] == path
                           and p != path), key=lambda p: -sum(time[p].values()))
        spent = sum(time[path].values())
        regime = max(time[path], key=time[path].get)
        label = (f'<span class="rg" style="background:{COLORS[regime]}"></span> '
                 f'{escape(path.rpartition(".")[2] or report.model)} · {seconds(spent)} · '
                 f'{percent(spent / total)} <span>{regime}</span>')
        if not children:
            return f"<div style='margin-left:16px'>{label}</div>"
        return (f"<details{' open' if not path else ''}><summary>{label}</summary>"
                + "".join(node(c) for c in children) + "</details>")
    return node("") if time else "<p>no kernels</p>"


def _small_table(rows, heads) -> str:
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{''.join(f'<th>{h}</th>' for h in heads)}</tr>{body}</table>"


def _page(title: str, *body: str) -> str:
    title = escape(title)
    return "\n".join([f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>"
                      f"<style>{STYLE}</style></head><body><h1>{title}</h1>", *body,
                      f"<script>{SCRIPT}</script></body></html>"])


def _legend() -> str:
    return " ".join(f'<span class="rg" style="background:{COLORS[r]}"></span> {r}'
                    for r in REGIMES)


def render_html(report) -> str:
    c = report.compare()
    modes = _small_table([[m, c[m]["kernels"], si(c[m]["bytes"], "B"), seconds(c[m]["time_s"]),
                           c[m]["regime"]] for m in ("eager", "compiled")]
                         + [["saved", "", percent(c["bytes_saved"]), percent(c["time_saved"]),
                             ""]], ("mode", "kernels", "bytes", "time", "regime"))
    memory = _small_table([[part, si(value, "B")] for part, value in report.memory.to_dict()
                           .items()], ("memory", "bytes"))
    return _page(
        f"fxroof · {report.model} on {report.chip.title} ({report.mode})",
        f"<pre>{escape(header(report))}</pre>",
        f"<h2>Roofline</h2><p>{_legend()} · point area: share of time · hover for details</p>",
        roofline_svg(report), "<h2>Modules</h2>", module_tree(report),
        "<h2>Eager (one kernel per op) vs compiled (fused)</h2>", modes,
        "<h2>Memory</h2>", memory,
        f"<h2>Kernels ({len(report.kernels)}, click a column to sort)</h2>", kernel_table(report))


def curve_svg(sweep, label: str, values: list, fmt) -> str:
    """One figure of a sweep at each value: a point per value, coloured by its regime, evenly
    spaced (the values a sweep takes are often powers of two), on a log scale upwards."""
    positive = [v for v in values if v > 0] or [1.0]
    lo, hi, height = min(positive) / 2, max(positive) * 2, 160
    y = _axis(lo, hi, height - TOP - 40, flip=True)
    step = (W - 2 * PAD) / max(len(values) - 1, 1)
    xy = [(PAD + step * i, TOP + y(max(v, lo))) for i, v in enumerate(values)]
    out = [f'<svg class="curve" width="{W}" height="{height}" font-size="11">',
           f'<text x="{PAD}" y="12">{escape(label)}</text>',
           f'<polyline points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in xy)}" fill="none" '
           'stroke="#999"/>',
           f'<text x="{W - PAD + 30}" y="{height - 16}">{escape(sweep.variable)}</text>']
    for (px, py), v, p in zip(xy, values, sweep.points):
        tip = f"{sweep.variable}={p.value}: {fmt(v)} · {p.regime}-bound"
        out += [f'<circle class="k" cx="{px:.1f}" cy="{py:.1f}" r="5" '
                f'fill="{COLORS[p.regime]}"><title>{escape(tip)}</title></circle>',
                f'<text x="{px:.1f}" y="{height - 16}" text-anchor="middle">'
                f'{escape(str(p.value))}</text>',
                f'<text x="{px + 7:.1f}" y="{py - 7:.1f}">{escape(fmt(v))}</text>']
    return "\n".join(out + ["</svg>"])


def render_sweep_html(sweep) -> str:
    first = sweep.points[0].report
    return _page(
        f"fxroof sweep · {first.model} on {sweep.chip.title} ({sweep.mode}) over "
        f"{sweep.variable}", f"<pre>{escape(str(sweep))}</pre>", f"<p>{_legend()}</p>",
        curve_svg(sweep, "time", [p.time_s for p in sweep.points], seconds),
        curve_svg(sweep, f"{sweep.unit} a second", [p.throughput for p in sweep.points],
                  lambda v: si(v, f"{sweep.unit[0]}/s")))


def write_html(result, path) -> Path:
    """A Report's page, or a sweep's (anything with `points`: fxroof.Sweep)."""
    path = Path(path)
    render = render_sweep_html if hasattr(result, "points") else render_html
    path.write_text(render(result), encoding="utf-8")
    return path
