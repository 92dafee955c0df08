"""Whether a compiled program runs its convolutions channels-last: Inductor's layout optimization.

A GPU library runs a channels-first convolution through transposes of its input and filter to
the channels-last layout of its tensor-core kernels (Cost.relayout). Eager PyTorch keeps the
layout the model has; torch.compile converts a convolution-heavy graph to channels-last once, so
its convolutions run none, unless its heuristic judges channels-last slower for the graph's
convolutions. This is that heuristic, as torch/_inductor/graph.py writes it
(GraphLowering.decide_layout_opt, PyTorch 2.13), on fxroof's captured graph; tests check it
against Inductor's own on the same graphs.
"""
from __future__ import annotations

import torch
import torch.fx as fx

from fxroof.cost import COST_KEY
from fxroof.graph.aten_ops import aten

CONVOLUTIONS = frozenset({aten.convolution, aten._convolution, aten.conv1d, aten.conv2d,
                          aten.conv3d})
BACKWARDS = frozenset({aten.convolution_backward})
# Inductor's measured channels-last time over channels-first, by kind of convolution (its
# benchmarks of torchbench's convolutions); it converts an inference graph when the FLOP-weighted
# mean is at most 1.
GROUPED, DEFAULT, IN_OUT, SMALL = 1.358, 0.823, 0.725, 0.783
# A graph of many ops and few convolutions stays as it is (Inductor: 300 nodes a convolution).
NODES_PER_CONV = 300


def channels_last_convs(gm: fx.GraphModule, *, training: bool) -> bool:
    """True where torch.compile would run this graph's convolutions channels-last."""
    convs = [n for n in gm.graph.nodes if n.op == "call_function"
             and getattr(n.target, "overloadpacket", None) in CONVOLUTIONS]
    if not convs or len(gm.graph.nodes) >= NODES_PER_CONV * len(convs):
        return False
    try:
        shapes = [_shapes(n) for n in convs]
    except (TypeError, ValueError, KeyError, AttributeError, IndexError):  # symbolic: Inductor
        return False                                                        # skips dynamic shapes
    if training:   # channels-last can be many times slower for grouped convolutions' backward
        return not any(_grouped(*s) or _in_out(s[1]) for s in shapes) \
            and not all(_small(s[1]) for s in shapes)
    kinds = [_kind(*s) for s in shapes]
    flops = [getattr(n.meta.get(COST_KEY), "flops", 0) for n in convs]
    weights = {"grouped": GROUPED, "default": DEFAULT, "in_out": IN_OUT, "small": SMALL}
    return sum(f * weights[k] for f, k in zip(flops, kinds)) <= sum(flops)


def channels_last_nodes(gm: fx.GraphModule, *, training: bool) -> frozenset:
    """Names of the convolution nodes, forward and backward, that torch.compile runs on
    channels-last tensors: the 2-d ones (Inductor converts only those, kernel/conv.py: "layout_opt
    and ndim == 2"), where it converts the graph at all; none otherwise."""
    if not channels_last_convs(gm, training=training):
        return frozenset()
    return frozenset(n.name for n in gm.graph.nodes if n.op == "call_function"
                     and getattr(n.target, "overloadpacket", None) in CONVOLUTIONS | BACKWARDS
                     and _spatial_dims(n) == 2)


def _spatial_dims(node: fx.Node) -> int:
    """Spatial dims of a convolution node's weight (2 for a conv2d); 0 where unknown."""
    at = 2 if node.target.overloadpacket in BACKWARDS else 1
    weight = node.args[at].meta.get("val") if len(node.args) > at else None
    return weight.dim() - 2 if isinstance(weight, torch.Tensor) else 0


def _shapes(node: fx.Node) -> tuple:
    """(groups, weight shape) of a convolution node: convolution's ninth argument, conv2d's
    seventh."""
    at = 8 if node.target.overloadpacket in (aten.convolution, aten._convolution) else 6
    groups = node.args[at] if len(node.args) > at else node.kwargs.get("groups", 1)
    return int(groups), [int(d) for d in node.args[1].meta["val"].shape]


def _kind(groups: int, weight: list) -> str:
    """Inductor's kinds: grouped (groups > 1 with more than one channel a group), small (64 or
    fewer channels in and out), in_out (at least twice as many in as out, not 1x1), default."""
    if _grouped(groups, weight):
        return "grouped"
    if _small(weight):
        return "small"
    return "in_out" if _in_out(weight) else "default"


def _grouped(groups: int, weight: list) -> bool:
    return groups > 1 and weight[1] > 1


def _small(weight: list) -> bool:
    return weight[0] <= 64 and weight[1] <= 64


def _in_out(weight: list) -> bool:
    return weight[0] * 2 <= weight[1] and len(weight) > 2 and weight[2] > 1
