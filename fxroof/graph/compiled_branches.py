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

One branch goes the other way: a prompt's causal mask, which a trace keeps only because it cannot
read the position ids' values (`prompt_masks_as_eager`, entered with the engines' kernels,
fxroof.graph.engine_kernels): transformers' eager run and serving engines leave it to the
kernel's `is_causal`.
"""
from __future__ import annotations

import contextlib
import sys

import torch.fx as fx

from fxroof.graph.swaps import swapped


def modeling_modules() -> list:
    """transformers' modeling modules loaded in this process (each model family's own), the
    ones a capture's swaps patch; none where transformers is not loaded."""
    return [m for name, m in list(sys.modules.items())
            if name.startswith("transformers.models.") and m is not None]


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


# What lies between a broadcast k/v and its attention in repeat_kv: the reshape that copies
# (clone and _unsafe_view once decomposed) and views around it.
_PASS_THROUGH = frozenset({"view", "reshape", "_unsafe_view", "clone", "contiguous"})


def repeated_kv(gm: fx.GraphModule, attention: set) -> list:
    """The nodes between each attention node (`attention`: their names) and a key or value
    that is a broadcast over a new group dim (an expand of stride 0): repeat_kv's copy out to
    the query heads' count, in graph order. Which of them copy is the cost pass's to say."""
    chain = []
    for node in gm.graph.nodes:
        if node.name not in attention:
            continue
        for arg in node.args[1:3]:
            path = []
            while _name(arg) in _PASS_THROUGH:
                path.append(arg)
                arg = arg.args[0]
            if _name(arg) == "expand" and 0 in getattr(arg.meta.get("val"), "stride", tuple)():
                chain += path
    return chain


def _name(node) -> str:
    """A call's op name ("" for anything else)."""
    if not isinstance(node, fx.Node) or node.op != "call_function":
        return ""
    return getattr(getattr(node.target, "overloadpacket", node.target), "__name__", "")


def _unpacked(position_ids):
    return None


def _not_exporting() -> bool:
    return False


@contextlib.contextmanager
def prompt_masks_as_eager():
    """Within the block, transformers leaves a prompt's causal mask to the attention kernel
    (`is_causal`) as its eager run does: it takes the positions for one sequence a row (no
    packing, which an eager run reads from their values and a trace cannot) and drops the
    export-only rule that keeps the mask, which guards an exported program against other
    shapes (masking_utils._ignore_causal_mask_sdpa). A trace had built the mask out and read it
    in every attention: a masked kernel with no causal block skipping, and grouped k/v heads
    copied out. Padding, a sliding window's reach and a decode step over a static cache still
    build their masks. Nothing happens where transformers is not loaded."""
    masking = sys.modules.get("transformers.masking_utils")
    if masking is None or not hasattr(masking, "find_packed_sequence_indices"):
        yield
        return
    with swapped((masking, name, value) for name, value in (
            ("find_packed_sequence_indices", _unpacked),
            ("is_torchdynamo_exporting", _not_exporting)) if hasattr(masking, name)):
        yield
