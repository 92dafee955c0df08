"""fxroof.analyze: capture -> annotate -> what-if -> fuse -> time model -> report, in one call.

`Target` is what an analysis aims at (chip, mode, what-if, tensor-parallel degree, fusion
options): one frozen record, checked once, passed whole by sweeps, LLM studies and the CLI.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fxroof.chips import Chip
from fxroof.chips import chip as find_chip
from fxroof.chips.timing import MODES
from fxroof.cost import COST_KEY
from fxroof.cost.annotate import annotate
from fxroof.cost.whatif import Quantization, quantize_graph
from fxroof.cost.whatif import parse as parse_quantization
from fxroof.fuse import fuse, unfused
from fxroof.fuse.policy import classify
from fxroof.graph.capture import Captured, capture
from fxroof.graph.memory import footprint, state_reads
from fxroof.report.build import kernel_rows, node_rows
from fxroof.report.records import ModeSummary, Report

__all__ = ["Target", "analyze", "report_of", "target_of"]


@dataclass(frozen=True)
class Target:
    """chip: a name, a chip file or a Chip. mode: "compiled" (fused kernels, as a deployment
    runs) or "eager" (one kernel per op). quantize: a what-if such as "w4+kv8" (fxroof.cost.whatif).
    tp: tensor-parallel degree, > 1 analyzes one rank of a Megatron split (fxroof.graph.parallel).
    matmul_epilogues: let matmuls take pointwise epilogues when fusing."""
    chip: Chip | str = "h100-sxm"
    mode: str = "compiled"
    quantize: Quantization | str | None = None
    tp: int = 1
    matmul_epilogues: bool = False

    def __post_init__(self):
        # Names become records here, so that a misspelt chip or what-if fails before a capture.
        object.__setattr__(self, "chip", find_chip(self.chip))
        object.__setattr__(self, "quantize", parse_quantization(self.quantize))
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; expected one of {', '.join(MODES)}")
        if isinstance(self.tp, bool) or not isinstance(self.tp, int) or self.tp < 1:
            raise ValueError(f"tp must be a whole number >= 1, got {self.tp!r}")
        if self.quantize is not None and self.matmul_epilogues:
            raise ValueError("quantization what-ifs need matmul_epilogues=False: a matmul fused "
                             "with its epilogues counts its bytes from tensor sizes, not its Cost")

    # the what-if's label, as reports print it; "" for none
    whatif = property(lambda self: self.quantize.label if self.quantize else "")


def target_of(target: Target | None = None, **fields) -> Target:
    """A Target from one, or from its fields given as keywords (chip=, mode=, ...)."""
    if target is None:
        return Target(**fields)
    if fields:
        raise TypeError(f"give target= or its fields ({', '.join(fields)}), not both")
    if not isinstance(target, Target):
        raise TypeError(f"target must be a fxroof.Target, not {type(target).__name__}")
    return target


def analyze(model, example_inputs=(), example_kwargs=None, *, target: Target | None = None,
            **fields) -> Report:
    """Analyze `model` on a chip from its real graph.

    model: an nn.Module, fx.GraphModule or ExportedProgram; example inputs may be real, fake or
    meta tensors (meta: nothing is allocated). The target: `target=Target(...)` or its fields
    as keywords, chip="a100-80gb", mode="eager", quantize="w4", tp=8, matmul_epilogues=True.
    The model itself is never changed.
    """
    target = target_of(target, **fields)
    if target.tp != 1:
        from fxroof.graph.parallel import tensor_parallel   # torch.distributed: only for tp
        with tensor_parallel(model, target.tp, example_inputs, example_kwargs) as (local, a, kw):
            report = analyze(local, a, kw, target=dataclasses.replace(target, tp=1))
        return dataclasses.replace(report, tp=target.tp)
    return report_of(capture(model, example_inputs, example_kwargs), target)


def report_of(captured: Captured, target: Target) -> Report:
    """Every pass after capture: annotate, what-ifs, fuse, time model, report. Sweeps call this
    on graphs they captured once."""
    chip = target.chip
    gm = annotate(captured.gm)
    whatif = quantize_graph(gm, captured.weights, target.quantize)
    nodes = node_rows(gm)
    if not nodes:      # every regime share would be 0 of 0: nothing honest to say
        raise ValueError(f"{captured.name} runs no ops on these inputs: nothing to analyze")
    compiled = fuse(gm, matmul_epilogues=target.matmul_epilogues)
    eager = unfused(gm)
    memory = whatif.memory(footprint(gm, captured.weights))
    # A cache holds the weights and KV cache between passes only if everything fits in it.
    streamed = (state_reads(gm, captured.weights)
                if chip.cache_bytes and memory.total > chip.cache_bytes else {})
    return Report(
        model=captured.name, capture=captured.strategy, chip=chip, mode=target.mode, nodes=nodes,
        eager=ModeSummary("eager", kernel_rows(eager, chip, "eager", nodes, streamed)),
        compiled=ModeSummary("compiled", kernel_rows(compiled, chip, "compiled", nodes, streamed)),
        memory=memory, whatif=target.whatif, notes=_whatif_notes(gm, whatif.requantized, target))


def _whatif_notes(gm, requantized: frozenset, target: Target) -> tuple:
    """Fused kernels count their bytes from tensor sizes, not from the ops' Cost records: a
    quantized tensor read by an op that fuses keeps its unquantized size in compiled mode."""
    fusable = sum(1 for n in gm.graph.nodes if n.name in requantized and classify(
        n, n.meta[COST_KEY], getattr(n.target, "overloadpacket", None))[0] != "solo")
    notes = [f"{fusable} fusable ops read quantized tensors: in compiled mode their fused kernels "
             f"count those reads at the unquantized size"] if fusable else []
    dtype = target.quantize.matmul if target.quantize else ""
    if dtype and target.chip.matrix_dtype(dtype) != dtype:    # the bytes shrink all the same
        notes.append(f"{target.chip.name} has no {dtype} matrix units: {dtype} matmuls run at its "
                     f"{target.chip.matrix_dtype(dtype)} peak")
    return tuple(notes)
