"""Attention that transformers writes out in full, captured as the one fused kernel a GPU
deployment runs: gpt-oss's attention with sinks, and a prompt's sliding-window attention.

- Sinks. gpt-oss gives each head a learned sink, a logit every query's softmax takes beside its
  keys'. PyTorch's scaled_dot_product_attention has no such term, so transformers runs these
  models through its eager attention (`eager_attention_forward` in the modeling file: k/v
  copied out to every query head, the scores written out, the sink joined to them, a softmax,
  a product), unless a hub kernel is installed: FlashAttention-3 with sinks
  ("kernels-community/vllm-flash-attn3", which gpt-oss's model card asks for), as vLLM and
  SGLang run it. `fused_sink_attention` has that function call one op for a module with sinks;
  other modules' eager attention is left alone.
- Sliding windows (Mistral, Gemma 2 and 3's local layers, Cohere 2): over a prompt longer than
  its window transformers builds the window into a mask, and SDPA reads it and computes every
  product; flash kernels (FlashAttention, vLLM's) take the window as bounds and skip the key
  blocks outside it. `windowed_sdpa` has transformers' SDPA attention call the op for a module
  with a sliding window over a prompt it masks.

The op reads the k/v heads once, keeps the scores on chip and skips the key blocks outside the
causal mask and the window (`causal`, `window`: fxroof.chips.expected.causal_share); it applies
transformers' own mask to its values, and prices no read of it. Each swap is undone on exit.
"""
from __future__ import annotations

import contextlib
import functools
import sys

import torch
import torch.nn.functional as F

from fxroof.graph.compiled_branches import modeling_modules
from fxroof.graph.swaps import swapped


def _reference(query, key, value, sinks, mask, scale):
    """transformers' eager attention, with sinks where given: query (batch, heads, queries, d),
    key and value (batch, kv heads, keys, d), sinks (heads,) or None, an additive or boolean
    mask broadcast to the scores, or None."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool \
            else scores + mask
    if sinks is not None:
        sink = sinks.reshape(1, -1, 1, 1).expand(*scores.shape[:-1], 1).to(scores.dtype)
        joined = torch.cat([scores, sink], dim=-1)
        probs = F.softmax(joined - joined.max(dim=-1, keepdim=True).values, dim=-1)[..., :-1]
    else:
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(scores.dtype)
    return torch.matmul(probs.to(value.dtype), value)


@torch.library.custom_op("fxroof::flash_attention", mutates_args=(), schema=(
    "(Tensor query, Tensor key, Tensor value, Tensor? sinks, Tensor? mask, float scale, "
    "bool causal, int window, int chunk=0) -> Tensor"))
def flash_attention(query, key, value, sinks, mask, scale, causal, window, chunk=0):
    """A flash kernel's forward, with sinks where given (FlashAttention-3's): (batch, heads,
    queries, v's d). `mask` is the one transformers builds, applied here; the kernel applies
    `causal` and `window` (keys a query sees, 0: all) from their bounds, reading no mask.
    `chunk`: the call runs a chunked layer's chunks as its batch (its causal mask within each),
    said so the report can name it."""
    if causal and mask is None and query.shape[-2] > 1:
        n, m = query.shape[-2], key.shape[-2]
        mask = torch.ones(n, m, dtype=torch.bool, device=query.device).tril(m - n)
    return _reference(query, key, value, sinks, mask, scale).contiguous()


@flash_attention.register_fake
def _(query, key, value, sinks, mask, scale, causal, window, chunk=0):
    return query.new_empty(*query.shape[:-1], value.shape[-1])


OP = torch.ops.fxroof.flash_attention
# what the report names as the kernels it stands for
SINK_KERNEL = "FlashAttention-3 with sinks"
WINDOW_KERNEL = "one flash kernel bounded by its window"
CHUNK_KERNEL = "a causal flash kernel over each chunk, the chunks its batch"


def _run(module, query, key, value, mask, scaling, sinks, window) -> tuple:
    """The op on transformers' attention arguments, returning what its attention functions
    return: (batch, queries, heads, d), no weights."""
    if mask is not None and mask.dim() == 4:
        mask = mask[:, :, :, : key.shape[-2]]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    causal = bool(getattr(module, "is_causal", True))
    out = OP(query, key, value, sinks, mask, float(scale), causal, int(window or 0))
    return out.transpose(1, 2).contiguous(), None


def _with_sinks(original):
    @functools.wraps(original)
    def eager_attention_forward(module, query, key, value, attention_mask, scaling=None,
                                dropout=0.0, **kwargs):
        sinks = getattr(module, "sinks", None)
        if not isinstance(sinks, torch.Tensor) or (dropout and module.training):
            return original(module, query, key, value, attention_mask, scaling=scaling,
                            dropout=dropout, **kwargs)
        return _run(module, query, key, value, attention_mask, scaling, sinks,
                    getattr(module, "sliding_window", None))
    return eager_attention_forward


@contextlib.contextmanager
def fused_sink_attention():
    """Within the block, every loaded transformers modeling module's `eager_attention_forward`
    runs a module with sinks as one op; each is restored on exit."""
    with swapped((m, "eager_attention_forward", _with_sinks(m.eager_attention_forward))
                 for m in modeling_modules()
                 if callable(getattr(m, "eager_attention_forward", None))):
        yield


def _chunk(module) -> int:
    """The chunk a layer of chunked attention attends within (Llama 4's: a query sees the keys
    from its chunk's start to itself), from its config's layer_types; 0 for other layers."""
    config, index = getattr(module, "config", None), getattr(module, "layer_idx", None)
    types = getattr(config, "layer_types", None)
    if not isinstance(index, int) or not isinstance(types, (list, tuple)) or \
            not 0 <= index < len(types) or types[index] != "chunked_attention":
        return 0
    size = getattr(config, "attention_chunk_size", None)
    return size if isinstance(size, int) and size > 0 else 0


def _chunked(query, key, value, scale: float, chunk: int):
    """A prompt's chunked attention from position 0 as engines run it (vLLM's chunked local
    attention: each chunk a sequence of its own): the whole chunks as the batch of one causal
    flash call, the last partial chunk as another; (batch, queries, heads, d)."""
    batch, heads, tokens, _ = query.shape
    whole = tokens // chunk * chunk
    parts = []

    def by_chunk(t):     # (B, h, n x chunk, d) -> (B x n, h, chunk, d)
        b, h, _, d = t.shape
        return t[:, :, :whole].reshape(b, h, -1, chunk, d).transpose(1, 2).reshape(-1, h, chunk, d)
    if whole:
        out = OP(by_chunk(query), by_chunk(key), by_chunk(value), None, None, scale, True, 0,
                 chunk)
        parts.append(out.reshape(batch, -1, heads, chunk, out.shape[-1]).transpose(1, 2)
                     .reshape(batch, heads, whole, out.shape[-1]))
    if tokens > whole:
        parts.append(OP(query[:, :, whole:], key[:, :, whole:], value[:, :, whole:], None, None,
                        scale, True, 0, chunk))
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
    return out.transpose(1, 2).contiguous(), None


def _windowed(original):
    @functools.wraps(original)
    def sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0,
                               scaling=None, is_causal=None, **kwargs):
        chunk = _chunk(module)
        if chunk and query.shape[2] > chunk and query.shape[2] == key.shape[2] \
                and not (dropout and module.training):
            scale = scaling if scaling is not None else query.shape[-1] ** -0.5
            return _chunked(query, key, value, float(scale), chunk)
        window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
        if not (isinstance(window, int) and window > 0 and attention_mask is not None
                and query.shape[2] > 1 and not (dropout and module.training)
                and kwargs.get("position_bias") is None and kwargs.get("softcap") is None):
            return original(module, query, key, value, attention_mask, dropout=dropout,
                            scaling=scaling, is_causal=is_causal, **kwargs)
        return _run(module, query, key, value, attention_mask, scaling, None, window)
    return sdpa_attention_forward


@contextlib.contextmanager
def windowed_sdpa():
    """Within the block, transformers' SDPA attention runs a prompt's sliding-window attention
    as one op; restored on exit. Nothing happens where transformers is not loaded."""
    utils = sys.modules.get("transformers.modeling_utils")
    mapping = getattr(getattr(utils, "AttentionInterface", None), "_global_mapping", None)
    if not isinstance(mapping, dict) or "sdpa" not in mapping:
        yield
        return
    with swapped([(mapping, "sdpa", _windowed(mapping["sdpa"]))]):
        yield
