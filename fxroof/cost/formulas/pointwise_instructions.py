"""The thread instructions PyTorch's CUDA pointwise kernels issue where their math is long
(Cost.issued): transcendental activations and dropout.

An exponential, an error function or a hyperbolic tangent costs a CUDA thread 10-25 instructions
in fp32 without fast math (PyTorch's builds use none): a range reduction, a polynomial, the
special-function unit's approximation and its refinement, and an IEEE division's Newton steps
where the functor divides; dropout draws its random numbers with Philox, ten rounds of multiplies
and exclusive-ors for each four. With the loads, conversions and stores of its vector, a GELU
issues about 31 instructions an element, about what an H100 or H200 streams 16-bit elements at
(an H200: 30.9 T instructions a second against 1.1 T elements read and written). On such a chip
these kernels are as bound by issue as by bytes: an H200 took 87.2 us for a bf16 GELU over 2^26
elements, where a stream of its bytes takes 61 (bench/measured/h200-2026-12-04.json).

The counts come from each kernel as PyTorch's source writes it (aten/src/ATen/native/cuda:
GeluCUDAKernelImpl.cu, ActivationSiluKernel.cu, UnarySpecialOpsKernel.cu, UnaryOpsKernel.cu in
the vectorized elementwise kernel's shape, CUDALoops.cuh: one 16-byte vector a thread, 8 16-bit
or 4 fp32 elements, computed in fp32; Dropout.cu's fused_dropout_kernel_vec, 4 elements and one
curand_uniform4 a loop step), compiled by nvcc 13.0 -O3 for sm_90 and its SASS counted
(cuobjdump) along the path a thread runs: per element, the thread's instructions over the
elements of its vector or loop step, index and bounds included; a division's slow path (a call
taken only for denormal or huge operands) left out. sm_80 builds issue 3%-8% fewer. The compiled
code is not the project's; the counts are the figures cited. Cheap functors (a sum, a product, a
ReLU, dropout's backward: 5-8 an element) are left to their bytes, which bound them on every GPU
in the table.
"""
from __future__ import annotations

import torch

from fxroof.cost.formulas.norm_instructions import COUNTED
from fxroof.cost.formulas.registry import OpCall
from fxroof.graph.aten_ops import aten
from fxroof.graph.tensors import numel

# Per output element, (16-bit, fp32): the functor's math in fp32 plus its share of the thread's
# vector load, conversions, store and indexing.
PER_ELEMENT = {
    "gelu": (30.6, 32.3),             # x / 2 * (1 + erf(x / sqrt(2)))
    "gelu_tanh": (27.0, 28.0),        # x / 2 * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3)))
    "silu": (24.8, 25.0),             # x / (1 + exp(-x)): an exponential and an IEEE division
    "sigmoid": (24.8, 24.0),          # 1 / (1 + exp(-x))
    "tanh": (20.0, 21.0),
    "exp": (13.0, 14.0),
    "erf": (26.6, 28.3),
    "gelu_backward": (44.9, 45.8),    # dy * (cdf + x * pdf): an erf and an exponential
    "gelu_tanh_backward": (35.0, 35.0),
    "silu_backward": (30.8, 30.5),    # dy * s * (1 + x * (1 - s)), s the sigmoid
    "native_dropout": (33.0, 32.5),   # Philox's 10 rounds for 4 numbers, compare, scale, mask
}

def _functor(call: OpCall) -> str:
    """The PER_ELEMENT functor the call runs ("" for none: an inference dropout runs nothing)."""
    name = call.op.overloadpacket.__name__.rstrip("_")
    if name in ("gelu", "gelu_backward") and call.get("approximate", "none") == "tanh":
        return name.replace("gelu", "gelu_tanh")
    if name == "dropout":                   # the composite runs native_dropout's kernel
        return "native_dropout" if call.get("train") else ""
    return name


def pointwise_instructions(call: OpCall) -> int:
    """Thread instructions of PyTorch's CUDA kernel for the call, over its output's elements; 0
    for a type the counts do not cover."""
    out = call.outputs[0] if call.outputs else None
    counts = PER_ELEMENT.get(_functor(call))
    if not isinstance(out, torch.Tensor) or out.dtype not in COUNTED or counts is None:
        return 0
    try:
        elements = int(numel(out))
    except (TypeError, RuntimeError):                  # a symbolic size: priced by its bytes
        return 0
    return round(elements * counts[0 if out.element_size() == 2 else 1])


# The ops these kernels run (in-place forms take their functional op's formula), and with them
# the in-place forms, whose kernels are the same, and the composite dropout, which runs
# native_dropout's (its in-place dropout_ runs no fused kernel: graph/cuda_dropout.py)
COUNTED_OPS = (aten.gelu, aten.silu, aten.sigmoid, aten.tanh, aten.exp, aten.erf,
               aten.gelu_backward, aten.silu_backward, aten.native_dropout)
COUNTED_FORMS = COUNTED_OPS + (aten.dropout,) + tuple(
    getattr(aten, f"{op.__name__}_") for op in COUNTED_OPS
    if hasattr(torch.ops.aten, f"{op.__name__}_"))
