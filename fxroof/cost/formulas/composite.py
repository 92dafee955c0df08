"""Cost by decomposition: an op without a formula that PyTorch implements in terms of other ops
(a CompositeImplicitAutograd kernel: `diff`, `type_as`, `_weight_norm`, many custom ops) costs
the FLOPs of the ops it runs, found by running that kernel on the call's fake tensors and costing
each op it dispatches. It is costed as one kernel (its inputs read once, its outputs written
once), in the category of the op doing most of its FLOPs. An op it runs that has no formula
leaves it without one.
"""
from __future__ import annotations

import torch
from torch._guards import detect_fake_mode
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from fxroof.cost.formulas.registry import RULES, Entry, OpCall, call_cost
from fxroof.cost.record import Cost


class _Recorder(TorchDispatchMode):
    """Every op dispatched below the composite kernel, as an OpCall."""

    def __init__(self):
        super().__init__()
        self.calls: list[OpCall] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.calls.append(OpCall(func, args, kwargs or {}, out))
        return out


def decomposed(call: OpCall) -> Cost | None:
    # shapes only, never real work or memory: a fake mode, the graph's own where it has one
    fake = detect_fake_mode(call.inputs) or FakeTensorMode(allow_non_fake_inputs=True)
    try:
        with fake, _Recorder() as recorder:
            call.op.decompose(*call.args, **call.kwargs)
    except Exception:   # the kernel needs data fake tensors lack: no formula, said so
        return None
    costs = [(c.op, call_cost(c)) for c in recorder.calls if c.outputs]
    if any(cost is None for _, cost in costs):
        return None
    work = [(op, cost) for op, cost in costs if cost.category != "view"]
    if not work:
        return Cost(category="view")   # it only reshapes its input
    main = max(work, key=lambda w: w[1].flops)[1]
    names = dict.fromkeys(op.overloadpacket.__name__ for op, _ in work)
    return call.cost(sum(cost.flops for _, cost in work), main.category,
                     note="as " + " + ".join(names))


def _composite(op) -> Entry | None:
    try:
        found = op.has_kernel_for_dispatch_key(torch._C.DispatchKey.CompositeImplicitAutograd)
    except RuntimeError:   # an overload only TorchScript knows (aten::add.default)
        found = False
    return _ENTRY if found else None


_ENTRY = Entry(decomposed, "other")
RULES.append(_composite)
