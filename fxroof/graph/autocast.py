"""Autocast written for a GPU, traced where there is none.

A model (or a training step) whose forward runs under `torch.autocast("cuda", ...)` is traced on
CPU fake tensors, where CUDA's autocast turns itself off with a warning and every matmul would
stay in fp32: a silently wrong dtype. While tracing, CUDA autocast runs as CPU autocast of the
same dtype instead, so matrix ops (matmul, linear, convolution, attention) take that dtype as on a
GPU. CPU's policy then runs softmax, norms, reductions and pointwise math such as exp and pow in
their input dtype, where CUDA's runs them in fp32; CudaFp32Policy casts their inputs to fp32 as
CUDA's autocast does, so a traced step reads and writes what it would on the GPU.
"""
from __future__ import annotations

import copy
import functools
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from fxroof.graph.tensors import dtype_name

T = torch.Tensor
# "CUDA Ops that can autocast to float32" (PyTorch's torch.amp documentation, autocast op
# reference): under CUDA autocast their floating inputs are cast to fp32 and they run in fp32.
# Their Python entry points, as model code calls them.
CUDA_FP32 = frozenset({
    T.__pow__, T.__rpow__, T.__rtruediv__, T.__rdiv__, torch.acos, T.acos, torch.asin, T.asin,
    F.binary_cross_entropy_with_logits, torch.cosh, T.cosh, F.cosine_embedding_loss, torch.cdist,
    F.cosine_similarity, torch.cosine_similarity, F.cross_entropy, torch.cumprod, T.cumprod,
    torch.cumsum, T.cumsum, torch.dist, T.dist, torch.erfinv, T.erfinv, torch.exp, T.exp,
    torch.expm1, T.expm1, F.group_norm, torch.group_norm, F.hinge_embedding_loss, F.kl_div,
    F.l1_loss, F.layer_norm, torch.layer_norm, torch.log, T.log, F.log_softmax,
    torch.log_softmax, T.log_softmax, torch.log10, T.log10, torch.log1p, T.log1p, torch.log2,
    T.log2, F.margin_ranking_loss, F.mse_loss, F.multilabel_margin_loss, F.multi_margin_loss,
    F.nll_loss, torch.norm, T.norm, F.normalize, F.pdist, torch.pdist, F.poisson_nll_loss,
    torch.pow, T.pow, torch.prod, T.prod, torch.reciprocal, T.reciprocal, torch.rsqrt, T.rsqrt,
    torch.sinh, T.sinh, F.smooth_l1_loss, F.soft_margin_loss, F.softmax, torch.softmax,
    T.softmax, F.softmin, F.softplus, torch.sum, T.sum, torch.renorm, T.renorm, torch.tan, T.tan,
    F.triplet_margin_loss})
LOW_PRECISION = (torch.float16, torch.bfloat16)


class CudaFp32Policy(TorchFunctionMode):
    """Within a CUDA autocast region traced as CPU autocast: the ops CUDA's autocast runs in fp32
    get their 16-bit floating inputs cast to fp32 first (casts the graph then holds, as the GPU
    runs them), while autocast is on."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in CUDA_FP32 and torch.is_autocast_enabled("cpu") and "dtype" not in kwargs:
            def up(x):
                return x.float() if isinstance(x, torch.Tensor) and x.dtype in LOW_PRECISION \
                    else x
            args, kwargs = tree_map(up, args), tree_map(up, kwargs)
        return func(*args, **kwargs)


@contextmanager
def cuda_autocast_as_cpu(seen: list):
    """Within: each autocast region entered appends (device, dtype) to `seen` (torch.export
    keeps a region whole rather than its casts, so capture then takes make_fx's graph), and
    where CUDA is not available, CUDA autocast regions run as CPU autocast of their dtype
    (CUDA's default float16 when none is given)."""
    autocast = torch.amp.autocast_mode.autocast
    original = autocast.__init__, autocast.__enter__, autocast.__exit__

    def __init__(self, device_type, dtype=None, enabled=True, cache_enabled=None):
        self._fxroof_policy = None
        if enabled and device_type == "cuda" and not torch.cuda.is_available():
            dtype = dtype or torch.float16
            seen.append(("cuda", dtype))
            device_type = "cpu"
            self._fxroof_policy = CudaFp32Policy()
        elif enabled:
            seen.append((device_type, dtype))
        original[0](self, device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)

    def __enter__(self):
        entered = original[1](self)
        if getattr(self, "_fxroof_policy", None) is not None:
            self._fxroof_policy.__enter__()
        return entered

    def __exit__(self, *exc):
        if getattr(self, "_fxroof_policy", None) is not None:
            self._fxroof_policy.__exit__(*exc)
        return original[2](self, *exc)

    autocast.__init__, autocast.__enter__, autocast.__exit__ = __init__, __enter__, __exit__
    try:
        yield
    finally:
        autocast.__init__, autocast.__enter__, autocast.__exit__ = original


def autocast_notes(seen: list) -> tuple:
    names = ", ".join(dict.fromkeys(dtype_name(d) for device, d in seen if device == "cuda"))
    return (f"the forward runs under CUDA autocast ({names}), traced here as CPU autocast with "
            f"CUDA's policy: matrix ops in {names}, softmax, norms, reductions and losses in fp32, "
            f"as on a GPU",) if names else ()


# Target.amp's names -> the dtypes automatic mixed precision runs matrix ops in
AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def with_amp(model, device_type: str, amp: str) -> torch.nn.Module:
    """`model` as automatic mixed precision runs it: its forward within torch.autocast
    (device_type, AMP_DTYPES[amp]) over its own weights, which stay as they are. A shallow copy
    whose class is the model's own with that forward around the original: the same parameters,
    submodules and names, so reports keep their module paths; `model` itself is not changed."""
    if not isinstance(model, torch.nn.Module) or isinstance(model, torch.fx.GraphModule):
        raise TypeError(f"amp= runs a module's forward under autocast; a "
                        f"{type(model).__name__} has no forward of its own to run: give the "
                        f"nn.Module (or wrap its call in torch.autocast yourself)")
    amped = copy.copy(model)
    amped.__class__ = _amp_class(type(model))
    amped.__dict__["_fxroof_amp"] = (device_type, AMP_DTYPES[amp])
    return amped


@functools.cache
def _amp_class(cls: type) -> type:
    """`cls` with its forward run under the autocast region its instance names."""
    @functools.wraps(cls.forward)      # the signature stays the model's: export binds to it
    def forward(self, *args, **kwargs):
        device_type, dtype = self._fxroof_amp
        with torch.autocast(device_type, dtype=dtype):
            return cls.forward(self, *args, **kwargs)
    return type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__})
