"""Pass 3: the Report — every node and kernel on the chip's roofline, totals, regimes, tables.

Built from the annotated graph and the kernel lists of both execution modes; frozen once built.
`to_dict()` is the JSON schema (the CLI writes exactly this); `str(report)` is the terminal view.
Every kernel has two times (docs/time-model.md): its roofline floor (`timing`, `floor_s`) and the
expected time of a real run (`expected`), the gap between them named part by part. Times,
regimes and totals are the expected ones; `roofline_fraction` is floor over expected.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import cached_property

from fxroof.chips import Chip
from fxroof.chips.expected import GAP_PARTS, Expected
from fxroof.chips.timing import REGIMES, Timing, intensity
from fxroof.cost.record import MATRIX_CATEGORIES
from fxroof.graph.memory import Footprint
from fxroof.graph.nodes import fold_layers
from fxroof.graph.training import PHASES
from fxroof.report.streams import Schedule, attribute, on_chip_floor, schedule

SCHEMA = "fxroof.report/1"


# Ops that reach the same ATen call as another whose name a chip's table files them under:
# conv1d runs as a 2-d convolution of height 1 (view1d_as_2d in ATen's _convolution), and
# aten.convolution, which make_fx records, is what conv2d calls. Without it a depthwise conv1d
# (Mamba's, RWKV's) took the median tiny call, 5 us, where oneDNN's depthwise entry costs 61.
TABLE_NAMES = {"conv1d": "conv2d", "convolution": "conv2d", "_convolution": "conv2d"}


@dataclass(frozen=True)
class NodeRow:
    name: str
    op: str
    module: str
    category: str
    flops: int
    bytes_read: int
    bytes_written: int
    dtype: str
    known: bool
    note: str
    comm_bytes: int = 0
    comm_steps: int = 0
    variant: str = ""     # the implementation a CPU build runs (Cost.variant): "onednn", ...
    grid: tuple = ()      # a matrix op as (batch, M, N, K): the tiles a library computes;
                          # a layer norm as (rows, row elements), a row gather as
                          # (indices, row elements, element bytes): its loop
    phase: str = ""       # of a training step: "forward", "backward" or "optimizer"
    recomputed: bool = False   # a forward op the backward runs again (activation checkpointing)
    relayout: tuple = ()  # a channels-first convolution: bytes of each tensor a GPU library
                          # transposes for it (Cost.relayout)
    nvls_bytes: int = 0   # an all-reduce: bytes a rank sends where the switch reduces
    comm_ranks: int = 0   # a collective's group size
    comm_stride: int = 0  # the step between its ranks in the world (Cost.comm_stride)
    comm_exchange: bool = False   # an all-to-all (Cost.comm_exchange)
    exponentials: int = 0  # a fused attention forward's softmax: one per score (Cost)
    reread: tuple = ()    # a two-pass norm: bytes of each tensor its second pass reads (Cost)
    bias_bytes: int = 0   # a convolution's bias added (or summed) in a kernel of its own (Cost)
    quantize: tuple = ()  # an 8-bit matmul's activations quantized at each call: bytes of each
                          # kernel doing it (Cost)
    quantize_folds: tuple = ()   # for each, whether a fusing compiler folds it (Cost)
    causal: bool = False  # a fused attention kernel under a causal mask (Cost)
    issued: int = 0       # thread instructions of PyTorch's own issue-bound GPU kernel (Cost)
    window: int = 0       # ... under a sliding window of this many keys (Cost)

    @property
    def cost_key(self) -> str:
        """The name a chip measured op by op files this call's costs under: the op (as PyTorch
        runs it: TABLE_NAMES), and the implementation where the call's shapes pick one
        ("conv2d(onednn)")."""
        op = TABLE_NAMES.get(self.op, self.op)
        return f"{op}({self.variant})" if self.variant else op

    def to_dict(self) -> dict:
        return {k: list(v) if k in ("grid", "relayout", "reread", "quantize",
                                    "quantize_folds") else v
                for k, v in self.__dict__.items()
                if k not in ("grid", "phase", "recomputed", "relayout", "nvls_bytes",
                             "comm_ranks", "comm_stride", "comm_exchange", "reread",
                             "bias_bytes", "quantize", "quantize_folds", "issued", "window") or v}


@dataclass(frozen=True)
class KernelRow:
    nodes: tuple
    op: str               # the main node's op, what a reader recognises the kernel by
    module: str
    category: str
    dtype: str
    flops: int
    bytes_read: int
    bytes_written: int
    reason: str
    timing: Timing        # the roofline floor
    expected: Expected    # the time of a real run, its gap to the floor named
    phase: str = ""       # of a training step: its main node's phase
    waits: tuple = ()     # the collectives (their kernels' first nodes) whose results it reads

    bytes = property(lambda self: self.bytes_read + self.bytes_written)
    intensity = property(lambda self: intensity(self.flops, self.bytes))   # FLOP per byte
    time_s = property(lambda self: self.expected.time_s)       # expected, seconds
    regime = property(lambda self: self.expected.regime)
    floor_s = property(lambda self: self.timing.time_s)        # the roofline floor, seconds

    @property
    def roofline_fraction(self) -> float:
        """Share of the roofline attained: the floor over the expected time."""
        return self.floor_s / self.time_s if self.time_s else 1.0

    def to_dict(self) -> dict:
        t, e = self.timing, self.expected
        return {"nodes": list(self.nodes), "op": self.op, "module": self.module,
                "category": self.category, "dtype": self.dtype, "flops": self.flops,
                "bytes_read": self.bytes_read, "bytes_written": self.bytes_written,
                "intensity": _finite(self.intensity), "time_s": self.time_s, "regime": self.regime,
                "roofline_fraction": self.roofline_fraction,
                "compute_s": e.compute_s, "memory_s": e.memory_s, "comm_s": e.comm_s,
                "overhead_s": e.overhead_s, "latency_s": e.latency_s, "reason": self.reason,
                "floor_s": self.floor_s, "gap": dict(e.gap),
                "floor": {"compute_s": t.compute_s, "memory_s": t.memory_s, "comm_s": t.comm_s,
                          "overhead_s": t.overhead_s, "regime": t.regime},
                **({"phase": self.phase} if self.phase else {}),
                **({"waits": list(self.waits)} if self.waits else {})}


@dataclass(frozen=True)
class ModeSummary:
    """One execution mode's kernels and what they add up to: collectives on a communication
    stream beside the compute (fxroof.report.streams), so the time is the compute's plus the
    communication it does not hide."""
    mode: str
    kernels: tuple

    @cached_property
    def schedule(self) -> Schedule:
        return schedule(self.kernels)

    time_s = property(lambda self: self.schedule.end_s)
    # at the roofline, issued and overlapped the same way
    floor_s = cached_property(lambda self: schedule(self.kernels, on_chip_floor).end_s)
    bytes = property(lambda self: sum(k.bytes for k in self.kernels))

    @cached_property
    def _pieces(self) -> list:
        return attribute(self.kernels, self.schedule)

    @cached_property
    def attributed(self) -> tuple:
        """Each kernel's seconds of the step, summing to its time (streams.attribute): its time
        on the chip and the chip's wait for the host to issue it, or where the host is the
        bottleneck its issue cost."""
        seconds = [0.0] * len(self.kernels)
        for i, _regime, t in self._pieces:
            seconds[i] += t
        return tuple(seconds)

    @cached_property
    def bound_by(self) -> tuple:
        """Each kernel's regime in the step: that of the largest of its pieces of the time
        (streams.attribute), so that a short kernel the host issued in time is not counted
        overhead-bound, nor one the chip waited on the host for counted by its own work."""
        largest = [("", -1.0)] * len(self.kernels)
        for i, regime, t in self._pieces:
            if t > largest[i][1]:
                largest[i] = (regime, t)
        return tuple(regime for regime, _ in largest)

    @property
    def regime_share(self) -> dict:
        """Each regime's share of the time (streams.attribute): the chip's time on a kernel
        counts to its regime there, its waits for the host (or, where the host is the
        bottleneck, the host's issuing) to overhead; collectives count by the share of their
        time that is exposed, so a step whose exposed communication outweighs its compute is
        communication-bound."""
        share, total = dict.fromkeys(REGIMES, 0.0), self.time_s or 1.0
        for _i, regime, t in self._pieces:
            share[regime] += t
        return {r: t / total for r, t in share.items()}

    regime = property(lambda self: max(REGIMES, key=self.regime_share.__getitem__))  # largest

    @property
    def gap(self) -> dict:
        """time_s - floor_s in parts: the seconds each part of the gap adds on the chip, over
        all kernels; where the host is the bottleneck (streams.attribute), scaled to the step's
        time above its floor, the host hiding as much of each part."""
        parts = {p: sum(dict(k.expected.gap).get(p, 0.0) for k in self.kernels)
                 for p in GAP_PARTS}
        s, total = self.schedule, sum(parts.values())
        if total > 0 and s.host_s >= s.compute_s:
            return {p: t * max(self.time_s - self.floor_s, 0.0) / total for p, t in parts.items()}
        return parts

    @property
    def roofline_fraction(self) -> float:
        return self.floor_s / self.time_s if self.time_s else 1.0


@dataclass(frozen=True)
class Report:
    model: str
    capture: str
    chip: Chip
    mode: str
    nodes: tuple
    eager: ModeSummary
    compiled: ModeSummary
    memory: Footprint
    whatif: str = ""        # the quantization what-if applied (fxroof.whatif), "" for none
    notes: tuple = ()       # caveats of the what-if
    tp: int = 1             # tensor-parallel degree: > 1, the report is one rank's
    training: str = ""      # a training step's optimizer ("adamw", "sgd", "none"); "" inference
    dp: int = 1             # data-parallel degree of a training step: > 1, one rank's report
    fsdp: bool = False      # the dp ranks shard parameters, gradients and optimizer state
    # what was analyzed, (key, value) pairs: inputs, versions; the CLI adds workload and options
    provenance: tuple = ()

    weights_bytes = property(lambda self: self.memory.weights)
    # the footprint fits in the chip's memory (one rank's and one chip's under tp)
    fits = property(lambda self: self.memory.total <= self.chip.mem_bytes)

    # -- the chosen mode ---------------------------------------------------------------------
    summary = property(lambda self: self.eager if self.mode == "eager" else self.compiled)

    # the chosen mode's kernels, expected time (seconds), regime and share of time per regime
    kernels = property(lambda self: self.summary.kernels)
    time_s = property(lambda self: self.summary.time_s)
    regime = property(lambda self: self.summary.regime)
    regime_share = property(lambda self: self.summary.regime_share)

    # -- totals over nodes -------------------------------------------------------------------
    flops = property(lambda self: sum(n.flops for n in self.nodes))
    # unfused bytes: every op reads its inputs from and writes its outputs to memory
    bytes = property(lambda self: sum(n.bytes_read + n.bytes_written for n in self.nodes))
    fused_bytes = property(lambda self: self.compiled.bytes)
    intensity = property(lambda self: intensity(self.flops, self.summary.bytes))  # in the mode

    @property
    def matrix_dtype(self) -> str:
        """The dtype most matrix FLOPs run in, as the chip runs them (TF32 for fp32 convolutions on
        a GPU, chips/timing.unit_dtype): the one whose ridge point matters."""
        flops: Counter = Counter()
        for k in self.kernels:
            if k.category in MATRIX_CATEGORIES:
                flops[k.dtype] += k.flops
        return flops.most_common(1)[0][0] if flops else "bf16"

    @property
    def phases(self) -> dict:
        """{phase: its kernels in the chosen mode} of a training step; {} for inference."""
        found = {k.phase for k in self.kernels}
        return {p: ModeSummary(p, tuple(k for k in self.kernels if k.phase == p))
                for p in PHASES if p in found}

    @property
    def phase_times(self) -> dict:
        """{phase: seconds} in the step's schedule, from the previous phase's end to the end of
        its last kernel: a collective hidden behind the next phase's compute counts once."""
        ends, schedule = {}, self.summary.schedule
        # a phase ends when its last kernel does and the host has issued it (a host-bound step's
        # last issue outlasts its kernel)
        issued = (*schedule.issued[1:], schedule.host_s)
        for k, end, done in zip(self.kernels, schedule.ends, issued):
            ends[k.phase] = max(ends.get(k.phase, 0.0), end, done)
        times, before = {}, 0.0
        for p in self.phases:
            times[p], before = max(ends[p] - before, 0.0), max(ends[p], before)
        return times

    # FLOPs the backward spends running checkpointed forwards again
    recompute_flops = property(lambda self: sum(n.flops for n in self.nodes if n.recomputed))

    @property
    def mfu(self) -> float:
        """Model FLOPs utilization: the FLOPs over the expected time, as a share of the chip's
        dense peak in the dtype most matrix FLOPs run in."""
        peak = self.chip.matrix_flops(self.chip.matrix_dtype(self.matrix_dtype))
        return self.flops / self.time_s / peak if self.time_s else 0.0

    @property
    def coverage(self) -> float:
        work = [n for n in self.nodes if n.category != "view"]
        return sum(n.known for n in work) / len(work) if work else 1.0

    @property
    def unknown_ops(self) -> dict:
        return dict(Counter(n.op for n in self.nodes if not n.known).most_common())

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA, "model": self.model, "capture": self.capture,
            "whatif": self.whatif, "notes": list(self.notes), "tp": self.tp,
            "provenance": dict(self.provenance),
            "chip": self.chip.to_dict(), "mode": self.mode, "flops": self.flops,
            "bytes": self.bytes, "fused_bytes": self.fused_bytes, "time_s": self.time_s,
            "floor_s": self.summary.floor_s, "gap": self.summary.gap,
            "regime": self.regime, "regime_share": self.regime_share,
            "intensity": _finite(self.intensity),
            "roofline_fraction": self.summary.roofline_fraction, "coverage": self.coverage,
            # the host issuing the kernels ahead of the chip (report/streams.py): its busy time
            # and the chip's idle waits for it
            "host": {"issue_s": self.summary.schedule.host_s,
                     "chip_waits_s": self.summary.schedule.host_wait_s},
            "unknown_ops": self.unknown_ops, "weights_bytes": self.weights_bytes,
            "memory": self.memory.to_dict(),
            "compare": self.compare(),
            **({"training": self.training, "dp": self.dp, "fsdp": self.fsdp, "mfu": self.mfu,
                "recompute_flops": self.recompute_flops,
                "comm": {"busy_s": self.summary.schedule.comm_s,
                         "exposed_s": self.summary.schedule.exposed_s}, "phases": {
                p: {"kernels": len(m.kernels), "flops": sum(k.flops for k in m.kernels),
                    "bytes": m.bytes, "time_s": self.phase_times[p], "regime": m.regime}
                for p, m in self.phases.items()}} if self.training else {}),
            "nodes": [n.to_dict() for n in self.nodes],
            "kernels": [k.to_dict() for k in self.kernels],
        }

    def compare(self) -> dict:
        """Before/after fusion: eager (one kernel per op) against compiled (fused kernels)."""
        e, c = self.eager, self.compiled
        return {
            **{m.mode: {"kernels": len(m.kernels), "bytes": m.bytes, "time_s": m.time_s,
                        "regime": m.regime} for m in (e, c)},
            "bytes_saved": 1 - c.bytes / e.bytes if e.bytes else 0.0,
            "time_saved": 1 - c.time_s / e.time_s if e.time_s else 0.0,
        }

    def module_rollup(self) -> list[dict]:
        """Time, FLOPs and bytes by module, repeated layers folded together (layers.* )."""
        rows: dict[str, dict] = {}
        for k, seconds in zip(self.kernels, self.summary.attributed):
            key = fold_layers(k.module) or "(top level)"
            row = rows.setdefault(key, {"module": key, "kernels": 0, "flops": 0, "bytes": 0,
                                        "time_s": 0.0})
            for name, value in (("kernels", 1), ("flops", k.flops), ("bytes", k.bytes),
                                 ("time_s", seconds)):
                row[name] += value
        return sorted(rows.values(), key=lambda r: -r["time_s"])

    def check(self, **budgets):
        """Pre-deployment checks (fxroof.report.checks.run_checks): max_time_ms, min_coverage,
        memory_fit (on by default), max_regime_share={"overhead": 0.2}, lint="warn"|"fail"|"off"."""
        from fxroof.report.checks import run_checks  # a view of the report, loaded when asked
        return run_checks(self, **budgets)

    def fusion_savings(self, n: int = 10) -> list[dict]:
        """The fused kernels that save the most bytes against running their ops one by one."""
        by_name = {r.name: r for r in self.nodes}
        rows = []
        for k in self.compiled.kernels:
            eager = sum(by_name[m].bytes_read + by_name[m].bytes_written
                        for m in k.nodes if m in by_name)
            if len(k.nodes) > 1 and eager > k.bytes:
                rows.append({"kernel": k.op, "module": k.module, "ops": len(k.nodes),
                             "eager_bytes": eager, "fused_bytes": k.bytes,
                             "saved_bytes": eager - k.bytes})
        return sorted(rows, key=lambda r: -r["saved_bytes"])[:n]

    def plot_roofline(self, path, **options):
        """The chip's roofline with every kernel on it, to a .png or .svg (matplotlib extra)."""
        from fxroof.report.plot import plot_roofline
        return plot_roofline(self, path, **options)

    def to_trace(self, path, mode: str | None = None):
        """The predicted step as a Chrome trace JSON file (Perfetto, chrome://tracing), in `mode`
        (default: the report's)."""
        from fxroof.report.trace import write_trace
        return write_trace(self, path, mode)

    def to_html(self, path):
        """One self-contained HTML page: roofline, kernel table, module tree, modes, memory."""
        from fxroof.report.html import write_html
        return write_html(self, path)

    def __str__(self) -> str:
        from fxroof.report.tables import render
        return render(self)


def _finite(x: float):
    return None if x == float("inf") else x
