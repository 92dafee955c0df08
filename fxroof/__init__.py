"""fxroof: where a PyTorch model's time goes on a given chip, and why.

    report = fxroof.analyze(model, example_inputs, chip="h100-sxm")
    print(report)                 # tables: regimes, top kernels, modules, eager vs compiled
    report.to_dict()              # the JSON schema "fxroof.report/1"
"""
from . import llm
from .api import analyze
from .capture import CaptureError
from .chips import Chip, ChipError, chip, chips
from .cost import Cost
from .formulas import register_formula
from .report import Report
from .sweep import Sweep, sweep
from .whatif import Quantization

__all__ = ["CaptureError", "Chip", "ChipError", "Cost", "Quantization", "Report", "Sweep",
           "analyze", "chip", "chips", "llm", "register_formula", "sweep"]
