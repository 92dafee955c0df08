"""Experts that transformers runs densely, captured as the routed grouped GEMMs engines run.

Llama 4's mixture of experts (Scout's 16 experts, Maverick's 128, one chosen a token) is written
in transformers as every token through every expert, each scaled by its router score, zero for
the experts not chosen (`Llama4TextMoe`: `hidden_states.repeat(num_experts, 1)` into a batched
product over all of them): its code says so ("This should really not be run on a single
machine"). vLLM and SGLang route each token to its top-k experts and run one grouped GEMM over
the routed tokens. `routed_dense_experts` has Llama4TextMoe run that way while a capture runs:
the router's top-k, the tokens sorted by expert, transformers' own grouped products
(`integrations.moe._grouped_linear`, as its "grouped_mm" experts of other models), the score
applied to each routed token before its expert as Llama 4 applies it. The output is the dense
code's (its unchosen experts add zero); which experts run is the routing fxroof assumes
(fxroof.graph.routing), said in the report. Undone on exit.
"""
from __future__ import annotations

import contextlib
import sys

import torch

from fxroof.graph.swaps import swapped

__all__ = ["routed_dense_experts"]

# module -> the class whose forward runs every token through every expert
DENSE_EXPERTS = {"transformers.models.llama4.modeling_llama4": "Llama4TextMoe"}


def _routed_forward(self, hidden_states):
    """Llama4TextMoe.forward over each token's top-k experts alone: (output, router logits)."""
    from transformers.integrations.moe import _grouped_linear
    hidden = hidden_states.reshape(-1, self.hidden_dim)
    logits = torch.nn.Linear.forward(self.router, hidden)           # (tokens, experts)
    top, chosen = torch.topk(logits, self.top_k, dim=1)
    score = torch.sigmoid(top.float()).to(hidden.dtype).reshape(-1)   # (tokens x k,)
    experts, k = self.experts, self.top_k
    order, perm = torch.sort(chosen.reshape(-1))
    routed = hidden[perm // k] * score[perm].unsqueeze(-1)            # scaled before its expert
    counts = torch.histc(order.float() if order.device.type in ("cpu", "mps") else order.int(),
                         bins=self.num_experts, min=0, max=self.num_experts - 1)
    offsets = torch.cumsum(counts, dim=0, dtype=torch.int32)
    gate, up = _grouped_linear(routed, experts.gate_up_proj, offsets,
                               is_transposed=True).chunk(2, dim=-1)
    out = _grouped_linear(up * experts.act_fn(gate), experts.down_proj, offsets,
                          is_transposed=True)
    back = torch.empty_like(perm)
    back[perm] = torch.arange(perm.numel(), device=perm.device)
    mixed = out[back].view(hidden.shape[0], k, -1).sum(dim=1).to(hidden.dtype)
    shared = self.shared_expert(hidden)
    shared.add_(mixed)
    return shared, logits


@contextlib.contextmanager
def routed_dense_experts():
    """Within the block, every loaded DENSE_EXPERTS class routes its tokens; restored on exit."""
    with swapped((cls, "forward", _routed_forward) for module, name in DENSE_EXPERTS.items()
                 if (cls := getattr(sys.modules.get(module), name, None)) is not None):
        yield
