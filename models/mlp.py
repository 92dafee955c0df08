"""A plain multi-layer perceptron: the smallest workload, useful to check the tools themselves.

`layers` Linear layers dim -> hidden -> ... -> hidden -> dim with a GELU between them.

    workload()                          # 1 x 512 -> 2048 -> 2048 -> 512, fp32, meta
    workload(batch=4096, dtype="bf16")  # large enough to be compute-bound
    workload(preset="tiny", device="cpu")
"""

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # loaded by path, not from a package: make _common.py beside it importable
    sys.path.insert(0, _HERE)
from _common import build, pick, to_dtype  # noqa: E402


@dataclass(frozen=True)
class MLPConfig:
    dim: int = 512
    hidden: int = 2048
    layers: int = 3  # Linear layers, so layers - 1 activations


PRESETS: dict[str, MLPConfig] = {
    "base": MLPConfig(),
    "tiny": MLPConfig(dim=16, hidden=64, layers=2),
}


class MLP(nn.Module):
    def __init__(self, cfg: MLPConfig):
        super().__init__()
        if cfg.layers < 1:
            raise ValueError(f"an MLP needs at least one layer, got layers={cfg.layers}")
        sizes = [cfg.dim] + [cfg.hidden] * (cfg.layers - 1) + [cfg.dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, dim) -> (B, dim)."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.gelu(x)
        return x


def workload(preset: str = "base", batch: int = 1, dim: int | None = None, hidden: int | None = None,
             layers: int | None = None, dtype: str = "fp32", device: str = "meta"):
    """(model, (x,)); dim, hidden and layers override the preset's."""
    base = pick(PRESETS, preset)
    cfg = MLPConfig(dim=base.dim if dim is None else dim,
                    hidden=base.hidden if hidden is None else hidden,
                    layers=base.layers if layers is None else layers)
    model = build(lambda: MLP(cfg), device, dtype)
    return model, (torch.randn(batch, cfg.dim, dtype=to_dtype(dtype), device=device),)
