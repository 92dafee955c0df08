"""Calibrate: measure the chip this runs on and write it as a chip file.

    chip = calibrate("cpu")                   # a Chip: ~12 s on one core (quick=True: ~4 s)
    write_chip(chip, "this_machine.json")     # fxroof.chips.chip("this_machine.json") reads it

Every figure is what the time model should charge for eager PyTorch on this device, counted the
way fxroof counts work; each source says how it was measured, on which device and when
(microbench.py measures, probes.py holds what it runs).
- peak_flops, per dtype: square torch.mm at a few sizes gives the peak (CPU: fp32, bf16, fp16;
  CUDA: fp32 with TF32 off, tf32, bf16, fp16; fp8 and int8 are not measured and fall back to the
  half-precision figure). On a CPU the figure charged is the rate layers attain as eager runs
  them (layer-shaped linears, convolutions and causal attention, one op at a time: 60-85% of the
  square peak); the square peak is quoted in the source. A dtype the build cannot multiply is
  left out (it then runs at the fp32 figure); a dtype without a fast path keeps its measured
  rate (fp16 on a CPU without an fp16 matrix unit runs at a few % of fp32).
- op_dispatch_s, op_flops: eager ops differ more than one figure holds (on a CPU a tiny gelu
  costs 6x a tiny add; max-pooling runs 40x slower than relu). Each common op is called as model
  code calls it on a tiny input (its fixed cost; on a CPU timed call by call as all the probes
  take turns, since a model calls an op between others, never in a tight loop, and a cold call
  costs 2-4x a hot one) and, for non-matrix ops on a CPU, on a 1 MiB one
  (its rate past the fixed cost); matrix ops take their rate from the layer-shaped probe. The
  op names are the ones fxroof's capture gives, so they match a user's report.
- vector_flops: the median of the per-op rates; what ops not measured one by one, and compiled
  kernels, are charged.
- dispatch_s: glue + the median tiny call, for ops not measured one by one. The glue is what
  model code costs beyond its ops' own calls (module calls, Python between ops), per op: (wall
  time - fxroof's prediction) / ops over small modules of the usual kinds. Every op's entry in
  op_dispatch_s includes it too.
- view_dispatch_s: a view op (reshape, transpose, ...) runs no kernel but is a call all the same.
- program_call_s: entering a torch.compile'd module (guards, wrapper), charged once per compiled
  call: a compiled Linear + ReLU's wall time less fxroof's compiled prediction of it.
- matrix_bw_fraction (CPU): the share of mem_bw a one-row F.linear attains streaming weights no
  cache holds, per dtype: a CPU's matrix-vector product (decode) reads below the copy bandwidth.
- mem_bw: a large copy, bytes read plus written. cache_bytes, cache_bw: the largest of a ladder
  of copies (1 MiB moved, x4 each step, up to the last-level cache the system reports) that
  still runs 1.5x faster than memory: a VM's share of a shared cache can be far below what the
  system reports.
- launch_s: CPU: dispatch_s (no device launch; compiled CPU code still calls kernels one by one
  from the host). CUDA: per kernel replayed from a CUDA graph.
- mem_bytes: RAM or GPU memory. link_bw, link_latency_s: not measured (one device), estimates.

Timings keep the best of several batches: other work on a shared machine only adds time.
CPU figures hold for the thread count torch uses (`threads=` sets it while calibrating); measure
with the same count. The CUDA path (CUDA events, torch.cuda.synchronize, CUDA graphs) is written
with care but has not been run by fxroof's tests, which run on CPU only.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from .chips import Chip
from .chips.chip import OP_TABLES, OPTIONAL_SCALARS, PEAK_KEY, PEAK_UNIT, SCALARS
from .machine import Clock, cpu_name, cpu_threads, device_name, threads_label
from .microbench import (cache_bandwidth, copy_bandwidth, dispatch_sources, each_rate, glue,
                         graph_launch, layer_rates, link_sources, matmul_peaks, matrix_bandwidth,
                         measured_chip, op_table, program_call, vector_rate, view_dispatch)
from .units import seconds, si

__all__ = ["calibrate", "calibrate_main", "chip_json", "cmd_calibrate", "configure_parser",
           "cpu_name", "cpu_threads", "device_name", "summary", "threads_label", "write_chip"]


def calibrate(device: str = "cpu", *, quick: bool = False, threads: int | None = None,
              log=None) -> Chip:
    """Measure this machine's `device` ("cpu" or "cuda[:N]") and return it as a Chip.

    quick: smaller sizes and fewer repeats (a few seconds; rougher figures, for tests).
    threads: CPU threads torch uses while calibrating (default: its current setting).
    log: optional callable(str) told what is being measured.
    """
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"calibrate measures a 'cpu' or 'cuda' device, not {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("calibrate --device cuda: this torch build sees no CUDA device")
    say = log or (lambda _msg: None)
    with cpu_threads(threads), torch.no_grad():
        clock = Clock(dev, quick)
        name = device_name(dev)
        title = (name if clock.cuda else f"{name}, {threads_label()}") + " (calibrated)"
        stamp = f"measured by fxroof calibrate on {name}, {datetime.date.today().isoformat()}"
        say("matmul peaks ...")
        peaks, peak_note = matmul_peaks(clock)
        say("memory and cache bandwidth ...")
        mem_bw, mem_note = copy_bandwidth(clock)
        cache_bytes, cache_bw, cache_note = cache_bandwidth(clock, mem_bw)
        figures = dict(peaks=peaks, vector=1e12, mem_bw=mem_bw, cache=(cache_bytes, cache_bw))
        say("ops one by one ...")
        bare, rates = op_table(clock, measured_chip(dev, title, **figures))
        figures["view"], view_note = view_dispatch(clock)
        figures["vector"], vector_note = vector_rate(rates)
        if not clock.cuda:
            say("matmul, conv and attention as layers run them ...")
            figures["peaks"], matrix_rates, layer_note = layer_rates(clock, peaks, bare)
            rates = {**rates, **matrix_rates}
            peak_note = f"{layer_note}. Peak: {peak_note}"
            say("matrix-vector products streaming weights ...")
            figures["matrix_bw"], matrix_bw_note = matrix_bandwidth(clock, peaks, mem_bw)
        op_rates = {} if clock.cuda else rates
        say("eager glue between ops ...")
        fixed = statistics.median(bare.values())
        glue_s, glue_ops = glue(clock, measured_chip(dev, title, **figures, dispatch=fixed,
                                                     ops=(bare, op_rates)))
        dispatch = fixed + glue_s
        op_dispatch = {op: t + glue_s for op, t in bare.items()}
        launch, launch_note = graph_launch(clock) if clock.cuda else (dispatch, (
            "same as dispatch_s: a CPU has no device launch; compiled CPU code still calls its "
            "kernels one by one from the host"))
        say("entering a compiled program ...")
        figures["program_call"], program_note = program_call(clock, measured_chip(
            dev, title, **figures, dispatch=dispatch, launch=launch, ops=(op_dispatch, op_rates)))
    sources = {
        "peak_flops": peak_note, "vector_flops": vector_note, "mem_bw": mem_note,
        "mem_bytes": "device memory" if clock.cuda else "total RAM as the system reports it",
        "launch_s": launch_note, **dispatch_sources(bare, glue_s, glue_ops, clock),
        "program_call_s": program_note, "view_dispatch_s": view_note,
    }
    if cache_bytes:
        sources |= {"cache_bytes": cache_note, "cache_bw": cache_note}
    if figures.get("matrix_bw"):
        sources["matrix_bw_fraction"] = matrix_bw_note
    if op_rates:
        sources["op_flops"] = (
            "per op: FLOPs as fxroof counts them / (time on a cache-resident 256 Ki-element fp32 "
            "input - its tiny-call time); matrix ops: their fp32 rate in the layer-shaped probe "
            "(see peak_flops): " + each_rate(op_rates))
    sources = {k: f"{stamp}: {v}" for k, v in sources.items()} | link_sources(dev)
    return measured_chip(dev, title, **figures, dispatch=dispatch, launch=launch,
                         ops=(op_dispatch, op_rates), sources=sources)


# -- the chip file ---------------------------------------------------------------------------

def chip_json(chip: Chip) -> dict:
    """The chip as one object of the chip-file schema (fxroof/chips/chip.py), 4 significant
    figures, so that `fxroof.chips.load_chip_file` reads it back."""
    def fig(x: float) -> float:
        return float(f"{x:.4g}")
    entry = {"name": chip.name, "title": chip.title, "kind": chip.kind,
             PEAK_KEY: {d: fig(v / PEAK_UNIT) for d, v in chip.peak_flops.items()}}
    entry.update({key: fig(getattr(chip, f) / unit) for f, (key, unit) in SCALARS.items()})
    entry.update({key: fig(getattr(chip, f) / unit)
                  for f, (key, unit) in OPTIONAL_SCALARS.items() if getattr(chip, f)})
    entry.update({key: {op: fig(v / unit) for op, v in getattr(chip, f).items()}
                  for f, (key, unit) in OP_TABLES.items() if getattr(chip, f)})
    entry["sources"] = dict(chip.sources)
    return entry


def write_chip(chip: Chip, path) -> Path:
    """Write `chip` as a chip file at `path` (the schema `fxroof.chips.chip(path)` reads)."""
    path = Path(path)
    path.write_text(json.dumps(chip_json(chip), indent=1) + "\n", encoding="utf-8")
    return path


# -- command line: `fxroof calibrate` ----------------------------------------------------------

def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--out", required=True, metavar="PATH", help="chip JSON file to write")
    p.add_argument("--quick", action="store_true", help="a few seconds, rougher figures")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads torch uses while measuring (default: torch's setting)")
    return p


def cmd_calibrate(ns) -> int:
    """Run a calibration from parsed arguments, print the figures, write the chip file."""
    def log(msg):
        if sys.stderr.isatty():
            print(msg, file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    chip = calibrate(ns.device, quick=ns.quick, threads=ns.threads, log=log)
    path = write_chip(chip, ns.out)
    print(summary(chip))
    print(f"wrote {path} in {time.perf_counter() - t0:.0f} s; use it with --chip {path}")
    return 0


def calibrate_main(argv=None) -> int:
    """`fxroof calibrate [--device cpu|cuda] [--quick] [--threads N] --out chip.json`."""
    parser = argparse.ArgumentParser(prog="fxroof calibrate",
                                     description="measure this machine and write a chip file")
    ns = configure_parser(parser).parse_args(argv)
    try:
        return cmd_calibrate(ns)
    except (ValueError, OSError) as e:
        print(f"fxroof calibrate: {e}", file=sys.stderr)
        return 2


def summary(chip: Chip) -> str:
    peaks = ", ".join(f"{d} {si(v, 'FLOP/s')}" for d, v in chip.peak_flops.items())
    return "\n".join([
        chip.title,
        f"  matmul peak   {peaks}",
        f"  pointwise     {si(chip.vector_flops, 'FLOP/s')} (one FLOP per element)",
        f"  memory bw     {si(chip.mem_bw, 'B/s')}",
        *([f"  cache         {si(chip.cache_bw, 'B/s')} within {si(chip.cache_bytes, 'B')}"]
          if chip.cache_bytes else []),
        f"  dispatch      {seconds(chip.dispatch_s)} per eager op; launch {seconds(chip.launch_s)}",
        *([f"                {seconds(chip.view_dispatch_s)} per view call; "
           f"{seconds(chip.program_call_s)} to enter a compiled program"]
          if chip.view_dispatch_s or chip.program_call_s else []),
        *([f"  per op        {_spread(chip.op_dispatch_s, seconds)} fixed cost over "
           f"{len(chip.op_dispatch_s)} ops"] if chip.op_dispatch_s else []),
        *([f"                {_spread(chip.op_flops, lambda r: si(r, 'FLOP/s'))} work rate over "
           f"{len(chip.op_flops)} ops"] if chip.op_flops else []),
        f"  memory        {si(chip.mem_bytes, 'B')}"])


def _spread(table, fmt) -> str:
    lo, hi = min(table, key=table.get), max(table, key=table.get)
    return f"{fmt(table[lo])} ({lo}) to {fmt(table[hi])} ({hi})"
