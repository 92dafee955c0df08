"""Convolutions, 1/2/3-d, grouped and transposed; bias adds not counted in FLOPs (PyTorch's
convention). On CUDA the bias is a kernel of its own (Cost.bias_bytes): PyTorch's _convolution
calls cudnn_convolution without it and then output.add_(reshape_bias(...)), and its backward
sums the output's gradient for it (aten/src/ATen/native/Convolution.cpp, convolution_backward:
"Calculate bias gradients outside of the backend for those that don't support it"); PyTorch's
depthwise forward kernel takes the bias itself."""
from __future__ import annotations

import math

import torch

from fxroof.cost.formulas.registry import OpCall, formula
from fxroof.cost.record import Cost
from fxroof.graph.aten_ops import aten
from fxroof.graph.tensors import contiguous_copy_bytes, footprint


def cpu_library(call: OpCall) -> str:
    """"onednn" (or "onednn-depthwise") or "native": the implementation a CPU build of PyTorch
    runs this convolution with ("" on a GPU). PyTorch's own rule (ConvParams::use_mkldnn,
    aten/src/ATen/native/Convolution.cpp): half precision always goes to oneDNN; fp32 does
    unless the call is small and simple, where PyTorch's im2col code is faster, entering oneDNN
    costing several times more (the README's time model)."""
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
    if not (worth_it and large):
        return "native"
    # oneDNN runs a depthwise convolution (a channel a group, in and out) with a kernel of its
    # own between two reorders of the activations to its blocked layout: a fixed cost and a
    # rate apart from its layer-shaped convolutions' (an "onednn" figure where a chip has none)
    return "onednn-depthwise" if groups > 1 and int(w.shape[0]) == groups \
        and int(w.shape[1]) == 1 else "onednn"


# PyTorch's own CUDA depthwise kernel (conv_depthwise2d_forward_kernel, aten/src/ATen/native/
# cuda/DepthwiseConv2d.cu) gives each thread one output and walks the filter's taps with a bounds
# check, an index and two scalar loads each, after three integer divisions to find the output's
# place: its instructions, not its bytes, bound it. The thread instructions an output issues, a
# fixed part and one a tap, from the kernel's loop compiled by nvcc 13.0 -O3 for sm_90 and its
# SASS counted (cuobjdump) on the depthwise-multiplier-1 path: 16-bit 131, 230, 418 and 688
# instructions for 1x1, 3x3, 5x5 and 7x7 filters, fp32 127, 209, 365 and 588 (a straight line
# through 1x1 and 7x7; sm_80 and sm_86 builds issue 9-11% fewer). A filter other than 1x1 or 3x3
# runs the generic kernel, whose loops over the taps cost a little more than these unrolled counts.
NATIVE_DEPTHWISE_INSTRUCTIONS = {"fp32": (117.4, 9.6), "16-bit": (119.4, 11.6)}
# Its backward runs two kernels of the same kind (DepthwiseConv2d.cu). The input's gradient,
# conv_depthwise2d_backward_kernel, is the forward's loop turned round, a thread an input
# element walking the taps: its 3x3 taps compile to 101 instructions for 9 (sm_90; 94 and 100
# for sm_80 and sm_86), the forward's 11.6 a tap, so the forward's line is taken for it, per
# input element. The filter's gradient, conv_depthwise2d_grad_weight_kernel, gives a block to
# each (channel, tap), a warp to each image, its lanes walking the image's output positions 32
# at a time, each step an unsigned division to place the position, a bounds check, two scalar
# loads and a multiply-add: the step, unrolled four times, is 137 instructions in 16 bits and
# 129 in fp32 (sm_90; fp32 113 for sm_80 and sm_86), per position and tap.
NATIVE_DEPTHWISE_GRAD_WEIGHT_STEP = {"fp32": 129 / 4, "16-bit": 137 / 4}


def cudnn_depthwise_workload(shape: tuple, kh: int, kw: int, stride: int) -> bool:
    """Whether PyTorch sends an fp16 channels-first depthwise convolution of an input `shape`
    (N, C, H, W) to cuDNN, by its shape (check_cudnn_depthwise_workload_with_filter,
    Convolution.cpp, the rule for cuDNN 8.2 and later since pytorch#58749): every stride-1 one
    with a square 1x1, 3x3 or 5x5 filter over an image at least 7 wide (and every 1-d one);
    at stride 2 those benchmarks found cuDNN faster on, the rest to PyTorch's own kernel.
    pytorch#170609 replaced the rule by per-GPU decision trees learnt from benchmarks, whose
    leaves fxroof does not hold: this one is taken for every release."""
    n, ch, h, w = shape
    if h == 1 and stride == 1:
        return True
    if kh != kw or kw not in (1, 3, 5) or w < 7 or stride not in (1, 2):
        return False
    if stride == 1:
        return True
    if n == 1:
        return kw != 1 or w <= 28
    if kw == 1:
        return n <= 16 and ch >= 128 and w <= 7
    return ch >= 512 or (ch >= 256 and w >= 28)


def native_depthwise_instructions(call: OpCall, transposed: bool) -> int:
    """The thread instructions PyTorch's own CUDA kernel issues for this convolution where a GPU
    runs it there, else 0. PyTorch's rule (ConvParams::use_cudnn_depthwise, Convolution.cpp): a
    2-d depthwise convolution (groups = input channels, output channels a multiple of them)
    goes to cuDNN when channels-last, and when channels-first only in fp16 with 32 or more
    channels, a square stride, no dilation and a shape cuDNN runs well
    (cudnn_depthwise_workload); every other one, bf16 and fp32 above all, to its own kernel."""
    x, w = call.args[0], call.args[1]
    if any(lib in call.op.__name__ for lib in ("cudnn", "mkldnn", "miopen")):
        return 0                                       # a library's op, named
    groups = int(call.get("groups", 1) or 1)
    if transposed or x.dim() != 4 or w.dim() != 4 or groups <= 1 or int(x.shape[1]) != groups \
            or int(w.shape[0]) % groups or x.dtype not in (torch.float16, torch.bfloat16,
                                                           torch.float32):
        return 0
    try:
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
                or w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous():
            return 0                                   # channels-last: cuDNN's
    except (RuntimeError, TypeError):                  # symbolic strides: taken as PyTorch's own
        pass
    kh, kw = int(w.shape[2]), int(w.shape[3])
    stride = [int(s) for s in call.get("stride", [1])] or [1]
    dilation = [int(d) for d in call.get("dilation", [1])] or [1]
    if x.dtype == torch.float16 and groups >= 32 and set(dilation) == {1} \
            and (len(set(stride)) == 1 or int(x.shape[2]) == 1) \
            and cudnn_depthwise_workload(tuple(int(s) for s in x.shape), kh, kw, stride[-1]):
        return 0                                       # fp16 with cuDNN's shapes: cuDNN's
    fixed, per_tap = NATIVE_DEPTHWISE_INSTRUCTIONS[_width(x)]
    try:
        outputs = int(call.outputs[0].numel())
    except (TypeError, RuntimeError):                  # a symbolic size: priced by its bytes
        return 0
    return round(outputs * (fixed + per_tap * kh * kw))


@formula(aten.convolution, aten._convolution, aten.conv1d, aten.conv2d, aten.conv3d,
         aten.cudnn_convolution, aten.mkldnn_convolution, aten.conv_transpose1d,
         aten.conv_transpose2d, aten.conv_transpose3d, aten.cudnn_convolution_transpose,
         aten.convolution_overrideable, aten._conv_depthwise2d, aten.conv_depthwise3d,
         aten._slow_conv2d_forward, aten.slow_conv3d_forward, aten.slow_conv_dilated2d,
         aten.slow_conv_dilated3d, aten.slow_conv_transpose2d, aten.slow_conv_transpose3d,
         category="conv")
def conv(call: OpCall) -> Cost:
    """2 * batch * prod(weight shape) * prod(spatial positions the weight is applied at): a
    convolution's weight (C_out, C_in/g, *k) at every output position, a transposed one's
    (C_in, C_out/g, *k) at every input position."""
    x, w = call.args[0], call.args[1]
    transposed = bool(call.get("transposed", False)) or "transpose" in call.op.__name__
    batch = int(x.shape[0]) if x.dim() == w.dim() else 1
    positions = (x if transposed else call.outputs[0]).shape[2 - w.dim():]
    flops = 2 * batch * math.prod(int(s) for s in (*w.shape, *positions))
    bias = call.get("bias")
    return with_copies(call.cost(flops, "conv", variant=cpu_library(call),
                                 relayout=relayout(x, w, (x, w)),
                                 bias_bytes=2 * footprint(call.outputs[0])
                                 if isinstance(bias, torch.Tensor) and not _depthwise(w) else 0,
                                 issued=native_depthwise_instructions(call, transposed)),
                       x)


@formula(aten.convolution_backward, category="conv")
def conv_backward(call: OpCall) -> Cost:
    """Each gradient asked for (output_mask) of the input and of the weight is the forward's
    multiply-adds again; the bias's is a sum, not counted (PyTorch's convention)."""
    grad_out, x, w = call.args[:3]
    forward = conv(OpCall(aten.convolution.default, (x, w, None, *call.args[4:10]), out=grad_out))
    mask = [bool(m) for m in call.get("output_mask")[:2]]
    summed = bool(call.get("output_mask")[2])     # every CUDA backend leaves it to a sum
    # the input's gradient reads the output's gradient and the filter, the filter's the output's
    # gradient and the input: two cuDNN calls (cudnn_convolution_backward, ConvShared.cpp), each
    # transposing its own channels-first operands, so the output's gradient once for each
    operands = (*((grad_out, w) if mask[0] else ()), *((grad_out, x) if mask[1] else ()))
    return with_copies(call.cost(forward.flops * sum(mask), "conv", variant=forward.variant,
                                 relayout=relayout(x, w, operands),
                                 bias_bytes=footprint(grad_out) if summed else 0,
                                 issued=native_depthwise_backward_instructions(
                                     forward, x, w, grad_out, mask)),
                       x, grad_out)


def native_depthwise_backward_instructions(forward: Cost, x, w, grad_out, mask) -> int:
    """The thread instructions of PyTorch's own depthwise backward kernels, where its forward
    runs there (`forward.issued`), else 0: the input's gradient at the forward's count per input
    element, the filter's a step per tap and output position, a warp's 32 lanes at a time."""
    if not forward.issued:
        return 0
    kind = _width(x)
    taps = int(w.shape[2]) * int(w.shape[3])
    issued = 0.0
    if mask[0]:
        fixed, per_tap = NATIVE_DEPTHWISE_INSTRUCTIONS[kind]
        multiplier = int(w.shape[0]) // int(x.shape[1])
        issued += int(x.numel()) * (fixed + per_tap * taps * multiplier)
    if mask[1]:
        n, channels, h, wide = (int(s) for s in grad_out.shape)
        issued += (channels * taps * n * 32 * math.ceil(h * wide / 32)
                   * NATIVE_DEPTHWISE_GRAD_WEIGHT_STEP[kind])
    return round(issued)


def _width(x) -> str:
    """The key of the instruction tables above: "fp32", or "16-bit" for half precision."""
    return "fp32" if x.dtype == torch.float32 else "16-bit"


def with_copies(cost: Cost, *tensors) -> Cost:
    """`cost` with the copy PyTorch's _convolution makes of each operand in neither layout its
    libraries take: `input.contiguous(backend_memory_format)` before cuDNN, oneDNN or its own
    kernels (aten/src/ATen/native/Convolution.cpp; convolution_backward likewise). A channel
    slice of a larger tensor (torch.split along channels, CSP and Inception-style blocks) pays
    it on every call; a contiguous or channels-last tensor does not."""
    copied = sum(contiguous_copy_bytes(t, torch.channels_last, torch.channels_last_3d)
                 for t in tensors)
    return cost.with_copy(copied, "copies its strided input to a contiguous one first")


def _depthwise(w) -> bool:
    """One input channel a group: PyTorch's own depthwise kernel, which takes the bias."""
    return w.dim() >= 2 and int(w.shape[1]) == 1


def relayout(x, w, operands) -> tuple:
    """The footprints of the operands cuDNN transposes for a convolution on channels-first
    tensors: its tensor-core kernels read channels-last (NHWC) activations and filters, so it
    runs an NCHW-to-NHWC transpose of each first (cuDNN's API reference, "Tensor
    Transformations"). Its output it can write channels-first itself (kernels named
    ..._nhwckrsc_nchw: NHWC input, KRSC filter, NCHW output), so none is charged for it. Only
    1-d, 2-d and 3-d convolutions in 16 bits or fp32 (which PyTorch lets cuDNN run in TF32; the
    report charges these where the chip runs them on tensor cores) that reduce over channels (a
    depthwise one, one channel a group, runs no tensor-core kernel), and only where the input is
    not already channels-last; () otherwise."""
    depthwise = _depthwise(w)
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32) or x.dim() not in (3, 4, 5) \
            or w.dim() != x.dim() or depthwise:
        return ()
    try:
        # a 1-d convolution runs as a 2-d one of height 1 (PyTorch's view4d)
        image = x.unsqueeze(2) if x.dim() == 3 else x
        fmt = torch.channels_last if image.dim() == 4 else torch.channels_last_3d
        if image.is_contiguous(memory_format=fmt):     # also a 1x1 image: both layouts at once
            return ()
    except (RuntimeError, TypeError):              # symbolic strides: the layout is not known
        return ()
    return tuple(footprint(t) for t in operands)
