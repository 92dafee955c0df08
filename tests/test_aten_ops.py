"""Op tables that name an aten op the installed torch lacks still load (users run older torch)."""
import torch

from fxroof.cost.formulas.registry import FORMULAS, register_formula
from fxroof.graph.aten_ops import MissingOp, aten, present


def test_an_op_this_torch_lacks_is_a_missing_op_and_its_overloads_too():
    op = aten.no_such_op_in_any_release
    assert isinstance(op, MissingOp) and isinstance(op.default, MissingOp)
    assert "not in torch" in repr(op)
    assert aten.mm is torch.ops.aten.mm
    assert present([aten.mm, op]) == [torch.ops.aten.mm]


def test_registering_a_formula_for_a_missing_op_registers_nothing():
    before = dict(FORMULAS)
    register_formula(aten.no_such_op_in_any_release, category="pointwise",
                     fn=lambda call: None)
    assert FORMULAS == before
