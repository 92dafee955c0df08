"""transformers' compile-only branches, taken by every capture strategy alike.

transformers writes some ops one way for eager runs and another under torch.compile, guarded by
`is_torchdynamo_compiling()`. The one that moves time most: a one-token decode step of a
grouped-query attention packs the query's heads into the key heads' groups in eager mode
(`pack_gqa`, the cache read once), and under torch.compile copies every key and value head
out to the query heads' count (`repeat_kv`: a 7-to-1 model reads and writes its cache 7 times
over), sdpa_attention_forward in transformers/integrations/sdpa_attention.py.

torch.export (the first strategy) traces through Dynamo, so the graph holds the compiled
branch; make_fx (the others, and every tensor-parallel capture) does not, and got the eager
one. The same model then came out 5.7x faster as one rank of tp=2 than on one GPU (a
Qwen2-7B decode step, batch 16 over 4,096 tokens: 28.1 ms against 4.9 ms), where the cache it
reads only halves. Under make_fx transformers is told it is compiling, as it is under torch.export,
so that every strategy captures the same program: the one torch.compile runs, fxroof's default
mode.
"""
from __future__ import annotations

import contextlib
import sys


def _compiling() -> bool:
    return True


@contextlib.contextmanager
def transformers_compiling():
    """Within the block, each loaded transformers module's `is_torchdynamo_compiling` says
    True; restored on exit. Nothing happens where transformers is not loaded."""
    utils = sys.modules.get("transformers.utils.import_utils")
    original = getattr(utils, "is_torchdynamo_compiling", None)
    if original is None:
        yield
        return
    patched = [m for name, m in list(sys.modules.items())
               if name.startswith("transformers") and m is not None
               and getattr(m, "is_torchdynamo_compiling", None) is original]
    for module in patched:
        module.is_torchdynamo_compiling = _compiling
    try:
        yield
    finally:
        for module in patched:
            module.is_torchdynamo_compiling = original


ATTENTION_OPS = frozenset({"scaled_dot_product_attention", "_scaled_dot_product_flash_attention",
                           "_scaled_dot_product_efficient_attention",
                           "_scaled_dot_product_cudnn_attention",
                           "_scaled_dot_product_flash_attention_for_cpu"})
_PASS_THROUGH = frozenset({"view", "reshape", "_unsafe_view", "clone", "contiguous"})


def repeated_kv(gm) -> list:
    """The nodes that copy an attention's key or value heads out to its query heads' count
    before it (an expand over a new group dim, then a reshape that must copy: repeat_kv), in
    graph order; the attention itself reads them as it would the cache."""
    copies = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or _name(node) not in ATTENTION_OPS:
            continue
        for arg in node.args[1:3]:
            chain, cur = [], arg
            while hasattr(cur, "op") and cur.op == "call_function" and _name(cur) in _PASS_THROUGH:
                chain.append(cur)
                cur = cur.args[0]
            if hasattr(cur, "op") and cur.op == "call_function" and _name(cur) == "expand" \
                    and 0 in _strides(cur):
                copies += [n for n in chain if _name(n) in ("reshape", "clone")]
    return copies


def _name(node) -> str:
    packet = getattr(node.target, "overloadpacket", node.target)
    return getattr(packet, "__name__", str(packet))


def _strides(node) -> tuple:
    val = node.meta.get("val")
    return tuple(val.stride()) if hasattr(val, "stride") else ()
