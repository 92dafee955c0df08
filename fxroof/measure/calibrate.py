"""Calibrate: measure the chip this runs on and write it as a chip file.

    chip = calibrate("cpu")                   # a Chip
    write_chip(chip, "this_machine.json")     # fxroof.chips.chip("this_machine.json") reads it

Every figure is what the time model should charge for eager PyTorch on this device, counted the
way fxroof counts work; each source says how it was measured, on which device and when.
microbench.py measures, probes.py holds what it runs, docs/calibration.md says what each figure
is and why it is measured so. CPU figures hold for the thread count torch uses (`threads=` sets
it while calibrating): measure with the same count. A run whose figures betray a noisy machine
is measured again, then refused (CalibrationError): no chip file from figures it cannot stand
behind. The CUDA path has not been run by fxroof's tests, which run on CPU only.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from fxroof.chips import Chip, table_chip
from fxroof.chips import chip as find_chip
from fxroof.chips.chip import OP_TABLES, OPTIONAL_SCALARS, PEAK_KEY, PEAK_UNIT, SCALARS
from fxroof.measure.gpu_shares import gpu_probes, on_table, solve_shares, time_probes
from fxroof.measure.machine import (Clock, cpu_threads, device_label, device_name, memory_bytes,
                                    private_cache)
from fxroof.measure.microbench import (cache_bandwidth, compiled_launch, copy_bandwidth,
                                       each_rate, glue, graph_launch, layer_rates, matmul_peaks,
                                       matrix_bandwidth, op_table, parallel_region, program_call,
                                       row_rates, vector_rate, view_dispatch)
from fxroof.report.units import seconds, si

__all__ = ["CalibrationError", "calibrate", "chip_json", "cmd_calibrate", "doubts", "summary",
           "write_chip"]

# Not measured (one device): estimates of the links, (figure, why) per device type.
LINKS = {"cpu": {"link_bw": (12.5e9, "gloo over a 100 Gb/s host network: 12.5 GB/s each way"),
                 "link_latency_s": (20e-6, "TCP over a data-centre network, ~20 us per step")},
         "cuda": {"link_bw": (25e9, "PCIe 4.0 x16, ~25 GB/s each way in practice; for NVLink "
                                    "systems use a table chip's NVLink figure"),
                  "link_latency_s": (10e-6, "~10 us per collective step")}}


# A compiled program's launch of one kernel from Python on a GPU's host (the chip table's
# figure, with its source): calibrate times a CUDA graph's pace, not this.
INDUCTOR_LAUNCH = (7e-6, "estimate, not measured: Inductor's launch of one Triton kernel from "
                   "Python, 6.8-9.1 us on a GB200's host (meta-pytorch/tritonbench pull request "
                   "#1017), taken as 7 us")

# Past these, a figure says more about other work on the machine than about the machine.
REPEAT_SPREAD = 2          # a view call re-timed at the end against its first timing
DISPATCH_PER_VIEW = 30     # an eager op's dispatch against a view call's (a few x when quiet)
ATTEMPTS = 2


class CalibrationError(ValueError):
    """The machine was too noisy, over every attempt, for figures worth a chip file."""


def calibrate(device: str = "cpu", *, quick: bool = False, threads: int | None = None,
              log=None, like: str | None = None) -> Chip:
    """Measure this machine's `device` ("cpu" or "cuda[:N]") and return it as a Chip.

    quick: smaller sizes and fewer repeats (rougher figures, for tests).
    threads: CPU threads torch uses while calibrating (default: its current setting).
    log: optional callable(str) told what is being measured.
    like: a GPU's entry in the chip table (default: the entry whose alias is the name the driver
    reports). A GPU with an entry keeps the table's datasheet floor and gets the shares of it
    this GPU reaches (gpu_shares.py); one without gets the rates it measures as its peaks.
    A run whose figures show a noisy machine (`doubts`) is measured again; CalibrationError when
    every attempt does.
    """
    say = log or (lambda _msg: None)
    for _ in range(ATTEMPTS):
        chip, view_again = _measure(device, quick, threads, say, like)
        if not (found := doubts(chip, view_again)):
            return chip
        say(f"the machine looks noisy ({found[0]}); measuring again ...")
    raise CalibrationError(f"calibration not written: the machine was noisy on each of "
                           f"{ATTEMPTS} attempts ({'; '.join(found)}); run it again with the "
                           f"machine otherwise idle")


def doubts(chip: Chip, view_again: float) -> list:
    """Why `chip`'s figures cannot be trusted, [] when nothing says so. view_again: a view call
    timed again after everything else, to set beside chip.view_dispatch_s."""
    found, first = [], chip.view_dispatch_s
    low, high = sorted((first, view_again))
    if low <= 0 or high > REPEAT_SPREAD * low:
        found.append(f"a view call took {seconds(first)} at the start, {seconds(view_again)} at "
                     f"the end")
    if chip.dispatch_s > DISPATCH_PER_VIEW * first:
        found.append(f"an eager op's dispatch {seconds(chip.dispatch_s)} is "
                     f"{chip.dispatch_s / first:.0f}x a view call's {seconds(first)}")
    return found


def table_entry(dev: torch.device, like: str | None) -> Chip | None:
    """The chip table's entry for a GPU: `like`, or the one whose alias is the name its driver
    reports (None: the table has none). A CPU has none: its figures are all measured."""
    if dev.type == "cpu":
        if like:
            raise ValueError("calibrate --like names a GPU's table entry; a CPU's figures are "
                             "all measured")
        return None
    if like:
        found = find_chip(like)     # ChipError naming the cause where there is no such chip
        if found.kind != "gpu":
            raise ValueError(f"calibrate --like {like}: {found.name} is a {found.kind}, not a GPU")
        return found
    return table_chip(device_name(dev))


def _measure(device: str, quick: bool, threads: int | None, say,
             like: str | None = None) -> tuple[Chip, float]:
    """One calibration: the chip, and a view call timed again at the very end."""
    dev = None
    with contextlib.suppress(RuntimeError):
        dev = torch.device(device)
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"calibrate measures a 'cpu' or 'cuda' device, not {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("calibrate --device cuda: this torch build sees no CUDA device")
    base = table_entry(dev, like)
    src, cpu, links = {}, dev.type == "cpu", LINKS[dev.type]
    with cpu_threads(threads), torch.no_grad():
        clock = Clock(dev, quick)
        say("matmul peaks, memory and cache bandwidth ...")
        peaks, src["peak_flops"] = matmul_peaks(clock)
        mem_bw, src["mem_bw"] = copy_bandwidth(clock)
        cache_bytes, cache_bw, cache_note = cache_bandwidth(clock, mem_bw)
        chip = Chip(name=f"calibrated-{dev.type}", title=f"{device_label(dev)} (calibrated)",
                    kind="cpu" if cpu else "gpu", peak_flops=peaks, vector_flops=1e12,
                    mem_bw=mem_bw, mem_bytes=memory_bytes(dev), launch_s=1e-9, dispatch_s=1e-9,
                    cache_bytes=cache_bytes, cache_bw=cache_bw,
                    **{f: figure for f, (figure, _why) in links.items()})
        if cpu:
            region, src["region_s"] = parallel_region(clock)
            chip = dataclasses.replace(chip, region_s=region, threads=torch.get_num_threads())
            if not region:
                del src["region_s"]
        if cpu and (l2 := private_cache()):
            chip = dataclasses.replace(chip, l2_bytes=float(l2))
            src["l2_bytes"] = "one core's level-2 cache, as the system reports it"
        say("ops one by one ...")
        bare, rates, cold = op_table(clock, chip)
        view, src["view_dispatch_s"] = view_dispatch(clock)
        vector, src["vector_flops"] = vector_rate(rates)
        chip = dataclasses.replace(chip, vector_flops=vector, view_dispatch_s=view,
                                   op_dispatch_cold_s=cold)
        if cold:
            src["op_dispatch_cold_s"] = (
                "per op: the tiny call of op_dispatch_s, each timed after an untimed copy of "
                "l2_bytes (what a model's op leaves in the core's cache), taking turns, the "
                "lower quartile of many rounds")
        if cpu:
            say("matrix ops as layers run them, and streaming their weights ...")
            layer_peaks, matrix_rates, layer_note = layer_rates(clock, chip, bare)
            few, few_note = row_rates(clock, chip, bare)
            matrix_rates |= few
            src["peak_flops"] = f"{layer_note}; {few_note}. Peak: {src['peak_flops']}"
            shares, src["matrix_bw_fraction"] = matrix_bandwidth(clock, peaks, mem_bw)
            chip = dataclasses.replace(chip, peak_flops=layer_peaks, matrix_bw_fraction=shares,
                                       op_flops={**rates, **matrix_rates})
        say("eager glue between ops, entering a compiled program ...")
        fixed = statistics.median(bare.values())
        glue_s, glue_sources = glue(clock, dataclasses.replace(chip, dispatch_s=fixed,
                                                               op_dispatch_s=bare))
        # each op's own call and the model code around it, apart: a loop of one op pays no glue
        chip = dataclasses.replace(chip, dispatch_s=fixed, op_dispatch_s=bare, glue_s=glue_s)
        if cpu:    # no device launch: compiled CPU code calls its kernels from the host
            launch, src["launch_s"] = compiled_launch(clock, chip)
            graph = 0.0
        else:    # Inductor's launch from Python is the host's: not measured here
            launch, src["launch_s"] = INDUCTOR_LAUNCH
            graph, src["graph_launch_s"] = graph_launch(clock)
        layout = {} if cpu else gpu_layout(dev)
        chip = dataclasses.replace(chip, launch_s=launch, graph_launch_s=graph,
                                   threads=torch.get_num_threads() if cpu else 0, **layout)
        if cpu:
            src["threads"] = "torch.get_num_threads() while calibrating"
        else:   # the waves of tiles and of blocks (chips/expected.py, chips/launch.py)
            src["sm_count"] = "torch.cuda.get_device_properties: multi_processor_count"
            src["sm_threads"] = ("torch.cuda.get_device_properties: "
                                 "max_threads_per_multi_processor")
            src["l2_bytes"] = "torch.cuda.get_device_properties: L2_cache_size"
        program_s, src["program_call_s"] = program_call(clock, chip)
        solved = {}
        if base:
            say(f"the shares of {base.name}'s peaks and bandwidth this GPU reaches ...")
            on_chip = dataclasses.replace(base, **layout)    # its SMs set the tiles
            probes = gpu_probes(base, quick)
            solved = solve_shares(on_chip, probes, time_probes(clock, probes))
        view_again, _ = view_dispatch(clock)
    src |= glue_sources
    src["mem_bytes"] = "total RAM as the system reports it" if cpu else "device memory"
    if cache_bytes:
        src |= {"cache_bytes": cache_note, "cache_bw": cache_note}
    if chip.op_flops:
        src["op_flops"] = (
            "per op: FLOPs as fxroof counts them / (time on a cache-resident 256 Ki-element fp32 "
            "input - its tiny-call time); matrix ops: their rate in the layer-shaped probe, "
            "in fp32 under their own name and in each other dtype as 'op:dtype' (see "
            "peak_flops): " + each_rate(chip.op_flops))
    stamp = f"measured by fxroof calibrate on {device_name(dev)}, {datetime.date.today()}"
    chip = dataclasses.replace(chip, program_call_s=program_s, sources={
        **{k: f"{stamp}: {v}" for k, v in src.items()},
        **{f: f"estimate, not measured (one device): {why}" for f, (_, why) in links.items()}})
    if base:
        chip = on_table(base, chip, solved, stamp, device_name(dev))
    return chip, view_again


def gpu_layout(dev: torch.device) -> dict:
    """The GPU's SMs, the threads each holds and its L2 cache, as the driver reports them."""
    props = torch.cuda.get_device_properties(dev)
    return {"sm_count": float(props.multi_processor_count),
            "sm_threads": float(getattr(props, "max_threads_per_multi_processor", 0)),
            "l2_bytes": float(getattr(props, "L2_cache_size", 0))}


# -- the chip file ---------------------------------------------------------------------------

def chip_json(chip: Chip) -> dict:
    """The chip as one object of the chip-file schema (fxroof/chips/chip.py), so that
    `fxroof.chips.load_chip_file` reads it back: 6 significant figures, which keep the table's
    figures a GPU calibration carries over as they are (1,978.9 TFLOPS; a measured figure is good
    to two or three of them)."""
    def fig(x: float) -> float:
        return float(f"{x:.6g}")
    entry = {"name": chip.name, "title": chip.title, "kind": chip.kind,
             PEAK_KEY: {d: fig(v / PEAK_UNIT) for d, v in chip.peak_flops.items()}}
    entry.update({key: fig(getattr(chip, f) / unit) for f, (key, unit) in SCALARS.items()})
    entry.update({key: fig(getattr(chip, f) / unit)
                  for f, (key, unit) in OPTIONAL_SCALARS.items() if getattr(chip, f)})
    entry.update({key: {op: fig(v / unit) for op, v in getattr(chip, f).items()}
                  for f, (key, unit) in OP_TABLES.items() if getattr(chip, f)})
    return entry | {"sources": dict(chip.sources)}


def write_chip(chip: Chip, path) -> Path:
    """Write `chip` as a chip file at `path` (the schema `fxroof.chips.chip(path)` reads)."""
    path = Path(path)
    path.write_text(json.dumps(chip_json(chip), indent=1) + "\n", encoding="utf-8")
    return path


def summary(chip: Chip) -> str:
    def spread(table, fmt) -> str:
        lo, hi = min(table, key=table.get), max(table, key=table.get)
        return f"{fmt(table[lo])} ({lo}) to {fmt(table[hi])} ({hi})"

    def flops(rate) -> str:
        return si(rate, "FLOP/s")
    # each op's own fp32 rate; its rates in other dtypes (":") and on few rows ("#") apart
    fp32_ops = {op: rate for op, rate in chip.op_flops.items() if ":" not in op and "#" not in op}
    rows = [  # (label, text); a figure the chip leaves at 0 has no row
        ("matmul peak", ", ".join(f"{d} {flops(v)}" for d, v in chip.peak_flops.items())),
        ("pointwise", f"{flops(chip.vector_flops)} (one FLOP per element)"),
        ("memory bw", si(chip.mem_bw, "B/s")),
        ("cache", chip.cache_bytes and f"{si(chip.cache_bw, 'B/s')} within "
                                       f"{si(chip.cache_bytes, 'B')}"),
        ("dispatch", f"{seconds(chip.dispatch_s)} per eager op; launch {seconds(chip.launch_s)}"
                     + (f"; {seconds(chip.graph_launch_s)} a kernel of a CUDA graph"
                        if chip.graph_launch_s else "")),
        ("", chip.region_s and f"{seconds(chip.region_s)} for an op split over "
                               f"{chip.threads:.0f} threads (its parallel region)"),
        ("", (chip.view_dispatch_s or chip.program_call_s) and (
            f"{seconds(chip.view_dispatch_s)} per view call; {seconds(chip.glue_s)} of model "
            f"code around each op; {seconds(chip.program_call_s)} to enter a compiled program")),
        ("per op", chip.op_dispatch_s and f"{spread(chip.op_dispatch_s, seconds)} fixed cost over "
                                          f"{len(chip.op_dispatch_s)} ops"),
        ("", chip.op_dispatch_cold_s and f"{spread(chip.op_dispatch_cold_s, seconds)} once a copy "
                                         f"of {si(chip.l2_bytes, 'B')} (a core's L2) ran first"),
        ("", fp32_ops and f"{spread(fp32_ops, flops)} work rate over {len(fp32_ops)} ops"
                          " (fp32)"),
        ("shares", ", ".join(f"{label} {getattr(chip, f):.3g}" for f, label in SHARE_LABELS
                             if getattr(chip, f) and _measured(chip, f))),
        *(("", line) for line in _gpu_basis(chip)),
        ("memory", si(chip.mem_bytes, "B"))]
    return "\n".join([chip.title, *(f"  {label:<14}{text}" for label, text in rows if text)])


# The shares a GPU calibration measures (gpu_shares.py), as the summary names them.
SHARE_LABELS = (("matmul_efficiency", "GEMM of the dense peak"),
                ("fp32_matmul_efficiency", "fp32 GEMM of the fp32 peak"),
                ("bw_efficiency", "streaming of the bandwidth"),
                ("attention_efficiency", "FlashAttention-2"),
                ("cudnn_attention_efficiency", "cuDNN attention"))


def _gpu_basis(chip: Chip) -> tuple[str, ...]:
    """What a calibrated GPU's figures rest on, in the summary's lines (none for a CPU)."""
    if chip.kind != "gpu":
        return ()
    if chip.name == "calibrated-cuda":      # no table entry (calibrate's name without one)
        return ("not in the chip table: its peaks and bandwidth are the rates measured here;",
                "--like CHIP keeps a table entry's datasheet floor and measures the shares of it")
    return ("kept from the chip table: the floor (peaks, bandwidth), the clock, memory latency,",
            "kernel floor and links")


def _measured(chip: Chip, figure: str) -> bool:
    return chip.sources.get(figure, "").startswith("measured")


# -- command line: `fxroof calibrate` ----------------------------------------------------------

def cmd_calibrate(ns) -> int:
    """Run a calibration from parsed arguments, print the figures, write the chip file."""
    t0, tty = time.perf_counter(), sys.stderr.isatty()     # progress only on a terminal
    chip = calibrate(ns.device, quick=ns.quick, threads=ns.threads, like=ns.like,
                     log=(lambda msg: print(msg, file=sys.stderr, flush=True)) if tty else None)
    path = write_chip(chip, ns.out)
    print(summary(chip))
    print(f"wrote {path} in {time.perf_counter() - t0:.0f} s; use it with --chip {path}")
    return 0

