"""Multi-head latent attention (DeepSeek-V2/V3's MLA, and the models built on it) in a decode
step, captured as serving engines run it: kv_b_proj absorbed, attention over the latent cache.

These models cache one latent row a token (kv_lora_rank wide, and its rotary part), not keys and
values per head. transformers 5 expands the whole cache through kv_b_proj in every step
(`expand_kv`), then attends: a product over every cached position and every head's keys and
values written out, each step. A decode step in FlashMLA, vLLM or SGLang instead folds kv_b_proj
into the query and the output (the DeepSeek-V2 paper, section 2.1.2: W^UK absorbed into the
query, W^UV into the output) and attends over the latent rows as one shared head, reading the
cache once. While a capture runs, `absorbed_latent_attention` gives every transformers attention
class with an `expand_kv` that path for a query of one token; longer queries (a prompt) keep
transformers' own, which engines also run for a prefill. The swap is on the classes, undone on
exit: the user's model is untouched.
"""
from __future__ import annotations

import contextlib
import functools
import math

import torch
import torch.nn.functional as F

from fxroof.graph.compiled_branches import modeling_modules
from fxroof.graph.swaps import swapped


def _reference(q_latent, q_rot, kv_latent, k_rot, mask, scale):
    """The attention of the absorbed query over the latent rows, as one shared head: keys are
    the latent rows and their rotary part, values the latent rows."""
    query = torch.cat([q_latent, q_rot], dim=-1)
    heads = query.shape[1]
    key = torch.cat([kv_latent, k_rot], dim=-1).expand(-1, heads, -1, -1)
    value = kv_latent.expand(-1, heads, -1, -1)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)


@torch.library.custom_op("fxroof::latent_attention", mutates_args=(), schema=(
    "(Tensor q_latent, Tensor q_rot, Tensor kv_latent, Tensor k_rot, Tensor? mask, "
    "float scale) -> Tensor"))
def latent_attention(q_latent, q_rot, kv_latent, k_rot, mask, scale):
    """FlashMLA's decode kernel: q_latent (batch, heads, queries, rank), q_rot (batch, heads,
    queries, rope), kv_latent (batch, 1, keys, rank), k_rot (batch, 1, keys, rope); returns
    (batch, heads, queries, rank), still in the latent space."""
    return _reference(q_latent, q_rot, kv_latent, k_rot, mask, scale).contiguous()


@latent_attention.register_fake
def _(q_latent, q_rot, kv_latent, k_rot, mask, scale):
    return q_latent.new_empty(q_latent.shape)


OP = torch.ops.fxroof.latent_attention
# what the report names as the kernel it stands for
KERNEL = "FlashMLA's absorbed decode attention"

# attention modules in a decode step, by id, while their forward runs
_decoding: set[int] = set()


def _local(weight: torch.Tensor) -> torch.Tensor:
    """A tensor-parallel rank's shard of a weight (a DTensor's local part), else the weight."""
    return weight.to_local() if hasattr(weight, "to_local") else weight


def _absorbed(module, query, key, value, mask, scaling=None, **_):
    """The attention of one decode step over the latent cache (key: the latent rows' rotary
    part, value: the latent rows, as the patched expand_kv returns them), kv_b_proj's
    key half folded into the query and its value half into the output. Returns what transformers'
    attention functions return: (batch, queries, heads, v_head_dim), no weights."""
    nope, rank = module.qk_nope_head_dim, value.shape[-1]
    heads = query.shape[1]
    weight = _local(module.kv_b_proj.weight).view(heads, nope + module.v_head_dim, rank)
    q_latent = torch.einsum("bhsd,hdr->bhsr", query[..., :nope], weight[:, :nope])
    if mask is not None and mask.dim() == 4:
        mask = mask[:, :, :, : key.shape[-2]]
    scale = scaling if scaling is not None else 1 / math.sqrt(query.shape[-1])
    out = OP(q_latent, query[..., nope:], value, key, mask, float(scale))
    out = torch.einsum("bhsr,hvr->bhsv", out, weight[:, nope:])
    return out.transpose(1, 2).contiguous(), None


def _latent_rows(original):
    @functools.wraps(original)
    def expand_kv(self, kv_nope, k_rot):
        if id(self) not in _decoding:
            return original(self, kv_nope, k_rot)
        return k_rot, kv_nope      # (key, value): the rows as the cache holds them, not joined
    return expand_kv


def _marking(original):
    @functools.wraps(original)
    def forward(self, hidden_states, *args, **kwargs):
        queries = hidden_states.shape[-2] if hidden_states.dim() >= 2 else None
        # static sizes only; a bias on kv_b_proj does not fold (none of these models has one)
        projection = getattr(self, "kv_b_proj", None)
        if not (type(queries) is int and queries == 1 and projection is not None
                and getattr(projection, "bias", None) is None):
            return original(self, hidden_states, *args, **kwargs)
        _decoding.add(id(self))
        try:
            return original(self, hidden_states, *args, **kwargs)
        finally:
            _decoding.discard(id(self))
    return forward


class _Interfaces:
    """A modeling module's ALL_ATTENTION_FUNCTIONS whose lookups give the absorbed attention to
    a module in a decode step and the looked-up one to every other."""

    def __init__(self, interfaces):
        self._interfaces = interfaces

    def get_interface(self, name, default):
        chosen = self._interfaces.get_interface(name, default)

        def attention(module, *args, **kwargs):
            if id(module) in _decoding:
                return _absorbed(module, *args, **kwargs)
            return chosen(module, *args, **kwargs)
        return attention

    def __getattr__(self, name):
        return getattr(self._interfaces, name)


def _latent_classes():
    """(modeling module, class) of every loaded transformers attention that expands a latent
    cache (defines expand_kv and keeps a kv_b_proj)."""
    for module in modeling_modules():
        for cls in list(vars(module).values()):
            if isinstance(cls, type) and issubclass(cls, torch.nn.Module) \
                    and "expand_kv" in vars(cls) and "forward" in vars(cls):
                yield module, cls


@contextlib.contextmanager
def absorbed_latent_attention():
    """Within the block, every loaded transformers latent attention runs a one-token query
    absorbed (the module's docstring); each class and module is restored on exit."""
    classes = list(_latent_classes())
    modules = {id(m): m for m, _ in classes}.values()
    with swapped([*((cls, name, wrap(vars(cls)[name])) for _, cls in classes
                    for name, wrap in (("expand_kv", _latent_rows), ("forward", _marking))),
                  *((m, "ALL_ATTENTION_FUNCTIONS", _Interfaces(m.ALL_ATTENTION_FUNCTIONS))
                    for m in modules if hasattr(m, "ALL_ATTENTION_FUNCTIONS"))]):
        yield
