"""The predicted step as a Chrome trace (trace-event JSON) that Perfetto and chrome://tracing open.

One process, the chip, with a track per resource: the compute stream; communication, where the
step has collectives, each beside the compute it overlaps; and the host, where kernels have a
dispatch or launch cost: its slices back to back as it issues the kernels, running ahead of the
chip, no kernel starting before its issue begins (on a CPU, where the two run in turn, each
slice starts with its kernel, whose slice includes it). Kernels sit at their start in the mode's
schedule (fxroof.report.streams: compute back to back in graph order as the host issues it,
waiting only for the collectives it reads), each slice lasting the kernel's time on the chip
(the format counts microseconds), named by op and module path, its args the kernel's figures
(KernelRow.to_dict), fused nodes included. Module paths nest as enclosing slices on the compute
track over the consecutive compute kernels that share them. Boundaries are whole nanoseconds,
so that children never overrun their parents.
"""
from __future__ import annotations

import json
from pathlib import Path

from fxroof.chips.timing import GRAPH_MODE, MODES
from fxroof.report.streams import COLLECTIVE

PID = 1
COMPUTE, COMM, HOST = 1, 2, 3


def summary_of(report, mode: str | None):
    """The report's ModeSummary for `mode` (None: the report's own mode)."""
    mode = mode or report.mode
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if mode != "eager" and (mode == GRAPH_MODE) != (report.mode == GRAPH_MODE):
        raise ValueError(f"this report's compiled kernels are {report.mode!r}; analyze with "
                         f"mode={mode!r} for that trace")
    return report.eager if mode == "eager" else report.compiled


def kernel_name(k) -> str:
    return f"{k.op} ({k.module})" if k.module else k.op


def _slice(name: str, tid: int, start: int, end: int, args: dict | None = None) -> dict:
    event = {"ph": "X", "name": name, "pid": PID, "tid": tid, "ts": start / 1e3,
             "dur": (end - start) / 1e3}
    return event | ({"args": args} if args is not None else {})


def _prefixes(module: str) -> list[str]:
    parts = module.split(".") if module else []
    return [".".join(parts[:i + 1]) for i in range(len(parts))]


def trace_events(report, mode: str | None = None) -> list[dict]:
    """The trace's events: metadata, module slices, kernel slices, host slices."""
    summary = summary_of(report, mode)
    kernels, modules, host = [], [], []
    end = 0
    stack: list[tuple[str, int]] = []        # the open module slices: (path, start in ns)
    schedule = summary.schedule
    for k, begun, ended in zip(summary.kernels, schedule.starts, schedule.ends):
        if k.category == COLLECTIVE:
            kernels.append(_slice(kernel_name(k), COMM, round(begun * 1e9), round(ended * 1e9),
                                  k.to_dict()))
            continue
        start, end = max(round(begun * 1e9), end), round(ended * 1e9)
        paths = _prefixes(k.module)
        keep = 0
        while keep < min(len(stack), len(paths)) and stack[keep][0] == paths[keep]:
            keep += 1
        while len(stack) > keep:
            path, opened = stack.pop()
            modules.append(_slice(path, COMPUTE, opened, start, {"module": path}))
        stack += [(path, start) for path in paths[keep:]]
        kernels.append(_slice(kernel_name(k), COMPUTE, start, end, k.to_dict()))
    for k, issued, begun in zip(summary.kernels, schedule.issued, schedule.starts):
        if k.expected.overhead_s > 0:
            start = round((begun if k.expected.serial_overhead else issued) * 1e9)
            host.append(_slice(kernel_name(k), HOST, start,
                               start + round(k.expected.overhead_s * 1e9),
                               {"overhead_s": k.expected.overhead_s}))
    modules += [_slice(path, COMPUTE, opened, end, {"module": path}) for path, opened in stack]
    host_label = "host: dispatch" if summary.mode == "eager" else \
        "host: launch (CUDA graph)" if report.mode == GRAPH_MODE else "host: launch"
    names = {COMPUTE: "compute stream", COMM: "communication", HOST: host_label}
    used = {COMPUTE} | {e["tid"] for e in kernels + host}
    meta = [{"ph": "M", "name": "process_name", "pid": PID, "tid": 0,
             "args": {"name": f"{report.model} on {report.chip.title} ({summary.mode})"}}]
    for tid in sorted(used):
        meta += [{"ph": "M", "name": "thread_name", "pid": PID, "tid": tid,
                  "args": {"name": names[tid]}},
                 {"ph": "M", "name": "thread_sort_index", "pid": PID, "tid": tid,
                  "args": {"sort_index": tid}}]
    # enclosing slices first: a viewer that keeps file order for equal starts nests them right
    return meta + sorted(modules, key=lambda e: (e["ts"], -e["dur"])) + kernels + host


def write_trace(report, path, mode: str | None = None) -> Path:
    """Write the trace of `report` in `mode` (default: the report's) to `path` (.json)."""
    summary = summary_of(report, mode)
    path = Path(path)
    data = {"traceEvents": trace_events(report, mode), "displayTimeUnit": "ns",
            "otherData": {"model": report.model, "chip": report.chip.name, "mode": summary.mode,
                          "time_s": summary.time_s, "kernels": len(summary.kernels)}}
    path.write_text(json.dumps(data) + "\n")
    return path
