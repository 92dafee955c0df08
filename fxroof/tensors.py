"""Facts about tensors that every formula needs: dtype names and bytes really addressed."""
from __future__ import annotations

import math

import torch

# Short dtype names used for chip peaks (Chip.peak_flops keys) and in reports.
_DTYPE_NAMES = {
    torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
    torch.int8: "int8", torch.uint8: "int8", torch.bool: "bool",
    torch.int16: "int16", torch.int32: "int32", torch.int64: "int64",
    torch.complex64: "c64", torch.complex128: "c128", torch.complex32: "c32",
}
for _name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu"):
    if hasattr(torch, _name):
        _DTYPE_NAMES[getattr(torch, _name)] = "fp8"


def dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def is_tensor(x) -> bool:
    return isinstance(x, torch.Tensor)


def footprint(t: torch.Tensor) -> int:
    """Bytes of memory the tensor really addresses.

    A broadcast (stride-0) dimension is one element in memory, so an expanded bias counts at its
    real size, not the expanded one. Sizes may be symbolic; we evaluate them to plain ints.
    """
    if t.numel() == 0:
        return 0
    elems = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            elems *= int(size)
    return elems * t.element_size()


def numel(t: torch.Tensor) -> int:
    return int(math.prod(int(s) for s in t.shape))


def tensors_in(obj) -> list[torch.Tensor]:
    """Every tensor in a nested args structure, in order, each object once."""
    found: list = []
    _walk(obj, found, set())
    return found


def _walk(x, found: list, seen: set) -> None:
    # Module-level rather than a closure: a nested recursive function is a reference cycle per
    # call, which left ~20k cycles per 7B report for the garbage collector.
    if isinstance(x, torch.Tensor):
        if id(x) not in seen:
            seen.add(id(x))
            found.append(x)
    elif isinstance(x, (list, tuple)):
        for y in x:
            _walk(y, found, seen)
    elif isinstance(x, dict):
        for y in x.values():
            _walk(y, found, seen)
