"""BERT encoder (Devlin et al., 2018): post-LayerNorm, bidirectional attention, GELU.

The same modules as ``transformers.BertModel`` (embeddings, encoder, pooler), returning the last
hidden state and the pooled [CLS] vector. Attention goes through ``F.scaled_dot_product_attention``
without a mask: every token sees every token, as in an unpadded batch.

    workload()                          # BERT-base, 1 x 128 tokens, fp32, meta
    workload(size="large", seq=512)
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
class BertConfig:
    vocab_size: int = 30522  # WordPiece, uncased
    max_position: int = 512  # learned positions: the longest sequence the model accepts
    type_vocab_size: int = 2  # segment A / segment B
    hidden: int = 768
    n_layers: int = 12
    n_heads: int = 12
    intermediate: int = 3072
    eps: float = 1e-12  # LayerNorm eps from the original TensorFlow code


# From google-bert/bert-{base,large}-uncased config.json (hidden_size, num_hidden_layers,
# num_attention_heads, intermediate_size).
PRESETS: dict[str, BertConfig] = {
    "base": BertConfig(),                                                     # 110M
    "large": BertConfig(hidden=1024, n_layers=24, n_heads=16, intermediate=4096),  # 335M
    # Not a real model: small enough to run on CPU in tests.
    "tiny": BertConfig(vocab_size=512, hidden=64, n_layers=2, n_heads=4, intermediate=256),
}


class Embeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.position_embeddings = nn.Embedding(cfg.max_position, cfg.hidden)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden)
        self.LayerNorm = nn.LayerNorm(cfg.hidden, eps=cfg.eps)

    def forward(self, input_ids, token_type_ids):
        T = input_ids.shape[1]
        pos = torch.arange(T, device=input_ids.device)  # (T,)
        x = (self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
             + self.position_embeddings(pos))
        return self.LayerNorm(x)                         # (B, T, C)


class SelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.query = nn.Linear(cfg.hidden, cfg.hidden)
        self.key = nn.Linear(cfg.hidden, cfg.hidden)
        self.value = nn.Linear(cfg.hidden, cfg.hidden)
        self.dense = nn.Linear(cfg.hidden, cfg.hidden)

    def forward(self, x):
        B, T, C = x.shape
        q = self.query(x).view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, nh, T, hs)
        k = self.key(x).view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)    # (B, nh, T, hs)
        v = self.value(x).view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v)                                    # (B, nh, T, hs)
        return self.dense(y.transpose(1, 2).reshape(B, T, C))


class Layer(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attention = SelfAttention(cfg)
        self.attention_norm = nn.LayerNorm(cfg.hidden, eps=cfg.eps)
        self.intermediate = nn.Linear(cfg.hidden, cfg.intermediate)
        self.output = nn.Linear(cfg.intermediate, cfg.hidden)
        self.output_norm = nn.LayerNorm(cfg.hidden, eps=cfg.eps)

    def forward(self, x):
        x = self.attention_norm(x + self.attention(x))  # post-LN: normalise after the residual add
        return self.output_norm(x + self.output(F.gelu(self.intermediate(x))))  # exact (erf) GELU


class Bert(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.n_layers))
        self.pooler = nn.Linear(cfg.hidden, cfg.hidden)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None):
        """input_ids (B, T) -> (last hidden state (B, T, C), pooled [CLS] (B, C))."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)  # all segment A
        x = self.embeddings(input_ids, token_type_ids)
        for layer in self.layers:
            x = layer(x)
        return x, torch.tanh(self.pooler(x[:, 0]))


def workload(size: str = "base", batch: int = 1, seq: int = 128, dtype: str = "fp32",
             device: str = "meta", layers: int | None = None):
    """(model, (input_ids,)) for one encoder forward over batch x seq tokens."""
    cfg = pick(PRESETS, size, "size")
    if layers is not None:
        cfg = replace(cfg, n_layers=layers)
    if seq > cfg.max_position:
        raise ValueError(f"seq={seq} is longer than BERT's {cfg.max_position} learned positions")
    model = build(lambda: Bert(cfg), device, dtype)
    return model, (token_ids(batch, seq, cfg.vocab_size, device),)
