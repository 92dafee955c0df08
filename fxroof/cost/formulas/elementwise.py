"""Vector work: pointwise ops, reductions, softmax, norms, scans, sorts, pooling, resampling.

These run on vector units and are almost always memory-bound, so their FLOP counts only need to be
the right order: one FLOP per output element for pointwise ops, one per input element for
reductions, a handful per element for softmax and norms (counts written beside each).
"""
from __future__ import annotations

import dataclasses
import math

import torch

from fxroof.cost.formulas.norm_instructions import layer_norm_instructions, softmax_instructions
from fxroof.cost.formulas.pointwise_instructions import (COUNTED_FORMS, COUNTED_OPS,
                                                          pointwise_instructions)
from fxroof.cost.formulas.registry import RULES, Entry, OpCall, formula
from fxroof.cost.record import Cost
from fxroof.graph.aten_ops import aten
from fxroof.graph.tensors import contiguous_copy_bytes, numel


def pointwise(call: OpCall) -> Cost:
    """The formula for any op tagged torch.Tag.pointwise: one FLOP per output element."""
    return call.cost(sum(numel(t) for t in call.outputs), "pointwise", call.out_dtype)


_POINTWISE = Entry(pointwise, "pointwise")
RULES.append(lambda op: _POINTWISE if torch.Tag.pointwise in op.tags else None)

# Pointwise in effect, but not tagged so in aten.
formula(aten.mish, aten.hardswish, aten.hardsigmoid,
        aten.softplus, aten.elu, aten.leaky_relu, aten.relu6, aten.hardtanh, aten.celu, aten.selu,
        aten.masked_fill, aten.where, aten.clamp, aten.tril, aten.triu, aten.lerp, aten.threshold,
        aten.prelu, aten.glu, aten.floor_divide, aten.polar, aten.complex, aten.rsub,
        aten._add_relu, aten._prelu_kernel, aten.log_sigmoid_forward, aten.rrelu_with_noise,
        aten._fused_dropout, aten.affine_grid_generator,
        # pooling's gradient: each incoming element spread back into its window
        aten.max_pool2d_with_indices_backward, aten.max_pool3d_with_indices_backward,
        aten.avg_pool2d_backward, aten.avg_pool3d_backward, aten._adaptive_avg_pool2d_backward,
        aten._adaptive_avg_pool3d_backward, category="pointwise", fn=pointwise)


def dropout(call: OpCall) -> Cost:
    """In eval mode (train=False) a dropout returns its input: no kernel, nothing moved."""
    return pointwise(call) if call.get("train") else Cost(category="view")


def per_input_element(flops: int, category: str):
    """The formula of a family that does `flops` operations per element of its first input."""
    def per_element(call: OpCall) -> Cost:
        return call.cost(flops * numel(call.inputs[0]), category)
    return per_element


def strided_input_copy(call: OpCall) -> int:
    """Bytes each way of the copy a softmax or layer norm makes of a strided input before its
    kernel runs: PyTorch's kernels, CPU and CUDA alike, read a contiguous input (softmax's
    `input_.contiguous()`, aten/src/ATen/native/cuda/SoftMax.cu host_softmax; layer norm's
    `input.expect_contiguous()`, cuda/layer_norm_kernel.cu and layer_norm.cpp). A channels-first
    LayerNorm2d (x.permute(0, 2, 3, 1) then F.layer_norm) pays it every call. The copy reads the
    input and writes it whole, and the kernel then reads the copy in the input's place: a read
    and a write of the whole tensor more (a broadcast input's copy is larger than it)."""
    return contiguous_copy_bytes(call.inputs[0] if call.inputs else None)


def copying_strided_input(flops: int, category: str):
    """per_input_element's formula, plus the copy of a strided input (strided_input_copy)."""
    per_element = per_input_element(flops, category)

    def formula_fn(call: OpCall) -> Cost:
        return per_element(call).with_copy(strided_input_copy(call),
                                           "copies its strided input to a contiguous one first")
    return formula_fn


def _rereads(*tensors: str, when=lambda call: True):
    """The rule of one norm op (norm_rereads): `tensors` are read again where `when(call)`."""
    def rule(call: OpCall) -> tuple:
        if not when(call):
            return ()
        return tuple(numel(t) * t.element_size() for t in map(call.get, tensors)
                     if isinstance(t, torch.Tensor))
    return rule


def _mask(call: OpCall, *bits: int) -> bool:
    mask = call.get("output_mask") or (True, True, True)
    return any(mask[b] for b in bits)


def _dx_and_sums(trains: str):
    """A batch norm's gradient computes dx from per-channel sums where it trains (its `trains`
    argument) or wants its weights' gradients."""
    return lambda call: _mask(call, 0) and (call.get(trains, True) or _mask(call, 1, 2))


# Norms that need a reduction over a tensor before the elementwise pass that uses it read the
# tensor twice where it does not stay in cache between the passes (Cost.reread). PyTorch's CUDA
# kernels (aten/src/ATen/native/cuda): a training batch norm's statistics kernel, then its
# elementwise one (Normalization.cu, batch_norm_cuda_out: batch_norm_mean_var, then
# batch_norm_elementwise); its gradient's sums of dy and dy * (x - mean), then dx (the fused
# batch_norm_backward_cuda_template, or batch_norm_backward_reduce then _elemt channels-last); a
# group norm's moments, then its elementwise pass, and its gradient's sums, then dx
# (group_norm_kernel.cu: RowwiseMomentsCUDAKernel, ComputeInternalGradientsCUDAKernel); a layer
# norm's gradient, dx row by row, then dgamma and dbeta column by column over dy and x again
# (layer_norm_kernel.cu: GammaBetaBackward). A layer norm forward and an inference batch norm
# read their rows once. cuDNN's batch norm faces the same dependence.
_REREADS = {
    **dict.fromkeys((aten.native_batch_norm, aten._native_batch_norm_legit,
                     aten._native_batch_norm_legit_functional, aten.cudnn_batch_norm,
                     aten.miopen_batch_norm, aten.batch_norm),
                    _rereads("input", when=lambda call: call.get("training"))),
    **dict.fromkeys((aten._batch_norm_with_update, aten.native_group_norm, aten.group_norm),
                    _rereads("input")),
    aten.native_batch_norm_backward: _rereads("grad_out", "input", when=_dx_and_sums("train")),
    aten.batch_norm_backward: _rereads("grad_out", "input", when=_dx_and_sums("update")),
    aten.cudnn_batch_norm_backward: _rereads("grad_output", "input"),
    aten.native_group_norm_backward: _rereads("grad_out", "input",
                                              when=lambda call: _mask(call, 0)),
    aten.native_layer_norm_backward: _rereads(
        "grad_out", "input", when=lambda call: _mask(call, 0) and _mask(call, 1, 2)),
}


def _by_op(table: dict, call: OpCall, empty):
    """table's rule for the call's op applied to the call; `empty` for an op it does not name."""
    rule = table.get(getattr(call.op, "overloadpacket", call.op))
    return rule(call) if rule else empty


def norm_rereads(call: OpCall) -> tuple:
    """Bytes of each tensor a norm's second pass reads again (_REREADS); () for other ops."""
    return _by_op(_REREADS, call, ())


# PyTorch's CUDA kernels whose instructions bound them on some GPUs (norm_instructions,
# pointwise_instructions): the thread instructions they issue (Cost.issued)
_ISSUED = {
    **dict.fromkeys(COUNTED_FORMS, pointwise_instructions),
    **dict.fromkeys((aten.softmax, aten._softmax), lambda c: softmax_instructions(c, "softmax")),
    **dict.fromkeys((aten.log_softmax, aten._log_softmax),
                    lambda c: softmax_instructions(c, "log_softmax")),
    **dict.fromkeys((aten.layer_norm, aten.native_layer_norm), layer_norm_instructions),
}


def _with(field: str, measure):
    """A wrapper of formulas that sets the Cost's `field` to measure(call) where it is not
    empty."""
    def wrap(fn):
        def formula_fn(call: OpCall) -> Cost:
            cost, value = fn(call), measure(call)
            return dataclasses.replace(cost, **{field: value}) if value else cost
        return formula_fn
    return wrap


# a formula, with the tensors its op's second pass reads again (norm_rereads)
rereading = _with("reread", norm_rereads)
# a formula, with the instructions its op's CUDA kernel issues where they are counted
issuing = _with("issued", lambda call: _by_op(_ISSUED, call, 0))
# activations whose functors' transcendental math, and dropout whose random numbers, make them
# as bound by issue as by bytes on some GPUs (gelu, silu and native_dropout are not tagged
# pointwise in aten; the others are)
formula(*COUNTED_OPS, category="pointwise", fn=issuing(pointwise))
formula(aten.dropout, aten.feature_dropout, aten.alpha_dropout, category="pointwise",
        fn=issuing(dropout))


# the ops whose kernels read a contiguous input (strided_input_copy); group norm takes a
# channels-last input as it is, and rms norm in this table is the composite's
_COPYING = frozenset({aten.softmax, aten._softmax, aten.log_softmax, aten._log_softmax,
                      aten._safe_softmax, aten.layer_norm, aten.native_layer_norm})

for _ops, _flops, _category in (
        # one op per element read
        ((aten.sum, aten.mean, aten.amax, aten.amin, aten.max, aten.min, aten.prod, aten.argmax,
          aten.argmin, aten.all, aten.any, aten.count_nonzero, aten.norm, aten.linalg_vector_norm,
          aten.logsumexp, aten.nansum, aten.aminmax, aten.cumsum, aten.cumprod,
          aten.logcumsumexp, aten.cummax, aten.cummin, aten.adaptive_avg_pool1d,
          aten.adaptive_avg_pool2d, aten.adaptive_avg_pool3d, aten._adaptive_avg_pool2d,
          aten._adaptive_avg_pool3d, aten.adaptive_max_pool1d, aten.adaptive_max_pool2d,
          aten.adaptive_max_pool3d, aten.histc, aten.bincount, aten.histogram, aten.trace,
          aten._aminmax, aten._logcumsumexp, aten._cummin_helper, aten.hash_tensor), 1,
         "reduction"),
        # losses: the difference or log term, its transform, the mean: about 4 per element
        ((aten.binary_cross_entropy, aten.binary_cross_entropy_with_logits, aten.huber_loss,
          aten.smooth_l1_loss, aten.soft_margin_loss, aten.multi_margin_loss,
          aten.multilabel_margin_loss_forward), 4, "reduction"),
        # sum, centre, square-sum
        ((aten.var, aten.std, aten.var_mean, aten.std_mean, aten.dist, aten.native_norm),
         3, "reduction"),
        # weight norm, g * v / |v|: square and sum for the norm, then the scale
        ((aten._weight_norm_interface, aten.renorm), 3, "norm"),
        # max, subtract, exp, sum, divide
        ((aten.softmax, aten._softmax, aten.log_softmax, aten._log_softmax, aten._safe_softmax),
         5, "reduction"),
        # mean, centre, square, sum, scale by rsqrt, affine multiply-add: about 5
        ((aten.layer_norm, aten.native_layer_norm, aten.rms_norm, aten._fused_rms_norm,
          aten.group_norm, aten.native_group_norm, aten.instance_norm), 5, "norm"),
        # inference batch norm, (x - mean) * rsqrt(var + eps) * w + b
        ((aten.batch_norm, aten.native_batch_norm, aten._native_batch_norm_legit,
          aten._native_batch_norm_legit_no_training, aten._native_batch_norm_legit_functional,
          aten.cudnn_batch_norm, aten.miopen_batch_norm, aten._batch_norm_with_update,
          aten._batch_norm_no_update), 4, "norm"),
        # per gradient element: x-hat again, two sums over the row, the affine terms
        ((aten.native_layer_norm_backward, aten.native_batch_norm_backward,
          aten.native_group_norm_backward, aten.batch_norm_backward,
          aten.cudnn_batch_norm_backward), 8, "norm")):
    _copying = [o for o in _ops if o in _COPYING]
    if _copying:
        formula(*_copying, category=_category,
                fn=issuing(rereading(copying_strided_input(_flops, _category))))
    _rest = [o for o in _ops if o not in _COPYING]
    formula(*_rest, category=_category, fn=rereading(per_input_element(_flops, _category)))


@formula(aten.sort, aten.argsort, aten.topk, aten.kthvalue, aten.msort, aten.median,
         aten.nanmedian, aten.mode, aten.unique_consecutive, aten._unique2, aten._unique,
         aten.unique_dim, aten.unique_dim_consecutive, aten.bucketize, aten.searchsorted,
         aten.isin, category="other")
def sort(call: OpCall):
    x = call.inputs[0]
    dim = call.get("dim", -1)
    n = int(x.shape[dim]) if x.dim() and isinstance(dim, int) else numel(x)
    # a comparison sort touches each element about log2(n) times
    return call.cost(numel(x) * max(1, math.ceil(math.log2(max(n, 2)))), "other")


def _per_dim(call: OpCall, name: str, dims: int, default) -> list[int]:
    """A pooling argument as one int a spatial dim (an int or a 1-list means every dim)."""
    value = call.get(name, default)
    value = list(value) if isinstance(value, (list, tuple)) else [value]
    if not value:                       # stride=[]: the kernel size (ATen's default)
        return []
    return [int(v) for v in (value * dims if len(value) == 1 else value)]


def _taps(size: int, out: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    """Input positions the `out` windows along one dim visit, summed: a window reads only the
    taps inside the input, so one larger than it (EfficientNet's AvgPool2d(1280, ceil_mode)
    over 3 x 3 pixels) reads the 3 x 3, not 1280 x 1280."""
    total = 0
    for o in range(out):
        start = o * stride - pad
        first = -(start // dilation) if start < 0 else 0          # ceil(-start / dilation)
        last = min(kernel - 1, (size - 1 - start) // dilation)
        total += max(0, last - first + 1)
    return total


def _window_taps(call: OpCall, dims: int) -> int:
    """Taps all of one channel's windows read: separable, the product over the `dims` spatial
    dims of the taps along each."""
    sizes = [int(s) for s in call.inputs[0].shape[-dims:]]
    outs = [int(s) for s in call.outputs[0].shape[-dims:]]
    kernel = _per_dim(call, "kernel_size", dims, 1)
    if "fractional" in call.op.__name__:     # pseudo-random windows, each inside the input
        return math.prod(o * min(k, n) for o, k, n in zip(outs, kernel, sizes))
    stride = _per_dim(call, "stride", dims, []) or kernel
    pad = _per_dim(call, "padding", dims, 0)
    dilation = _per_dim(call, "dilation", dims, 1)
    return math.prod(_taps(n, o, k, st, p, d)
                     for n, o, k, st, p, d in zip(sizes, outs, kernel, stride, pad, dilation))


@formula(aten.max_pool1d, aten.max_pool2d, aten.max_pool3d, aten.max_pool2d_with_indices,
         aten.max_pool3d_with_indices, aten.avg_pool1d, aten.avg_pool2d, aten.avg_pool3d,
         aten.fractional_max_pool2d, aten.fractional_max_pool3d, category="reduction")
def pool(call: OpCall):
    dims = int(next(c for c in call.op.__name__ if c.isdigit()))   # max_pool2d -> 2
    out = call.outputs[0]
    channels = math.prod(int(s) for s in out.shape[:-dims])        # (batch,) channels
    return call.cost(channels * _window_taps(call, dims), "reduction")   # an op a tap read


_TAPS = {"nearest": 1, "linear": 2, "bilinear": 4, "bicubic": 16, "trilinear": 8}


@formula(aten.grid_sampler_2d, aten.grid_sampler_3d, aten._grid_sampler_2d_cpu_fallback,
         category="pointwise")
def grid_sample(call: OpCall):
    # interpolation_mode 0 bilinear (trilinear in 3-d), 1 nearest, 2 bicubic: taps per output
    corners = 2 ** (call.inputs[0].dim() - 2)
    taps = {0: corners, 1: 1, 2: 16}.get(int(call.get("interpolation_mode", 0)), corners)
    return call.cost(2 * taps * numel(call.outputs[0]), "pointwise")


@formula(aten._fft_r2c, aten._fft_c2r, aten._fft_c2c, category="other")
def fft(call: OpCall):
    """5 N log2 N FLOPs per complex transform of N points (Cooley-Tukey's count), half that
    when the signal side is real; a library kernel."""
    x = call.inputs[0]
    signal = x if "c2r" not in call.op.__name__ else call.outputs[0]
    n = math.prod(int(signal.shape[d]) for d in call.get("dim"))
    per_point = 5 if "c2c" in call.op.__name__ else 2.5
    return call.cost(round(per_point * numel(signal) * math.log2(max(n, 2))), "other")


@formula(aten.upsample_nearest1d, aten.upsample_nearest2d, aten.upsample_nearest3d,
         aten._upsample_nearest_exact1d, aten._upsample_nearest_exact2d,
         aten._upsample_nearest_exact3d, aten.upsample_linear1d, aten.upsample_bilinear2d,
         aten._upsample_bilinear2d_aa, aten.upsample_bicubic2d, aten._upsample_bicubic2d_aa,
         aten.upsample_trilinear3d, aten._upsample_lanczos2d_aa, category="pointwise")
def upsample(call: OpCall):
    name = call.op.__name__
    taps = next((n for key, n in _TAPS.items() if key in name), 1)
    # each output element blends `taps` inputs: a multiply-add each
    return call.cost(2 * taps * numel(call.outputs[0]), "pointwise")
