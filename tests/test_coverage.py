"""Coverage by construction: every op of PyTorch's core ATen opset has a formula, and ops without
one of their own (operator aliases, in-place and out= forms, composite ops) are costed as the
ops they are forms of. Expected values are hand arithmetic beside each."""
import pytest
import torch
from helpers import cost_of, fn_module, op_costs

from fxroof.cost.formulas import OpCall, call_cost, lookup

aten = torch.ops.aten
F32 = 4


def core_opset() -> list:
    """Every overload PyTorch tags torch.Tag.core: the opset a backend must implement."""
    found = []
    for qualified in torch._C._dispatch_get_all_op_names():
        namespace, _, name = qualified.partition("::")
        base, _, overload = name.partition(".")
        if namespace != "aten":
            continue
        try:
            op = getattr(getattr(aten, base), overload or "default")
        except (AttributeError, RuntimeError):   # registered but not exposed to Python
            continue
        if torch.Tag.core in op.tags:
            found.append(op)
    return found


def test_every_core_aten_op_has_a_formula():
    ops = core_opset()
    assert len(ops) > 150                          # the opset itself was found
    missing = sorted(str(op) for op in ops if lookup(op) is None)
    assert not missing, f"{len(missing)} core ATen ops have no cost formula: {missing}"


@pytest.mark.parametrize("op", [aten.view.default, aten.permute.default, aten.expand.default,
                                aten.select.int, aten.slice.Tensor, aten.split_with_sizes.default,
                                aten.as_strided.default, aten.diagonal.default])
def test_views_cost_nothing_by_their_schema(op):
    assert lookup(op).category == "view"


def _call(op, *args, **kwargs) -> OpCall:
    """The call `op(*args, **kwargs)`, run for real to get its output."""
    return OpCall(op, args, kwargs, op(*args, **kwargs))


@pytest.mark.parametrize("name", ["__and__", "__or__", "__xor__", "__lshift__", "__rshift__",
                                  "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__"])
def test_operator_aliases_cost_as_their_named_op(name):
    a, b = torch.arange(12).view(3, 4), torch.ones(3, 4, dtype=torch.long)
    c = call_cost(_call(getattr(aten, name).Tensor, a.clone(), b))
    # one op per element of the 3 x 4 result, both int64 operands read
    assert (c.flops, c.category, c.bytes_read) == (12, "pointwise", 2 * 12 * 8)


def test_an_out_variant_costs_as_its_op_and_does_not_read_its_buffer():
    a, b, buf = torch.randn(5, 6), torch.randn(5, 6), torch.empty(5, 6)
    c = call_cost(_call(aten.add.out, a, b, out=buf))
    assert c.flops == 30 and c.category == "pointwise"
    assert c.bytes_read == 2 * 30 * F32 and c.bytes_written == 30 * F32
    # an out= overload aten does not tag pointwise takes its functional overload's tag
    shifted = call_cost(_call(aten.__lshift__.Scalar_out, torch.arange(6), 1,
                              out=torch.empty(6, dtype=torch.long)))
    assert (shifted.flops, shifted.bytes_read) == (6, 6 * 8)


def test_ops_real_models_produce():
    x = torch.randn(4, 10)
    diff = cost_of(fn_module(torch.diff), "diff", x)           # (4, 9): one subtraction each
    assert (diff.flops, diff.bytes_read, diff.bytes_written) == (36, 40 * F32, 36 * F32)
    assert cost_of(fn_module(lambda t: t // 3), "floor_divide", x).flops == 40
    histc = cost_of(fn_module(lambda t: torch.histc(t, bins=10)), "histc", x)
    assert (histc.flops, histc.category) == (40, "reduction")  # one bin lookup per element
    polar = cost_of(fn_module(torch.polar), "polar", x.abs(), x)
    assert polar.flops == 40 and polar.bytes_written == 40 * 8   # complex64 out
    # type_as: a dtype conversion, a copy; fp32 read, fp16 written, the model's y a size only
    cast = cost_of(fn_module(lambda t, y: t.type_as(y)), "type_as", x, torch.ones(2).half())
    assert (cast.flops, cast.bytes_written, cast.category) == (0, 40 * 2, "copy")


def test_weight_norm_costs_its_norm_and_scale():
    conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(4, 6, 3), dim=2)
    (norm,) = [c for name, c in op_costs(conv, torch.randn(2, 4, 10)) if name == "_weight_norm"]
    assert norm.known and norm.flops == 3 * (6 * 4 * 3)   # square, sum, scale per weight element


def test_in_place_dropout_in_eval_is_free():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.5, inplace=True))
    assert [name for name, _ in op_costs(model.eval(), torch.randn(2, 8))] == ["linear"]


@pytest.fixture
def composite_ops():
    """Custom ops PyTorch implements in terms of others (CompositeImplicitAutograd), one of them
    calling an op with no formula; removed afterwards."""
    lib = torch.library.Library("fxroof_cov", "DEF")
    lib.define("scaled_mm(Tensor x, Tensor w) -> Tensor")
    lib.impl("scaled_mm", lambda x, w: (x @ w) * 2, "CompositeImplicitAutograd")
    lib.define("opaque(Tensor x) -> Tensor")
    lib.impl("opaque", lambda x: x.clone(), "CompositeExplicitAutograd")
    lib.define("calls_opaque(Tensor x) -> Tensor")
    lib.impl("calls_opaque", lambda x: torch.ops.fxroof_cov.opaque(x) + 1,
             "CompositeImplicitAutograd")
    try:
        yield torch.ops.fxroof_cov
    finally:
        lib._destroy()


def test_a_composite_custom_op_costs_the_ops_it_runs(composite_ops):
    x, w = torch.randn(3, 5), torch.randn(5, 7)
    c = call_cost(_call(composite_ops.scaled_mm.default, x, w))
    assert c.flops == 2 * 3 * 7 * 5 + 3 * 7        # the product (210), then the doubling (21)
    assert c.category == "matmul" and c.known
    assert c.bytes_read == (15 + 35) * F32 and c.bytes_written == 21 * F32   # one kernel
    # an op it runs has no formula: neither has it, and no FLOPs are guessed
    assert call_cost(_call(composite_ops.calls_opaque.default, x)) is None
