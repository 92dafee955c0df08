"""fxroof: where a PyTorch model's time goes on a given chip, and why.

    report = fxroof.analyze(model, example_inputs, chip="h100-sxm")
    print(report)                 # tables: regimes, top kernels, modules, eager vs compiled
    report.to_dict()              # the JSON schema "fxroof.report/1"
"""
from .api import analyze
from .capture import CaptureError
from .chips import Chip, ChipError, chip, chips
from .cost import Cost
from .formulas import register_formula
from .report import Report

__all__ = ["CaptureError", "Chip", "ChipError", "Cost", "Report", "analyze", "chip", "chips",
           "register_formula"]
