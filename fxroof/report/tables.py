"""The terminal view of a Report: a few tables that fit a 100-column terminal."""
from __future__ import annotations

import os
import re
import sys
import textwrap

import tabulate as _tabulate

from fxroof.chips.chip import EFFICIENCIES, OP_TABLES, OPTIONAL_SCALARS, SCALARS
from fxroof.graph.nodes import fold_layers
from fxroof.report.units import percent, ratio, seconds, share, si

TOP = 10


_ALIGN = {"l": "left", "r": "right", "c": "center"}


def table(rows, headers, align=None) -> str:
    """align: a letter per column, "l", "r" or "c" ("lrr"), or tabulate's names."""
    if isinstance(align, str):
        align = tuple(_ALIGN[a] for a in align)
    # tabulate pads every header by 2 by default, which costs a 100-column terminal ~20 columns.
    padding, _tabulate.MIN_PADDING = _tabulate.MIN_PADDING, 0
    try:
        return _tabulate.tabulate(rows, headers=headers, tablefmt="simple", colalign=align,
                                  disable_numparse=True)
    finally:
        _tabulate.MIN_PADDING = padding


def _cut(text: str, width: int, keep_end: bool = True) -> str:
    """Shorten to `width`: module paths keep their end (the leaf), op names their start."""
    if len(text) <= width:
        return text
    return "…" + text[-(width - 1):] if keep_end else text[:width - 1] + "…"


# What to try first, by regime (the seed's point: the fix depends on the bottleneck).
ADVICE = {
    "compute": "fewer FLOPs or faster math: fp8/int8 matmuls, a chip with a higher peak",
    "memory": "fewer bytes: fuse, quantize weights and KV cache, batch more per weight read",
    "communication": "less traffic: lower tensor-parallel degree, overlap, faster links",
    "overhead": "fewer launches: torch.compile, CUDA graphs, larger batches",
}
# What is left of the overhead advice in a mode that has taken part of it already.
OVERHEAD_ADVICE = {
    "compiled": "fewer, cheaper launches: CUDA graphs (mode='cudagraphs'), larger batches",
    "cudagraphs": "more work per kernel: larger batches, longer sequences; the graph's entry "
                  "and pace remain",
}


# Compute that is PyTorch's own kernels issuing scalar code (the `issue` part: softmax, layer
# norm, activations, dropout, channels-first depthwise convolutions), not arithmetic a faster
# peak would speed up.
ISSUE_ADVICE = ("fewer instructions: torch.compile (Inductor's own softmax and norm kernels, "
                "activations fused into their neighbours), channels-last depthwise convolutions "
                "(cuDNN's)")


def advice(r) -> str:
    """What to do about the report's regime, in its mode."""
    if r.regime == "overhead" and r.mode in OVERHEAD_ADVICE:
        return OVERHEAD_ADVICE[r.mode]
    # compute whose time is mostly kernels bound by the instructions they issue (their compute
    # is their issue), whichever part of the gap their issue and memory were credited to
    issued = sum(k.expected.time_s for k in r.kernels if k.regime == "compute"
                 and k.expected.issue_s and k.expected.issue_s >= k.expected.compute_s)
    if r.regime == "compute" and issued > 0.5 * r.time_s * r.regime_share["compute"]:
        return ISSUE_ADVICE
    return ADVICE[r.regime]


# Terminal colours of the regimes, as the HTML page's (html.COLORS).
ANSI = {"compute": "31", "memory": "34", "communication": "35", "overhead": "90"}


def paint(regime: str) -> str:
    """The regime's name in its colour where the tables go to a terminal (not with NO_COLOR)."""
    if regime in ANSI and sys.stdout.isatty() and not os.environ.get("NO_COLOR"):
        return f"\033[{ANSI[regime]}m{regime}\033[0m"
    return regime


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("s" if n != 1 else "")


def rank_label(r) -> str:
    """' · one rank of tp=N' (dp=N, fsdp=N, tp=N × dp=M) for a parallel report, '' otherwise."""
    dp = "fsdp" if r.fsdp else "dp"
    degrees = [f"{name}={n}" for name, n in (("tp", r.tp), (dp, r.dp)) if n != 1]
    return f" · one rank of {' × '.join(degrees)}" if degrees else ""


def header(r) -> str:
    dtype = r.chip.matrix_dtype(r.matrix_dtype)     # the peak it runs at: fp8 on an A100 is bf16
    ridge = r.chip.ridge(dtype)
    bound = r.regime_share[r.regime]
    lines = [
        f"fxroof · {r.model} on {r.chip.title}{rank_label(r)} · {r.mode} · captured with "
        f"{r.capture}",
        f"time {seconds(r.time_s)} · {r.regime}-bound ({percent(bound)} of time)"
        f" · {plural(len(r.kernels), 'kernel')} from {plural(len(r.nodes), 'op')}",
        f"{si(r.flops, 'FLOP')} · {si(r.summary.bytes, 'B')} moved · {ratio(r.intensity)} FLOP/B"
        f" ({dtype} ridge {ratio(ridge)}) · weights {si(r.weights_bytes, 'B')}" + fit(r),
        f"roofline floor {seconds(r.summary.floor_s)} ({percent(r.summary.roofline_fraction)} of "
        f"the time) · coverage {share(r.coverage)}"
        + (f" · no formula for: {', '.join(r.unknown_ops)}" if r.unknown_ops else "")
        + (f" · what-if: {r.whatif}" if r.whatif else ""),
        gap(r.summary),
        f"one training step ({r.training}) · MFU {percent(r.mfu)} · gradients "
        f"{si(r.memory.gradients, 'B')} · optimizer state {si(r.memory.optimizer, 'B')}"
        + comm(r.summary) + (f" · recomputation {si(r.recompute_flops, 'FLOP')}"
                             if r.recompute_flops else "") if r.training else "",
        *(f"note: {note}" for note in r.notes),
        f"to go faster: {advice(r)}",
    ]
    return "\n".join(wrap(list(filter(None, lines))))


def comm(summary) -> str:
    """' · communication 12 ms, 9 ms of it exposed' where the step has collectives."""
    s = summary.schedule
    return (f" · communication {seconds(s.comm_s)}, {seconds(s.exposed_s)} of it exposed"
            if s.comm_s else "")


def fit(r) -> str:
    """' · needs 290 GB, more than a100-80gb's 80 GB' when the footprint outgrows the chip."""
    return ("" if r.fits else f" · needs {si(r.memory.total, 'B')}, more than {r.chip.name}'s "
                              f"{si(r.chip.mem_bytes, 'B')}")


def gap(summary) -> str:
    """'above the floor: matmul 1.2 ms, bandwidth 0.4 ms': where the expected time exceeds the
    floor (docs/time-model.md names the parts); '' where it does not."""
    parts = sorted(((t, p) for p, t in summary.gap.items() if t > 0.005 * summary.time_s),
                   reverse=True)
    return ("above the floor: " + ", ".join(f"{p} {seconds(t)}" for t, p in parts)) if parts else ""


def regimes(r) -> str:
    rows = []
    bound = r.summary.bound_by       # each kernel's regime in the step, as the times are
    for regime, part in sorted(r.regime_share.items(), key=lambda kv: -kv[1]):
        count = bound.count(regime)
        if count or part:
            # time with no kernel bound by it: the chip waiting on the host (entering the
            # compiled program before its first kernel), not a kernel of that regime
            rows.append([paint(regime), count or "-", seconds(part * r.time_s), percent(part)])
    return table(rows, ["regime", "kernels", "time", "share"], "lrrr")


def phases(r) -> str:
    """A training step's forward, backward and optimizer: time, FLOPs, bytes, regime."""
    total, times = r.time_s or 1.0, r.phase_times
    rows = [[p, len(m.kernels), si(sum(k.flops for k in m.kernels), "F"), si(m.bytes, "B"),
             seconds(times[p]), percent(times[p] / total), m.regime] for p, m in r.phases.items()]
    return table(rows, ["phase", "kernels", "FLOPs", "bytes", "time", "share", "bound"], "lrrrrrl")


def top_kernels(r, n: int = TOP) -> str:
    """The costliest kernels, repeated layers folded into one row (layers.*, xN)."""
    total = r.time_s or 1.0
    groups: dict[tuple, list] = {}
    for k, step in zip(r.kernels, r.summary.attributed):    # step: its seconds of the step
        # one row per op, module, shape and regime: "each" is then every member's
        groups.setdefault((k.op, fold_layers(k.module), k.regime, k.flops, k.bytes),
                          []).append((k, step))
    ranked = sorted(groups.items(), key=lambda kv: -sum(t for _, t in kv[1]))[:n]
    rows = []
    for (op, module, regime, *_), pairs in ranked:
        one = pairs[0][0]
        how = f" ({one.expected.algorithm})" if one.expected.algorithm else ""   # a collective's
        rows.append([_cut(op, 16, keep_end=False), _cut(module or "-", 24), f"x{len(pairs)}",
                     si(one.flops, "F"), si(one.bytes, "B"), ratio(one.intensity),
                     seconds(one.time_s),
                     percent(sum(t for _, t in pairs) / total), paint(regime) + how])
    return table(rows, ["kernel", "module", "n", "FLOPs", "bytes", "FLOP/B", "each", "share",
                         "bound"], "llrrrrrrl")


def modules(r, n: int = TOP) -> str:
    total = r.time_s or 1.0
    rows = [[_cut(m["module"], 40), m["kernels"], si(m["flops"], "F"), si(m["bytes"], "B"),
             seconds(m["time_s"]), percent(m["time_s"] / total)] for m in r.module_rollup()[:n]]
    return table(rows, ["module", "kernels", "FLOPs", "bytes", "time", "share"], "lrrrrr")


def compare(r) -> str:
    c = r.compare()
    # the compiled kernels are launched one by one, or replayed as a graph (mode "cudagraphs")
    label = {"eager": "eager", "compiled": "compiled" if r.mode == "eager" else r.mode}
    rows = [[label[mode], c[mode]["kernels"], si(c[mode]["bytes"], "B"),
             seconds(c[mode]["time_s"]), c[mode]["regime"]] for mode in ("eager", "compiled")]
    rows.append(["saved", "", percent(c["bytes_saved"]), percent(c["time_saved"]), ""])
    return table(rows, ["mode", "kernels", "bytes", "time", "regime"], "lrrrl")


def render(r) -> str:
    parts = [header(r), "", "Where the time goes", regimes(r),
             *(["", "Training step by phase", phases(r)] if r.training else []),
             "", "Top kernels", top_kernels(r),
             "", "By module", modules(r), "", "Eager (one kernel per op) vs compiled (fused)",
             compare(r)]
    return "\n".join(parts)


def chip_table(chips) -> str:
    rows = []
    # the title gives up what a longer name takes, so the table keeps to 100 columns
    title_width = max(20, 44 - max((len(c.name) for c in chips), default=0))
    for c in chips:
        half = c.half_dtype()
        title = re.sub(r"\s*\(.*?\)", "", c.title)    # datasheet detail; `fxroof.chip()` has it
        rows.append([c.name, _cut(title, title_width, keep_end=False),
                     si(c.matrix_flops(half), "FLOP/s"),
                     si(c.mem_bw, "B/s"), ratio(c.ridge(half)), si(c.mem_bytes, "B"),
                     si(c.link_bw, "B/s")])
    return table(rows, ["name", "chip", "16-bit dense", "memory bw", "ridge", "memory",
                         "link, 1 way"], "llrrrrr")


# What a user calls each of a chip's figures (chips/chip.py's registries list them; a figure
# added there without a name here shows under its field name)
_FIGURE_NAMES = {
    "vector_flops": "vector (CUDA-core / SIMD) peak", "mem_bw": "memory bandwidth",
    "mem_bytes": "memory", "link_bw": "link bandwidth, each way",
    "link_latency_s": "latency per collective step", "launch_s": "launch per compiled kernel",
    "dispatch_s": "eager dispatch per op", "cache_bytes": "cache", "cache_bw": "cache bandwidth",
    "view_dispatch_s": "eager view call",
    "glue_s": "eager model code around each op (module calls, Python)",
    "program_call_s": "entering a compiled program",
    "graph_launch_s": "per kernel of a CUDA graph's replay",
    "sm_count": "SMs", "sm_threads": "resident threads per SM", "threads": "threads",
    "l2_bytes": "L2 cache",
    "matmul_efficiency": "achievable share of the matrix peak",
    "fp32_matmul_efficiency": "fp32 GEMMs' share of the fp32 (CUDA-core) peak",
    "attention_efficiency": "fused attention's share of the matrix peak",
    "cudnn_attention_efficiency": "cuDNN fused attention's share of the matrix peak",
    "bw_efficiency": "streaming share of the bandwidth, latency waits taken out",
    "collective_efficiency": "ring all-reduce share of the link",
    "nvls_efficiency": "in-switch (NVLS) all-reduce share of the ring's",
    "nvls_channels": "NCCL's channels for an NVLS all-reduce in a node",
    "peer_links": "links, one to each peer (a group of n ranks has n-1)",
    "node_gpus": "GPUs a server's links join", "network_bw": "server's network, each way",
    "network_efficiency": "ring share of the network across servers",
    "kernel_floor_s": "fixed time per kernel on the chip",
    "memory_latency_s": "memory latency (idle)",
    "clock_hz": "SM clock the peaks are rated at",
}


def _figure(field: str, value: float) -> str:
    """A figure in its unit, read off the field's name (Chip holds SI units)."""
    if field.endswith("_s"):
        return seconds(value)
    if field.endswith("_flops"):
        return si(value, "FLOP/s")
    if field.endswith("_bw"):
        return si(value, "B/s")
    if field.endswith("_bytes"):
        return si(value, "B")
    if field.endswith("_hz"):
        return si(value, "Hz")
    return f"{value:.3g}" if field in EFFICIENCIES else f"{value:,.0f}"


def chip_figures(c) -> str:
    """One chip's figures, each with its value and, below it, where it comes from (the peaks
    share one source)."""
    groups = [("peak_flops", [f"{dtype} dense peak: {si(v, 'FLOP/s')}"
                              for dtype, v in c.peak_flops.items()])]
    groups += [(f, [f"{_FIGURE_NAMES.get(f, f)}: {_figure(f, getattr(c, f))}"])
               for f in (*SCALARS, *OPTIONAL_SCALARS) if getattr(c, f)]
    groups += [(f, [f"{f}: {len(getattr(c, f))} ops"]) for f in OP_TABLES if getattr(c, f)]
    lines = [f"{c.name}: {c.title} ({c.kind})"]
    for field, values in groups:
        lines += [f"  {v}" for v in values]
        lines += textwrap.wrap(c.sources.get(field, "no source given"), width=100,
                               initial_indent="      ", subsequent_indent="      ",
                               break_on_hyphens=False, break_long_words=False)
    return "\n".join(lines)


def savings(r, n: int = TOP) -> str:
    """Fused kernels that save the most bytes, repeated layers folded."""
    groups: dict[tuple, list] = {}
    for row in r.fusion_savings(n=len(r.compiled.kernels)):
        groups.setdefault((row["kernel"], fold_layers(row["module"])), []).append(row)
    ranked = sorted(groups.items(), key=lambda kv: -sum(x["saved_bytes"] for x in kv[1]))[:n]
    rows = [[_cut(op, 20, keep_end=False), _cut(module or "-", 28), f"x{len(xs)}", xs[0]["ops"],
             si(xs[0]["eager_bytes"], "B"), si(xs[0]["fused_bytes"], "B"),
             si(sum(x["saved_bytes"] for x in xs), "B")] for (op, module), xs in ranked]
    return table(rows, ["fused kernel", "module", "n", "ops", "eager", "fused", "saved, all"],
                  "llrrrrr")


def comparison(r) -> str:
    return "\n".join([header(r), "", "Eager (one kernel per op) vs compiled (fused)", compare(r),
                      *_beyond_fusion(r), "", "Fusions that save the most bytes", savings(r)])


# What compiled mode saves beyond fusion, by gap part (docs/time-model.md, "Layouts",
# "Convolution biases"): what eager pays, and why compiled does not
_BEYOND_FUSION = {
    "layout": ("cuDNN's transposes to channels-last",
               "torch.compile runs 2-d convolutions channels-last"),
    "bias": ("convolution biases added by kernels of their own",
             "torch.compile adds them in the next fused kernel"),
}


def _beyond_fusion(r) -> list:
    """A line for each part of the gap compiled mode pays markedly less of than eager."""
    lines = []
    for part, (what, why) in _BEYOND_FUSION.items():
        eager, compiled = r.eager.gap.get(part, 0.0), r.compiled.gap.get(part, 0.0)
        if eager - compiled > 0.005 * r.eager.time_s:
            lines += textwrap.wrap(f"of which {part}: eager pays {seconds(eager)} of {what}, "
                                   f"compiled {seconds(compiled)} ({why})", width=100,
                                   subsequent_indent="  ")
    return lines


def diff(a: dict, b: dict) -> str:
    """Two report dicts (to_dict / --json files) side by side: the totals, what was analyzed, the
    modules whose time changed most; a warning first when they describe different models."""
    def row(label, key, fmt):
        va, vb = a.get(key), b.get(key)
        change = "" if not va or vb is None else f"{(vb - va) / va:+.1%}"
        return [label, fmt(va), fmt(vb), change]
    pa, pb = a.get("provenance", {}), b.get("provenance", {})   # reports before it: none
    rows = [row("time", "time_s", seconds), row("FLOPs", "flops", lambda v: si(v, "FLOP")),
            row("bytes, unfused", "bytes", lambda v: si(v, "B")),
            row("bytes, fused", "fused_bytes", lambda v: si(v, "B")),
            ["kernels", str(len(a["kernels"])), str(len(b["kernels"])), ""],
            ["regime", a["regime"], b["regime"], "" if a["regime"] == b["regime"] else "changed"],
            ["memory", si(a["memory"]["total"], "B"), si(b["memory"]["total"], "B"), ""],
            ["coverage", share(a["coverage"]), share(b["coverage"]), ""],
            *([label, _given(x), _given(y), "" if x == y else "changed"] for label, x, y in [
                ("chip", a["chip"]["name"], b["chip"]["name"]), ("mode", a["mode"], b["mode"]),
                ("what-if", a.get("whatif"), b.get("whatif")), ("tp", a.get("tp"), b.get("tp")),
                *((key, pa.get(key), pb.get(key)) for key in
                  ("workload", "options", "inputs", "fxroof", "torch"))])]
    same = [(r["model"], p.get("workload"), (p.get("options") or {}).get("preset"))
            for r, p in ((a, pa), (b, pb))]
    warning = ([f"warning: A and B describe different models ({a['model']}, {b['model']}): the "
                f"changes below compare two models, not one model changed"]
               if same[0] != same[1] else [])
    return "\n".join(wrap(warning) + [table(rows, ["", "A", "B", "change"], "lrrr"), "",
                                       "Modules whose time changed most", _module_changes(a, b)])


def _given(value) -> str:
    """A provenance value in a cell: inputs as '2x8 fp32', options as 'k=v', cut to 32."""
    if isinstance(value, list):
        value = ", ".join(f"{'x'.join(map(str, t['shape']))} {t['dtype']}" for t in value)
    elif isinstance(value, dict):
        value = " ".join(f"{k}={v}" for k, v in value.items())
    return _cut(str(value), 32) if value not in (None, "") else "-"


def _module_changes(a: dict, b: dict, n: int = TOP) -> str:
    """Time by module (repeated layers folded) in A and B, the largest changes first."""
    times = []
    for r in (a, b):
        by_module: dict = {}
        for k in r["kernels"]:
            key = fold_layers(k["module"]) or "(top level)"
            by_module[key] = by_module.get(key, 0.0) + k["time_s"]
        times.append(by_module)
    ranked = sorted(set(times[0]) | set(times[1]),
                    key=lambda m: -abs(times[1].get(m, 0.0) - times[0].get(m, 0.0)))[:n]
    rows = [[_cut(m, 40), *(seconds(t[m]) if m in t else "-" for t in times),
             f"{(times[1][m] - times[0][m]) / times[0][m]:+.1%}"
             if times[0].get(m) and m in times[1] else ""] for m in ranked]
    return table(rows, ["module", "A", "B", "change"], "lrrr")


def wrap(lines: list, width: int = 100) -> list:
    """Prose lines folded to the terminal width tables keep to (tables are left as they are),
    between words only: a flag (--prompt-logits) or a path is never cut at its hyphens."""
    return [part for line in lines for part in (
        textwrap.wrap(line, width, subsequent_indent="  ", break_on_hyphens=False,
                      break_long_words=False)
        if len(line) > width and "\n" not in line else [line])]
