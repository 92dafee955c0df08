"""fxroof: where a PyTorch model's time goes on a given chip, and why."""
from .capture import CaptureError
from .cost import Cost
from .formulas import register_formula

__all__ = ["CaptureError", "Cost", "register_formula"]
