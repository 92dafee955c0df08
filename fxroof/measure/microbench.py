"""The measurements behind each figure of a calibrated chip: one function per figure, each
returning the figure and its source (how it was measured, for the chip file).

calibrate.py runs them in order and assembles the Chip; probes.py holds what they run;
docs/calibration.md says why each is measured as it is.
"""
from __future__ import annotations

import dataclasses
import statistics
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from fxroof.chips import Chip
from fxroof.chips.chip import MATRIX_PROBE_WIDTH, READ_STREAM_CEILING, dtype_op, row_op
from fxroof.chips.timing import GRAIN_SIZE, cold_shares, splits
from fxroof.cost.record import MATRIX_CATEGORIES
from fxroof.graph.capture import FunctionModule
from fxroof.graph.tensors import torch_dtype
from fxroof.measure.machine import (Clock, cpu_threads, elapsed, host_time, last_level_cache,
                                    tiny_call_times, tiny_call_timing)
from fxroof.measure.probes import (BLOCK_PROBES, MID, OP_PROBES, TINY, VIEW_PROBES, MatrixProbe,
                                   SkinnyProbe, TransformerBlock)
from fxroof.measure.runner import program, timed_runs
from fxroof.pipeline import Target, analyze, report_of
from fxroof.report.units import seconds, si

SLOW = 0.25           # a dtype below this fraction of fp32's rate has no fast matrix path
COMPILED_DEPTH = 4    # blocks of the deeper compiled stack (compiled_launch)
MIN_LAUNCH_S = 1e-7   # a kernel's call is never free
CACHE_SPEEDUP = 1.5   # a copy at least this much faster than one from memory runs from a cache


def fast_dtypes(peaks) -> list[str]:
    """The dtypes of `peaks` with a fast matrix path (fp32 first)."""
    return [d for d, rate in peaks.items() if d == "fp32" or rate >= SLOW * peaks["fp32"]]


# -- matrix rates ----------------------------------------------------------------------------------

def matmul_peaks(clock: Clock) -> tuple[dict, str]:
    names = ("fp32", "tf32", "bf16", "fp16") if clock.cuda else ("fp32", "bf16", "fp16")
    sizes = (((2048, 4096) if clock.quick else (4096, 8192)) if clock.cuda
             else (128, 256) if clock.quick else (256, 512, 1024))
    peaks, notes, before = {}, [], torch.backends.cuda.matmul.allow_tf32
    try:
        for dtype in names:
            torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
            rate, size = _matmul_rate(clock, dtype, sizes, peaks.get("fp32"))
            if rate is None:
                notes.append(f"{dtype}: not supported by this build, left out (runs at fp32's "
                             f"rate)")
                continue
            peaks[dtype] = rate
            slow = "" if dtype in fast_dtypes(peaks) else " (no fast matrix path)"
            notes.append(f"{dtype} {si(rate, 'FLOP/s')} at {size}^3{slow}")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    tf32 = "; fp32 with TF32 off, tf32 with it on; fp8/int8 not measured" if clock.cuda else ""
    return peaks, (f"best rate of square torch.mm over sizes {', '.join(map(str, sizes))}{tf32}: "
                   + "; ".join(notes))


def _matmul_rate(clock, dtype: str, sizes, fp32_rate):
    """(Best rate, its size) of square torch.mm in `dtype`; (None, None) if this build has none."""
    rates = []
    for n in sizes:
        try:
            a, b = (torch.randn(n, n, device=clock.dev).to(torch_dtype(dtype)) for _ in range(2))
            mm = partial(torch.mm, a, b)
            t = elapsed(mm, clock.dev)           # absurdly slow: one more timing is enough
            t = elapsed(mm, clock.dev) if t > 1.0 else clock.per_call(
                mm, budget_s=clock.budget_s / 2)
        except (RuntimeError, NotImplementedError, TypeError):
            break
        rates.append((2 * n ** 3 / t, n))
        if fp32_rate and rates[-1][0] < SLOW * fp32_rate:
            break                        # a slow path: larger sizes only cost time
    return max(rates, default=(None, None))


def layer_rates(clock: Clock, chip: Chip, bare: dict) -> tuple[dict, dict, str]:
    """CPU: per dtype, the rate layers attain as eager runs them (MatrixProbe); and each of its
    ops' own rate in each dtype (op_flops keys, chip.dtype_op). `bare`: each op's tiny-call cost
    (op_table). A dtype without a fast matrix path is measured too: ATen's fallback for it
    differs by op (on an AVX2 CPU in bf16, linear's dot products 5-20x the square mm's rate,
    attention computing in fp32 at fp32's), so no one ratio to fp32 holds."""
    peaks, notes, op_rates = dict(chip.peak_flops), [], {}
    for dtype in chip.peak_flops:
        per_op = _node_rates(clock, torch_dtype(dtype), chip, bare,
                             runs=None if dtype in fast_dtypes(chip.peak_flops) else 3)
        peaks[dtype] = sum(f for f, _t in per_op.values()) / sum(t for _f, t in per_op.values())
        rates = {op: f / t for op, (f, t) in per_op.items()}
        op_rates |= {dtype_op(op, dtype): rate for op, rate in rates.items()}
        notes.append(f"{dtype} {si(peaks[dtype], 'FLOP/s')} ({each_rate(rates)})")
    return peaks, op_rates, (
        "charged: the rate layers attain as eager runs them, total FLOPs / total time over "
        "layer-shaped linears, 3x3 and 1x1 convolutions and causal attention run one op at a "
        "time, each op's own tiny-call cost taken off: " + "; ".join(notes))


def row_rates(clock: Clock, chip: Chip, bare: dict) -> tuple[dict, str]:
    """CPU: the fp32 rates of products with fewer rows than the layer probe's (SkinnyProbe: a
    linear on 4 tokens, a native 1x1 convolution on 4 and on 49 pixels), as op_flops entries
    "linear#4", "conv2d(native)#49" (chip.rows_rate)."""
    per_op = _node_rates(clock, torch.float32, chip, bare, probe=SkinnyProbe,
                         key=lambda node: row_op(node.cost_key, node.grid[1]))
    rates = {op: f / t for op, (f, t) in per_op.items()}
    return rates, (f"SkinnyProbe's products of few rows (a linear of 4 tokens, 256 -> 1,024; a 1x1 "
                   f"convolution of 256 -> 1,024 channels on 2 x 2 and 7 x 7 pixels, native by "
                   f"PyTorch's rule), run one op at a time, each op's tiny-call cost taken off: "
                   f"{each_rate(rates)}")


def _node_rates(clock: Clock, dtype: torch.dtype, chip: Chip, bare: dict,
                runs: int | None = None, probe=None, key=None) -> dict:
    """{op: (FLOPs as fxroof counts them, seconds)} of `probe` (MatrixProbe) in `dtype` run node
    by node: each node's best time over the runs, less the op's tiny-call cost. runs: fewer for
    a slow path, whose every run takes long enough to time well. key: what a node is filed
    under (its op)."""
    probe = probe or MatrixProbe
    x = torch.randn(*probe.INPUT, device=clock.dev).to(dtype)
    captured, values = program(probe().to(clock.dev, dtype).eval(), (x,), {})
    report = report_of(captured, Target(chip=chip, mode="eager"))
    _walls, runs, _faults = timed_runs(clock.dev, 1 if runs else 3, runs or (8 if clock.quick else 25),
                              gm=captured.gm, values=values)
    fixed = statistics.median(bare.values())
    # each op's fixed cost as a model run will charge it: a cold call in the share the probe's
    # own traffic since its op's last call earns (timing.cold_shares)
    by_name = {n.name: n for n in report.nodes}
    ops = [by_name[k.nodes[0]].cost_key if k.nodes[0] in by_name else k.op
           for k in report.kernels]              # eager: one op a kernel
    shares = dict(zip((k.nodes[0] for k in report.kernels),
                      cold_shares(chip, ops, [k.bytes for k in report.kernels])))
    charged = dataclasses.replace(chip, op_dispatch_s=bare, dispatch_s=fixed)
    out: dict = {}
    for node in (n for n in report.nodes if n.flops):
        best = min(run[node.name] for run in runs)
        name = key(node) if key else node.op
        flops, secs = out.get(name, (0, 0.0))
        out[name] = (flops + node.flops, secs + max(
            best - charged.eager_dispatch(node.cost_key, shares.get(node.name, 0.0)), 0.1 * best))
    return out


# The narrower row width the one-row probe also streams (a small model's hidden size).
NARROW_WIDTH = 256


def matrix_bandwidth(clock: Clock, peaks: dict, mem_bw: float) -> tuple[dict, str]:
    """CPU: per dtype, the rate F.linear on one row (how decode runs) attains streaming weights
    that no cache holds, over the copy bandwidth: a cycle of 4M-element weight matrices four
    times the last-level cache, their rows 2,048 elements wide (the dtype's entry) and 256 wide
    ("fp32#256": the row walk costs a fixed time a row, Chip.matrix_bandwidth_share). It may
    pass 1 (a read-only stream skips the copy's write-allocate reads), up to
    chip.READ_STREAM_CEILING."""
    cache = last_level_cache() or (32 << 20)
    shares, notes = {}, []
    for dtype in peaks:
        dt = torch_dtype(dtype)
        size = 2048 * 2048 * dt.itemsize
        count = max(2, -(-(2 if clock.quick else 4) * cache // size))
        rates = []
        for width in (MATRIX_PROBE_WIDTH, NARROW_WIDTH):
            weights = [torch.randn(2048 * 2048 // width, width, device=clock.dev).to(dt)
                       for _ in range(count)]
            x = torch.randn(1, width, device=clock.dev).to(dt)

            def stream(weights=weights, x=x):
                for w in weights:
                    F.linear(x, w)
            t = clock.per_call(stream, budget_s=clock.budget_s / 2, min_samples=3) / count
            key = dtype if width == MATRIX_PROBE_WIDTH else f"{dtype}#{width}"
            shares[key] = min(READ_STREAM_CEILING, size / t / mem_bw)
            rates.append(si(size / t, "B/s"))
        notes.append(f"{dtype} {' and '.join(rates)}")
    return shares, (f"F.linear on one row over a cycle of weight matrices that no cache holds, "
                    f"rows of {MATRIX_PROBE_WIDTH} and {NARROW_WIDTH} elements, weight bytes / "
                    f"time, over mem_bw: " + ", ".join(notes))


# -- memory ----------------------------------------------------------------------------------------

def copy_bandwidth(clock: Clock) -> tuple[float, str]:
    # CPU: 256 MiB, well past any last-level cache; GPU: 1 GiB, well past L2.
    nbytes = ((256 if clock.quick else 1024) if clock.cuda else (64 if clock.quick else 256)) << 20
    return 2 * nbytes / _copy_time(clock, nbytes, min_samples=7), (
        f"dst.copy_(src) over {nbytes >> 20} MiB fp32, best of several, bytes read + bytes written")


def cache_bandwidth(clock: Clock, mem_bw: float) -> tuple[float, float, str]:
    """(cache bytes, cache bandwidth, source), found by measuring: copies of 1 MiB moved, 4x
    larger each step up to the last-level cache the system reports; the largest that still runs
    CACHE_SPEEDUP x faster than memory gives both figures (0, 0 where none does, or no size is
    reported; always on a GPU, whose L2 is not modelled)."""
    reported = 0 if clock.cuda else last_level_cache()
    if not reported:
        return 0.0, 0.0, ""
    ladder, moved = [], 1 << 20
    # up the ladder until a copy runs at memory speed: past the cache, larger is only slower
    while moved <= reported and (not ladder or ladder[-1][1] >= CACHE_SPEEDUP * mem_bw):
        ladder.append((moved, moved / _copy_time(clock, moved // 2, min_samples=5)))
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


def parallel_region(clock: Clock) -> tuple[float, str]:
    """CPU with several threads: what an op that ATen splits pays to start and join them. An
    add of two chunks gives two threads one chunk each, the same work per thread as an add of
    one chunk, which runs inline: the difference is the parallel region. 0 on one thread and
    on a GPU."""
    threads = torch.get_num_threads()
    if clock.cuda or threads < 2:
        return 0.0, ""
    times = []
    for n in (GRAIN_SIZE, 2 * GRAIN_SIZE):
        x, out = torch.ones(n), torch.empty(n)
        times.append(clock.per_call(partial(torch.add, x, x, out=out),
                                    budget_s=clock.budget_s / 3))
    one, two = times
    return max(two - one, 0.0), (
        f"torch.add of {2 * GRAIN_SIZE:,} fp32 elements (two of ATen's chunks, one for each of "
        f"two of the {threads} threads) {seconds(two)} less one of {GRAIN_SIZE:,} (one chunk, "
        f"run inline) {seconds(one)}, best batch means")


# -- ops one by one --------------------------------------------------------------------------------

def op_table(clock: Clock, chip: Chip) -> tuple[dict, dict, dict]:
    """Each probe op (probes.OP_PROBES) as model code calls it: ({op: seconds per tiny call},
    {op: FLOP/s past the fixed cost on a cache-resident input}; past the chip's parallel region
    too, where ATen splits the input over threads, {op: seconds per tiny call once a copy of the
    core's L2 (chip.l2_bytes) has pushed its code and data out}, CPU only). GPU: the rates of
    16x larger inputs, whole (a mid-sized op there is launch-bound), for vector_flops only."""
    fixed, rates, chilled = {}, {}, {}
    tinies = [probe.inputs(TINY, clock.dev) for probe in OP_PROBES]
    calls = [partial(p.fn, *args) for p, args in zip(OP_PROBES, tinies)]
    times = tiny_call_times(clock, calls)
    colds = tiny_call_times(clock, calls, between=_sweep(clock.dev, int(chip.l2_bytes))) \
        if not clock.cuda and chip.l2_bytes else [0.0] * len(calls)
    for probe, tiny, t, cold in zip(OP_PROBES, tinies, times, colds):
        op, work, category = _probe_op(probe, tiny, chip)
        if category in MATRIX_CATEGORIES and op != probe.own_rate:   # some work: not all fixed
            t, cold = (max(c - work / chip.matrix_flops("fp32"), 0.5 * c) for c in (t, cold))
        elif work:   # a work rate; a matrix op's is the layer rate (layer_rates) but its own
            mid = probe.inputs(MID, clock.dev)
            if clock.cuda:
                mid = tuple(a.repeat(16, 1) if a.dim() == 2 else a for a in mid)
            _, work, _ = _probe_op(probe, mid, chip)
            t_mid = clock.per_call(partial(probe.fn, *mid), budget_s=clock.budget_s / 3)
            if splits(chip, category, mid[0].numel(), len(mid[0])):   # (rows, row) for a norm
                t_mid -= chip.region_s
            rates[op] = work / (t_mid if clock.cuda else max(t_mid - t, 0.1 * t_mid))
        fixed.setdefault(op, []).append(t)
        chilled.setdefault(op, []).append(cold)
    return ({op: statistics.median(ts) for op, ts in fixed.items()}, rates,
            {op: statistics.median(ts) for op, ts in chilled.items() if all(ts)})


def _sweep(dev: torch.device, nbytes: int):
    """A copy of `nbytes` fp32 into a second buffer: what a model's op leaves in the core's
    cache before the next (its output written, its input read)."""
    src = torch.randn(max(nbytes // 4, 1), device=dev)
    dst = torch.empty_like(src)
    return partial(dst.copy_, src)


def _probe_op(probe, args: tuple, chip: Chip) -> tuple[str, int, str]:
    """(op name as fxroof's capture calls it, with the implementation where the call's shapes
    pick one (NodeRow.cost_key); FLOPs as fxroof counts them; category) of one probe call."""
    report = analyze(FunctionModule(probe.fn), args, chip=chip, mode="eager")
    if len(kernels := report.kernels) != 1:
        raise RuntimeError(f"calibration probe {probe.label} should be one op; fxroof captured "
                           f"{', '.join(k.op for k in kernels) or 'none'}")
    (node,) = (n for n in report.nodes if n.name in kernels[0].nodes)
    return node.cost_key, kernels[0].flops, kernels[0].category


def view_dispatch(clock: Clock) -> tuple[float, str]:
    """Median host time of the view ops models call most, on a tiny tensor."""
    x = torch.randn(4, 16, device=clock.dev)
    t = statistics.median(tiny_call_times(clock, [partial(fn, x) for _, fn in VIEW_PROBES]))
    return t, (f"median host time of a tiny call of each of "
               f"{', '.join(label for label, _fn in VIEW_PROBES)} ({tiny_call_timing(clock)})")


def vector_rate(rates: dict) -> tuple[float, str]:
    # The median, not a pooled rate: a few slow ops (a CPU's tanh, max-pooling) would otherwise
    # set the rate of every op not measured one by one. Matrix ops measured so are not its.
    own = {probe.own_rate for probe in OP_PROBES}
    return statistics.median(r for op, r in rates.items() if op not in own), (
        "median over the probe ops (pointwise, norms, softmax, reductions, pooling) of FLOPs as "
        "fxroof counts them / time past the op's fixed cost, on a cache-resident 256 Ki-element "
        "input (GPU: 4 Mi elements); the rate of ops not measured one by one, and of compiled "
        "kernels")


def each_rate(rates: dict) -> str:
    return ", ".join(f"{op} {si(r, 'FLOP/s')}" for op, r in sorted(rates.items(),
                                                                  key=lambda kv: -kv[1]))


# -- overheads -------------------------------------------------------------------------------------

def _beside_prediction(clock: Clock, chip: Chip, probes, mode: str, n: int) -> tuple:
    """(Wall seconds per call of the `probes` modules (maker, input shape), summed; fxroof's
    prediction of them in `mode`; their kernels). Each is timed as the best loop of `n` calls,
    the modules taking turns, so a burst of other work on the machine cannot spoil all of one."""
    predicted, kernels, calls = 0.0, 0, []
    for make, shape in probes:
        torch.manual_seed(0)
        model = make().to(clock.dev).eval()
        x = torch.randn(*shape, device=clock.dev)
        report = analyze(model, (x,), chip=chip, mode=mode)
        predicted, kernels = predicted + report.time_s, kernels + len(report.kernels)
        run = torch.compile(model) if mode == "compiled" else model
        run(x)                                        # warm (compiled: compiles)
        calls.append(partial(run, x))
    rounds = [[host_time(clock, call, n=n, loops=1) for call in calls]
              for _ in range(5 if clock.quick else 9)]
    return sum(map(min, zip(*rounds))), predicted, kernels


def glue(clock: Clock, chip: Chip) -> tuple[float, dict]:
    """Per op, what eager model code costs beyond its ops' own calls (module calls, Python
    between ops): (wall time of the BLOCK_PROBES modules - fxroof's prediction of them on `chip`,
    which holds each op's tiny-call cost in op_dispatch_s, their median in dispatch_s and no
    glue) / their ops. Also the sources of op_dispatch_s, dispatch_s and glue_s."""
    # A CPU's glue is the interpreter's, whatever torch's thread count: timed on one thread. On
    # two, the probes' few parallel regions (oneDNN's convolutions) took from 100 to 190 us a
    # probe from one process to the next, as the OS placed the second thread (docs/calibration.md),
    # and their residual gave glue of 0.1 to 15 us an op; an op that splits pays region_s instead
    one = clock.cuda or not chip.threads or chip.threads <= 1
    with cpu_threads(None if one else 1):
        wall, predicted, ops = _beside_prediction(
            clock, chip if one else dataclasses.replace(chip, threads=1.0), BLOCK_PROBES,
            "eager", 25 if clock.quick else 100)
    per_op = max((wall - predicted) / ops, 0.0)
    where = "" if one else ", on one thread (the interpreter's cost, whatever the threads)"
    bare = chip.op_dispatch_s
    fixed = ", ".join(f"{op} {seconds(t)}" for op, t in sorted(bare.items(), key=lambda kv: kv[1]))
    how = (f"each op's tiny call (4 x 16 elements, as model code calls it; "
           f"{tiny_call_timing(clock)})")
    return per_op, {"op_dispatch_s": f"per op: {how}. Tiny calls: {fixed}",
                    "dispatch_s": f"ops not measured one by one: the median tiny call, "
                                  f"{seconds(chip.dispatch_s)}; {how}",
                    "glue_s": f"(wall time - prediction) / ops over small modules{where} (a "
                              f"pre-norm transformer block, a gated RMS-norm MLP, a conv-BN-ReLU "
                              f"block; {ops} ops), predicted with each op's tiny call and the "
                              f"view calls: the module calls and Python between ops"}


def graph_launch(clock: Clock) -> tuple[float, str]:
    """Per kernel replayed from a CUDA graph of tiny kernels."""
    k, x = 200, torch.zeros(1, device=clock.dev)
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
    return clock.per_call(graph.replay) / k, (
        f"per kernel of a CUDA graph of {k} tiny adds, replayed (CUDA events)")


def compiled_launch(clock: Clock, chip: Chip) -> tuple[float, str]:
    """CPU: what a compiled program's call of a kernel costs, its own generated code or a library
    op (which also pays what its eager call costs beyond a typical op's, timing.py): a
    torch.compile'd stack of 4 pre-norm transformer blocks against one (kernels with the
    arguments and buffers a model's have), wall time less fxroof's prediction with no launch
    charged, over the kernels the deeper stack adds."""
    bare = dataclasses.replace(chip, launch_s=1e-12)
    walls, kernels = [], []
    for depth in (1, COMPILED_DEPTH):
        def make(depth=depth):
            return nn.Sequential(*(TransformerBlock() for _ in range(depth)))
        wall, predicted, count = _beside_prediction(clock, bare, [(make, (1, 64, 64))],
                                                    "compiled", 25 if clock.quick else 100)
        walls.append(wall - predicted)
        kernels.append(count)
    per = (walls[1] - walls[0]) / max(kernels[1] - kernels[0], 1)
    return max(per, MIN_LAUNCH_S), (
        f"a torch.compile'd stack of {COMPILED_DEPTH} pre-norm transformer blocks (64 wide, "
        f"64 tokens) against one: wall time less fxroof's compiled prediction with no launch "
        f"charged ({seconds(walls[1])} and {seconds(walls[0])}), over the "
        f"{kernels[1] - kernels[0]} kernels more (library calls and generated code)")


def program_call(clock: Clock, chip: Chip) -> tuple[float, str]:
    """What entering a torch.compile'd module costs beyond its kernels (Dynamo's guards, the
    module's parameters among them, and the wrapper): wall time of a compiled Linear + ReLU
    module - fxroof's compiled prediction of it."""
    wall, predicted, _ = _beside_prediction(
        clock, chip, [(lambda: nn.Sequential(nn.Linear(64, 64), nn.ReLU()), (4, 64))],
        "compiled", 50 if clock.quick else 200)
    return max(wall - predicted, 0.0), (
        f"a torch.compile'd Linear(64, 64) + ReLU on 4 rows: wall time per call {seconds(wall)} "
        f"- fxroof's compiled prediction {seconds(predicted)} (best loop of many)")
