"""Per-op cost formulas. Importing this package fills the one registry; the import order fixes
the order of its rules: pointwise by tag (elementwise), views by schema (memory), then cost by
decomposition (composite), the last resort."""
from fxroof.cost.formulas import (attention, backward, collective, conv, elementwise, matmul,
                                   memory, recurrent)
from fxroof.cost.formulas import moe  # noqa: I001  (its rule names one op: before composite)
from fxroof.cost.formulas import composite  # after the rules above: see the docstring
from fxroof.cost.formulas.elementwise import pointwise
from fxroof.cost.formulas.registry import FORMULAS, OpCall, call_cost, lookup, register_formula

__all__ = ["FORMULAS", "OpCall", "call_cost", "lookup", "pointwise", "register_formula"]
