"""A generation's prompt step as engines run it: the output head reads the last position only.

A forward pass as a decoder's code writes it computes logits for every position; a generation
needs the last one's to sample its first token, and serving engines (vLLM, SGLang,
TensorRT-LLM without `gather_context_logits`) and transformers' own `generate`
(`logits_to_keep=1`) compute only those. Over a long prompt and a large vocabulary the
difference is large (Gemma-3's 262,144 logits a position: 14% of an 8,192-token prompt's time
on an H100) and so is the memory: the logits of every position of 32 sequences of 8,192
tokens over Llama-3's 128,256 are 67 GB in bf16. gpt-fast's prefill computes them all.

The model is wrapped, not changed: the head's hook lives for one call of the wrapper.
"""
from __future__ import annotations

import torch
from torch import nn

from fxroof.graph.parallel import LM_HEADS

__all__ = ["LastPositionLogits", "last_position_logits", "output_head"]


def output_head(model: nn.Module) -> str | None:
    """The name of the model's output head: the linear a transformers model names its output
    embeddings (`get_output_embeddings`: BioGPT's output_projection, XLNet's lm_loss), else the
    one linear named as heads are (LM_HEADS) whose outputs are as many as an embedding's rows
    (its vocabulary); None where there is not exactly one."""
    named = getattr(model, "get_output_embeddings", None)
    head = named() if callable(named) else None
    if isinstance(head, nn.Linear):
        found = [name for name, m in model.named_modules() if m is head]
        if found:
            return found[0]
    vocabs = {m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)}
    heads = [name for name, m in model.named_modules()
             if isinstance(m, nn.Linear) and name.rpartition(".")[2] in LM_HEADS
             and m.out_features in vocabs]
    return heads[0] if len(heads) == 1 else None


class LastPositionLogits(nn.Module):
    """`model` whose output head (`head`, a name output_head gives) reads the last position of
    its (batch, positions, hidden) input, as `hidden[:, -1:]`; an input of another rank is read
    whole."""

    def __init__(self, model: nn.Module, head: str):
        super().__init__()
        self.model, self.head = model, head

    def forward(self, *args, **kwargs):
        hook = self.model.get_submodule(self.head).register_forward_pre_hook(_last_position)
        try:
            return self.model(*args, **kwargs)
        finally:
            hook.remove()


def _last_position(module: nn.Module, args: tuple):
    hidden, *rest = args
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
        return None
    return (hidden[:, -1:], *rest)


def last_position_logits(model: nn.Module, head: str) -> LastPositionLogits:
    """LastPositionLogits of `model`, its class named as the model's: reports name the model."""
    named = type(type(model).__name__, (LastPositionLogits,), {})
    return named(model, head)
