"""fxroof: where a PyTorch model's time goes on a given chip, and why.

    report = fxroof.analyze(model, example_inputs, chip="h100-sxm")
    print(report)                 # tables: regimes, top kernels, modules, eager vs compiled
    report.to_dict()              # the JSON schema "fxroof.report/1"

The pipeline, one package per stage: graph/ (capture) -> cost/ (FLOPs and bytes) -> fuse/
(kernels) -> chips/ (the time model) -> report/; studies/ build on analyze, measure/ checks it
against a real run, cli/ is the command.
"""
import importlib

from fxroof.chips import Chip, ChipError, chip
from fxroof.cost import Cost, OpCall, register_formula
from fxroof.cost.whatif import Quantization
from fxroof.graph import CaptureError, Footprint
from fxroof.pipeline import Target, analyze
from fxroof.report import KernelRow, ModeSummary, NodeRow, Report

# Studies need sympy and dynamo; they load on first use, so that `import fxroof` stays light.
_LAZY = {"Sweep": "fxroof.studies.sweep", "sweep": "fxroof.studies.sweep",
         "generation": "fxroof.studies.llm", "critical_batch": "fxroof.studies.llm",
         "Generation": "fxroof.studies.llm", "CriticalBatch": "fxroof.studies.llm"}

__all__ = ["CaptureError", "Chip", "ChipError", "Cost", "CriticalBatch", "Footprint",
           "Generation", "KernelRow", "ModeSummary", "NodeRow", "OpCall", "Quantization",
           "Report", "Sweep", "Target", "analyze", "chip", "critical_batch", "generation",
           "register_formula", "sweep"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fxroof' has no attribute {name!r}")
