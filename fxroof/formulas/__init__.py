"""Per-op cost formulas. Importing this package fills the one registry."""
from . import attention, collective, conv, elementwise, matmul, memory  # noqa: F401  (registers)
from .elementwise import pointwise
from .registry import FORMULAS, OpCall, lookup, register_formula

__all__ = ["FORMULAS", "OpCall", "lookup", "pointwise", "register_formula"]
