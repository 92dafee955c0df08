"""How much device memory a captured graph needs: weights, KV cache, inputs, peak activations,
and for a training step (fxroof.graph.training) gradients and optimizer state.

Works on storages, not tensors, so views cost nothing and an in-place write (a KV cache update)
allocates nothing. Activations are walked in graph order, as eager runs them: a storage is live from
the op that makes it to the last op that reads it (through any view) or to the end if the graph
returns it. A fusing compiler keeps fewer intermediates alive, so this is an upper bound there.
A training step's gradients are intermediates that live to its end, as `.grad` does until the next
zero_grad; the peak of all intermediates counts them, and `activations` is that peak beyond them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from fxroof.graph.nodes import PHASE_KEY, written_args
from fxroof.graph.tensors import storage, tensors_in


@dataclass(frozen=True)
class Footprint:
    weights: int        # parameters and buffers
    kv_cache: int       # inputs the graph writes in place (a preallocated KV cache)
    inputs: int         # other inputs
    activations: int    # peak of live intermediate storages (beyond the gradients)
    gradients: int = 0  # a training step's gradients
    optimizer: int = 0  # a training step's optimizer state (and fp32 master weights)

    @property
    def total(self) -> int:
        return (self.weights + self.kv_cache + self.inputs + self.activations + self.gradients
                + self.optimizer)

    def to_dict(self) -> dict:
        return {**{k: v for k, v in self.__dict__.items()
                   if v or k not in ("gradients", "optimizer")}, "total": self.total}


def _storages(value) -> dict:
    """{storage: bytes} of the tensors in `value`; a subclass without storage is its own."""
    return {s or id(t): t.untyped_storage().nbytes() if s else t.numel() * t.element_size()
            for t in tensors_in(value) for s in [storage(t)]}


def _held(gm: fx.GraphModule, weights: frozenset) -> dict:
    """{storage: (bytes, role)} of the graph's inputs, role "weights", "optimizer" (the state a
    training step's optimizer keeps) or "inputs"."""
    return {s: (size, "weights" if n.name in weights else "optimizer"
                if n.meta.get(PHASE_KEY) == "optimizer" else "inputs")
            for n in gm.graph.nodes if n.op == "placeholder"
            for s, size in _storages(n.meta.get("val")).items()}


def written_inputs(gm: fx.GraphModule, weights: frozenset) -> set:
    """Storages of inputs (not weights, not optimizer state) the graph writes in place: a
    preallocated KV cache. The one definition of "KV cache" that the footprint and the what-ifs
    share."""
    inputs = {s for s, (_, role) in _held(gm, weights).items() if role == "inputs"}
    return {s for n in gm.graph.nodes for arg in written_args(n)
            for s in _storages(arg.meta.get("val")) if s in inputs}


def footprint(gm: fx.GraphModule, weights: frozenset) -> Footprint:
    nodes = list(gm.graph.nodes)
    held = _held(gm, weights)
    # The storages each node makes, and the last node to make or read each (the end if returned).
    made, last_use = [], {}
    for i, n in enumerate(nodes):
        made.append(_storages(n.meta.get("val")) if n.op == "call_function" else {})
        end = len(nodes) if n.op == "output" else i
        for s in [*made[-1], *_storages([a.meta.get("val") for a in n.all_input_nodes])]:
            last_use[s] = end
    live, peak = {}, 0
    for i, outs in enumerate(made):
        live.update({s: size for s, size in outs.items() if s not in held})
        peak = max(peak, sum(live.values()))
        live = {s: size for s, size in live.items() if last_use.get(s, i) > i}
    written = written_inputs(gm, weights)
    sizes = {"weights": 0, "kv_cache": 0, "inputs": 0, "optimizer": 0}
    for s, (size, role) in held.items():
        sizes["kv_cache" if s in written else role] += size
    grads = sum(_storages([a.meta.get("val") for a in nodes[-1].all_input_nodes
                           if a.meta.get(PHASE_KEY) == "backward"]).values())
    return Footprint(activations=peak - grads, gradients=grads, **sizes)


def state_reads(gm: fx.GraphModule, weights: frozenset) -> dict[str, dict]:
    """{node name: {storage: bytes}} of the model's state each op reads, views looked through:
    its weights, KV cache and optimizer state, the storages that outlive one pass. On a chip with a
    cache they stay there between passes in the share the footprint leaves them
    (chips.chip.memory_share); the rest every pass streams from memory again."""
    written = written_inputs(gm, weights)
    state = {s: size for s, (size, role) in _held(gm, weights).items()
             if role != "inputs" or s in written}
    reads = {n.name: {s: state[s] for arg in n.all_input_nodes
                      for s in _storages(arg.meta.get("val")) if s in state}
             for n in gm.graph.nodes if n.op == "call_function"}
    return {name: found for name, found in reads.items() if found}
