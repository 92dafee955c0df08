"""Stage 2, cost: each node's FLOPs and bytes (Cost), from one registry of formulas, and the
quantization what-ifs that rewrite them."""
from fxroof.cost.annotate import annotate
from fxroof.cost.formulas import OpCall, register_formula
from fxroof.cost.record import (CATEGORIES, COST_KEY, FREE_CATEGORIES, KERNEL_KEY,
                                MATRIX_CATEGORIES, Cost)

__all__ = ["CATEGORIES", "COST_KEY", "Cost", "FREE_CATEGORIES", "KERNEL_KEY",
           "MATRIX_CATEGORIES", "OpCall", "annotate", "register_formula"]
