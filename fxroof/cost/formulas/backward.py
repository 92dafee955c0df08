"""Ops of a training step's backward (fxroof.graph.training) that no forward formula file
covers: fused attention's gradient, counted as PyTorch's FlopCounterMode counts it; gradients of
softmax, RMS norm, losses and activations as vector work; the losses themselves; the scatters
that build the gradients of slices and of the loss's gather.
"""
from __future__ import annotations

import math

from fxroof.cost.formulas.elementwise import per_input_element, pointwise
from fxroof.cost.formulas.registry import OpCall, formula
from fxroof.cost.record import Cost
from fxroof.graph.aten_ops import aten
from fxroof.graph.tensors import dtype_name, footprint, numel


@formula(aten._scaled_dot_product_flash_attention_backward,
         aten._scaled_dot_product_efficient_attention_backward,
         aten._scaled_dot_product_cudnn_attention_backward,
         aten._scaled_dot_product_flash_attention_for_cpu_backward, category="attention")
def sdpa_backward(call: OpCall) -> Cost:
    """Five products per query-key pair, as FlopCounterMode counts a fused kernel's backward:
    the scores Q K^T again (the kernel never stored them), dP = dO V^T, dV = P^T dO,
    dQ = dS K and dK = dS^T Q: 2.5x the forward where q and v heads are alike."""
    q, k, v = call.args[1:4]
    queries = math.prod(int(s) for s in q.shape[:-1])        # of every head: B * Hq * Sq
    flops = 2 * queries * int(k.shape[-2]) * (3 * int(q.shape[-1]) + 2 * int(v.shape[-1]))
    grads = call.outputs[:3]                                   # dQ, dK, dV
    return Cost(flops, call.bytes_read(), sum(map(footprint, grads)), "attention",
                dtype_name(q.dtype))


# y * (g - sum(g * y)), for log-softmax g - exp(y) * sum(g): per element of the gradient
formula(aten._softmax_backward_data, aten._log_softmax_backward_data, category="reduction",
        fn=per_input_element(4, "reduction"))
formula(aten._fused_rms_norm_backward, category="norm", fn=per_input_element(8, "norm"))

# Pointwise in effect, not tagged so in aten.
formula(aten.hardtanh_backward, aten.leaky_relu_backward, aten.elu_backward,
        aten.softplus_backward, aten.hardswish_backward, aten.hardsigmoid_backward,
        aten.mse_loss_backward, category="pointwise", fn=pointwise)


@formula(aten.nll_loss_forward, aten.nll_loss2d_forward, category="reduction")
def nll_loss(call: OpCall) -> Cost:
    """One log-probability read per target, not the whole input; one add each."""
    x, target = call.args[0], call.args[1]
    picked = numel(target) * x.element_size()
    return Cost(numel(target), footprint(target) + picked, call.bytes_written(), "reduction",
                dtype_name(x.dtype))


@formula(aten.nll_loss_backward, aten.nll_loss2d_backward, aten.slice_backward,
         aten.select_backward, aten.index_select_backward, category="copy")
def scatter_gradient(call: OpCall) -> Cost:
    """The gradient of a gather or slice: a zeroed tensor of the input's size written, the
    incoming gradient (and the indices) read and added in."""
    shape_only = {id(t) for t in call.args[1:2]} if call.op.overloadpacket in (
        aten.nll_loss_backward, aten.nll_loss2d_backward) else set()
    read = sum(footprint(t) for t in call.inputs if id(t) not in shape_only)
    grad = call.args[0]
    return Cost(numel(grad), read, call.bytes_written(), "copy", dtype_name(grad.dtype))


@formula(aten.mse_loss, category="reduction")
def mse_loss(call: OpCall) -> Cost:
    return call.cost(3 * numel(call.args[0]), "reduction")     # subtract, square, sum
