"""Convolutions, 1/2/3-d, grouped and transposed. Bias adds are not counted (PyTorch's convention)."""
from __future__ import annotations

import math

import torch

from ..cost import Cost
from ..tensors import dtype_name
from .registry import OpCall, formula

aten = torch.ops.aten


def _conv_flops(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, transposed: bool) -> int:
    """2 * batch * prod(weight shape) * prod(spatial positions the weight is applied at).

    Normal conv: weight (C_out, C_in/g, *k) is applied at every output position.
    Transposed conv: weight (C_in, C_out/g, *k) is applied at every input position.
    """
    spatial_dims = w.dim() - 2
    batched = x.dim() == w.dim()
    batch = int(x.shape[0]) if batched else 1
    positions = (x if transposed else out).shape[-spatial_dims:]
    return 2 * batch * math.prod(int(s) for s in w.shape) * math.prod(int(s) for s in positions)


def _cost(call: OpCall, transposed: bool) -> Cost:
    x, w = call.args[0], call.args[1]
    return Cost(_conv_flops(x, w, call.out, transposed), call.bytes_read(), call.bytes_written(),
                "conv", dtype_name(x.dtype))


@formula(aten.convolution, aten._convolution, category="conv")
def convolution(call: OpCall):
    return _cost(call, bool(call.get("transposed", False)))


@formula(aten.conv1d, aten.conv2d, aten.conv3d, aten.cudnn_convolution,
         aten.mkldnn_convolution, category="conv")
def conv(call: OpCall):
    return _cost(call, transposed=False)


@formula(aten.conv_transpose1d, aten.conv_transpose2d, aten.conv_transpose3d,
         aten.cudnn_convolution_transpose, category="conv")
def conv_transpose(call: OpCall):
    return _cost(call, transposed=True)
