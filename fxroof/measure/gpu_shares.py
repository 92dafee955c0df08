"""A GPU calibrated on its table entry: the datasheet keeps the floor, the GPU at hand gives the
shares of it that real kernels reach.

The floor (peaks, bandwidth) is a datasheet's and stays the table's. What one GPU can measure of
the expected-time model (docs/time-model.md) is measured: the share of the dense peak a large
cuBLAS GEMM reaches (and an fp32 one on the CUDA cores, TF32 off, of the fp32 peak), the
share of the bandwidth a streaming add reaches, the shares fused
attention reaches (FlashAttention-2's, and cuDNN's where PyTorch runs it). Each share is solved
so that fxroof's own expected time of its probe, on the table's chip with that share, equals the
probe's measured time: the figure means what the model does with it, its other parts (tiles,
memory latency, the kernel floor, overlap) taken out as the model charges them. What one device
cannot measure (NCCL's links, the network) and what these probes do not isolate (the clock, the
memory latency, the kernel floor) stay the table's, with the table's sources.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable

import torch
import torch.nn.functional as F

from fxroof.chips import Chip
from fxroof.chips.expected import runs_cudnn_attention
from fxroof.chips.timing import matmul_tf32
from fxroof.graph.capture import FunctionModule, capture
from fxroof.pipeline import Target, report_of

# The probes' sizes. The add is how the H200's table figure was measured (bench/gpu_measure.py,
# "add bf16 2^28"); each probe's operands are past the L2 of any GPU in the table, or its work
# compute-bound, and its time a thousand times a kernel's fixed cost or more.
MATMUL_N = 8192
ADD_ELEMENTS = 2 ** 28
ATTENTION_SHAPE = (1, 32, 4096, 128)      # batch, heads, tokens, head size: no mask
QUICK_SCALE = 4                           # --quick: each size divided by this (the add by 16)
LOW, HIGH, STEPS = 0.01, 1.0, 40          # the bisection's range and steps


@dataclasses.dataclass(frozen=True)
class Probe:
    """One measured kernel and the figure it sets. `shapes` are its inputs', in `dtype`;
    `backend`: the SDPA backend it is forced to (None: not attention)."""
    figure: str
    op: Callable
    shapes: tuple
    what: str
    backend: str | None = None
    dtype: torch.dtype = torch.bfloat16

    def inputs(self, device) -> tuple:
        return tuple(torch.empty(s, device=device, dtype=self.dtype) for s in self.shapes)


def probes(quick: bool = False) -> tuple[Probe, ...]:
    n = MATMUL_N // (QUICK_SCALE if quick else 1)
    adds = ADD_ELEMENTS // (16 if quick else 1)
    b, h, t, d = ATTENTION_SHAPE
    t //= QUICK_SCALE if quick else 1
    sdpa = F.scaled_dot_product_attention
    return (Probe("matmul_efficiency", torch.mm, ((n, n), (n, n)), f"torch.mm of two {n} x {n} "
                  f"bf16 matrices"),
            Probe("fp32_matmul_efficiency", torch.mm, ((n, n), (n, n)), f"torch.mm of two {n} x "
                  f"{n} fp32 matrices, TF32 off (PyTorch's matmul default)", dtype=torch.float32),
            Probe("bw_efficiency", torch.add, ((adds,), (adds,)), f"torch.add of two bf16 "
                  f"tensors of 2^{adds.bit_length() - 1} elements"),
            Probe("attention_efficiency", sdpa, ((b, h, t, d),) * 3, f"scaled_dot_product_"
                  f"attention over ({b}, {h}, {t}, {d}) in bf16, no mask, FlashAttention-2's "
                  f"kernel (SDPBackend.FLASH_ATTENTION)", "FLASH_ATTENTION"),
            Probe("cudnn_attention_efficiency", sdpa, ((b, h, t, d),) * 3, f"scaled_dot_"
                  f"product_attention over ({b}, {h}, {t}, {d}) in bf16, no mask, cuDNN's kernel "
                  f"(SDPBackend.CUDNN_ATTENTION)", "CUDNN_ATTENTION"))


def precision_context(probe: Probe):
    """An fp32 probe runs and is predicted on the CUDA cores, as PyTorch's default runs fp32
    products: TF32 off for both (none for 16-bit probes)."""
    return matmul_tf32(False) if probe.dtype == torch.float32 else contextlib.nullcontext()


def backend_context(probe: Probe):
    """The context that forces `probe`'s SDPA backend, or an fp32 probe's precision."""
    if probe.backend is None:
        return precision_context(probe)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([getattr(SDPBackend, probe.backend)])


def predicted_s(chip: Chip, probe: Probe, captured=None) -> float:
    """fxroof's expected time on `chip` of the probe's kernels (eager, on the chip alone)."""
    captured = captured or capture(FunctionModule(probe.op), probe.inputs("meta"))
    with precision_context(probe):
        report = report_of(captured, Target(chip=chip, mode="eager"))
    return sum(k.expected.device_s for k in report.kernels)


def with_share(chip: Chip, figure: str, share: float) -> Chip:
    """`chip` with one share set; solving FlashAttention-2's turns cuDNN's off, which SDPA
    would otherwise run in its place on the chips that have it."""
    extra = {"cudnn_attention_efficiency": 0.0} if figure == "attention_efficiency" else {}
    return dataclasses.replace(chip, **{figure: share}, **extra)


def solve(chip: Chip, probe: Probe, measured_s: float) -> tuple[float, str]:
    """(share, note): the least share of `probe.figure` at which fxroof's expected time of the
    probe on `chip` is `measured_s`, by bisection (expected time never rises with a share). A
    probe faster than the model allows at a share of 1 gets 1, one slower than at LOW gets LOW,
    each with a note saying so; a share the probe's prediction does not read (cuDNN's attention
    where SDPA would not run it) is (0, why)."""
    captured = capture(FunctionModule(probe.op), probe.inputs("meta"))

    def at(share: float) -> float:
        return predicted_s(with_share(chip, probe.figure, share), probe, captured)
    if probe.figure == "cudnn_attention_efficiency" \
            and not runs_cudnn_attention(with_share(chip, probe.figure, HIGH)):
        return 0.0, ("not set: PyTorch's SDPA does not run cuDNN's attention on this chip with "
                     "this build")
    if at(LOW) == at(HIGH):
        return 0.0, "not set: the probe's predicted time does not depend on it"
    if measured_s < at(HIGH):
        return HIGH, f"capped at {HIGH}: the probe ran faster than the model allows"
    if measured_s >= at(LOW):
        return LOW, f"floored at {LOW}: the probe ran slower than the model allows"
    # the least share whose prediction is no slower than the measurement: past some share a
    # prediction may stop falling (attention's products capped at the peak, its exponentials
    # not), and any share beyond that point would say more than was measured
    low, high = LOW, HIGH                   # at(low) > measured_s >= at(high)
    for _ in range(STEPS):
        mid = (low + high) / 2
        low, high = (mid, high) if at(mid) > measured_s else (low, mid)
    return high, ""


def time_probes(clock, probes_: tuple[Probe, ...]) -> dict[str, tuple[float, str]]:
    """GPU: {figure: (seconds per call, how)} of each probe on `clock`'s device; a probe this
    build or device cannot run (a backend it lacks) is left out, with why under its figure as
    (0, why)."""
    times = {}
    for probe in probes_:
        args = tuple(torch.randn(s, device=clock.dev).to(probe.dtype) for s in probe.shapes)

        def call(args=args, probe=probe):
            with backend_context(probe):
                probe.op(*args)
        try:
            call()
        except (RuntimeError, NotImplementedError, ValueError) as e:   # no such kernel here
            times[probe.figure] = (0.0, f"not measured: {probe.what} does not run here "
                                        f"({type(e).__name__}: {str(e).splitlines()[0][:120]})")
            continue
        times[probe.figure] = (clock.per_call(call), probe.what)
    return times


def gpu_probes(base: Chip, quick: bool = False) -> tuple[Probe, ...]:
    """The probes for a GPU whose table entry is `base`. cuDNN's attention only where the table
    has its figure: that figure is also what says SDPA prefers cuDNN on the chip (Hopper and
    Blackwell data-centre parts, expected.runs_cudnn_attention), so it is not given to others."""
    return tuple(p for p in probes(quick)
                 if p.figure != "cudnn_attention_efficiency" or base.cudnn_attention_efficiency)


def solve_shares(chip: Chip, probes_: tuple[Probe, ...], times: dict) -> dict[str, tuple[float, str]]:
    """{figure: (share, source)} solved from each probe's measured time on the table's `chip`; a
    figure left unsolved is (0, why)."""
    out = {}
    for probe in probes_:
        seconds, how = times.get(probe.figure, (0.0, "not measured"))
        if not seconds:
            out[probe.figure] = (0.0, how)
            continue
        share, note = solve(chip, probe, seconds)
        model = (f"the share at which fxroof's expected time of it on {chip.name}'s other "
                 f"figures equals the measured {seconds * 1e6:,.1f} us")
        out[probe.figure] = (share, f"{how}: {model}" + (f"; {note}" if note else ""))
    return out


# What a calibration measures of the host and the driver reports of the device: these replace the
# table's figures; the table's shares are replaced by `shares`.
HOST_FIGURES = ("dispatch_s", "op_dispatch_s", "view_dispatch_s", "glue_s", "program_call_s",
                "graph_launch_s")
DRIVER_FIGURES = ("sm_count", "sm_threads", "l2_bytes", "mem_bytes")


def on_table(base: Chip, measured: Chip, solved: dict, stamp: str, device: str) -> Chip:
    """The GPU at hand as its table entry `base` with what was measured over it: the host's
    figures and the driver's from `measured` (a calibration's chip, its sources stamped), the
    shares `solved` ({figure: (share, how)}, 0: unsolved). Every other figure, the floor's
    among them, and its source are the table's."""
    own = {f: getattr(measured, f) for f in (*HOST_FIGURES, *DRIVER_FIGURES)
           if getattr(measured, f)}
    own |= {f: share for f, (share, _) in solved.items() if share}
    sources = {k: f"as the table's {base.name}: {v}" for k, v in base.sources.items()}
    sources |= {f: measured.sources[f] for f in own if f in measured.sources}
    sources |= {f: f"{stamp}: {how}" for f, (share, how) in solved.items() if share}
    return dataclasses.replace(base, name=f"calibrated-{base.name}", aliases=(),
                               title=f"{base.title}, calibrated ({device})", **own,
                               sources=sources)
