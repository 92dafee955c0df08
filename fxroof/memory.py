"""How much device memory a captured graph needs: weights, KV cache, inputs, peak activations.

Works on storages, not tensors, so views cost nothing and an in-place write (a KV cache update)
allocates nothing. Activations are walked in graph order, as eager runs them: a storage is live from
the op that makes it to the last op that reads it (through any view) or to the end if the graph
returns it. A fusing compiler keeps fewer intermediates alive, so this is an upper bound there.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx
from torch.multiprocessing.reductions import StorageWeakRef

from .tensors import tensors_in


@dataclass(frozen=True)
class Footprint:
    weights: int        # parameters and buffers
    kv_cache: int       # inputs the graph writes in place (a preallocated KV cache)
    inputs: int         # other inputs
    activations: int    # peak of live intermediate storages

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.inputs + self.activations

    def to_dict(self) -> dict:
        return {**self.__dict__, "total": self.total}


def _storages(value) -> dict:
    found = {}
    for t in tensors_in(value):
        try:
            found[StorageWeakRef(t.untyped_storage())] = t.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):   # storage-less subclasses: their own size
            found[id(t)] = t.numel() * t.element_size()
    return found


def _mutated_args(node: fx.Node) -> list:
    """The argument nodes an in-place op writes (`self` of index_copy_, `out=` buffers)."""
    schema = getattr(node.target, "_schema", None) if node.op == "call_function" else None
    if schema is None:
        return []
    found = []
    for i, a in enumerate(schema.arguments):
        if a.alias_info is not None and a.alias_info.is_write:
            value = node.args[i] if i < len(node.args) else node.kwargs.get(a.name)
            found += [v for v in (value if isinstance(value, (list, tuple)) else [value])
                      if isinstance(v, fx.Node)]
    return found


def written_inputs(gm: fx.GraphModule, weights: frozenset) -> set:
    """Storages of inputs (not weights) the graph writes in place: a preallocated KV cache.
    The one definition of "KV cache" that the footprint and the what-ifs share."""
    inputs = {s for n in gm.graph.nodes if n.op == "placeholder" and n.name not in weights
              for s in _storages(n.meta.get("val"))}
    return {s for n in gm.graph.nodes for arg in _mutated_args(n)
            for s in _storages(arg.meta.get("val")) if s in inputs}


def footprint(gm: fx.GraphModule, weights: frozenset) -> Footprint:
    nodes = list(gm.graph.nodes)
    placeholder_storage: dict = {}      # storage -> (bytes, is_weight)
    for n in nodes:
        if n.op == "placeholder":
            for s, size in _storages(n.meta.get("val")).items():
                placeholder_storage[s] = (size, n.name in weights)

    # The storages each node touches: what it makes and what it reads (views included).
    made: list[dict] = []
    last_use: dict = {}
    for i, n in enumerate(nodes):
        outs = _storages(n.meta.get("val")) if n.op == "call_function" else {}
        made.append(outs)
        for s in outs:
            last_use[s] = i
        for arg in n.all_input_nodes:
            for s in _storages(arg.meta.get("val")):
                last_use[s] = i
        if n.op == "output":
            for arg in n.all_input_nodes:
                for s in _storages(arg.meta.get("val")):
                    last_use[s] = len(nodes)       # returned: live to the end

    live: dict = {}
    peak = 0
    for i, outs in enumerate(made):
        for s, size in outs.items():
            if s not in placeholder_storage and s not in live:
                live[s] = size
        peak = max(peak, sum(live.values()))
        for s in [s for s in live if last_use.get(s, i) <= i]:
            del live[s]

    weight_bytes = sum(size for size, is_w in placeholder_storage.values() if is_w)
    written = written_inputs(gm, weights)
    cache = sum(placeholder_storage[s][0] for s in written)
    other = sum(size for s, (size, is_w) in placeholder_storage.items()
                if not is_w and s not in written)
    return Footprint(weight_bytes, cache, other, peak)


def state_reads(gm: fx.GraphModule, weights: frozenset) -> dict[str, dict]:
    """{node name: {storage: bytes}} of the model's state each op reads, views looked through:
    its weights and its KV cache, the storages that outlive one forward pass. On a chip with a
    cache they stay there between passes only when the whole footprint fits in it; otherwise
    every pass streams them from memory again."""
    state = {s: size for n in gm.graph.nodes if n.op == "placeholder" and n.name in weights
             for s, size in _storages(n.meta.get("val")).items()}
    written = written_inputs(gm, weights)
    state |= {s: size for n in gm.graph.nodes if n.op == "placeholder"
              for s, size in _storages(n.meta.get("val")).items() if s in written}
    reads: dict = {}
    for n in gm.graph.nodes:
        if n.op != "call_function":
            continue
        found = {s: state[s] for arg in n.all_input_nodes
                 for s in _storages(arg.meta.get("val")) if s in state}
        if found:
            reads[n.name] = found
    return reads

