"""Attention with sinks (gpt-oss) captured as the one fused kernel a GPU deployment runs.

gpt-oss gives each head a learned sink, a logit every query's softmax takes beside its keys'.
PyTorch's scaled_dot_product_attention has no such term, so transformers runs these models
through its eager attention (`eager_attention_forward` in the modeling file: k/v copied out to
every query head, the scores written out, the sink joined to them, a softmax, a product), unless
a hub kernel is installed: FlashAttention-3 with sinks ("kernels-community/vllm-flash-attn3",
which gpt-oss's model card asks for), as vLLM and SGLang run it. While a capture runs,
`fused_sink_attention` has that function call one op for a module with sinks: the k/v heads read
once, the scores kept on chip, a causal or sliding-window layer's key blocks outside its bounds
skipped (`causal`, `window`: fxroof.chips.expected.causal_share). Other modules' eager attention
is left alone. The swap is on the modeling modules, undone on exit.
"""
from __future__ import annotations

import contextlib
import functools
import sys

import torch
import torch.nn.functional as F


def _reference(query, key, value, sinks, mask, scale):
    """transformers' eager attention with sinks: query (batch, heads, queries, d), key and value
    (batch, kv heads, keys, d), sinks (heads,), an additive or boolean mask broadcast to the
    scores, or None."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool \
            else scores + mask
    sink = sinks.reshape(1, -1, 1, 1).expand(*scores.shape[:-1], 1).to(scores.dtype)
    joined = torch.cat([scores, sink], dim=-1)
    probs = F.softmax(joined - joined.max(dim=-1, keepdim=True).values, dim=-1)
    return torch.matmul(probs[..., :-1].to(value.dtype), value)


@torch.library.custom_op("fxroof::sink_attention", mutates_args=(), schema=(
    "(Tensor query, Tensor key, Tensor value, Tensor sinks, Tensor? mask, float scale, "
    "bool causal, int window) -> Tensor"))
def sink_attention(query, key, value, sinks, mask, scale, causal, window):
    """FlashAttention-3's forward with sinks: (batch, heads, queries, v's d). `mask` is the one
    transformers builds, applied here; the kernel applies `causal` and `window` (keys a query
    sees, 0: all) from their bounds, reading no mask."""
    return _reference(query, key, value, sinks, mask, scale).contiguous()


@sink_attention.register_fake
def _(query, key, value, sinks, mask, scale, causal, window):
    return query.new_empty(*query.shape[:-1], value.shape[-1])


OP = torch.ops.fxroof.sink_attention
# what the report names as the kernel it stands for
KERNEL = "FlashAttention-3 with sinks"


def _fused(original):
    @functools.wraps(original)
    def eager_attention_forward(module, query, key, value, attention_mask, scaling=None,
                                dropout=0.0, **kwargs):
        sinks = getattr(module, "sinks", None)
        if not isinstance(sinks, torch.Tensor) or (dropout and module.training):
            return original(module, query, key, value, attention_mask, scaling=scaling,
                            dropout=dropout, **kwargs)
        if attention_mask is not None and attention_mask.dim() == 4:
            attention_mask = attention_mask[:, :, :, : key.shape[-2]]
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        window = int(getattr(module, "sliding_window", None) or 0)
        causal = bool(getattr(module, "is_causal", True))
        out = OP(query, key, value, sinks, attention_mask, float(scale), causal, window)
        return out.transpose(1, 2).contiguous(), None
    return eager_attention_forward


@contextlib.contextmanager
def fused_sink_attention():
    """Within the block, every loaded transformers modeling module's `eager_attention_forward`
    runs a module with sinks as one op (the module's docstring); each is restored on exit."""
    patched = [(m, m.eager_attention_forward) for name, m in list(sys.modules.items())
               if name.startswith("transformers.models.") and m is not None
               and callable(getattr(m, "eager_attention_forward", None))]
    try:
        for module, original in patched:
            module.eager_attention_forward = _fused(original)
        yield
    finally:
        for module, original in patched:
            module.eager_attention_forward = original
