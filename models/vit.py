"""Vision Transformer (Dosovitskiy et al., 2020) for image classification.

Patches come from a strided convolution (kernel = stride = patch), a learned [CLS] token and learned
positions are added, then pre-LayerNorm encoder blocks and a linear head on the [CLS] token, as in
``timm``'s ``vit_base_patch16_224``.

    workload()                          # ViT-B/16, 1 x 3 x 224 x 224, fp32, meta
    workload(size="large", image=384)
    workload(size="tiny", device="cpu")
"""

import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # loaded by path, not from a package: make _common.py beside it importable
    sys.path.insert(0, _HERE)
from _common import build, pick, to_dtype  # noqa: E402


@dataclass(frozen=True)
class ViTConfig:
    image: int = 224
    patch: int = 16
    dim: int = 768
    n_layers: int = 12
    n_heads: int = 12
    mlp_dim: int = 3072
    n_classes: int = 1000  # ImageNet-1k
    eps: float = 1e-6  # LayerNorm eps of the reference JAX code


# Table 1 of the ViT paper (arXiv:2010.11929): layers, hidden size D, MLP size, heads.
PRESETS: dict[str, ViTConfig] = {
    "base": ViTConfig(),                                                                  # ViT-B/16, 86M
    "large": ViTConfig(dim=1024, n_layers=24, n_heads=16, mlp_dim=4096),                  # ViT-L/16, 304M
    "huge": ViTConfig(patch=14, dim=1280, n_layers=32, n_heads=16, mlp_dim=5120),         # ViT-H/14, 632M
    # Not a real model: small enough to run on CPU in tests.
    "tiny": ViTConfig(image=32, patch=8, dim=64, n_layers=2, n_heads=4, mlp_dim=256, n_classes=10),
}


class Attention(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                      # (B, nh, N, hs) each
        y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, N, hs), bidirectional
        return self.proj(y.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.fc1 = nn.Linear(cfg.dim, cfg.mlp_dim)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        n_patches = (cfg.image // cfg.patch) ** 2
        self.patch_embed = nn.Conv2d(3, cfg.dim, kernel_size=cfg.patch, stride=cfg.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_patches + 1, cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.head = nn.Linear(cfg.dim, cfg.n_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> class logits (B, n_classes)."""
        x = self.patch_embed(images)                     # (B, C, H/p, W/p)
        x = x.flatten(2).transpose(1, 2)                 # (B, N, C), N = (H/p) * (W/p)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, C)
        x = torch.cat((cls, x), dim=1) + self.pos_embed  # (B, N + 1, C)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])             # (B, n_classes)


def workload(size: str = "base", batch: int = 1, image: int | None = None, dtype: str = "fp32",
             device: str = "meta", layers: int | None = None):
    """(model, (images,)) for one forward over batch images of image x image pixels.

    image: side in pixels, a multiple of the patch size; by default the preset's (224 for base).
    """
    cfg = pick(PRESETS, size, "size")
    cfg = replace(cfg, image=cfg.image if image is None else image,
                  n_layers=cfg.n_layers if layers is None else layers)
    if cfg.image % cfg.patch:
        raise ValueError(f"image={cfg.image} is not a multiple of the patch size {cfg.patch}")
    model = build(lambda: ViT(cfg), device, dtype)
    images = torch.randn(batch, 3, cfg.image, cfg.image, dtype=to_dtype(dtype), device=device)
    return model, (images,)
