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


def cpu_library(call: OpCall) -> str:
    """"onednn" or "native": the implementation a CPU build of PyTorch runs this convolution
    with ("" on a GPU). PyTorch's own rule (ConvParams::use_mkldnn, aten/src/ATen/native/
    Convolution.cpp): half precision always goes to oneDNN; fp32 does unless the call is small
    and simple, where PyTorch's im2col code is faster. Entering oneDNN on a small input costs
    about 50 us on a server CPU against 5-15 us for the native code (`fxroof calibrate`)."""
    x, w = call.args[0], call.args[1]
    if x.device.type not in ("cpu", "meta"):
        return ""
    if x.dtype in (torch.bfloat16, torch.float16):
        return "onednn"
    if x.dtype != torch.float32:
        return "native"
    if w.dim() == 3:                 # conv1d runs as a 2-d convolution of height 1
        x, w = x.unsqueeze(-2), w.unsqueeze(-2)
    batched = x.dim() == w.dim()
    batch = int(x.shape[0]) if batched else 1
    kh, kw = int(w.shape[-2]), int(w.shape[-1])
    strided = any(int(s) != 1 for s in call.get("stride", [1]))
    dilated = any(int(d) != 1 for d in call.get("dilation", [1]))
    groups = int(call.get("groups", 1) or 1)
    shape = tuple(int(s) for s in x.shape) if batched else (1, *(int(s) for s in x.shape))
    size = math.prod(shape[:4])                     # PyTorch's rule multiplies the first four
    # the one clause that reads the process, not the call: a 1x1 stride-1 convolution on a
    # batch under 16 goes to oneDNN only when torch runs on several threads
    worth_it = (strided or dilated or batch >= 16 or (kh, kw) != (1, 1)
                or torch.get_num_threads() > 1)
    large = groups > 1 or (kh > 3 and kw > 3) or batch > 1 or size > 20480
    return "onednn" if worth_it and large else "native"


def _cost(call: OpCall, transposed: bool) -> Cost:
    x, w = call.args[0], call.args[1]
    return Cost(_conv_flops(x, w, call.out, transposed), call.bytes_read(), call.bytes_written(),
                "conv", dtype_name(x.dtype), variant=cpu_library(call))


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
