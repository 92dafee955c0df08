"""Calibrate: measure the chip this runs on and write it as a chip file.

    chip = calibrate("cpu")                   # a Chip: ~10 s on 2 cores (quick=True: ~2 s)
    write_chip(chip, "this_machine.json")     # fxroof.chips.chip("this_machine.json") reads it

Every figure is what the time model should charge for eager PyTorch on this device, counted the
way fxroof counts work; each source says how it was measured, on which device and when.
- peak_flops, per dtype: square torch.mm at a few sizes gives the peak (CPU: fp32, bf16, fp16;
  CUDA: fp32 with TF32 off, tf32, bf16, fp16; fp8 and int8 are not measured and fall back to the
  half-precision figure). On a CPU the figure charged is then the rate that layers attain as eager
  runs them: total FLOPs / total time over layer-shaped linears, convolutions and causal attention
  run one op at a time (60-85% of the square peak: small inner dimensions, fresh output buffers,
  attention's softmax); the square peak is quoted in the source. A dtype the build cannot
  multiply is left out (it then runs at the fp32 figure); a dtype without a fast path keeps its
  measured rate, e.g. fp16 on a CPU without an fp16 matrix unit runs at a few % of fp32.
- vector_flops: fxroof counts one FLOP per element for every pointwise op (an add and a gelu
  alike) and a few per element for norms and softmax, so no single op predicts them all (a
  gelu-only rate over-charges adds and norms 4-10x). The figure is total counted FLOPs / total
  time over the vector ops models use most (add, mul, relu, gelu, silu, exp, rsqrt, layer_norm,
  softmax, mean, batch_norm) on a cache-resident tensor, one bare dispatch per op taken off.
- mem_bw: a large device-to-device copy, bytes read plus bytes written.
- dispatch_s: the cost of one op in eager PyTorch as model code calls it, on small modules of the
  usual kinds (a pre-norm transformer block, a gated RMS-norm MLP, a conv-BN-ReLU block):
  (wall time - roofline time of their work) / the ops fxroof counts in them. It holds the Python,
  module-call and view-op cost around each op; the bare dispatch of a tiny op is quoted in the
  source.
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
import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .chips import Chip
from .chips.chip import PEAK_KEY, PEAK_UNIT, SCALARS
from .units import seconds, si

__all__ = ["calibrate", "calibrate_main", "chip_json", "cmd_calibrate", "configure_parser",
           "cpu_name", "cpu_threads", "device_name", "summary", "threads_label", "write_chip"]

_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16,
           "fp16": torch.float16}
SLOW = 0.25     # a dtype below this fraction of fp32's rate has no fast matrix path


def calibrate(device: str = "cpu", *, quick: bool = False, threads: int | None = None,
              log=None) -> Chip:
    """Measure this machine's `device` ("cpu" or "cuda[:N]") and return it as a Chip.

    quick: smaller sizes and fewer repeats (a couple of seconds; rougher figures, for tests).
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
        clock = _Clock(dev, quick)
        name = device_name(dev)
        title = (name if clock.cuda else f"{name}, {threads_label()}") + " (calibrated)"
        stamp = f"measured by fxroof calibrate on {name}, {datetime.date.today().isoformat()}"
        say("matmul peaks ...")
        peaks, peak_note = _matmul_peaks(clock)
        say("memory bandwidth ...")
        mem_bw, mem_note = _copy_bandwidth(clock)
        bare = _bare_dispatch(clock)
        if not clock.cuda:
            say("matmul, conv and attention as layers run them ...")
            peaks, layer_note = _layer_rates(clock, peaks, bare)
            peak_note = f"{layer_note}. Peak: {peak_note}"
        say("pointwise throughput ...")
        vector, vector_note = _vector_rate(clock, _chip(dev, title, peaks, 1e12, mem_bw), bare)
        say("eager per-op overhead ...")
        dispatch, dispatch_note = _eager_overhead(clock, _chip(dev, title, peaks, vector, mem_bw),
                                                  bare)
        launch, launch_note = _graph_launch(clock) if clock.cuda else (dispatch, (
            "same as dispatch_s: a CPU has no device launch; compiled CPU code still calls its "
            "kernels one by one from the host"))
    sources = {
        "peak_flops": peak_note, "vector_flops": vector_note, "mem_bw": mem_note,
        "mem_bytes": "device memory" if clock.cuda else "total RAM as the system reports it",
        "dispatch_s": dispatch_note, "launch_s": launch_note,
    }
    sources = {k: f"{stamp}: {v}" for k, v in sources.items()} | _link_sources(dev)
    return _chip(dev, title, peaks, vector, mem_bw, dispatch, launch, sources)


def _chip(dev, title, peaks, vector, mem_bw, dispatch=1e-9, launch=1e-9, sources=None) -> Chip:
    """A Chip of measured figures (provisional ones, while calibrating, take the defaults)."""
    link_bw, link_latency = (12.5e9, 20e-6) if dev.type == "cpu" else (25e9, 10e-6)
    return Chip(name=f"calibrated-{dev.type}", title=title,
                kind="cpu" if dev.type == "cpu" else "gpu", peak_flops=peaks, vector_flops=vector,
                mem_bw=mem_bw, mem_bytes=_memory_bytes(dev), link_bw=link_bw,
                link_latency_s=link_latency, launch_s=launch, dispatch_s=dispatch,
                sources=sources or {})


def _link_sources(dev) -> dict:
    if dev.type == "cpu":
        return {"link_bw": "estimate, not measured (one machine): processes on CPUs talk over "
                           "gloo on the host network; a 100 Gb/s NIC = 12.5 GB/s each way",
                "link_latency_s": "estimate, not measured (one machine): TCP over a data-centre "
                                  "network, ~20 us per step"}
    return {"link_bw": "estimate, not measured (one device): PCIe 4.0 x16 carries ~25 GB/s each "
                       "way in practice; use a table chip's NVLink figure for NVLink systems",
            "link_latency_s": "estimate, not measured (one device): ~10 us per collective step"}


# -- the clock -------------------------------------------------------------------------------

class _Clock:
    """Seconds per call of a function on the device, calls batched to be timeable."""

    def __init__(self, dev: torch.device, quick: bool):
        self.dev, self.quick = dev, quick
        self.cuda = dev.type == "cuda"
        self.budget_s = 0.15 if quick else 0.6      # per figure: the repeats it gets
        self.batch_s = 2e-3                          # one timed batch: well above timer noise

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.dev)

    def once(self, fn) -> float:
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t0

    def per_call(self, fn, *, budget_s: float | None = None, min_samples: int = 5) -> float:
        """Seconds per call: the best batch mean. Other work on a shared machine only ever adds
        time, so the fastest batch is the device's own figure."""
        fn()                                         # warm: first calls allocate, pick kernels
        first = self.once(fn)
        batch = max(1, min(20000, int(self.batch_s / max(first, 1e-7))))
        samples: list[float] = []
        deadline = time.perf_counter() + (self.budget_s if budget_s is None else budget_s)
        while len(samples) < min_samples or (time.perf_counter() < deadline and len(samples) < 200):
            samples.append(self._batch(fn, batch) / batch)
        return min(samples)

    def _batch(self, fn, n: int) -> float:
        if self.cuda:   # events time the stream, not the host
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(n):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) * 1e-3
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return time.perf_counter() - t0


# -- matrix rates ----------------------------------------------------------------------------

def _matmul_peaks(clock: _Clock) -> tuple[dict, str]:
    if clock.cuda:
        names = ("fp32", "tf32", "bf16", "fp16")
        sizes = (2048, 4096) if clock.quick else (4096, 8192)
    else:
        names = ("fp32", "bf16", "fp16")
        sizes = (128, 256) if clock.quick else (256, 512, 1024)
    peaks, notes = {}, []
    for dtype in names:
        rate, size = _matmul_rate(clock, dtype, sizes, peaks.get("fp32"))
        if rate is None:
            notes.append(f"{dtype}: not supported by this build, left out (runs at fp32's rate)")
            continue
        peaks[dtype] = rate
        slow = " (no fast matrix path)" if dtype != "fp32" and rate < SLOW * peaks["fp32"] else ""
        notes.append(f"{dtype} {si(rate, 'FLOP/s')} at {size}^3{slow}")
    tf32 = "; fp32 with TF32 off, tf32 with it on; fp8/int8 not measured" if clock.cuda else ""
    return peaks, (f"best rate of square torch.mm over sizes {', '.join(map(str, sizes))}{tf32}: "
                   + "; ".join(notes))


def _matmul_rate(clock, dtype: str, sizes, fp32_rate):
    best, best_size = None, None
    for n in sizes:
        try:
            a = torch.randn(n, n, device=clock.dev).to(_DTYPES[dtype])
            b = torch.randn(n, n, device=clock.dev).to(_DTYPES[dtype])
            with _tf32(clock, dtype == "tf32"):
                first = clock.once(lambda: torch.mm(a, b))
                if first > 1.0:          # absurdly slow: one timing at this size is enough
                    t = clock.once(lambda: torch.mm(a, b))
                else:
                    t = clock.per_call(lambda: torch.mm(a, b), budget_s=clock.budget_s / 2)
        except (RuntimeError, NotImplementedError, TypeError):
            return best, best_size
        rate = 2 * n ** 3 / t
        if best is None or rate > best:
            best, best_size = rate, n
        if fp32_rate and rate < SLOW * fp32_rate:
            break                        # a slow path: larger sizes only cost time
    return best, best_size


def _layer_rates(clock: _Clock, squares: dict, bare: float) -> tuple[dict, str]:
    """CPU: per dtype with a fast path, the rate layers attain as eager runs them (_MatrixProbe)."""
    rates, notes = dict(squares), []
    chip = _chip(clock.dev, "probe", squares, 1e12, 1e12)
    for dtype, square in squares.items():
        if dtype != "fp32" and square < SLOW * squares["fp32"]:
            continue
        x = torch.randn(1, 64, 32, 32, device=clock.dev).to(_DTYPES[dtype])
        per_op = _node_rates(clock, _MatrixProbe().to(_DTYPES[dtype]), x, chip, bare)
        rates[dtype] = _rate(per_op)
        notes.append(f"{dtype} {si(rates[dtype], 'FLOP/s')} ({_each(per_op)})")
    return rates, ("charged: the rate layers attain as eager runs them, total FLOPs / total time "
                   "over layer-shaped linears, 3x3 and 1x1 convolutions and causal attention run "
                   "one op at a time, one bare dispatch per op taken off: " + "; ".join(notes))


@contextlib.contextmanager
def _tf32(clock, on: bool):
    if not clock.cuda:
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


# -- memory and vector throughput ------------------------------------------------------------

def _copy_bandwidth(clock: _Clock) -> tuple[float, str]:
    # CPU: 256 MiB, well past any last-level cache; GPU: 1 GiB, well past L2.
    nbytes = ((256 if clock.quick else 1024) if clock.cuda else (64 if clock.quick else 256)) << 20
    src = torch.ones(nbytes // 4, device=clock.dev)
    dst = torch.empty_like(src)
    dst.copy_(src)                                     # pages mapped before timing
    t = clock.per_call(lambda: dst.copy_(src), min_samples=7)
    return 2 * nbytes / t, (f"dst.copy_(src) over {nbytes >> 20} MiB fp32, best of several, "
                            f"bytes read + bytes written")


def _vector_rate(clock: _Clock, chip: Chip, bare: float) -> tuple[float, str]:
    numel = (1 << 22) if clock.cuda else (1 << 16)   # 16 MiB: a GPU's L2; 256 KiB: a core's L2
    x = torch.randn(numel // 256, 256, device=clock.dev)
    per_op = _node_rates(clock, _VectorProbe(), x, chip, bare)
    return _rate(per_op), (f"total FLOPs as fxroof counts them / total time over common vector "
                           f"ops on a cache-resident {numel}-element fp32 tensor, one bare "
                           f"dispatch per op taken off ({_each(per_op)})")


def _node_rates(clock: _Clock, module: nn.Module, x: torch.Tensor, chip: Chip,
                bare: float) -> dict:
    """{op: (FLOPs as fxroof counts them, seconds)} of `module` run node by node with
    fxroof.measure's interpreter: each node's best time over the repeats, less one bare dispatch
    on a CPU (a GPU's event times hold no host time while its kernels are the bottleneck)."""
    from .api import analyze
    from .measure import program, timed_runs
    gm, values, _strategy, _name = program(module.to(clock.dev).eval(), (x,), {})
    report = analyze(gm, chip=chip, mode="eager")
    _walls, runs = timed_runs(gm, values, clock.dev, None, 3, 8 if clock.quick else 25)
    out: dict = {}
    bare = 0.0 if clock.cuda else bare
    for node in report.nodes:
        if node.flops:
            best = min(run[node.name] for run in runs)
            flops, secs = out.get(node.op, (0, 0.0))
            out[node.op] = (flops + node.flops, secs + max(best - bare, 0.1 * best))
    return out


def _rate(per_op: dict) -> float:
    return sum(f for f, _t in per_op.values()) / sum(t for _f, t in per_op.values())


def _each(per_op: dict) -> str:
    return ", ".join(f"{op} {si(f / t, 'FLOP/s')}" for op, (f, t) in per_op.items())


# -- overheads -------------------------------------------------------------------------------

def _bare_dispatch(clock: _Clock) -> float:
    """One tiny op with 2-3 tensor arguments as Python code calls it: median of add, mul, addmm."""
    a, b = torch.randn(8, 8, device=clock.dev), torch.randn(8, 8, device=clock.dev)
    bias = torch.randn(8, device=clock.dev)
    calls = (lambda: torch.add(a, b), lambda: torch.mul(a, b), lambda: torch.addmm(bias, a, b))
    return statistics.median(_host_time(clock, f) for f in calls)


def _host_time(clock: _Clock, fn, n: int | None = None, loops: int | None = None) -> float:
    """Seconds per call of a loop of `n` calls then one sync, best of several loops (GPU: the
    host is the limit for tiny ops, so this is the dispatch time)."""
    n = n or (200 if clock.quick else 1000)
    samples = []
    for _ in range(loops or (5 if clock.quick else 9)):
        clock.sync()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        clock.sync()
        samples.append((time.perf_counter() - t0) / n)
    return min(samples)


def _eager_overhead(clock: _Clock, chip: Chip, bare: float) -> tuple[float, str]:
    """Per-op eager cost on the _PROBES modules: (wall - roofline time of their work) / ops.
    The probes take turns, so a burst of other work on the machine cannot spoil all of one."""
    from .api import analyze      # the probes are costed exactly as a user's model is
    work = ops = 0.0
    calls = []
    for make, shape in _PROBES:
        torch.manual_seed(0)
        model = make().to(clock.dev).eval()
        x = torch.randn(*shape, device=clock.dev)
        report = analyze(model, (x,), chip=chip, mode="eager")
        work += report.time_s - len(report.kernels) * chip.dispatch_s
        ops += len(report.kernels)
        calls.append(lambda model=model, x=x: model(x))
    n = 25 if clock.quick else 100
    samples = [[] for _ in calls]
    for _ in range(4 if clock.quick else 9):
        for i, call in enumerate(calls):
            samples[i].append(_host_time(clock, call, n=n, loops=1))
    walls = sum(min(s) for s in samples)
    per_op = max((walls - work) / ops, bare)
    return per_op, (f"per op of eager PyTorch on small modules (a pre-norm transformer block, a "
                    f"gated RMS-norm MLP, a conv-BN-ReLU block): (wall time - roofline time of "
                    f"their work) / the {int(ops)} ops fxroof counts in them; it holds the Python, "
                    f"module-call and view-op cost around each op. The bare dispatch of a tiny "
                    f"add/mul/addmm is {seconds(bare)}")


def _graph_launch(clock: _Clock) -> tuple[float, str]:
    """Per kernel replayed from a CUDA graph of tiny kernels."""
    k = 200
    x = torch.zeros(1, device=clock.dev)
    side = torch.cuda.Stream(clock.dev)
    side.wait_stream(torch.cuda.current_stream(clock.dev))
    with torch.cuda.stream(side):             # warm up outside the capture, as CUDA graphs need
        for _ in range(3):
            x.add_(1)
    torch.cuda.current_stream(clock.dev).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(k):
            x.add_(1)
    t = clock.per_call(graph.replay) / k
    return t, f"per kernel of a CUDA graph of {k} tiny adds, replayed (CUDA events)"


# -- probes: small modules written as model code is -----------------------------------------

class _TransformerBlock(nn.Module):
    """Pre-norm attention + GELU MLP, written as model code usually is."""

    def __init__(self, dim: int = 64, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.up, self.down = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):                                        # (B, T, C)
        B, T, C = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(C, dim=-1)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)   # (B, nh, T, hs)
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, C))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class _GatedMLP(nn.Module):
    """RMS norm spelt out in pointwise ops, then a SiLU-gated MLP, as Llama-style code has it."""

    def __init__(self, dim: int = 64, hidden: int = 172):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.w1, self.w3 = nn.Linear(dim, hidden, bias=False), nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):                                        # (B, T, C)
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


class _ConvBlock(nn.Module):
    def __init__(self, ch: int = 16):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch)
        self.conv2, self.bn2 = nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch)

    def forward(self, x):                                        # (B, C, H, W)
        y = F.relu(self.bn1(self.conv1(x)))
        return F.max_pool2d(F.relu(self.bn2(self.conv2(y)) + x), 2)


class _VectorProbe(nn.Module):
    """The vector ops models use most, each on the same input; every output is returned."""

    def __init__(self, dim: int = 256, channels: int = 64):
        super().__init__()
        self.norm, self.bn = nn.LayerNorm(dim), nn.BatchNorm2d(channels)
        self.channels = channels

    def forward(self, x):                                        # (N, 256)
        img = x.view(1, self.channels, 32, -1)                   # (1, C, 32, W) for the CNN ops
        return (x + x, x * x, F.relu(x), F.gelu(x), F.silu(x), torch.exp(x), torch.rsqrt(x.abs()),
                self.norm(x), F.softmax(x, dim=-1), x.mean(-1), self.bn(img))


class _MatrixProbe(nn.Module):
    """Layer-shaped convolutions, linears and causal attention, about a third of the FLOPs each."""

    def __init__(self):
        super().__init__()
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.conv1 = nn.Conv2d(64, 256, 1, bias=False)
        self.up, self.down = nn.Linear(64, 256), nn.Linear(256, 256)

    def forward(self, x):                                        # (1, 64, 32, 32)
        y = self.conv1(self.conv3(x))                            # (1, 256, 32, 32)
        h = self.down(self.up(x.flatten(2).transpose(1, 2)))     # (1, 1024, 256)
        q, k, v, _ = (t.reshape(2, 512, 4, 16).transpose(1, 2) for t in h.split(64, dim=-1))
        return y, F.scaled_dot_product_attention(q, k, v, is_causal=True)   # (2, 4, 512, 16)


_PROBES = ((_TransformerBlock, (1, 16, 64)), (_GatedMLP, (1, 16, 64)), (_ConvBlock, (1, 16, 8, 8)))


# -- the machine -----------------------------------------------------------------------------

def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def threads_label() -> str:
    n = torch.get_num_threads()
    return f"{n} thread" + ("s" if n != 1 else "")


def device_name(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name()


def _memory_bytes(dev: torch.device) -> float:
    if dev.type == "cuda":
        return float(torch.cuda.get_device_properties(dev).total_memory)
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8e9    # unknown: capacity is not used by the time model


@contextlib.contextmanager
def cpu_threads(threads: int | None):
    """torch's intra-op thread count set to `threads` inside, restored after (None: unchanged)."""
    if threads is None:
        yield
        return
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -- the chip file ---------------------------------------------------------------------------

def chip_json(chip: Chip) -> dict:
    """The chip as one object of the chip-file schema (fxroof/chips/chip.py), 4 significant
    figures, so that `fxroof.chips.load_chip_file` reads it back."""
    def fig(x: float) -> float:
        return float(f"{x:.4g}")
    entry = {"name": chip.name, "title": chip.title, "kind": chip.kind,
             PEAK_KEY: {d: fig(v / PEAK_UNIT) for d, v in chip.peak_flops.items()}}
    entry.update({key: fig(getattr(chip, f) / unit) for f, (key, unit) in SCALARS.items()})
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
        f"  dispatch      {seconds(chip.dispatch_s)} per eager op; launch {seconds(chip.launch_s)}",
        f"  memory        {si(chip.mem_bytes, 'B')}"])
