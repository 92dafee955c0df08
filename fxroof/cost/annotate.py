"""Pass 1: write node.meta["fxroof.cost"] = Cost(...) on every call_function node.

Reads only node.meta["val"] (fake tensors) and the formula registry; changes nothing else.
"""
from __future__ import annotations

import dataclasses
import math
import operator

import torch
import torch.fx as fx

from fxroof.cost.formulas import OpCall
from fxroof.cost.formulas import call_cost as formula_cost
from fxroof.cost.record import COST_KEY, MATRIX_CATEGORIES, Cost
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
    return _unknown(call) if cost is None else with_grid(node, cost)


# Ops whose kernel walks rows, and so carries (rows, row elements) as its grid
# (chips/launch.py prices the waits): a layer norm a row per block, a row gather an index a step.
_ROW_NORMS = frozenset({torch.ops.aten.layer_norm.default,
                        torch.ops.aten.native_layer_norm.default})
_ROW_GATHERS = frozenset({torch.ops.aten.embedding.default, torch.ops.aten.index_select.default})
# Batch norms that compute a batch's statistics (or their gradient), which carry (channels,
# elements a channel, passes) as their grid where the input is channels-first: PyTorch's CUDA
# kernels then give each channel one block (chips/launch.channel_blocks prices the waits).
_TRAINING_NORMS = frozenset({"native_batch_norm", "_native_batch_norm_legit",
                             "_native_batch_norm_legit_functional", "cudnn_batch_norm",
                             "batch_norm", "_batch_norm_with_update", "instance_norm"})
_TRAINING_NORM_GRADS = frozenset({"native_batch_norm_backward", "batch_norm_backward",
                                  "cudnn_batch_norm_backward"})
# Group norms over a channels-first tensor, which carry (rows, row elements) as their grid: the
# moments a block a (sample, group), the gradient's sums a block a (sample, channel)
# (chips/launch.group_rows).
_GROUP_NORMS = frozenset({"group_norm", "native_group_norm"})
_GROUP_NORM_GRADS = frozenset({"native_group_norm_backward"})


def with_grid(node: fx.Node, cost: Cost) -> Cost:
    """`cost` with, for a matrix op, the GEMM a library tiles (chips/expected.py reads it):
    (batch, M, N, K) of its output (a batched product's batch; attention's batch x heads by
    queries by head size; a convolution's implicit GEMM, images x pixels by channels, none for
    grouped ones, which do not run as one GEMM; else the output folded to rows by its last dim)
    and K, the multiply-adds per output element; for a layer norm (rows, row elements), for an
    embedding or index_select (indices, row elements, element bytes); for a training batch norm
    (or an instance norm) over a channels-first tensor (channels, elements a channel, passes),
    for a group norm there its reduction's (rows, row elements). None where the shapes are not
    plain ints. A formula that knows its kernel's grid gives it, and keeps it."""
    if cost.grid:
        return cost
    out = node.meta.get("val")
    out = out[0] if isinstance(out, (tuple, list)) and out else out
    packet = getattr(getattr(node.target, "overloadpacket", None), "__name__", "")
    if packet in _NORM_GRIDS:
        rule, backward = _NORM_GRIDS[packet]
        try:
            grid = rule(OpCall.of(node), backward)
        except (TypeError, ValueError, RuntimeError):     # symbolic sizes
            return cost
        return dataclasses.replace(cost, grid=grid) if grid else cost
    if node.target in _ROW_NORMS or node.target in _ROW_GATHERS:
        try:
            rows = _rows(node, out)
        except (TypeError, ValueError, IndexError):   # symbolic
            return cost
        if not rows:
            return cost
        grid = (rows, int(out.numel()) // rows)
        # a gather's launch depends on its rows' bytes (chips/launch.gather)
        return dataclasses.replace(cost, grid=grid if node.target in _ROW_NORMS
                                   else (*grid, out.element_size()))
    if cost.category not in MATRIX_CATEGORIES or not isinstance(out, torch.Tensor) \
            or out.dim() < 2 or not cost.flops:
        return cost
    try:
        shape = [int(d) for d in out.shape]
        name = getattr(getattr(node.target, "overloadpacket", None), "__name__", "")
        if cost.category == "attention" and len(shape) == 4:
            bmn = (shape[0] * shape[1], shape[2], shape[3])
        elif cost.category == "conv":
            weight = node.args[1].meta["val"]
            if int(node.args[0].meta["val"].shape[1]) != int(weight.shape[1]):
                return cost   # grouped: no single GEMM
            bmn = (1, shape[0] * math.prod(shape[2:]), shape[1])
        elif name in ("bmm", "baddbmm") and len(shape) == 3:
            bmn = tuple(shape)
        else:
            bmn = (1, math.prod(shape) // shape[-1], shape[-1])
        k = max(1, round(cost.flops / (2 * math.prod(bmn))))
        return dataclasses.replace(cost, grid=(*bmn, k))
    except (TypeError, ValueError, AttributeError, KeyError, IndexError):   # symbolic, or no meta
        return cost


def _channel_grid(call: OpCall, backward: bool) -> tuple:
    """A training batch norm's (channels, elements a channel, passes) over a channels-first
    input: the statistics' one pass; the gradient's sums, then dx from the same blocks where dx
    is asked for (output_mask[0]). () for an inference norm, or a channels-last or 2-d input,
    which other kernels run."""
    x = call.get("input")
    flag = next((v for v in map(call.get, ("training", "train", "update", "use_input_stats"))
                 if v is not None), True)
    channels = _channels_first(x)
    if getattr(call.op, "overloadpacket", None) is torch.ops.aten.instance_norm:
        # ATen runs it as a batch norm over the input made contiguous and viewed as one image
        # of samples x channels (Normalization.cpp, instance_norm): a block a (sample, channel)
        channels = int(x.shape[0]) * int(x.shape[1]) \
            if isinstance(x, torch.Tensor) and x.dim() >= 3 else 0
    if not flag or not channels:
        return ()
    mask = call.get("output_mask") or (True, True, True)
    return (channels, int(x.numel()) // channels, 2 if backward and mask[0] else 1)


def _group_grid(call: OpCall, backward: bool) -> tuple:
    """A group norm's (rows, row elements) over a channels-first input of 3 dimensions or more:
    its moments' rows, a (sample, group) each, of channels / groups x pixels; its gradient's
    sums, a (sample, channel) each, of the pixels. () for another layout."""
    x = call.get("input")
    channels = _channels_first(x)
    groups = call.get("group") if call.get("group") is not None else call.get("num_groups")
    if not channels or not isinstance(groups, int) or groups < 1 or channels % groups:
        return ()
    samples, pixels = int(x.shape[0]), int(x.numel()) // (int(x.shape[0]) * channels)
    return (samples * channels, pixels) if backward else \
        (samples * groups, channels // groups * pixels)


# op name: (its grid's rule, whether it is a gradient)
_NORM_GRIDS = {**dict.fromkeys(_TRAINING_NORMS, (_channel_grid, False)),
               **dict.fromkeys(_TRAINING_NORM_GRADS, (_channel_grid, True)),
               **dict.fromkeys(_GROUP_NORMS, (_group_grid, False)),
               **dict.fromkeys(_GROUP_NORM_GRADS, (_group_grid, True))}
# the ops that carry each kind of grid, for the launch that prices it (chips/launch.py)
CHANNEL_NORMS = _TRAINING_NORMS | _TRAINING_NORM_GRADS
GROUP_NORMS = _GROUP_NORMS | _GROUP_NORM_GRADS


def _channels_first(x) -> int:
    """The channels of a contiguous tensor of 3 dimensions or more that is not also channels-last
    (one pixel is both, and takes either kernel); 0 for any other, or a layout not known."""
    if not isinstance(x, torch.Tensor) or x.dim() < 3:
        return 0
    try:
        last = x.dim() in (4, 5) and x.is_contiguous(
            memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
        return int(x.shape[1]) if x.is_contiguous() and not last else 0
    except (RuntimeError, TypeError, ValueError):    # symbolic sizes or strides
        return 0


def _rows(node: fx.Node, out) -> int:
    """The rows a row kernel walks: a layer norm's input over its normalized shape, a gather's
    indices; 0 where they do not divide its output."""
    if not isinstance(out, torch.Tensor):
        return 0
    if node.target in _ROW_NORMS:
        rows = int(out.numel()) // max(1, math.prod(int(d) for d in node.args[1]))
    else:
        rows = int(OpCall.of(node).inputs[1].numel())    # the source, then the indices
    return rows if rows and int(out.numel()) % rows == 0 else 0


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
