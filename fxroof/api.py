"""fxroof.analyze: capture -> annotate -> fuse -> roofline -> report, in one call."""
from __future__ import annotations

import dataclasses

from .annotate import annotate
from .capture import Captured, capture
from .chips import Chip, chip as find_chip
from .fuse import fuse, unfused
from .memory import footprint, state_reads
from .report import ModeSummary, Report, kernel_rows, node_rows
from .roofline import MODES
from .whatif import Quantization, parse as parse_quantization, quantize_graph


def analyze(model, example_inputs=(), example_kwargs=None, *, chip: "str | Chip" = "h100-sxm",
            mode: str = "compiled", matmul_epilogues: bool = False, tp: int = 1,
            quantize: "str | Quantization | None" = None) -> Report:
    """Analyze `model` on `chip` from its real graph.

    model: an nn.Module, fx.GraphModule or ExportedProgram; example inputs may be real, fake or
    meta tensors (meta: nothing is allocated). chip: a name ("h100-sxm"), a chip JSON file or a
    Chip. mode: "compiled" (fused kernels, as a deployment runs) or "eager" (one kernel per op).
    tp: tensor-parallel degree; > 1 analyzes one rank of a copy of the model split Megatron-style
    over tp ranks on a fake process group (fxroof.parallel); the model itself is not changed.
    quantize: a what-if (fxroof.whatif) such as "w4" (int4 weights), "kv8" or "fp8"; it rewrites
    the bytes and peak of the captured graph's ops and the memory footprint, not the model.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    target = find_chip(chip)            # a misspelt chip fails before a long capture
    quantize = parse_quantization(quantize)     # and so does a misspelt what-if
    if tp != 1:
        from .parallel import tensor_parallel   # parallel.py builds on analyze: imported here
        with tensor_parallel(model, tp, example_inputs, example_kwargs) as (local, args, kwargs):
            report = analyze(local, args, kwargs, chip=target, mode=mode,
                             matmul_epilogues=matmul_epilogues, quantize=quantize)
        return dataclasses.replace(report, tp=tp)
    captured = capture(model, example_inputs, example_kwargs)
    return report_of(captured, target, mode, matmul_epilogues, quantize)


def report_of(captured: Captured, chip: Chip, mode: str, matmul_epilogues: bool = False,
              quantize: Quantization | None = None) -> Report:
    """Every pass after capture: annotate, what-ifs, fuse, roofline, report. Sweeps call this on
    graphs they captured once."""
    gm = annotate(captured.gm)
    whatif = quantize_graph(gm, captured.weights, quantize, matmul_epilogues=matmul_epilogues)
    nodes = node_rows(gm)
    compiled = fuse(gm, matmul_epilogues=matmul_epilogues)
    eager = unfused(gm)
    memory = whatif.memory(footprint(gm, captured.weights))
    # A cache holds the weights and KV cache between passes only if everything fits in it.
    streamed = (state_reads(gm, captured.weights)
                if chip.cache_bytes and memory.total > chip.cache_bytes else {})
    return Report(
        model=captured.name, capture=captured.strategy, chip=chip, mode=mode, nodes=nodes,
        eager=ModeSummary("eager", kernel_rows(eager, chip, "eager", nodes, streamed)),
        compiled=ModeSummary("compiled", kernel_rows(compiled, chip, "compiled", nodes, streamed)),
        memory=memory, whatif=quantize.label if quantize else "", notes=whatif.notes)
