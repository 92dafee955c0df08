"""Per-op cost formulas. Importing this package fills the one registry."""
from fxroof.cost.formulas import attention, collective, conv, elementwise, matmul, memory
from fxroof.cost.formulas.elementwise import pointwise
from fxroof.cost.formulas.registry import FORMULAS, OpCall, lookup, register_formula

__all__ = ["FORMULAS", "OpCall", "lookup", "pointwise", "register_formula"]
