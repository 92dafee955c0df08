"""GPT-2 (OpenAI, 2019): a pre-LayerNorm decoder with learned positions and tied embeddings.

Written after nanoGPT's ``model.py``; one forward over `seq` tokens (no KV cache), causal attention
through ``F.scaled_dot_product_attention(is_causal=True)``.

    workload()                         # GPT-2 small (124M), 1 x 1024 tokens, fp32, meta
    workload(size="xl", batch=8)       # GPT-2 XL (1.5B)
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
from _common import build, pick, token_ids  # noqa: E402


@dataclass(frozen=True)
class GPT2Config:
    block_size: int = 1024  # learned positions: the longest sequence the model accepts
    vocab_size: int = 50257  # the real vocabulary; nanoGPT pads to 50304 for speed, not done here
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768


# From the openai-community/gpt2{,-medium,-large,-xl} config.json files (n_layer, n_head, n_embd).
PRESETS: dict[str, GPT2Config] = {
    "small": GPT2Config(),                                   # 124M
    "medium": GPT2Config(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "large": GPT2Config(n_layer=36, n_head=20, n_embd=1280),   # 774M
    "xl": GPT2Config(n_layer=48, n_head=25, n_embd=1600),      # 1558M
    # Not a real model: small enough to run on CPU in tests.
    "tiny": GPT2Config(vocab_size=512, n_layer=2, n_head=4, n_embd=64),
}


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)  # q, k, v in one matmul
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)       # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))  # GPT-2's "gelu_new"


class Block(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied: one parameter, used twice

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) -> logits (B, T, vocab)."""
        B, T = idx.shape
        if T > self.cfg.block_size:
            raise ValueError(f"sequence of {T} tokens is longer than block_size {self.cfg.block_size}")
        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.wte(idx) + self.wpe(pos)          # (B, T, C)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))          # (B, T, vocab)


def workload(size: str = "small", batch: int = 1, seq: int = 1024, dtype: str = "fp32",
             device: str = "meta", layers: int | None = None):
    """(model, (idx,)) for one forward over batch x seq tokens."""
    cfg = pick(PRESETS, size, "size")
    if layers is not None:
        cfg = replace(cfg, n_layer=layers)
    if seq > cfg.block_size:
        raise ValueError(f"seq={seq} is longer than GPT-2's {cfg.block_size} learned positions")
    model = build(lambda: GPT2(cfg), device, dtype)
    return model, (token_ids(batch, seq, cfg.vocab_size, device),)
