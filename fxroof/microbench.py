"""The measurements behind each figure of a calibrated chip: one function per figure, each
returning the figure and how it was measured (the chip file's source text).

calibrate.py runs them in order and assembles the Chip; probes.py holds what they run.
"""
from __future__ import annotations

import contextlib
import statistics

import torch
import torch.nn.functional as F
from torch import nn

from .api import analyze, report_of
from .capture import FunctionModule
from .chips import Chip
from .cost import MATRIX_CATEGORIES
from .machine import (Clock, host_time, last_level_cache, memory_bytes, tiny_call_timing,
                      tiny_call_times)
from .probes import BLOCK_PROBES, MID, OP_PROBES, TINY, VIEW_PROBES, MatrixProbe, OpProbe
from .units import seconds, si

_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16,
           "fp16": torch.float16}
SLOW = 0.25     # a dtype below this fraction of fp32's rate has no fast matrix path


# -- matrix rates ----------------------------------------------------------------------------------

def matmul_peaks(clock: Clock) -> tuple[dict, str]:
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


def layer_rates(clock: Clock, squares: dict, bare: dict) -> tuple[dict, dict, str]:
    """CPU: per dtype with a fast path, the rate layers attain as eager runs them (MatrixProbe);
    and the fp32 rate of each of its ops (linear, conv2d, attention differ by 2x)."""
    rates, notes, fp32_ops = dict(squares), [], {}
    chip = measured_chip(clock.dev, "probe", squares, 1e12, 1e12)
    for dtype, square in squares.items():
        if dtype != "fp32" and square < SLOW * squares["fp32"]:
            continue
        x = torch.randn(1, 64, 32, 32, device=clock.dev).to(_DTYPES[dtype])
        per_op = _node_rates(clock, MatrixProbe().to(_DTYPES[dtype]), x, chip, bare)
        rates[dtype] = _rate(per_op)
        if dtype == "fp32":
            fp32_ops = {op: f / t for op, (f, t) in per_op.items()}
        notes.append(f"{dtype} {si(rates[dtype], 'FLOP/s')} ({_each(per_op)})")
    return rates, fp32_ops, (
        "charged: the rate layers attain as eager runs them, total FLOPs / total time over "
        "layer-shaped linears, 3x3 and 1x1 convolutions and causal attention run one op at a "
        "time, each op's own tiny-call cost taken off: " + "; ".join(notes))


def matrix_bandwidth(clock: Clock, peaks: dict, mem_bw: float) -> tuple[dict, str]:
    """CPU: per dtype with a fast path, the share of the copy bandwidth that F.linear on one row
    attains while streaming its weights from memory: a cycle of 2048 x 2048 weight matrices four
    times the last-level cache, so none is cached. A matrix-vector product is how decode runs."""
    cache = last_level_cache() or (32 << 20)
    shares, notes = {}, []
    for dtype, rate in peaks.items():
        if dtype != "fp32" and rate < SLOW * peaks["fp32"]:
            continue
        dt = _DTYPES[dtype]
        size = 2048 * 2048 * torch.empty((), dtype=dt).element_size()
        weights = [torch.randn(2048, 2048, device=clock.dev).to(dt)
                   for _ in range(max(2, -(-(4 if not clock.quick else 2) * cache // size)))]
        x = torch.randn(1, 2048, device=clock.dev).to(dt)

        def stream():
            for w in weights:
                F.linear(x, w)
        t = clock.per_call(stream, budget_s=clock.budget_s / 2, min_samples=3) / len(weights)
        shares[dtype] = min(1.0, size / t / mem_bw)
        notes.append(f"{dtype} {si(size / t, 'B/s')}")
    return shares, ("F.linear on one row over a cycle of 2048 x 2048 weight matrices that no "
                    "cache holds, weight bytes / time, over mem_bw: " + ", ".join(notes))


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


# -- memory ----------------------------------------------------------------------------------------

def copy_bandwidth(clock: Clock) -> tuple[float, str]:
    # CPU: 256 MiB, well past any last-level cache; GPU: 1 GiB, well past L2.
    nbytes = ((256 if clock.quick else 1024) if clock.cuda else (64 if clock.quick else 256)) << 20
    t = _copy_time(clock, nbytes, min_samples=7)
    return 2 * nbytes / t, (f"dst.copy_(src) over {nbytes >> 20} MiB fp32, best of several, "
                            f"bytes read + bytes written")


# A copy at least this much faster than one from memory is running from a cache.
CACHE_SPEEDUP = 1.5


def cache_bandwidth(clock: Clock, mem_bw: float) -> tuple[float, float, str]:
    """(cache bytes, cache bandwidth, source): the cache a kernel's bytes can count on, found by
    measuring rather than read off the system: copies of 1 MiB moved, 4x larger each step up to
    the last-level cache the system reports; the largest that still runs CACHE_SPEEDUP x faster
    than memory gives both figures (0, 0 where none does, or no size is reported). A virtual
    machine's share of a shared cache can be far below what it reports: one 2-vCPU VM reported
    480 MiB of L3 and copied at memory speed past 32 MiB. A GPU's L2 is not modelled: a copy that
    fits in it lasts a few microseconds, the size of a launch."""
    reported = 0 if clock.cuda else last_level_cache()
    if not reported:
        return 0.0, 0.0, ""
    ladder, moved = [], 1 << 20
    while moved <= reported:
        rate = moved / _copy_time(clock, moved // 2, min_samples=5)
        ladder.append((moved, rate))
        if rate < CACHE_SPEEDUP * mem_bw:
            break                                        # past the cache: larger only slower
        moved *= 4
    fast = [(size, rate) for size, rate in ladder if rate >= CACHE_SPEEDUP * mem_bw]
    steps = ", ".join(f"{size >> 20} MiB {si(rate, 'B/s')}" for size, rate in ladder)
    how = (f"dst.copy_(src) moving 1 MiB, x4 each step up to the last-level cache the system "
           f"reports ({reported >> 20} MiB), best of several, bytes read + bytes written: "
           f"{steps}; memory {si(mem_bw, 'B/s')}")
    if not fast:
        return 0.0, 0.0, how
    size, rate = fast[-1]
    return float(size), rate, (f"the largest copy at least {CACHE_SPEEDUP}x faster than memory: "
                               f"{size >> 20} MiB moved at {si(rate, 'B/s')}; {how}")


def _copy_time(clock: Clock, nbytes: int, min_samples: int) -> float:
    src = torch.ones(nbytes // 4, device=clock.dev)
    dst = torch.empty_like(src)
    dst.copy_(src)                                     # pages mapped before timing
    return clock.per_call(lambda: dst.copy_(src), min_samples=min_samples)


# -- ops one by one --------------------------------------------------------------------------------

def op_table(clock: Clock, chip: Chip) -> tuple[dict, dict]:
    """Each probe op (probes.OP_PROBES) as model code calls it: ({op: seconds per tiny call},
    {op: FLOP/s past the fixed cost on a cache-resident input}). GPU: the rates of larger inputs
    (a mid-sized op there is launch-bound), for vector_flops only."""
    fixed, rates = {}, {}
    tinies = [probe.inputs(TINY, clock.dev) for probe in OP_PROBES]
    calls = [lambda probe=probe, args=args: probe.fn(*args)
             for probe, args in zip(OP_PROBES, tinies)]
    times = tiny_call_times(clock, calls)
    for probe, tiny, t in zip(OP_PROBES, tinies, times):
        op, work, category = _probe_op(probe, tiny, chip)
        if category in MATRIX_CATEGORIES:   # a small matrix op still has some work: not fixed
            t = max(t - work / chip.matrix_flops("fp32"), 0.5 * t)
        fixed.setdefault(op, []).append(t)
        if not probe.rate or clock.cuda:
            continue
        mid = probe.inputs(MID, clock.dev)
        _, work, _ = _probe_op(probe, mid, chip)
        t_mid = clock.per_call(lambda: probe.fn(*mid), budget_s=clock.budget_s / 3)
        if work:
            rates[op] = work / max(t_mid - t, 0.1 * t_mid)
    if clock.cuda:
        rates = _gpu_vector_rates(clock, chip)
    return {op: statistics.median(ts) for op, ts in fixed.items()}, rates


def view_dispatch(clock: Clock) -> tuple[float, str]:
    """Median host time of the view ops models call most, on a tiny tensor."""
    x = torch.randn(4, 16, device=clock.dev)
    calls = [lambda fn=fn: fn(x) for _label, fn in VIEW_PROBES]
    t = statistics.median(tiny_call_times(clock, calls))
    return t, ("median host time of a tiny call of each of "
               + ", ".join(label for label, _fn in VIEW_PROBES)
               + f" ({tiny_call_timing(clock)})")


def _gpu_vector_rates(clock: Clock, chip: Chip) -> dict:
    """GPU: the pointwise and norm probes at 4 Mi elements (16 MiB, past launch cost), as the
    aggregate vector rate; not filed per op."""
    rates = {}
    for probe in OP_PROBES:
        if not probe.rate:
            continue
        args = tuple(a.repeat(16, 1) if a.dim() == 2 else a for a in probe.inputs(MID, clock.dev))
        op, work, _ = _probe_op(probe, args, chip)
        t = clock.per_call(lambda: probe.fn(*args), budget_s=clock.budget_s / 3)
        if work:
            rates[op] = work / t
    return rates


def _probe_op(probe: OpProbe, args: tuple, chip: Chip) -> tuple[str, int, str]:
    """(op name as fxroof's capture calls it, with the implementation where the call's shapes
    pick one (NodeRow.cost_key); FLOPs as fxroof counts them; category) of one probe call."""
    report = analyze(FunctionModule(probe.fn), args, chip=chip, mode="eager")
    kernels = report.kernels
    if len(kernels) != 1:
        raise RuntimeError(f"calibration probe {probe.label} should be one op; fxroof captured "
                           f"{', '.join(k.op for k in kernels) or 'none'}")
    (node,) = (n for n in report.nodes if n.name in kernels[0].nodes)
    return node.cost_key, kernels[0].flops, kernels[0].category


def vector_rate(rates: dict) -> tuple[float, str]:
    # The median, not a pooled rate: a few slow ops (a CPU's tanh, max-pooling) would otherwise
    # set the rate of every op not measured one by one.
    return statistics.median(rates.values()), (
        "median over the probe ops (pointwise, norms, softmax, reductions, pooling) of FLOPs as "
        "fxroof counts them / time past the op's fixed cost, on a cache-resident 256 Ki-element "
        "input (GPU: 4 Mi elements); the rate of ops not measured one by one, and of compiled "
        "kernels")


def _node_rates(clock: Clock, module: nn.Module, x: torch.Tensor, chip: Chip,
                bare: dict) -> dict:
    """{op: (FLOPs as fxroof counts them, seconds)} of `module` run node by node with
    fxroof.measure's interpreter: each node's best time over the repeats, less the op's tiny-call
    cost."""
    from .measure import program, timed_runs   # measure -> calibrate -> here: imported late
    captured, values, _strategy, _name = program(module.to(clock.dev).eval(), (x,), {})
    report = report_of(captured, chip, "eager")
    _walls, runs = timed_runs(captured.gm, values, clock.dev, None, 3, 8 if clock.quick else 25)
    fixed = statistics.median(bare.values())
    out: dict = {}
    for node in report.nodes:
        if node.flops:
            best = min(run[node.name] for run in runs)
            flops, secs = out.get(node.op, (0, 0.0))
            out[node.op] = (flops + node.flops,
                            secs + max(best - bare.get(node.cost_key, fixed), 0.1 * best))
    return out


def _rate(per_op: dict) -> float:
    return sum(f for f, _t in per_op.values()) / sum(t for _f, t in per_op.values())


def _each(per_op: dict) -> str:
    return ", ".join(f"{op} {si(f / t, 'FLOP/s')}" for op, (f, t) in per_op.items())


def each_rate(rates: dict) -> str:
    fastest_first = sorted(rates.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{op} {si(r, 'FLOP/s')}" for op, r in fastest_first)


# -- overheads -------------------------------------------------------------------------------------

def glue(clock: Clock, chip: Chip) -> tuple[float, int]:
    """Per op, what eager model code costs beyond its ops' own calls (module calls, views, Python
    between ops): (wall time of the BLOCK_PROBES modules - fxroof's prediction of them with each
    op at its tiny-call cost) / their ops, and the op count. The modules take turns, so a burst of
    other work on the machine cannot spoil all of one."""
    predicted = ops = 0.0
    calls = []
    for make, shape in BLOCK_PROBES:
        torch.manual_seed(0)
        model = make().to(clock.dev).eval()
        x = torch.randn(*shape, device=clock.dev)
        report = analyze(model, (x,), chip=chip, mode="eager")
        predicted += report.time_s
        ops += len(report.kernels)
        calls.append(lambda model=model, x=x: model(x))
    n = 25 if clock.quick else 100
    samples = [[] for _ in calls]
    for _ in range(4 if clock.quick else 9):
        for i, call in enumerate(calls):
            samples[i].append(host_time(clock, call, n=n, loops=1))
    walls = sum(min(s) for s in samples)
    return max((walls - predicted) / ops, 0.0), int(ops)


def dispatch_sources(bare: dict, glue: float, ops: int, clock: Clock) -> dict:
    fixed = ", ".join(f"{op} {seconds(t)}" for op, t in sorted(bare.items(), key=lambda kv: kv[1]))
    how = (f"each op's tiny call (4 x 16 elements, as model code calls it; "
           f"{tiny_call_timing(clock)}) "
           f"plus {seconds(glue)} of glue per op: (wall time - prediction) / ops over "
           f"small modules (a pre-norm transformer block, a gated RMS-norm MLP, a conv-BN-ReLU "
           f"block; {ops} ops), the module calls, views and Python between ops")
    return {"op_dispatch_s": f"per op: {how}. Tiny calls: {fixed}",
            "dispatch_s": f"ops not measured one by one: the median tiny call "
                          f"{seconds(statistics.median(bare.values()))} plus the glue; {how}"}


def graph_launch(clock: Clock) -> tuple[float, str]:
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


def program_call(clock: Clock, chip: Chip) -> tuple[float, str]:
    """What entering a torch.compile'd module costs beyond its kernels: (wall time of a compiled
    Linear + ReLU module - fxroof's compiled prediction of it). Dynamo checks its guards (the
    module's parameters among them) and the wrapper runs before the first kernel."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(64, 64), nn.ReLU()).to(clock.dev).eval()
    x = torch.randn(4, 64, device=clock.dev)
    predicted = analyze(module, (x,), chip=chip, mode="compiled").time_s
    compiled = torch.compile(module)
    compiled(x)                                   # compiles
    wall = host_time(clock, lambda: compiled(x), n=50 if clock.quick else 200)
    return max(wall - predicted, 0.0), (
        f"a torch.compile'd Linear(64, 64) + ReLU on 4 rows: wall time per call "
        f"{seconds(wall)} - fxroof's compiled prediction {seconds(predicted)} (best loop of "
        f"many)")


# -- the chip --------------------------------------------------------------------------------------

def measured_chip(dev, title, peaks, vector, mem_bw, cache=(0.0, 0.0), view=0.0,
                  dispatch=1e-9, launch=1e-9, ops=({}, {}), sources=None,
                  program_call=0.0, matrix_bw=None) -> Chip:
    """A Chip of measured figures (provisional ones, while calibrating, take the defaults)."""
    link_bw, link_latency = (12.5e9, 20e-6) if dev.type == "cpu" else (25e9, 10e-6)
    return Chip(name=f"calibrated-{dev.type}", title=title,
                kind="cpu" if dev.type == "cpu" else "gpu", peak_flops=peaks, vector_flops=vector,
                mem_bw=mem_bw, mem_bytes=memory_bytes(dev), link_bw=link_bw,
                link_latency_s=link_latency, launch_s=launch, dispatch_s=dispatch,
                sources=sources or {}, cache_bytes=cache[0], cache_bw=cache[1],
                view_dispatch_s=view, op_dispatch_s=ops[0], op_flops=ops[1],
                program_call_s=program_call, matrix_bw_fraction=matrix_bw or {})


def link_sources(dev) -> dict:
    if dev.type == "cpu":
        return {"link_bw": "estimate, not measured (one machine): processes on CPUs talk over "
                           "gloo on the host network; a 100 Gb/s NIC = 12.5 GB/s each way",
                "link_latency_s": "estimate, not measured (one machine): TCP over a data-centre "
                                  "network, ~20 us per step"}
    return {"link_bw": "estimate, not measured (one device): PCIe 4.0 x16 carries ~25 GB/s each "
                       "way in practice; use a table chip's NVLink figure for NVLink systems",
            "link_latency_s": "estimate, not measured (one device): ~10 us per collective step"}
