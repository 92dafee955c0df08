"""torch.ops.aten as fxroof's op tables name it, across the torch releases users run.

Releases add aten ops (torch 2.11 has no `_upsample_lanczos2d_aa` or `_philox_normal`): a table
that names an op the installed torch lacks gets a MissingOp, which no graph holds and the
registries skip, rather than an error on import.
"""
from __future__ import annotations

import torch


class MissingOp:
    """An aten op the installed torch does not have; its overloads (`.default`) are itself."""

    def __init__(self, name: str):
        self.name = name

    def __getattr__(self, attr: str) -> "MissingOp":
        if attr.startswith("__"):
            raise AttributeError(attr)
        return self

    def __repr__(self) -> str:
        return f"aten.{self.name} (not in torch {torch.__version__})"


class _Aten:
    def __getattr__(self, name: str):
        try:
            return getattr(torch.ops.aten, name)
        except AttributeError:
            return MissingOp(name)


aten = _Aten()


def present(ops) -> list:
    """The ops of `ops` the installed torch has."""
    return [op for op in ops if not isinstance(op, MissingOp)]
