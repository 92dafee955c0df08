"""Facts about tensors that every formula needs: dtype names, the storage a tensor lies in and the
bytes it really addresses."""
from __future__ import annotations

import math

import torch
from torch.multiprocessing.reductions import StorageWeakRef

# Short dtype names used for chip peaks (Chip.peak_flops keys) and in reports; a dtype not here
# (bool, int32, ...) goes by its torch name.
_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
                torch.float64: "fp64", torch.int8: "int8", torch.uint8: "int8",
                torch.complex64: "c64", torch.complex128: "c128", torch.complex32: "c32"}
_DTYPE_NAMES.update({getattr(torch, name): "fp8" for name in (
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu")
    if hasattr(torch, name)})
# Short names back to dtypes, the first dtype of a name winning ("int8": torch.int8).
_BY_SHORT_NAME = {"tf32": torch.float32, **{s: d for d, s in reversed(_DTYPE_NAMES.items())}}


def dtype_name(dtype) -> str:
    """"bf16" for torch.bfloat16, "bfloat16" or "bf16": the short names chip peaks are keyed by;
    other dtypes keep their torch name."""
    if isinstance(dtype, str) and dtype.lower() == "tf32":   # fp32 data with a peak of its own
        return "tf32"
    try:
        dtype = torch_dtype(dtype)
    except ValueError:
        return str(dtype).lower().removeprefix("torch.")
    return _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def torch_dtype(name) -> torch.dtype:
    """torch.bfloat16 for "bf16", "bfloat16" or torch.bfloat16: the one table of dtype names."""
    if isinstance(name, torch.dtype):
        return name
    key = str(name).lower().removeprefix("torch.")
    found = _BY_SHORT_NAME.get(key) or getattr(torch, key, None)   # "bfloat16", "half", "float"
    if isinstance(found, torch.dtype):
        return found
    raise ValueError(f"unknown dtype {name!r}; choose one of fp32, bf16, fp16, fp8, int8 or a "
                     f"torch dtype name")


def storage(t: torch.Tensor) -> StorageWeakRef | None:
    """The memory `t` lies in, one key for all its views; None for subclasses without storage."""
    try:
        return StorageWeakRef(t.untyped_storage())
    except (RuntimeError, NotImplementedError):
        return None


def footprint(t: torch.Tensor) -> int:
    """Bytes of memory the tensor really addresses.

    A broadcast (stride-0) dimension is one element in memory, so an expanded bias counts at its
    real size, not the expanded one. Sizes may be symbolic; we evaluate them to plain ints.
    """
    if t.numel() == 0:
        return 0
    return math.prod(int(n) for n, stride in zip(t.shape, t.stride()) if stride) * t.element_size()


def numel(t: torch.Tensor) -> int:
    return math.prod(int(s) for s in t.shape)


def contiguous_copy_bytes(t, *layouts: torch.memory_format) -> int:
    """Bytes each way of the copy a kernel that reads a contiguous tensor (or one in `layouts`)
    makes of `t` first: 0 where t already is one, or is not a tensor of two elements or more."""
    if not isinstance(t, torch.Tensor) or t.numel() < 2 or t.is_contiguous() or \
            any(t.is_contiguous(memory_format=f) for f in layouts):
        return 0
    return numel(t) * t.element_size()


def tensors_in(obj) -> list[torch.Tensor]:
    """Every tensor in a nested args structure, in order, each object once."""
    # A loop, not a nested recursive function: that would be a reference cycle per call, left
    # by the thousand for the garbage collector on a large model.
    found, stack = {}, [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, torch.Tensor):
            found.setdefault(id(x), x)
        elif isinstance(x, (list, tuple, dict)):
            stack.extend(reversed(list(x.values() if isinstance(x, dict) else x)))
    return list(found.values())
