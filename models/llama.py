"""Llama 2 / Llama 3 (and Mistral 7B) decoder with a preallocated KV cache, for prefill and decode.

RMSNorm, rotary position embeddings (RoPE), SwiGLU MLP and grouped-query attention (GQA), written as
the Hugging Face ``modeling_llama.py`` computes them (rotate-half RoPE, fp32 RMSNorm), so the graph
has the ops a deployment runs.

    workload()                                   # Llama-2-7B prefill, 1 x 2048 tokens, bf16, meta
    workload(phase="decode", ctx=4096, batch=8)  # one new token per sequence over 4096 cached ones
    workload(preset="tiny", device="cpu")        # small enough to run with real numbers

The KV cache is a list of (k, v) tensors, one pair per layer, each (B, n_kv_heads, max_len, head_dim),
passed to ``forward`` as an input and written in place with ``index_copy_`` at the positions of the new
tokens, as ``transformers.StaticCache`` does. Decode writes position ``ctx`` and attends over the
``ctx + 1`` keys filled so far; ``start_pos`` is a Python int, so an exported graph is specialised to it
and every shape in it is static.
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
from _common import build, pick, to_dtype, token_ids  # noqa: E402


@dataclass(frozen=True)
class LlamaConfig:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 32  # < n_heads is grouped-query attention: n_heads // n_kv_heads queries per k/v head
    ffn_dim: int = 11008  # SwiGLU hidden size; Meta rounds 8/3 * dim up to a multiple of 256
    vocab_size: int = 32000
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    window: int | None = None   # keys a query attends to at most (sliding-window attention)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


# Values from each model's config.json on the Hugging Face Hub (hidden_size, num_hidden_layers,
# num_attention_heads, num_key_value_heads, intermediate_size, vocab_size, rms_norm_eps, rope_theta).
PRESETS: dict[str, LlamaConfig] = {
    # meta-llama/Llama-2-7b-hf
    "llama2-7b": LlamaConfig(),
    # meta-llama/Llama-2-13b-hf
    "llama2-13b": LlamaConfig(dim=5120, n_layers=40, n_heads=40, n_kv_heads=40, ffn_dim=13824),
    # meta-llama/Llama-2-70b-hf: the only Llama 2 with GQA (8 kv heads)
    "llama2-70b": LlamaConfig(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, ffn_dim=28672),
    # meta-llama/Meta-Llama-3-8B: 128K-token tiktoken vocabulary, rope_theta 500000
    "llama3-8b": LlamaConfig(n_kv_heads=8, ffn_dim=14336, vocab_size=128256, rope_theta=500000.0),
    # meta-llama/Meta-Llama-3-70B
    "llama3-70b": LlamaConfig(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, ffn_dim=28672,
                              vocab_size=128256, rope_theta=500000.0),
    # mistralai/Mistral-7B-v0.1: Llama-2-7B's layers with GQA (8 kv heads) and a wider MLP. Its
    # attention looks back 4,096 tokens at most (sliding_window): full attention up to there,
    # and this model refuses longer contexts rather than price keys Mistral never reads
    "mistral-7b": LlamaConfig(n_kv_heads=8, ffn_dim=14336, window=4096),
    # Not a real model: small enough to run on CPU in tests; 2 kv heads so GQA is exercised.
    "tiny": LlamaConfig(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=344, vocab_size=512),
}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In fp32 whatever the model dtype, as the reference implementations do.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_cos_sin(pos: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos and sin tables (T, head_dim) for the positions `pos` (T,), computed once per forward."""
    i = torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float32)
    inv_freq = 1.0 / theta ** (i / head_dim)          # (hs/2,)
    freqs = pos.float()[:, None] * inv_freq[None, :]  # (T, hs/2)
    emb = torch.cat((freqs, freqs), dim=-1)           # (T, hs)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x (B, nh, T, hs); rotate-half form (Hugging Face), same arithmetic as Meta's complex form.
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x, cos, sin, pos, cache, start_pos: int):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)     # (B, nh, T, hs)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        if cache is not None:
            k_cache, v_cache = cache                  # (B, nkv, max_len, hs) each, preallocated
            k_cache.index_copy_(2, pos, k)            # write this step's keys at positions pos
            v_cache.index_copy_(2, pos, v)
            if start_pos > 0:                         # attend over everything cached so far
                k = k_cache[:, :, : start_pos + T]    # (B, nkv, start_pos + T, hs)
                v = v_cache[:, :, : start_pos + T]

        # GQA inside sdpa (enable_gqa): k/v heads are shared by groups of query heads without being
        # copied, as fused attention kernels do; repeat_interleave would add a copy of the cache.
        if start_pos == 0:    # prefill from an empty cache: plain causal attention over the prompt
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        elif T == 1:          # decode: the single query sees every cached key, no mask needed
            y = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        else:                 # chunked prefill: query i sees keys up to start_pos + i
            mask = torch.ones(T, start_pos + T, dtype=torch.bool, device=x.device).tril(start_pos)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, nh * hs)
        return self.wo(y)


class MLP(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)  # gate
        self.w3 = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)  # up
        self.w2 = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)  # down

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = MLP(cfg)

    def forward(self, x, cos, sin, pos, cache, start_pos: int):
        x = x + self.attention(self.attention_norm(x), cos, sin, pos, cache, start_pos)
        return x + self.feed_forward(self.ffn_norm(x))


class Llama(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)  # not tied to the embedding

    def forward(self, tokens: torch.Tensor, cache: list | None = None, start_pos: int = 0):
        """tokens (B, T) at positions start_pos .. start_pos+T-1 -> logits (B, T, vocab).

        cache: one (k, v) pair per layer, each (B, n_kv_heads, max_len, head_dim), written in place.
        """
        B, T = tokens.shape
        pos = torch.arange(start_pos, start_pos + T, device=tokens.device)  # (T,)
        x = self.tok_embeddings(tokens)                                     # (B, T, dim)
        cos, sin = rope_cos_sin(pos, self.cfg.head_dim, self.cfg.rope_theta, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, pos, None if cache is None else cache[i], start_pos)
        return self.output(self.norm(x))                                    # (B, T, vocab)


def new_cache(cfg: LlamaConfig, batch: int, max_len: int, dtype, device) -> list:
    """A zeroed KV cache: n_layers pairs of (B, n_kv_heads, max_len, head_dim)."""
    shape = (batch, cfg.n_kv_heads, max_len, cfg.head_dim)
    zeros = lambda: torch.zeros(shape, dtype=dtype, device=device)  # noqa: E731
    return [(zeros(), zeros()) for _ in range(cfg.n_layers)]


# a prompt's tokens, or a decode step's cached ones, where the options give none
DEFAULT_LENGTH = 2048


def workload(preset: str = "llama2-7b", phase: str = "prefill", batch: int = 1,
             seq: int | None = None, ctx: int | None = None, dtype: str = "bf16",
             device: str = "meta", layers: int | None = None, max_len: int | None = None,
             config: LlamaConfig | None = None, make=None):
    """(model, (tokens,), {"cache": ..., "start_pos": ...}) for one prefill or one decode step.

    prefill: `seq` prompt tokens from position 0, written into the cache (default 2048).
    decode:  one new token per sequence at position `ctx`, attending over ctx + 1 keys (default
             2048). Each phase refuses the other's length, which it would not read.
    max_len: cache capacity; by default just enough (seq for prefill, ctx + 1 for decode). A larger
             cache costs memory, not work: attention reads only the filled part.
    """
    cfg = config or pick(PRESETS, preset)    # config: a shape no preset names (models/moe.py)
    if layers is not None:
        cfg = replace(cfg, n_layers=layers)
    if phase not in ("prefill", "decode"):
        raise ValueError(f"unknown phase {phase!r}; choose prefill or decode")
    unused = ("ctx", ctx) if phase == "prefill" else ("seq", seq)
    if unused[1] is not None:
        raise ValueError(f"{unused[0]}={unused[1]}: phase={phase} reads "
                         f"{'seq' if phase == 'prefill' else 'ctx'}, not {unused[0]}")
    if phase == "prefill":
        tokens_per_seq, start_pos = DEFAULT_LENGTH if seq is None else seq, 0
    else:
        tokens_per_seq, start_pos = 1, DEFAULT_LENGTH if ctx is None else ctx
    needed = start_pos + tokens_per_seq
    if cfg.window and needed > cfg.window:
        name = preset if config is None else "this configuration"
        raise ValueError(f"{name} attends over its last {cfg.window} tokens (a sliding window), "
                         f"which this model does not express: {needed} positions asked, at most "
                         f"{cfg.window}")
    max_len = needed if max_len is None else max_len
    if max_len < needed:
        raise ValueError(f"max_len={max_len} is too small: the cache must hold {needed} positions")

    model = build(lambda: (make or Llama)(cfg), device, dtype)   # make: a Llama subclass
    tokens = token_ids(batch, tokens_per_seq, cfg.vocab_size, device)  # (B, T)
    cache = new_cache(cfg, batch, max_len, to_dtype(dtype), device)
    return model, (tokens,), {"cache": cache, "start_pos": start_pos}

