"""scaled_dot_product_attention calls that PyTorch runs by its math path, spelled out.

PyTorch's fused attention kernels take 4-D query, key and value only: FlashAttention and the
memory-efficient kernel on CUDA (aten/src/ATen/native/transformers/sdp_utils_cpp.h,
check_tensor_shapes: "Expected query, key, and value to all be 4 dimensional") and the CPU's flash
kernel alike (attention.cpp, _scaled_dot_product_flash_attention_cpu). Any other rank, such as
NesT's attention over (batch, heads, blocks, tokens, head size), goes to
_scaled_dot_product_attention_math: the scores reach memory, and since PyTorch 2.5 16-bit inputs
are computed in fp32 unless torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(True) (pytorch
pull requests #128922, #135964). The graph keeps such a call as one node; this pass puts the ops
that path runs in its place, traced from PyTorch's own function under the installed torch and its
flags, so each is costed and fused as what it is.
"""
from __future__ import annotations

import torch
import torch.fx as fx
from torch.fx.experimental.proxy_tensor import make_fx

from fxroof.graph.aten_ops import aten

SDPA = torch.ops.aten.scaled_dot_product_attention.default
FUSED_RANK = 4      # the only rank PyTorch's fused attention kernels take


def takes_math_path(node: fx.Node) -> bool:
    """Whether PyTorch runs this scaled_dot_product_attention node by its math path."""
    if node.op != "call_function" or node.target is not SDPA:
        return False
    qkv = [a.meta.get("val") if isinstance(a, fx.Node) else None for a in node.args[:3]]
    return all(isinstance(t, torch.Tensor) for t in qkv) and \
        any(t.dim() != FUSED_RANK for t in qkv)


def spell_out_math_attention(gm: fx.GraphModule) -> dict:
    """Replace each math-path attention node by the ops PyTorch's math path runs, in place; each
    new node keeps the attention's module path. Returns {(query rank, whether its 16-bit inputs
    are computed in fp32): calls} of those replaced.
    Needs concrete sizes: a graph traced with symbolic ones says so (a sweep then captures each
    value on its own)."""
    graph = gm.graph
    ranks: dict = {}
    for node in [n for n in graph.nodes if takes_math_path(n)]:
        q = node.args[0].meta["val"]
        key = (q.dim(), q.dtype in (torch.float16, torch.bfloat16) and _upcasts())
        ranks[key] = ranks.get(key, 0) + 1
        tensors = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, fx.Node)]
        vals = [a.meta["val"] for a in tensors]
        if any(not isinstance(s, int) for t in vals for s in (*t.shape, *t.stride())):
            raise RuntimeError("scaled_dot_product_attention on inputs of rank other than 4 "
                               "runs PyTorch's math path, spelled out for concrete sizes only")
        sub = make_fx(_math(node), tracing_mode="fake")(*[_meta(t) for t in vals])
        holders = [p for p in sub.graph.nodes if p.op == "placeholder"]
        last = node.prev          # the new nodes go between it and the node they replace
        with graph.inserting_before(node):
            out = graph.graph_copy(sub.graph, dict(zip(holders, tensors)))
        new = last.next
        while new is not node:
            new.meta.update({k: v for k, v in node.meta.items() if k != "val"})
            new = new.next
        node.replace_all_uses_with(out)
        graph.erase_node(node)
    graph.lint()
    gm.recompile()
    return ranks


def math_attention_notes(ranks: dict) -> tuple:
    """What the report says of the attention calls spell_out_math_attention replaced."""
    return tuple(
        f"{calls} scaled_dot_product_attention call{'s' if calls > 1 else ''} on {rank}-D inputs "
        f"run{'' if calls > 1 else 's'} PyTorch's math path (its fused kernels take 4-D only): "
        f"the scores reach memory{', in fp32' if upcast else ''}; "
        + ("folding the extra dimensions into the batch" if rank > FUSED_RANK
           else "a heads dimension, (batch, 1, length, size),") + " lets the fused kernel run"
        for (rank, upcast), calls in sorted(ranks.items()))


def _upcasts() -> bool:
    """Whether the installed torch computes 16-bit math attention in fp32 (2.5 and after,
    unless allowed not to)."""
    allowed = getattr(torch.backends.cuda, "fp16_bf16_reduction_math_sdp_allowed", None)
    return allowed is not None and not allowed()


def _math(node: fx.Node):
    """The math path of the node's call: its tensors as the function's arguments, the rest as
    the node has them. Returns the output; the path's second output (the probabilities in the
    input dtype) is computed all the same, so its cast stays in the trace."""
    names = [a.name for a in SDPA._schema.arguments]
    given = dict(zip(names, node.args)) | dict(node.kwargs)
    tensor_names = [k for k, v in given.items() if isinstance(v, fx.Node)]

    def math_path(*tensors):
        call = given | dict(zip(tensor_names, tensors))
        out, _ = torch.ops.aten._scaled_dot_product_attention_math(
            call["query"], call["key"], call["value"], call.get("attn_mask"),
            call.get("dropout_p", 0.0), call.get("is_causal", False), None,
            scale=call.get("scale"), enable_gqa=call.get("enable_gqa", False))
        return out
    return math_path


def _meta(t: torch.Tensor) -> torch.Tensor:
    """A meta tensor with t's sizes, strides and dtype: nothing allocated, the same layout."""
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")


# Ops whose output's layout follows their input's (views, and the copies a layout can spare):
# their fake values are derived again once an attention output's layout is put right.
_FOLLOW_LAYOUT = frozenset({aten.transpose, aten.permute, aten.view, aten._unsafe_view,
                            aten.reshape, aten.contiguous, aten.expand, aten.unsqueeze,
                            aten.squeeze, aten.t, aten.alias, aten.detach, aten.flatten})


def fused_output_layouts(gm: fx.GraphModule) -> int:
    """Give each fused attention node's output the layout its kernel writes: the query's (the
    CPU's flash kernel allocates it like the query; CUDA's flash and memory-efficient kernels
    write (batch, tokens, heads, head size), which is the query's layout whenever the query is a
    head-split projection, as in Hugging Face's attentions). torch.export traces with the grad
    on, and where the mask then needs one (a bias computed from weights, Swin's relative
    positions) PyTorch's composite op lays its fake output out contiguous, as its math path
    does: the model's `out.transpose(1, 2).contiguous()` read as a copy of the whole output,
    which an inference run never makes (Swin at 64 px: 1.3 us measured, 12.8 charged). The
    views and reshapes downstream are traced again on the new layout. Returns how many
    attention outputs changed."""
    changed = 0
    for node in [n for n in gm.graph.nodes if n.op == "call_function" and n.target is SDPA
                 and not takes_math_path(n)]:
        q, out = node.args[0].meta.get("val"), node.meta.get("val")
        if not (isinstance(q, torch.Tensor) and isinstance(out, torch.Tensor)):
            continue
        order = sorted(range(q.dim()), key=lambda d: q.stride(d), reverse=True)
        if order == sorted(range(out.dim()), key=lambda d: out.stride(d), reverse=True):
            continue
        mode = getattr(out, "fake_mode", None)
        if mode is None:
            continue
        strides, step = [0] * out.dim(), 1
        for d in reversed(order):               # innermost first
            strides[d], step = step, step * out.shape[d]
        with mode:
            node.meta["val"] = torch.empty_strided(out.shape, strides, dtype=out.dtype,
                                                   device=out.device)
        changed += 1
        _retrace_views(node, mode)
    return changed


def _retrace_views(start: fx.Node, mode) -> None:
    """Derive again the fake values of the layout-following ops fed by `start`, in graph
    order; one that fails keeps its value."""
    todo, seen = list(start.users), set()
    while todo:
        node = todo.pop(0)
        if node in seen or node.op != "call_function" or \
                getattr(node.target, "overloadpacket", None) not in _FOLLOW_LAYOUT:
            continue
        seen.add(node)
        args, kwargs = fx.map_arg((node.args, node.kwargs), lambda a: a.meta.get("val"))
        try:
            with mode:
                node.meta["val"] = node.target(*args, **kwargs)
        except Exception:     # a shape it cannot be traced on again: keep what export gave
            continue
        todo.extend(node.users)
