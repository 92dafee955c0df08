"""Pass 1: write node.meta["fxroof.cost"] = Cost(...) on every call_function node.

Reads only node.meta["val"] (fake tensors) and the formula registry; changes nothing else.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx

from fxroof.cost.formulas import OpCall, lookup, pointwise
from fxroof.cost.record import COST_KEY, Cost
from fxroof.graph.tensors import storage, tensors_in


class AnnotationError(RuntimeError):
    """A formula failed on a node; the message names the node."""


def annotate(gm: fx.GraphModule) -> fx.GraphModule:
    for node in gm.graph.nodes:
        if node.op == "call_function":
            node.meta[COST_KEY] = node_cost(node)
    return gm


def node_cost(node: fx.Node) -> Cost:
    if node.target is operator.getitem or not _makes_tensors(node):
        return Cost(category="view")   # tuple unpacking, symbolic-size arithmetic: no kernel
    call = OpCall.of(node)
    if not isinstance(node.target, torch._ops.OpOverload):
        return _unknown(call)
    try:
        if _aliases_input(call):
            return Cost(category="view")
        cost = formula_cost(call)
    except Exception as e:  # a formula bug must name the node, not surface as a bare traceback
        raise AnnotationError(f"cost formula for {node.target} failed on node "
                              f"{node.format_node()}: {type(e).__name__}: {e}") from e
    return _unknown(call) if cost is None else cost


def formula_cost(call: OpCall) -> Cost | None:
    """The call's Cost by its op's registered formula, or as pointwise work where the op's tags
    say it is; None without either."""
    entry = lookup(call.op)
    if entry is not None:
        result = entry.fn(call)
        return result if isinstance(result, Cost) else call.cost(int(result), entry.category)
    return pointwise(call) if torch.Tag.pointwise in call.op.tags else None


def _makes_tensors(node: fx.Node) -> bool:
    val = node.meta.get("val")
    if tensors_in(val):
        return True
    # Ops that return nothing (asserts, in-place bookkeeping) still go through formulas.
    return val is None and isinstance(node.target, torch._ops.OpOverload)


def _unknown(call: OpCall) -> Cost:
    """No formula: keep the bytes we can see, count no FLOPs, and say so."""
    return call.cost(0, "other", known=False, note="no cost formula")


def _aliases_input(call: OpCall) -> bool:
    """True when the op returns a view of an input: metadata only, no bytes move.

    Some ops alias only sometimes (reshape, to, contiguous, dropout in eval...): the fake tensors
    say whether this call did. In-place ops alias too, but they write, so they are not views.
    """
    schema = getattr(call.op, "_schema", None)
    infos = [r.alias_info for r in schema.returns] if schema is not None else []
    if any(info is not None and info.is_write for info in infos):
        return False
    outs, ins = [storage(t) for t in call.outputs], {storage(t) for t in call.inputs}
    if not outs or not ins:
        return False
    if any(s is None for s in (*ins, *outs)):   # subclasses without storage: the schema says
        return any(info is not None for info in infos)
    return all(s in ins for s in outs)
