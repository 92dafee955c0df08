"""Vector work: pointwise ops, reductions, softmax, norms, scans, sorts, pooling, resampling.

These run on vector units and are almost always memory-bound, so their FLOP counts only need to be
the right order: one FLOP per output element for pointwise ops, one per input element for
reductions, a handful per element for softmax and norms (counts written beside each).
"""
from __future__ import annotations

import math

import torch

from ..cost import Cost
from ..tensors import dtype_name, numel
from .registry import OpCall, formula

aten = torch.ops.aten


def pointwise(call: OpCall) -> Cost:
    """The formula for any op tagged torch.Tag.pointwise: one FLOP per output element."""
    outs = call.outputs
    ref = outs[0] if outs else None
    return Cost(sum(numel(t) for t in outs), call.bytes_read(), call.bytes_written(), "pointwise",
                dtype_name(ref.dtype) if ref is not None else "")


# Pointwise in effect, but not tagged so in aten.
formula(aten.dropout, aten.native_dropout, aten.feature_dropout, aten.alpha_dropout,
        aten.gelu, aten.silu, aten.mish, aten.hardswish, aten.hardsigmoid, aten.softplus,
        aten.elu, aten.leaky_relu, aten.relu6, aten.hardtanh, aten.celu, aten.selu,
        aten.masked_fill, aten.where, aten.clamp, aten.tril, aten.triu,
        aten.lerp, aten.threshold, aten.prelu, aten.glu,
        category="pointwise", fn=pointwise)


def _first_tensor(call: OpCall) -> torch.Tensor:
    return call.inputs[0]


def _vector(call: OpCall, flops: int, category: str) -> Cost:
    return Cost(flops, call.bytes_read(), call.bytes_written(), category,
                dtype_name(_first_tensor(call).dtype))


@formula(aten.sum, aten.mean, aten.amax, aten.amin, aten.max, aten.min, aten.prod,
         aten.argmax, aten.argmin, aten.all, aten.any, aten.count_nonzero, aten.norm,
         aten.linalg_vector_norm, aten.logsumexp, aten.nansum, aten.aminmax,
         category="reduction")
def reduction(call: OpCall):
    return _vector(call, numel(_first_tensor(call)), "reduction")  # one op per element read


@formula(aten.var, aten.std, aten.var_mean, aten.std_mean, category="reduction")
def variance(call: OpCall):
    return _vector(call, 3 * numel(_first_tensor(call)), "reduction")  # sum, centre, square-sum


@formula(aten.softmax, aten._softmax, aten.log_softmax, aten._log_softmax, aten._safe_softmax,
         category="reduction")
def softmax(call: OpCall):
    # max, subtract, exp, sum, divide: 5 per element
    return _vector(call, 5 * numel(_first_tensor(call)), "reduction")


@formula(aten.layer_norm, aten.native_layer_norm, aten.rms_norm, aten._fused_rms_norm,
         aten.group_norm, aten.native_group_norm, aten.instance_norm,
         category="norm")
def norm(call: OpCall):
    # mean, centre, square, sum, scale by rsqrt, affine multiply-add: about 5 per element
    return _vector(call, 5 * numel(_first_tensor(call)), "norm")


@formula(aten.batch_norm, aten.native_batch_norm, aten._native_batch_norm_legit,
         aten._native_batch_norm_legit_no_training, aten._native_batch_norm_legit_functional,
         aten.cudnn_batch_norm, aten._batch_norm_with_update, aten._batch_norm_no_update,
         category="norm")
def batch_norm(call: OpCall):
    # inference: (x - mean) * rsqrt(var + eps) * w + b: 4 per element
    return _vector(call, 4 * numel(_first_tensor(call)), "norm")


@formula(aten.cumsum, aten.cumprod, aten.logcumsumexp, aten.cummax, aten.cummin,
         category="reduction")
def scan(call: OpCall):
    return _vector(call, numel(_first_tensor(call)), "reduction")


@formula(aten.sort, aten.argsort, aten.topk, aten.kthvalue, aten.msort, aten.median,
         aten.nanmedian, aten.mode, aten.unique_consecutive, aten._unique2, category="other")
def sort(call: OpCall):
    x = _first_tensor(call)
    dim = call.get("dim", -1)
    n = int(x.shape[dim]) if x.dim() and isinstance(dim, int) else numel(x)
    # a comparison sort touches each element about log2(n) times
    return _vector(call, numel(x) * max(1, math.ceil(math.log2(max(n, 2)))), "other")


def _window(call: OpCall) -> int:
    """Taps in one pooling window; an int kernel_size means the same size in every dim."""
    dims = int(next(c for c in call.op.__name__ if c.isdigit()))   # max_pool2d -> 2
    kernel = call.get("kernel_size", 1)
    kernel = list(kernel) if isinstance(kernel, (list, tuple)) else [kernel]
    return math.prod(kernel * dims if len(kernel) == 1 else kernel)


@formula(aten.max_pool1d, aten.max_pool2d, aten.max_pool3d, aten.max_pool2d_with_indices,
         aten.max_pool3d_with_indices, aten.avg_pool1d, aten.avg_pool2d, aten.avg_pool3d,
         category="reduction")
def pool(call: OpCall):
    out = call.outputs[0]
    return _vector(call, numel(out) * _window(call), "reduction")  # one op per window tap


@formula(aten.adaptive_avg_pool1d, aten.adaptive_avg_pool2d, aten.adaptive_avg_pool3d,
         aten._adaptive_avg_pool2d, aten._adaptive_avg_pool3d, aten.adaptive_max_pool1d,
         aten.adaptive_max_pool2d, aten.adaptive_max_pool3d, category="reduction")
def adaptive_pool(call: OpCall):
    return _vector(call, numel(_first_tensor(call)), "reduction")  # every input in one window


_TAPS = {"nearest": 1, "linear": 2, "bilinear": 4, "bicubic": 16, "trilinear": 8}


@formula(aten.upsample_nearest1d, aten.upsample_nearest2d, aten.upsample_nearest3d,
         aten._upsample_nearest_exact1d, aten._upsample_nearest_exact2d,
         aten._upsample_nearest_exact3d, aten.upsample_linear1d, aten.upsample_bilinear2d,
         aten._upsample_bilinear2d_aa, aten.upsample_bicubic2d, aten._upsample_bicubic2d_aa,
         aten.upsample_trilinear3d, category="pointwise")
def upsample(call: OpCall):
    name = call.op.__name__
    taps = next((n for key, n in _TAPS.items() if key in name), 1)
    # each output element blends `taps` inputs: a multiply-add each
    return _vector(call, 2 * taps * numel(call.outputs[0]), "pointwise")
