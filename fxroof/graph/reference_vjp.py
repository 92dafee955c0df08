"""The backward of a fused op's reference implementation, for ops whose inputs may be absent:
the gradients, their fake shapes, and what autograd is handed back."""
from __future__ import annotations

import torch


def optional_vjp(fn, given: list, grad: torch.Tensor, empty: torch.Tensor) -> tuple:
    """fn(*given)'s vector-Jacobian product with `grad`: a gradient for each entry of `given`
    that is a tensor, a new empty tensor like `empty` for each None (a custom op's outputs must
    be tensors, none of them the same object)."""
    present = [i for i, t in enumerate(given) if t is not None]

    def forward(*tensors):
        args = list(given)
        for i, t in zip(present, tensors):
            args[i] = t
        return fn(*args)
    _, vjp = torch.func.vjp(forward, *(given[i] for i in present))
    grads = dict(zip(present, vjp(grad)))
    return tuple(grads[i] if i in grads else empty.new_empty(0) for i in range(len(given)))


def gradients_like(given: list, empty: torch.Tensor) -> tuple:
    """A backward op's fake outputs: a tensor like each entry of `given`, a new empty one like
    `empty` for each None."""
    return tuple(empty.new_empty(0) if t is None else torch.empty_like(t) for t in given)


def present(given, grads) -> tuple:
    """The gradients autograd takes for `given`: None where an input was not given."""
    return tuple(None if t is None else g for t, g in zip(given, grads))
