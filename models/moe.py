"""A Mixtral-like mixture-of-experts decoder: Llama blocks whose MLP is a routed set of experts.

Each token's router picks its top-k of E SwiGLU experts and mixes their outputs with the softmax of
the chosen router logits (Mixtral 8x7B: E=8, k=2). One causal forward over `seq` tokens, no KV cache.

    workload()                                  # small: 4 layers, 8 experts, top-2, 1 x 512 tokens
    workload(preset="mixtral-8x7b", seq=4096)
    workload(dispatch="dense")                  # every expert on every token, see below
    workload(preset="tiny", device="cpu")
    decoder(phase="decode", ctx=4096)           # Mixtral 8x7B with a KV cache, one decode step

`decoder` is the same Mixtral shape as a cached decoder for prefill and decode (generation(),
sweeps over ctx), its experts a loop over the experts the router picked, as Hugging Face's
MixtralSparseMoeBlock and gpt-fast's decode run them: a step reads the weights of the experts its
tokens chose (fxroof assumes which, fxroof.graph.routing), not all of them.

Routing has data-dependent sizes (how many tokens each expert gets), which a graph with static
shapes cannot express. Two static formulations, chosen with `dispatch`:

- "capacity" (default, as GShard/Switch Transformer on TPUs): each expert takes exactly
  C = ceil(capacity * N * k / E) token slots, its C highest-gated tokens out of the N in the batch,
  gathered with an index, run as one batched matmul over experts and added back with index_add.
  Expert matmul FLOPs are E * C * 6 * dim * ffn, which equals the real sparse count
  N * k * 6 * dim * ffn when capacity=1 and the router is balanced. Tokens past an expert's capacity
  are dropped (they pass through the residual); capacity = E/k makes C = N and drops none.
  The gather and index_add cost memory traffic, as the permute/unpermute of a grouped GEMM does.
  With fewer tokens than experts (N * k < E, small-batch decode) every expert still runs C >= 1
  slot: FLOPs and weight reads are then E/(N*k) times what a kernel that skips idle experts does.
- "dense": every expert runs on every token and the outputs are weighted by a gate that is zero for
  the unchosen experts. Exact outputs, simplest graph, but expert FLOPs are E/k times the real count
  (4x for Mixtral): an upper bound, not what a deployment computes.
"""

import math
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
class MoEConfig:
    dim: int = 512
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int = 2  # grouped-query attention, as Mixtral
    ffn_dim: int = 1024  # hidden size of each expert
    n_experts: int = 8
    top_k: int = 2
    vocab_size: int = 32000
    norm_eps: float = 1e-5
    rope_theta: float = 1e6  # Mixtral's value

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


PRESETS: dict[str, MoEConfig] = {
    # Not a real model: Mixtral's shape of routing (8 experts, top-2) at a size that analyses quickly.
    "small": MoEConfig(),
    # mistralai/Mixtral-8x7B-v0.1 config.json: hidden_size 4096, num_hidden_layers 32,
    # num_attention_heads 32, num_key_value_heads 8, intermediate_size 14336, num_local_experts 8,
    # num_experts_per_tok 2, vocab_size 32000, rope_theta 1e6. 46.7B parameters, 12.9B active.
    "mixtral-8x7b": MoEConfig(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336),
    # mistralai/Mixtral-8x22B-v0.1 config.json: 6144 / 56 layers / 48 heads / 8 kv / 16384 / 32768 vocab.
    "mixtral-8x22b": MoEConfig(dim=6144, n_layers=56, n_heads=48, n_kv_heads=8, ffn_dim=16384,
                               vocab_size=32768),
    # Not a real model: small enough to run on CPU in tests.
    "tiny": MoEConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, n_experts=4, vocab_size=512),
}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        h = x.float()  # in fp32 whatever the model dtype, as the reference implementation does
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_cos_sin(T: int, head_dim: int, theta: float, dtype: torch.dtype, device):
    """cos and sin tables (T, head_dim) for positions 0 .. T-1."""
    i = torch.arange(0, head_dim, 2, device=device, dtype=torch.float32)
    inv_freq = 1.0 / theta ** (i / head_dim)                           # (hs/2,)
    pos = torch.arange(T, device=device, dtype=torch.float32)          # (T,)
    freqs = pos[:, None] * inv_freq[None, :]                           # (T, hs/2)
    emb = torch.cat((freqs, freqs), dim=-1)                            # (T, hs)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x, cos, sin):
    half = x.shape[-1] // 2  # x (B, nh, T, hs), rotate-half form
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)     # (B, nh, T, hs)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # (B, nh, T, hs)
        return self.wo(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class SparseMoE(nn.Module):
    """Top-k routed SwiGLU experts; expert weights stacked so all experts run as one batched matmul."""

    def __init__(self, cfg: MoEConfig, dispatch: str, capacity: float):
        super().__init__()
        if dispatch not in ("capacity", "dense"):
            raise ValueError(f"unknown dispatch {dispatch!r}; choose capacity or dense")
        self.top_k, self.dispatch, self.capacity = cfg.top_k, dispatch, capacity
        E, D, Fh = cfg.n_experts, cfg.dim, cfg.ffn_dim
        self.gate = nn.Linear(D, E, bias=False)                # router
        self.w1 = nn.Parameter(torch.randn(E, D, Fh) * 0.02)   # gate projection of each expert
        self.w3 = nn.Parameter(torch.randn(E, D, Fh) * 0.02)   # up projection
        self.w2 = nn.Parameter(torch.randn(E, Fh, D) * 0.02)   # down projection

    def expert(self, x):
        # x (E, n, D) -> (E, n, D): every expert on its own n rows
        return (F.silu(x @ self.w1) * (x @ self.w3)) @ self.w2

    def forward(self, x):
        B, T, D = x.shape
        x = x.reshape(B * T, D)                                   # (N, D)
        logits = self.gate(x)                                     # (N, E)
        top_w, top_e = logits.topk(self.top_k, dim=-1)            # (N, k)
        # (N, E): each token's weight for each expert, softmax over its k chosen logits, 0 elsewhere
        gates = torch.zeros_like(logits).scatter(1, top_e, top_w.softmax(dim=-1))
        N, E = gates.shape

        if self.dispatch == "dense":
            y = self.expert(x.expand(E, N, D))                    # (E, N, D)
            out = (y * gates.t()[..., None]).sum(0)               # (N, D)
        else:
            C = min(N, math.ceil(self.capacity * N * self.top_k / E))    # slots per expert
            slot_w, slot_tok = gates.t().topk(C, dim=-1)          # (E, C): each expert's C best tokens
            xe = x.index_select(0, slot_tok.flatten()).view(E, C, D)     # (E, C, D), gathered tokens
            y = self.expert(xe) * slot_w[..., None]               # (E, C, D), weighted by the gate
            out = x.new_zeros(N, D).index_add(0, slot_tok.flatten(), y.view(E * C, D))  # (N, D)
        return out.view(B, T, D)


class Block(nn.Module):
    def __init__(self, cfg: MoEConfig, dispatch: str, capacity: float):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.moe = SparseMoE(cfg, dispatch, capacity)

    def forward(self, x, cos, sin):
        x = x + self.attention(self.attention_norm(x), cos, sin)
        return x + self.moe(self.ffn_norm(x))


class MoETransformer(nn.Module):
    def __init__(self, cfg: MoEConfig, dispatch: str = "capacity", capacity: float = 1.0):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, dispatch, capacity) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) -> logits (B, T, vocab)."""
        x = self.tok_embeddings(tokens)  # (B, T, dim)
        cfg = self.cfg
        cos, sin = rope_cos_sin(tokens.shape[1], cfg.head_dim, cfg.rope_theta, x.dtype, x.device)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.output(self.norm(x))  # (B, T, vocab)


def workload(preset: str = "small", batch: int = 1, seq: int = 512, dtype: str = "bf16",
             device: str = "meta", layers: int | None = None, dispatch: str = "capacity",
             capacity: float = 1.0):
    """(model, (tokens,)) for one causal forward over batch x seq tokens.

    dispatch: "capacity" or "dense" (see the module docstring).
    capacity: capacity factor for dispatch="capacity"; 1.0 gives the real FLOP count for a balanced
              router, n_experts / top_k drops no token whatever the routing.
    """
    cfg = pick(PRESETS, preset)
    if layers is not None:
        cfg = replace(cfg, n_layers=layers)
    model = build(lambda: MoETransformer(cfg, dispatch, capacity), device, dtype)
    return model, (token_ids(batch, seq, cfg.vocab_size, device),)


class LoopExperts(nn.Module):
    """Top-k routed SwiGLU experts as a loop over the experts the router picked (Hugging Face's
    MixtralSparseMoeBlock): each chosen expert runs on its tokens alone, so a step reads the
    weights of the experts its tokens chose."""

    def __init__(self, cfg: MoEConfig, mlp):
        super().__init__()
        self.top_k = cfg.top_k
        self.gate = nn.Linear(cfg.dim, cfg.n_experts, bias=False)
        self.experts = nn.ModuleList(mlp() for _ in range(cfg.n_experts))

    def forward(self, x):
        B, T, D = x.shape
        x = x.reshape(B * T, D)
        top_w, top_e = self.gate(x).topk(self.top_k, dim=-1)      # (N, k)
        top_w = top_w.softmax(dim=-1).to(x.dtype)
        out = torch.zeros_like(x)
        for i, expert in enumerate(self.experts):
            token, slot = torch.where(top_e == i)                 # the tokens that chose expert i
            if token.numel() == 0:
                continue
            out.index_add_(0, token, expert(x[token]) * top_w[token, slot, None])
        return out.view(B, T, D)


class GatheredExperts(nn.Module):
    """Top-k routed SwiGLU experts as gpt-fast writes them (mixtral-moe/model.py, MOEFeedForward
    and ConditionalFeedForward): each token's chosen experts' weights gathered from stacked
    parameters, then einsums; no data-dependent shapes, so decode can replay as a CUDA graph."""

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.top_k, self.dim = cfg.top_k, cfg.dim
        self.gate = nn.Linear(cfg.dim, cfg.n_experts, bias=False)
        E, D, Fh = cfg.n_experts, cfg.dim, cfg.ffn_dim
        self.w1 = nn.Parameter(torch.randn(E, Fh, D) * 0.02)
        self.w2 = nn.Parameter(torch.randn(E, D, Fh) * 0.02)
        self.w3 = nn.Parameter(torch.randn(E, Fh, D) * 0.02)

    def forward(self, x):
        shape = x.shape
        x = x.view(-1, self.dim)                                          # (T, D)
        weights = F.softmax(self.gate(x), dim=-1)
        weights, chosen = torch.topk(weights, self.top_k, dim=-1)         # (T, A)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        w1, w3, w2 = self.w1[chosen], self.w3[chosen], self.w2[chosen]    # (T, A, ., .)
        x1 = F.silu(torch.einsum("ti,taoi -> tao", x, w1))
        x3 = torch.einsum("ti, taoi -> tao", x, w3)
        out = torch.einsum("tao, taio -> tai", x1 * x3, w2)               # (T, A, D)
        return torch.einsum("tai,ta -> ti", out, weights).view(shape)


EXPERTS = {"loop": LoopExperts, "gathered": GatheredExperts}


def decoder(preset: str = "mixtral-8x7b", phase: str = "prefill", batch: int = 1,
            seq: int | None = None, ctx: int | None = None, dtype: str = "bf16",
            device: str = "meta", layers: int | None = None, max_len: int | None = None,
            experts: str = "loop"):
    """models/llama.py's cached decoder (its options, phase prefill or decode) with each MLP
    replaced by routed experts: (model, (tokens,), {"cache": ..., "start_pos": ...}).
    experts: "loop" (LoopExperts, Hugging Face's layout) or "gathered" (GatheredExperts,
    gpt-fast's)."""
    import llama

    cfg = pick(PRESETS, preset)
    pick(EXPERTS, experts, "experts layout")   # a misspelt one fails here, naming the choices
    if layers is not None:
        cfg = replace(cfg, n_layers=layers)
    dense = llama.LlamaConfig(dim=cfg.dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                              n_kv_heads=cfg.n_kv_heads, ffn_dim=cfg.ffn_dim,
                              vocab_size=cfg.vocab_size, norm_eps=cfg.norm_eps,
                              rope_theta=cfg.rope_theta)

    class Mixtral(llama.Llama):
        def __init__(self, dense_cfg):
            super().__init__(dense_cfg)
            for block in self.layers:
                block.feed_forward = LoopExperts(cfg, lambda: llama.MLP(dense_cfg)) \
                    if experts == "loop" else GatheredExperts(cfg)

    return llama.workload(phase=phase, batch=batch, seq=seq, ctx=ctx, dtype=dtype, device=device,
                          max_len=max_len, config=dense, make=Mixtral)

