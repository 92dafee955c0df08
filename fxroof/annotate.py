"""Pass 1: write node.meta["fxroof.cost"] = Cost(...) on every call_function node.

Reads only node.meta["val"] (fake tensors) and the formula registry; changes nothing else.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
from torch.multiprocessing.reductions import StorageWeakRef

from .cost import COST_KEY, Cost
from .formulas import OpCall, lookup, pointwise
from .tensors import tensors_in


class AnnotationError(RuntimeError):
    """A formula failed on a node; the message names the node."""


def annotate(gm: fx.GraphModule) -> fx.GraphModule:
    for node in gm.graph.nodes:
        if node.op == "call_function":
            node.meta[COST_KEY] = node_cost(node)
    return gm


def _value(arg):
    return fx.node.map_arg(arg, lambda n: n.meta.get("val"))


def node_cost(node: fx.Node) -> Cost:
    target = node.target
    if target is operator.getitem or not _makes_tensors(node):
        return Cost(category="view")   # tuple unpacking, symbolic-size arithmetic: no kernel
    if not isinstance(target, torch._ops.OpOverload):
        return _unknown(node, OpCall(target, _value(node.args), _value(node.kwargs),
                                     node.meta.get("val")))
    call = OpCall(target, _value(node.args), _value(node.kwargs), node.meta.get("val"))
    try:
        if _aliases_input(call):
            return Cost(category="view")
        entry = lookup(target)
        if entry is not None:
            result = entry.fn(call)
            if isinstance(result, Cost):
                return result
            return Cost(int(result), call.bytes_read(), call.bytes_written(), entry.category,
                        call.dtype)
        if torch.Tag.pointwise in target.tags:
            return pointwise(call)
    except Exception as e:  # a formula bug must name the node, not surface as a bare traceback
        raise AnnotationError(f"cost formula for {target} failed on node "
                              f"{node.format_node()}: {type(e).__name__}: {e}") from e
    return _unknown(node, call)


def _makes_tensors(node: fx.Node) -> bool:
    val = node.meta.get("val")
    if tensors_in(val):
        return True
    # Ops that return nothing (asserts, in-place bookkeeping) still go through formulas.
    return val is None and isinstance(node.target, torch._ops.OpOverload)


def _unknown(node: fx.Node, call: OpCall) -> Cost:
    """No formula: keep the bytes we can see, count no FLOPs, and say so."""
    return Cost(0, call.bytes_read(), call.bytes_written(), "other", call.dtype, known=False,
                note="no cost formula")


def _aliases_input(call: OpCall) -> bool:
    """True when the op returns a view of an input: metadata only, no bytes move.

    Some ops alias only sometimes (reshape, to, contiguous, dropout in eval...): the fake tensors
    say whether this call did. In-place ops alias too, but they write, so they are not views.
    """
    schema = getattr(call.op, "_schema", None)
    infos = [r.alias_info for r in schema.returns] if schema is not None else []
    if any(info is not None and info.is_write for info in infos):
        return False
    outs, ins = call.outputs, call.inputs
    if not outs or not ins:
        return False
    try:
        storages = {StorageWeakRef(t.untyped_storage()) for t in ins}
        return all(StorageWeakRef(t.untyped_storage()) in storages for t in outs)
    except (RuntimeError, NotImplementedError):   # e.g. tensor subclasses without storage
        return any(info is not None for info in infos)
