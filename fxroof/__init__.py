"""fxroof: where a PyTorch model's time goes on a given chip, and why.

    report = fxroof.analyze(model, example_inputs, chip="h100-sxm")
    print(report)                 # tables: regimes, top kernels, modules, eager vs compiled
    report.to_dict()              # the JSON schema "fxroof.report/1"

The pipeline, one package per stage: graph/ (capture) -> cost/ (FLOPs and bytes) -> fuse/
(kernels) -> chips/ (the time model) -> report/; studies/ build on analyze, measure/ checks it
against a real run, cli/ is the command.
"""
import importlib

# Every name loads on first use (torch, sympy, dynamo), so that importing the package, and with
# it `fxroof --help`, stays light.
_LAZY = {**dict.fromkeys(("Chip", "ChipError", "chip"), "fxroof.chips"),
         **dict.fromkeys(("Cost", "OpCall", "register_formula"), "fxroof.cost"),
         "Quantization": "fxroof.cost.whatif",
         **dict.fromkeys(("CaptureError", "Footprint"), "fxroof.graph"),
         **dict.fromkeys(("Target", "analyze"), "fxroof.pipeline"),
         **dict.fromkeys(("KernelRow", "ModeSummary", "NodeRow", "Report"), "fxroof.report"),
         **dict.fromkeys(("Sweep", "sweep"), "fxroof.studies.sweep"),
         **dict.fromkeys(("generation", "critical_batch", "Generation", "CriticalBatch"),
                         "fxroof.studies.llm"),
         "compare_trace": "fxroof.measure.profile_trace"}

__all__ = ["CaptureError", "Chip", "ChipError", "Cost", "CriticalBatch", "Footprint",
           "Generation", "KernelRow", "ModeSummary", "NodeRow", "OpCall", "Quantization",
           "Report", "Sweep", "Target", "analyze", "chip", "compare_trace", "critical_batch",
           "generation", "register_formula", "sweep"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fxroof' has no attribute {name!r}")
