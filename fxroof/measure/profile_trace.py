"""A torch.profiler trace of a real run beside fxroof's prediction of the same model.

    comparison = fxroof.compare_trace(report, "trace.json")   # prof.export_chrome_trace(...)
    print(comparison)     # per kernel, module and regime, largest misses first; the total error

The trace's ops are the aten ops at the top of each call stack (aten::linear, not the addmm it
calls), in the order the host ran them; on a GPU each op's time is that of the device kernels it
launched (joined by correlation id), set beside the predicted kernel's time on the chip without
its host dispatch, and a kernel launched outside any aten op (Inductor's generated kernels)
stands for the ops its name lists. They are matched to the predicted kernels' nodes in order,
by op family (addmm, mm and linear are one; so are layer_norm and its native form), so that an
eager trace also serves a compiled report. What matches neither way is listed, never guessed at.
The measured total is the step's span: on the host, from the start of the first op (or compiled
region) to the end of the last; on a GPU, from the first kernel to the end of the last. A trace
with ProfilerStep marks is read at its last step.
"""
from __future__ import annotations

import bisect
import difflib
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate

from fxroof.chips.timing import REGIMES
from fxroof.graph.nodes import fold_layers
from fxroof.measure.runs import relative_error, side_by_side, totals_by
from fxroof.report.trace import kernel_name, summary_of
from fxroof.report.units import seconds

SCHEMA = "fxroof.trace-comparison/1"
OP_CATEGORIES = ("cpu_op", "operator")
DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
# Op names one family shares: what a captured graph keeps and what runs beneath it.
FAMILIES = {**dict.fromkeys(("addmm", "mm", "matmul", "bmm", "baddbmm", "linear"), "matmul"),
            **dict.fromkeys(("conv1d", "conv2d", "conv3d", "convolution", "mkldnn_convolution",
                             "cudnn_convolution"), "convolution"),
            "native_layer_norm": "layer_norm", "native_group_norm": "group_norm",
            "native_batch_norm": "batch_norm", "native_batch_norm_legit": "batch_norm",
            "native_batch_norm_legit_no_training": "batch_norm", "log_softmax": "log_softmax",
            "safe_softmax": "softmax"}


def family(op: str) -> str:
    """'aten::addmm' -> 'matmul'; 'gelu(tanh)' -> 'gelu'; 'add_' -> 'add'."""
    name = re.sub(r"\(.*\)$|\.\w+$", "", op.removeprefix("aten::")).strip("_")
    return "attention" if "scaled_dot_product" in name else FAMILIES.get(name, name)


@dataclass(frozen=True)
class TraceRow:
    """A predicted kernel beside the time the trace gives the ops matched to it."""
    op: str
    module: str
    regime: str
    predicted_s: float
    measured_s: float
    matched: tuple        # the trace's names of the ops or kernels matched to it

    @property
    def error(self) -> float:
        return relative_error(self.predicted_s, self.measured_s)

    def to_dict(self) -> dict:
        return {**self.__dict__, "matched": list(self.matched), "error": self.error}


@dataclass(frozen=True)
class TraceComparison:
    model: str
    chip: str             # the title of the chip predicted on
    mode: str
    device: str           # "cpu" (ops timed on the host) or "gpu" (device kernels)
    predicted_s: float    # the whole predicted step
    measured_s: float     # the step's span in the trace
    rows: tuple           # TraceRow per matched kernel, predicted order
    unmatched_kernels: tuple      # names of predicted kernels nothing in the trace matched
    unmatched_ops: dict           # trace op or kernel name -> its seconds, matched to nothing

    error = property(lambda self: relative_error(self.predicted_s, self.measured_s))

    def by_module(self) -> dict:
        folded = [TraceRow(r.op, fold_layers(r.module) or "(top level)", r.regime, r.predicted_s,
                           r.measured_s, r.matched) for r in self.rows]
        return totals_by(folded, "module", sorted({r.module for r in folded}))

    def by_regime(self) -> dict:
        return totals_by(self.rows, "regime", REGIMES)

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "model": self.model, "chip": self.chip, "mode": self.mode,
                "device": self.device,
                "predicted_s": self.predicted_s, "measured_s": self.measured_s,
                "error": self.error, "by_module": self.by_module(), "by_regime": self.by_regime(),
                "kernels": [r.to_dict() for r in self.rows],
                "unmatched_kernels": list(self.unmatched_kernels),
                "unmatched_ops": self.unmatched_ops}

    def __str__(self) -> str:
        def groups(key, by):
            ranked = sorted(by.items(), key=lambda kv: -abs(kv[1]["predicted_s"]
                                                            - kv[1]["measured_s"]))
            return tabulate([[k, v["nodes"], *side_by_side(v["predicted_s"], v["measured_s"])]
                             for k, v in ranked[:10]],
                            [key, "kernels", "predicted", "measured", "error"],
                            disable_numparse=True)
        worst = sorted(self.rows, key=lambda r: -abs(r.predicted_s - r.measured_s))[:10]
        matched_s = sum(r.measured_s for r in self.rows)
        lost = sorted(self.unmatched_ops.items(), key=lambda kv: -kv[1])[:5]
        return "\n".join([
            f"fxroof compare-trace · {self.model} predicted on {self.chip} ({self.mode}) beside "
            f"a {self.device} trace",
            f"predicted {seconds(self.predicted_s)} · measured {seconds(self.measured_s)} "
            f"(the step's span) · error {self.error:+.0%}",
            f"matched {len(self.rows)} of {len(self.rows) + len(self.unmatched_kernels)} "
            f"kernels, {seconds(matched_s)} of measured op time",
            *([f"not matched, predicted: {', '.join(self.unmatched_kernels[:8])}"
               + (" ..." if len(self.unmatched_kernels) > 8 else "")]
              if self.unmatched_kernels else []),
            *(["not matched, in the trace: "
               + ", ".join(f"{name} {seconds(s)}" for name, s in lost)] if lost else []),
            "", "Largest misses, by kernel",
            tabulate([[kernel_name(r), r.regime, *side_by_side(r.predicted_s, r.measured_s)]
                      for r in worst], ["kernel", "regime", "predicted", "measured", "error"],
                     disable_numparse=True),
            "", "By module", groups("module", self.by_module()),
            "", "By predicted regime", groups("regime", self.by_regime())])


def _events(path) -> list[dict]:
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not a JSON trace: {e.msg} at line {e.lineno}") from e
    events = data.get("traceEvents") if isinstance(data, dict) else data
    if not isinstance(events, list):
        raise ValueError(f"{path} is not a Chrome trace (no 'traceEvents' list)")
    events = [e for e in events if isinstance(e, dict) and e.get("ph") == "X"]
    steps = [e for e in events if str(e.get("name", "")).startswith("ProfilerStep#")]
    if steps:
        last = max(steps, key=lambda e: e["ts"])
        window = (last["ts"], last["ts"] + last["dur"])
        events = [e for e in events if e.get("cat") in DEVICE_CATEGORIES
                  or window[0] <= e["ts"] <= window[1]]
    return events


def _top_ops(events) -> dict:
    """(pid, tid) -> the aten ops with no aten op around them, by start:
    [(ts, end, name, dur)] (dur as written: ts + dur - ts loses digits at large ts)."""
    threads = defaultdict(list)
    for e in events:
        if str(e.get("cat", "")).lower() in OP_CATEGORIES and e["name"].startswith("aten::"):
            dur = e.get("dur", 0)
            threads[(e["pid"], e["tid"])].append((e["ts"], e["ts"] + dur, e["name"], dur))
    tops = {}
    for key, ops in threads.items():
        ops.sort(key=lambda o: (o[0], -o[1]))
        tops[key] = []
        for op in ops:
            if not tops[key] or op[0] >= tops[key][-1][1]:
                tops[key].append(op)
    return tops


def measured_items(events) -> tuple[list, str, float]:
    """The trace's timed items as (start, name, seconds) in host order, which device timed
    them ("cpu": ops on the host; "gpu": device kernels), and the step's span in seconds."""
    tops = _top_ops(events)
    kernels = [e for e in events if e.get("cat") in DEVICE_CATEGORIES]
    if not kernels:
        items = [(ts, name, dur / 1e6) for ops in tops.values() for ts, _, name, dur in ops]
        spans = [(e["ts"], e["ts"] + e.get("dur", 0)) for e in events
                 if str(e.get("cat", "")).lower() in OP_CATEGORIES]   # compiled regions too
    else:
        launches = {e["args"]["correlation"]: e for e in events
                    if e.get("cat") in ("cuda_runtime", "cuda_driver")
                    and "correlation" in e.get("args", {})}
        timed: dict = defaultdict(float)      # (start, name, which) -> device seconds
        for n, k in enumerate(kernels):
            launch = launches.get(k.get("args", {}).get("correlation"))
            if launch is None:
                continue                      # launched outside the step read
            ops = tops.get((launch["pid"], launch["tid"]), [])
            i = bisect.bisect_right(ops, (launch["ts"], float("inf"))) - 1
            inside = i >= 0 and ops[i][1] >= launch["ts"]
            key = (ops[i][0], ops[i][2], ops[i]) if inside else (launch["ts"], k["name"], n)
            timed[key] += k["dur"] / 1e6
        items = [(ts, name, t) for (ts, name, _), t in timed.items()]
        spans = [(k["ts"], k["ts"] + k["dur"]) for k in kernels]
    if not items:
        raise ValueError("the trace has no aten ops or device kernels: record it with "
                         "torch.profiler.profile(activities=[ProfilerActivity.CPU, ...])")
    span = (max(end for _, end in spans) - min(ts for ts, _ in spans)) / 1e6
    return sorted(items, key=lambda item: item[0]), "gpu" if kernels else "cpu", span


def _keys(name: str, known: set) -> list[str]:
    """The op families an item stands for: an aten op's one; for a generated kernel
    ('triton_poi_fused_add_native_layer_norm_2'), the known op names its name lists, in order."""
    if name.startswith("aten::"):
        return [family(name)]
    words = re.sub(r"^.*?fused_|_\d+$", "", name).split("_")
    keys, i = [], 0
    while i < len(words):                     # the longest known name at each word
        j = next((j for j in range(len(words), i, -1) if "_".join(words[i:j]) in known), None)
        if j:
            keys.append(family("_".join(words[i:j])))
        i = j or i + 1
    return keys


def compare_trace(report, path, mode: str | None = None) -> TraceComparison:
    """Match the ops of a torch.profiler trace (`prof.export_chrome_trace(path)`) of a real run
    to `report`'s kernels in `mode` (default: the report's) and put the two side by side."""
    summary = summary_of(report, mode)
    items, device, span = measured_items(_events(path))
    ops = {n.name: n.op for n in report.nodes}
    units = [(family(ops.get(node, k.op)), i) for i, k in enumerate(summary.kernels)
             for node in k.nodes if node in ops]        # (op family, kernel index) per node
    known = {name for n in report.nodes for name in (re.sub(r"\(.*\)$", "", n.op), family(n.op))}
    known |= set(FAMILIES)                    # the names a generated kernel's name may list
    expanded = [(key, j) for j, (_, name, _) in enumerate(items) for key in _keys(name, known)]
    matcher = difflib.SequenceMatcher(None, [u[0] for u in units], [e[0] for e in expanded],
                                      autojunk=False)
    kernels_of = defaultdict(set)             # item -> the kernels it matched
    for block in matcher.get_matching_blocks():
        for n in range(block.size):
            kernels_of[expanded[block.b + n][1]].add(units[block.a + n][1])
    measured, names = defaultdict(float), defaultdict(list)
    unmatched: dict = defaultdict(float)
    for j, (_, name, spent) in enumerate(items):
        if not kernels_of[j]:
            unmatched[name] += spent
        for i in kernels_of[j]:               # an item matched to several kernels shares its time
            measured[i] += spent / len(kernels_of[j])
            names[i].append(name)
    # a GPU trace times the device kernels alone: set them beside the kernels' time on the chip
    predicted = (lambda k: k.expected.device_s) if device == "gpu" else (lambda k: k.time_s)
    rows = tuple(TraceRow(k.op, k.module, k.regime, predicted(k), measured[i], tuple(names[i]))
                 for i, k in enumerate(summary.kernels) if i in names)
    return TraceComparison(
        report.model, report.chip.title, summary.mode, device, summary.time_s, span, rows,
        tuple(kernel_name(k) for i, k in enumerate(summary.kernels) if i not in names),
        dict(unmatched))
