"""The thread instructions PyTorch's CUDA softmax and layer norm kernels issue (Cost.issued).

Each element costs these kernels an exponential, a division or a running-variance update in fp32,
besides conversions and guards: 20-40 instructions. An SM issues 128 a clock (chips/expected.py,
`issue`), so where the memory streams more elements a second than that (an H100 or H200 in 16
bits), the kernel's instructions bound it, not its bytes. On an H200 a bf16 softmax of 16,384
rows of 1,024 took 31.5 us and of 1,024 rows of 32,000 81.0 us, where streaming their bytes
takes 8 and 30 (bench/measured/h200-2026-12-04.json).

The counts come from each kernel's code as PyTorch's source writes it (aten/src/ATen/native/cuda/
PersistentSoftmax.cuh: softmax_warp_forward; SoftMax.cu: cunn_SoftMaxForward and its
shared-memory variant; layer_norm_kernel.cu: vectorized_layer_norm_kernel), compiled by nvcc 13.0
-O3 for sm_90 and its SASS counted (cuobjdump): per element, a loop's body over the elements one
pass of it handles; the slow paths of an IEEE division or reciprocal (a call taken only for
denormal or huge operands) left out. The compiled code is not the project's; the counts are the
figures cited. Other kernels (a softmax over a dimension other than the last, a layer norm whose
row is no multiple of 4, fp64) are priced by their bytes.
"""
from __future__ import annotations

import math

import torch

from fxroof.cost.formulas.registry import OpCall
from fxroof.graph.tensors import numel

# Per element, by the input's element size: max, exp-sum and write passes. softmax's write
# divides exp(x - max) by the sum; log_softmax's subtracts the sum's log, no exponential.
# Persistent kernel (a warp a row), the slope between rows of 512 and 2,048: bf16 38.0, fp32
# 35.1 (softmax), 21.2 and 19.2 (log_softmax); block kernels (a block a row, 8 bf16 or 4 fp32
# elements a load): softmax bf16 36.75 (3.25 + 11.5 + 22), fp32 35.5; log_softmax bf16 19.75,
# fp32 17.5; the shared-memory variant within one instruction of these.
SOFTMAX_PER_ELEMENT = {("softmax", 2): 38, ("softmax", 4): 35,
                       ("log_softmax", 2): 21, ("log_softmax", 4): 19}
# Per thread, whatever its row: the persistent kernel's intercept (41 softmax, 73 log_softmax, in
# both dtypes within 2); a block kernel's code outside its loops as a thread outside warp 0 runs
# it on an aligned row, read off its SASS: its setup (about 60), two block reductions (about 40
# each) and the write pass's setup (about 30).
PERSISTENT_FIXED = {"softmax": 41, "log_softmax": 73}
BLOCK_FIXED = 170
# PyTorch's choice (SoftMax.cu, host_softmax): the persistent kernel for rows of at most 1,024
# elements and 4,096 bytes; a block per row otherwise, of min(row, 1,024) threads in whole warps
PERSISTENT_ELEMENTS, PERSISTENT_BYTES, BLOCK_THREADS, WARP = 1024, 4096, 1024, 32

# Layer norm (a block of 128 threads a row, 4 elements a load): Welford's statistics pass, one
# reciprocal and two updates an element (bf16 71 instructions a 4-element step: 17.75, fp32
# 16.5), then the normalising pass with weight and bias (bf16 11.75, fp32 7.0, its loop unrolled
# four times).
LAYER_NORM_PER_ELEMENT = {2: 29.5, 4: 23.5}
# Per thread, whatever its row: the code outside the loops as a thread off lane 0 runs it, read
# off the bf16 kernel's SASS: its setup (23), five shuffle rounds of Welford's combine with its
# reciprocal (150), the cross-warp rounds, the rsqrt and the exit (about 75). A short row (96
# channels, ConvNeXt's first stage) is mostly this: 128 threads x 250 a row against 96 x 29.5.
LAYER_NORM_FIXED, LAYER_NORM_THREADS, LAYER_NORM_VECTOR = 250, 128, 4
# The element sizes the counts were taken for: 16-bit floats (bf16; fp16's conversions are as
# many) and fp32
COUNTED = (torch.float16, torch.bfloat16, torch.float32)


def _rows(x: torch.Tensor, row: int) -> int | None:
    try:
        return int(numel(x)) // row if row > 0 else None
    except (TypeError, RuntimeError):                  # a symbolic size: priced by its bytes
        return None


def softmax_instructions(call: OpCall, name: str) -> int:
    """Thread instructions of PyTorch's CUDA `name` ("softmax" or "log_softmax") kernel over the
    call's last dimension; 0 for the spatial kernel (another dimension) and uncounted dtypes."""
    x = call.inputs[0] if call.inputs else None
    if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.dtype not in COUNTED:
        return 0
    dim = call.get("dim", -1)
    if not isinstance(dim, int):
        return 0
    dim %= x.dim()
    if any(int(s) != 1 for s in x.shape[dim + 1:]):
        return 0                                       # inner size > 1: the spatial kernel
    row = int(x.shape[dim])
    rows = _rows(x, row)
    if not rows:
        return 0
    size = 2 if x.element_size() == 2 else 4
    per_element = SOFTMAX_PER_ELEMENT[(name, size)]
    if row <= PERSISTENT_ELEMENTS and row * x.element_size() <= PERSISTENT_BYTES:
        # a warp of min(32, padded row) threads walks the row padded to a power of two, two
        # rows a warp up to 128 (softmax_warp_forward's WARP_BATCH)
        padded = 1 << max(0, math.ceil(math.log2(row)))
        warp, per_warp = min(WARP, padded), 2 if padded <= 128 else 1
        threads = math.ceil(rows / per_warp) * warp
        return round(threads * PERSISTENT_FIXED[name] + rows * padded * per_element)
    block = min(math.ceil(row / WARP) * WARP, BLOCK_THREADS)
    return round(rows * (block * BLOCK_FIXED + row * per_element))


def layer_norm_instructions(call: OpCall) -> int:
    """Thread instructions of PyTorch's vectorized CUDA layer norm over the call's normalized
    shape; 0 where PyTorch runs its other kernels (a row no multiple of 4, fp64)."""
    x = call.inputs[0] if call.inputs else None
    shape = call.get("normalized_shape")
    if not isinstance(x, torch.Tensor) or x.dtype not in COUNTED or not shape:
        return 0
    try:
        row = math.prod(int(s) for s in shape)
    except (TypeError, RuntimeError):
        return 0
    rows = _rows(x, row)
    if not rows or row % LAYER_NORM_VECTOR:
        return 0
    per_element = LAYER_NORM_PER_ELEMENT[2 if x.element_size() == 2 else 4]
    return round(rows * (LAYER_NORM_THREADS * LAYER_NORM_FIXED + row * per_element))
