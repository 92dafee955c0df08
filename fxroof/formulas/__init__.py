"""Per-op cost formulas. Importing this package fills the one registry."""
from . import attention, conv, elementwise, matmul, memory  # noqa: F401  (each registers its ops)
from .elementwise import pointwise
from .registry import FORMULAS, OpCall, lookup, register_formula

__all__ = ["FORMULAS", "OpCall", "lookup", "pointwise", "register_formula"]
