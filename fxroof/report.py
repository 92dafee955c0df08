"""Pass 3: the Report — every node and kernel on the chip's roofline, totals, regimes, tables.

Built from the annotated graph and the kernel lists of both execution modes; frozen once built.
`to_dict()` is the JSON schema (the CLI writes exactly this); `str(report)` is the terminal view.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch.fx as fx

from . import tables
from .chips import Chip
from .checks import CheckResult, run_checks
from .dataflow import module_path
from .memory import Footprint
from .cost import COST_KEY, MATRIX_CATEGORIES, Cost
from .units import fold_layers
from .roofline import REGIMES, Timing, intensity, kernel_timing, overhead_per_kernel, rate_op

SCHEMA = "fxroof.report/1"


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

    @property
    def cost_key(self) -> str:
        """The name a chip measured op by op files this call's costs under: the op, and the
        implementation where the call's shapes pick one ("convolution(onednn)")."""
        return f"{self.op}({self.variant})" if self.variant else self.op

    def to_dict(self) -> dict:
        return dict(self.__dict__)


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
    timing: Timing

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written

    @property
    def time_s(self) -> float:
        return self.timing.time_s

    @property
    def regime(self) -> str:
        return self.timing.regime

    @property
    def intensity(self) -> float:
        return intensity(self.flops, self.bytes)

    @property
    def roofline_fraction(self) -> float:
        """Share of the roofline attained: the roofline's own time (compute or memory, whichever
        is larger) over the predicted time, which launch overhead or communication can stretch."""
        t = self.timing
        return max(t.compute_s, t.memory_s) / t.time_s if t.time_s else 1.0

    def to_dict(self) -> dict:
        t = self.timing
        return {"nodes": list(self.nodes), "op": self.op, "module": self.module,
                "category": self.category, "dtype": self.dtype, "flops": self.flops,
                "bytes_read": self.bytes_read, "bytes_written": self.bytes_written,
                "intensity": _finite(self.intensity), "time_s": self.time_s, "regime": self.regime,
                "roofline_fraction": self.roofline_fraction,
                "compute_s": t.compute_s, "memory_s": t.memory_s, "comm_s": t.comm_s,
                "overhead_s": t.overhead_s, "reason": self.reason}


@dataclass(frozen=True)
class ModeSummary:
    """One execution mode's kernels and what they add up to."""
    mode: str
    kernels: tuple

    @property
    def time_s(self) -> float:
        return sum(k.time_s for k in self.kernels)

    @property
    def bytes(self) -> int:
        return sum(k.bytes for k in self.kernels)

    @property
    def regime_share(self) -> dict:
        total = self.time_s or 1.0
        return {r: sum(k.time_s for k in self.kernels if k.regime == r) / total for r in REGIMES}

    @property
    def regime(self) -> str:
        share = self.regime_share
        return max(REGIMES, key=lambda r: share[r])

    @property
    def roofline_fraction(self) -> float:
        total = self.time_s
        return sum(k.roofline_fraction * k.time_s for k in self.kernels) / total if total else 1.0


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

    @property
    def weights_bytes(self) -> int:
        return self.memory.weights

    # -- the chosen mode ---------------------------------------------------------------------
    @property
    def summary(self) -> ModeSummary:
        return self.compiled if self.mode == "compiled" else self.eager

    @property
    def kernels(self) -> tuple:
        return self.summary.kernels

    @property
    def time_s(self) -> float:
        return self.summary.time_s

    @property
    def regime(self) -> str:
        return self.summary.regime

    @property
    def regime_share(self) -> dict:
        return self.summary.regime_share

    # -- totals over nodes -------------------------------------------------------------------
    @property
    def flops(self) -> int:
        return sum(n.flops for n in self.nodes)

    @property
    def bytes(self) -> int:
        """Unfused bytes: every op reads its inputs from and writes its outputs to memory."""
        return sum(n.bytes_read + n.bytes_written for n in self.nodes)

    @property
    def fused_bytes(self) -> int:
        return self.compiled.bytes

    @property
    def intensity(self) -> float:
        return intensity(self.flops, self.summary.bytes)

    @property
    def matrix_dtype(self) -> str:
        """The dtype most matrix FLOPs run in: the one whose ridge point matters."""
        flops: Counter = Counter()
        for n in self.nodes:
            if n.category in MATRIX_CATEGORIES:
                flops[n.dtype] += n.flops
        return flops.most_common(1)[0][0] if flops else "bf16"

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
            "chip": self.chip.to_dict(), "mode": self.mode, "flops": self.flops,
            "bytes": self.bytes, "fused_bytes": self.fused_bytes, "time_s": self.time_s,
            "regime": self.regime, "regime_share": self.regime_share,
            "intensity": _finite(self.intensity),
            "roofline_fraction": self.summary.roofline_fraction, "coverage": self.coverage,
            "unknown_ops": self.unknown_ops, "weights_bytes": self.weights_bytes,
            "memory": self.memory.to_dict(),
            "compare": self.compare(),
            "nodes": [n.to_dict() for n in self.nodes],
            "kernels": [k.to_dict() for k in self.kernels],
        }

    def compare(self) -> dict:
        """Before/after fusion: eager (one kernel per op) against compiled (fused kernels)."""
        e, c = self.eager, self.compiled
        return {
            "eager": {"kernels": len(e.kernels), "bytes": e.bytes, "time_s": e.time_s,
                      "regime": e.regime},
            "compiled": {"kernels": len(c.kernels), "bytes": c.bytes, "time_s": c.time_s,
                         "regime": c.regime},
            "bytes_saved": 1 - c.bytes / e.bytes if e.bytes else 0.0,
            "time_saved": 1 - c.time_s / e.time_s if e.time_s else 0.0,
        }

    def module_rollup(self) -> list[dict]:
        """Time, FLOPs and bytes by module, repeated layers folded together (layers.* )."""
        rows: dict[str, dict] = {}
        for k in self.kernels:
            key = fold_layers(k.module) or "(top level)"
            row = rows.setdefault(key, {"module": key, "kernels": 0, "flops": 0, "bytes": 0,
                                        "time_s": 0.0})
            row["kernels"] += 1
            row["flops"] += k.flops
            row["bytes"] += k.bytes
            row["time_s"] += k.time_s
        return sorted(rows.values(), key=lambda r: -r["time_s"])

    def check(self, **budgets) -> CheckResult:
        """Pre-deployment checks (fxroof.checks.run_checks): max_time_ms, min_coverage,
        memory_fit (on by default), max_regime_share={"overhead": 0.2}, lint="warn"|"fail"|"off"."""
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
        from .plot import plot_roofline   # a thin layer over Report, loaded only when asked
        return plot_roofline(self, path, **options)

    def __str__(self) -> str:
        return tables.render(self)


def _finite(x: float):
    return None if x == float("inf") else x


# -- building ------------------------------------------------------------------------------

def node_rows(gm: fx.GraphModule) -> tuple:
    rows = []
    for node in gm.graph.nodes:
        cost: Cost | None = node.meta.get(COST_KEY)
        if node.op != "call_function" or cost is None or (cost.category == "view" and cost.known):
            continue
        rows.append(NodeRow(node.name, op_name(node), module_path(node), cost.category, cost.flops,
                            cost.bytes_read, cost.bytes_written, cost.dtype, cost.known, cost.note,
                            cost.comm_bytes, cost.comm_steps, cost.variant))
    return tuple(rows)


def kernel_rows(kernels, chip: Chip, mode: str, nodes: tuple, streamed: dict | None = None
                ) -> tuple:
    """streamed: {node name: {storage: bytes}} of state the node reads from memory on every pass
    (memory.state_reads, where the footprint outgrows the chip's cache); none by default."""
    by_name = {n.name: n for n in nodes}
    streamed = streamed or {}
    rows = []
    for i, k in enumerate(kernels):
        members = [by_name[n] for n in k.nodes if n in by_name]
        # The main node names the kernel (an eager kernel is its one op).
        main = next((m for m in members if m.category == k.category),
                    members[0] if members else None)
        op = main.op if main else ""
        # the op whose own call runs the kernel (eager ops; a compiled program's library
        # calls): a chip measured op by op costs it as that op
        key = rate_op(mode, k.category, main.cost_key) if main else ""
        state: dict = {}
        for n in k.nodes:
            state.update(streamed.get(n, {}))
        timing = kernel_timing(chip, flops=k.flops, bytes_moved=k.bytes, category=k.category,
                               dtype=k.dtype,
                               overhead_s=overhead_per_kernel(chip, mode, key, k.views, i == 0),
                               comm_bytes=sum(m.comm_bytes for m in members),
                               comm_steps=sum(m.comm_steps for m in members),
                               rate_op=key,
                               streamed_bytes=min(sum(state.values()), k.bytes_read))
        label = (op if len(members) == 1 else f"{op} +{len(members) - 1}") if main \
            else k.category
        rows.append(KernelRow(tuple(k.nodes), label, k.module, k.category, k.dtype,
                              k.flops, k.bytes_read, k.bytes_written, k.reason, timing))
    return tuple(rows)


# Ops whose keyword picks a different kernel: the name carries it ("gelu(tanh)"), so that tables
# tell them apart and a chip measured op by op can cost each (a CPU's tanh GELU is 3x the erf's).
_VARIANTS = {"gelu": "approximate"}


def op_name(node: fx.Node) -> str:
    target = node.target
    name = getattr(target, "__name__", str(target))
    packet = getattr(target, "overloadpacket", None)
    name = getattr(packet, "__name__", name) if packet is not None else name
    variant = node.kwargs.get(_VARIANTS[name]) if name in _VARIANTS else None
    return f"{name}({variant})" if isinstance(variant, str) and variant != "none" else name


