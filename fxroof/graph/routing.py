"""Mixture-of-experts routing as a stated assumption: which experts each token's top-k picks.

On fake tensors a router's scores have no values, so which experts run, and how many tokens each
gets, is data fxroof cannot know. It assumes it instead, and says so in the report:

    balanced      the T*k token-expert pairs of a step spread evenly over the experts a uniformly
                  random top-k router touches on average, E*(1-(1-k/E)^T) rounded (all E once T
                  is large; k at decode with one token)
    skew=s        a share s of the tokens send their first choice to one hot expert; the rest
                  are balanced as above

Every `torch.topk` whose values are unknown gets that assignment as its indices' value; the few
tensors computed from it (masks, counts, offsets) get values by PyTorch's real-tensor propagation,
so data-dependent sizes (an expert loop's `nonzero`) take them. FLOPs of batched or grouped
experts (every pair once) do not depend on it; the bytes of expert weights a step reads do.
"""
from __future__ import annotations

import contextlib
import math
import re
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.utils._pytree as pytree
from torch._subclasses import fake_tensor
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import _disable_current_modes

from fxroof.graph.tensors import tensors_in


class _NeverRaised(Exception):
    """Stands for an exception a torch release does not have."""


# a real kernel's output sized unlike its fake's (torch 2.5 has no such
# error, and raises nothing in its place)
MetadataMismatchError = getattr(fake_tensor, "MetadataMismatchError", _NeverRaised)


@dataclass(frozen=True)
class Routing:
    skew: float = 0.0       # share of tokens whose first choice is one hot expert

    def __post_init__(self):
        if not 0 <= self.skew <= 1:
            raise ValueError(f"routing skew must be in [0, 1], got {self.skew!r}")

    @property
    def label(self) -> str:
        return f"skew={self.skew:g}" if self.skew else "balanced"

    def experts_touched(self, tokens: int, k: int, experts: int) -> int:
        """Balanced routing's count of experts a step of `tokens` tokens touches."""
        expected = experts * (1 - (1 - k / experts) ** tokens)
        return max(k, min(experts, tokens * k, round(expected)))

    def assign(self, tokens: int, k: int, experts: int) -> torch.Tensor:
        """(tokens, k) expert indices, each token's k distinct: pairs dealt in turn over the
        experts balanced routing touches; under skew the first `skew` share of the tokens pick
        expert 0 and deal their other picks over the rest."""
        n, hot = self.experts_touched(tokens, k, experts), math.ceil(self.skew * tokens)
        cold = torch.arange(hot * k, tokens * k).view(tokens - hot, k) % n
        others = 1 + torch.arange(hot * (k - 1)).view(hot, k - 1) % max(n - 1, 1)
        return torch.cat([torch.cat([torch.zeros(hot, 1, dtype=torch.long), others], 1), cold])


_SPEC = re.compile(r"^(balanced|skew=(?P<s>[0-9]*\.?[0-9]+))$")


def parse(spec) -> Routing:
    """A Routing from None ("balanced"), a Routing, or "balanced" / "skew=0.5"."""
    if spec is None or isinstance(spec, Routing):
        return spec or Routing()
    if not isinstance(spec, str):
        raise TypeError(f"routing must be a string or a Routing, not {type(spec).__name__}")
    m = _SPEC.match(spec.strip().lower())
    if m is None:
        raise ValueError(f"unknown routing {spec!r}; expected 'balanced' or 'skew=<0..1>'")
    return Routing(float(m["s"])) if m["s"] else Routing()


class _AssumedSizes(ShapeEnv):
    """Sizes that follow from the routing values: each later use of one (every pass reads
    sizes) is the assumption at work, not news to log."""

    def _log_real_tensor_propagation(self, orig_expr, unsound_result) -> None:
        pass


_OURS = (Path(torch.__file__).parent, Path(__file__).parents[1], Path(contextlib.__file__).parent)


def _caller() -> str:
    """file:line of the model's own code (not torch's, fxroof's or Python's) on the stack."""
    return next((f"{Path(f.filename).name}:{f.lineno}" for f in reversed(traceback.extract_stack())
                 if not any(Path(f.filename).is_relative_to(p) for p in _OURS)), "?")


class RoutedFakeMode(FakeTensorMode):
    """Fake tensors whose ShapeEnv takes sizes from values. A value is kept only where every
    tensor an op reads has one (an op writing a tensor in place from one without drops that
    tensor's value); a factory makes one only up to VALUE_LIMIT elements, so no large real
    buffer (a cache, a mask) is allocated."""

    VALUE_LIMIT = 1 << 24

    def __init__(self, example: bool = False):
        super().__init__(allow_non_fake_inputs=True, shape_env=_AssumedSizes(), static_shapes=True)
        # example: each value the model reads (`if x.sum() > 0`, `int(n)`) is the example's
        # number, not a symbol, and `read` keeps where the model's code read one
        self.example, self.read = example, []

    def _dispatch_impl(self, func, types, args, kwargs):
        if self.example and func is torch.ops.aten._local_scalar_dense.default and \
                args[0].real_tensor is not None:
            if (where := _caller()) not in self.read:
                self.read.append(where)
            return args[0].real_tensor.item()
        fakes = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, FakeTensor)]
        for t in fakes:    # a constant made while tracing (torch.tensor(0.0)) has its value
            if t.real_tensor is None and t.constant is not None:
                t.real_tensor = t.constant
        if not fakes and self.propagate_real_tensors:
            with _propagating(self, False):
                out = super()._dispatch_impl(func, types, args, kwargs)
            if sum(t.numel() for t in tensors_in(out)) > self.VALUE_LIMIT:
                return out
        valued = all(t.real_tensor is not None for t in fakes)
        try:
            out = super()._dispatch_impl(func, types, args, kwargs)
        except MetadataMismatchError:    # a real kernel's scratch output (an rnn's workspace)
            with _propagating(self, False):    # sized unlike its fake's: no values, then
                out, valued = super()._dispatch_impl(func, types, args, kwargs), False
        if not valued:
            for t in tensors_in(out):
                t.real_tensor = None
        return out


class _AssumedTopK(TorchFunctionMode):
    """Gives every top-k whose scores have no value the routing's indices as their value."""

    def __init__(self, routing: Routing):
        super().__init__()
        self.routing, self.used = routing, False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func not in (torch.topk, torch.Tensor.topk) or out.indices.real_tensor is not None:
            return out
        scores = args[0] if args else kwargs["input"]
        dim = kwargs.get("dim", args[2] if len(args) > 2 else -1)
        if dim % scores.dim() == scores.dim() - 1:     # a router's: over the experts, per token
            shape, k = out.indices.shape, int(out.indices.shape[-1])
            tokens, experts = math.prod(int(s) for s in shape[:-1]), int(scores.shape[-1])
            with _disable_current_modes():     # a value of our own: neither faked nor traced
                out.indices.real_tensor = self.routing.assign(tokens, k, experts).view(shape)
            self.used = True
        return out


@contextlib.contextmanager
def _propagating(fake_mode: FakeTensorMode, on: bool):
    before = fake_mode.propagate_real_tensors
    fake_mode.propagate_real_tensors = on
    try:
        yield
    finally:
        fake_mode.propagate_real_tensors = before


@contextlib.contextmanager
def assumed_routing(routing: Routing, fake_mode: RoutedFakeMode):
    """While tracing in `fake_mode`: top-k indices valued by `routing`, and values propagated
    from them. Yields the mode, whose `used` says whether any top-k was assumed."""
    cached = fake_mode.cache_enabled
    fake_mode.cache_enabled = False     # a cached output would come back without its value
    try:
        with _propagating(fake_mode, True), _AssumedTopK(routing) as topk:
            yield topk
    finally:
        fake_mode.cache_enabled = cached
