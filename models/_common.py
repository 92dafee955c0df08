"""Helpers shared by the workload files in this folder.

A workload file is loaded by path (``importlib.util.spec_from_file_location``), so it is not part of
a package and cannot use a relative import. Each one puts its own folder on ``sys.path`` and then
does ``from _common import ...``.
"""

from __future__ import annotations

from typing import Callable, Mapping, TypeVar

import torch
from torch import nn

from fxroof.graph.tensors import torch_dtype as to_dtype   # "bf16" -> torch.bfloat16: one table

__all__ = ["to_dtype", "pick", "build", "token_ids"]

T = TypeVar("T")


def pick(presets: Mapping[str, T], name: str, what: str = "preset") -> T:
    """presets[name], or a ValueError that lists the choices."""
    try:
        return presets[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; choose one of {', '.join(map(str, presets))}") from None


def build(make: Callable[[], nn.Module], device: str | torch.device, dtype: str | torch.dtype) -> nn.Module:
    """Construct a model directly on `device`, cast it to `dtype` and put it in eval mode.

    On the meta device no memory is allocated for weights, so the largest presets cost nothing.
    """
    with torch.device(device):
        model = make()
    return model.to(to_dtype(dtype)).eval()


def token_ids(batch: int, seq: int, vocab: int, device: str | torch.device) -> torch.Tensor:
    """Random token ids (B, T) on `device`; random rather than zeros so routers see varied tokens."""
    return torch.randint(0, vocab, (batch, seq), dtype=torch.long, device=device)
