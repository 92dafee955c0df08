"""Tensor parallelism: analyze one rank of a model split Megatron-style over `tp` ranks.

    fxroof.analyze(model, args, tp=8)       # one rank of an 8-way split, on the default chip
    tp_scaling(model, args, chip="l40s")    # per-rank time, compute vs communication, tp 1..8
    megatron_plan(model, tp=8)              # the plan alone: which layer is split how

The split is done by PyTorch itself (DTensor's `parallelize_module`) on a fake process group (one
rank, no communication, no cluster), so the captured per-rank graph holds the local shard shapes
and the real collectives DTensor emits (`_c10d_functional.all_reduce`, `all_gather_into_tensor`,
...), costed by formulas/collective.py. A model the user parallelized with DTensor themselves is
analyzed by plain `analyze` (capture.py unwraps DTensor weights to their local shards).

The plan (Shoeybi et al., "Megatron-LM", 2019, section 3): in every attention and MLP block the
first projections are split by output columns (q/k/v by heads; gate/up by hidden units) and the
last by input rows, so each block needs one all-reduce of its output and none in between.

    layout                                   colwise (out split)        rowwise (in split)
    Llama / Mistral / Qwen (Hugging Face)    q_proj k_proj v_proj       o_proj
                                             gate_proj up_proj          down_proj
    bundled models/llama.py                  wq wk wv w1 w3             wo w2
    GPT-2 (Hugging Face, Conv1D)             c_attn c_fc                c_proj
    anything else                            in each module with exactly two Linear children,
                                             the first                  the second
    plus, when present: the token embedding (embed_tokens, tok_embeddings, wte) split by vocabulary
    rows with an all-reduce of its output (Megatron's VocabParallelEmbedding), and a top-level LM
    head (lm_head, output) split by vocabulary columns with its logits all-gathered.

Limits:
  - The model is deep-copied and the copy is split; the user's model is never touched (weights,
    modes, hooks). The copy's weights are fake tensors (shapes, no data) made in the copy itself,
    so a model with real weights costs no second set of weights; meta tensors become fake CPU
    tensors (on meta, PyTorch computes attention by its unfused math path; a deployment does not).
    Inputs are made fake the same way. Plain tensor attributes (not parameters or buffers) are
    deep-copied as they are.
  - Attention head counts kept as module attributes (n_heads, n_kv_heads, num_heads,
    num_key_value_heads, n_head, num_attention_heads) and GPT-2's split_size are divided by tp on
    the copy; Hugging Face Llama-family attention infers its heads from the shapes and needs none.
    Head counts must divide by tp: grouped-query attention with fewer k/v heads than ranks (which
    Megatron handles by replicating k/v heads) is refused.
  - A fused q/k/v projection is supported only where the forward splits it by an attribute
    (Hugging Face GPT-2's split_size). A forward that splits by the input's width (bundled
    models/gpt2.py, models/vit.py) or derives the head size from it (models/bert.py) cannot run on a
    shard and is refused with a ValueError naming the module.
  - A `cache` keyword holding (k, v) pairs with the k/v heads on dim 1 (models/llama.py's KV cache)
    is cut to the local heads; other caches the model builds itself (Hugging Face DynamicCache).
  - Layers outside the plan stay replicated: every rank computes them in full (norms, rotary
    embeddings, MoE routers, experts stored as plain parameters rather than Linear layers).
  - No sequence parallelism, no pipeline or data parallelism; one tensor-parallel group on one
    level of links (the chip's link_bw and link_latency_s).
  - A default process group already initialised in this process is refused: tp= brings its own.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
from tabulate import tabulate
from torch import nn

from .capture import FakeCopier
from .units import fold_layers, percent, seconds, si

__all__ = ["Plan", "fake_process_group", "format_tp_scaling", "megatron_plan", "tensor_parallel",
           "tp_scaling"]

# Leaf names of the layouts above.
COLWISE = frozenset({"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj",   # Hugging Face Llama...
                     "wq", "wk", "wv", "w1", "w3",                           # models/llama.py
                     "c_attn", "c_fc"})                                      # GPT-2
ROWWISE = frozenset({"o_proj", "down_proj", "wo", "w2", "c_proj"})
QKV = frozenset({"q_proj", "k_proj", "v_proj", "wq", "wk", "wv", "c_attn"})  # marks an attention
FUSED_QKV = frozenset({"c_attn", "qkv", "query_key_value", "Wqkv"})
EMBEDDINGS = frozenset({"embed_tokens", "tok_embeddings", "wte"})
LM_HEADS = frozenset({"lm_head", "output"})
HEAD_ATTRS = ("n_heads", "n_kv_heads", "num_heads", "num_key_value_heads", "n_head",
              "num_attention_heads")
SPLIT_ATTRS = ("split_size",)   # Hugging Face GPT-2: width of each of q, k, v in c_attn's output
CACHE_KWARGS = ("cache",)


@dataclass(frozen=True)
class Plan:
    """What `tensor_parallel` does to a copy of the model.

    styles: module path -> "colwise" | "rowwise" | "embedding" | "lm_head"
    attrs:  module path -> {attribute: per-rank value} (head counts, GPT-2's split_size)
    kv_heads: k/v heads of the full model (for cutting a KV cache), or None when unknown
    """
    tp: int
    styles: dict
    attrs: dict
    kv_heads: int | None = None


# -- the plan ------------------------------------------------------------------------------------

def _is_linear(m: nn.Module) -> bool:
    # Hugging Face's Conv1D (GPT-2) is a Linear with its weight stored (in, out).
    return isinstance(m, nn.Linear) or _is_conv1d(m)


def _is_conv1d(m: nn.Module) -> bool:
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf") and hasattr(m, "weight")


def _features(m: nn.Module) -> tuple[int, int]:
    """(in, out) features of a Linear or Conv1D."""
    w = m.weight
    return (w.shape[0], w.shape[1]) if _is_conv1d(m) else (w.shape[1], w.shape[0])


def megatron_plan(model: nn.Module, tp: int) -> Plan:
    """The Megatron-style split of `model` over `tp` ranks, or a ValueError saying why not."""
    if not isinstance(tp, int) or isinstance(tp, bool) or tp < 1:
        raise ValueError(f"tp must be a positive integer, got {tp!r}")
    linears = {name: m for name, m in model.named_modules() if _is_linear(m)}
    styles: dict[str, str] = {}
    parents: dict[str, set] = {}
    for name, m in linears.items():
        parent, _, leaf = name.rpartition(".")
        if leaf in COLWISE or leaf in ROWWISE:
            styles[name] = "colwise" if leaf in COLWISE else "rowwise"
            parents.setdefault(parent, set()).add(leaf)
    if not styles:
        styles = _two_linear_blocks(model, linears)
    if not styles:
        folded = Counter(fold_layers(n) for n in linears)   # layers.* x32
        found = ", ".join(n if k == 1 else f"{n} x{k}" for n, k in folded.items())
        raise ValueError(
            f"no tensor-parallel layout recognised in {type(model).__name__}: expected Llama-style "
            f"q_proj/k_proj/v_proj/o_proj and gate_proj/up_proj/down_proj, models/llama.py's "
            f"wq/wk/wv/wo and w1/w3/w2, GPT-2's c_attn/c_fc/c_proj, or modules with exactly two "
            f"Linear children; Linear layers found: {found or 'none'}")
    for parent, leaves in parents.items():
        if not leaves & COLWISE or not leaves & ROWWISE:
            raise ValueError(f"module {parent or type(model).__name__!r} has {sorted(leaves)}: a "
                             f"Megatron block needs both a column-split (e.g. up_proj) and a "
                             f"row-split (e.g. down_proj) projection")
    for name, m in model.named_modules():
        leaf = name.rpartition(".")[2]
        if isinstance(m, nn.Embedding) and leaf in EMBEDDINGS:
            styles[name] = "embedding"
        elif "." not in name and leaf in LM_HEADS and isinstance(m, nn.Linear):
            styles[name] = "lm_head"
    _check_divisible(linears, styles, tp)
    attrs, kv_heads = _attention_attrs(model, parents, linears, tp)
    return Plan(tp, styles, attrs, kv_heads)


def _two_linear_blocks(model: nn.Module, linears: dict) -> dict:
    """The plain-MLP fallback: every module with exactly two Linear children, first colwise and
    second rowwise, when those cover every Linear layer of the model."""
    styles = {}
    for name, m in model.named_modules():
        children = [(f"{name}.{c}" if name else c) for c, sub in m.named_children()
                    if _is_linear(sub)]
        if len(children) == 2:
            if any(hasattr(m, a) for a in HEAD_ATTRS):
                raise ValueError(
                    f"{name or type(model).__name__}: attention with a fused q/k/v projection "
                    f"{children[0]!r} whose forward splits by the input's width, which a shard "
                    f"does not have; not supported by tp=")
            styles.update({children[0]: "colwise", children[1]: "rowwise"})
    return styles if styles and set(styles) == set(linears) else {}


def _check_divisible(linears: dict, styles: dict, tp: int) -> None:
    for name, style in styles.items():
        if style in ("colwise", "rowwise"):
            d_in, d_out = _features(linears[name])
            side, split = ("out", d_out) if style == "colwise" else ("in", d_in)
            if split % tp:
                raise ValueError(f"{name}: {side}_features={split} does not divide by tp={tp}")


def _attention_attrs(model: nn.Module, parents: dict, linears: dict, tp: int):
    """Per-rank head counts for each attention module, and the model's k/v head count."""
    attrs: dict[str, dict] = {}
    kv_heads = None
    modules = dict(model.named_modules())
    for parent, leaves in parents.items():
        if not leaves & QKV:
            continue
        m = modules[parent]
        where = parent or type(model).__name__
        fused = leaves & FUSED_QKV
        if fused and not any(hasattr(m, a) for a in SPLIT_ATTRS):
            raise ValueError(
                f"{where}: fused q/k/v projection {sorted(fused)[0]!r} is split in the forward by "
                f"the input's width, which a shard does not have; only a forward that splits by "
                f"an attribute (Hugging Face GPT-2's split_size) can be analyzed with tp=")
        if not fused and not any(isinstance(getattr(m, a, None), int) for a in HEAD_ATTRS) \
                and not isinstance(getattr(m, "head_dim", None), int):
            raise ValueError(f"{where}: attention without head_dim or a head-count attribute "
                             f"({', '.join(HEAD_ATTRS)}): cannot tell how its heads split")
        local = {}
        for a in HEAD_ATTRS + SPLIT_ATTRS:
            v = getattr(m, a, None)
            if isinstance(v, int) and not isinstance(v, bool):
                if v % tp:
                    raise ValueError(f"{where}.{a}={v} does not divide by tp={tp} (Megatron would "
                                     f"replicate k/v heads; not modelled)")
                local[a] = v // tp
        head_dim = getattr(m, "head_dim", None)
        for leaf in leaves & QKV - fused:
            heads = _features(linears[f"{parent}.{leaf}" if parent else leaf])[1] // head_dim \
                if isinstance(head_dim, int) and head_dim else None
            if heads is not None and heads % tp:
                raise ValueError(f"{where}.{leaf}: {heads} heads do not divide by tp={tp} "
                                 f"(Megatron would replicate k/v heads; not modelled)")
            if heads is not None and leaf in ("k_proj", "wk"):
                kv_heads = heads
        if local:
            attrs[parent] = local
    return attrs, kv_heads


# -- applying it ---------------------------------------------------------------------------------

@contextlib.contextmanager
def fake_process_group(world_size: int):
    """A default process group of `world_size` ranks, this process rank 0, that sends nothing
    (PyTorch's fake backend); destroyed on exit so the next call can make its own."""
    # Importing it registers PyTorch's "fake" backend.
    from torch.testing._internal.distributed.fake_pg import FakeStore
    if dist.is_initialized():
        raise ValueError("a default process group is already initialised in this process; tp= "
                         "brings its own fake one. Parallelize the model yourself "
                         "(parallelize_module) and call analyze without tp=")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def tensor_parallel(model: nn.Module, tp: int, args=(), kwargs=None):
    """Yields (rank-0 copy of `model` split by `megatron_plan`, args, kwargs) inside a fake process
    group of `tp` ranks, which stays alive until the block ends (collective formulas read the group
    size from it). `model` is not changed."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import parallelize_module

    if not isinstance(model, nn.Module):
        raise ValueError(f"tp= needs an nn.Module to split, got {type(model).__name__}")
    plan = megatron_plan(model, tp)
    args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
    fake = FakeCopier()
    with fake_process_group(tp):
        local = fake.copy(model)
        device = next((t.device.type for t in local.parameters()), "cpu")
        mesh = init_device_mesh(device, (tp,))
        modules = dict(local.named_modules())
        for path, values in plan.attrs.items():
            for attr, value in values.items():
                setattr(modules[path], attr, value)
        parallelize_module(local, mesh, {p: _style(s, modules[p]) for p, s in plan.styles.items()},
                           src_data_rank=None)   # each rank cuts its shard: nothing is sent
        yield local, fake.inputs(args), _local_kwargs(fake.inputs(dict(kwargs or {})), plan)


def _style(style: str, module: nn.Module):
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel
    if style == "embedding":
        return RowwiseParallel(input_layouts=Replicate())
    if style == "lm_head":
        return ColwiseParallel(output_layouts=Replicate())
    if _is_conv1d(module):
        return _conv1d_style(style)
    return ColwiseParallel() if style == "colwise" else RowwiseParallel()


def _conv1d_style(style: str):
    """Column/row split of Hugging Face's Conv1D, whose weight is (in, out): the transpose of a
    Linear's, so the shard dims swap. Inputs and outputs are handled as for a Linear."""
    from torch.distributed.tensor import Replicate, Shard, distribute_module, distribute_tensor
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    colwise = style == "colwise"
    base = ColwiseParallel() if colwise else RowwiseParallel()
    if not colwise:
        base.desired_input_layouts = (Shard(-1),)
    placements = {"weight": Shard(1), "bias": Shard(0)} if colwise else \
        {"weight": Shard(0), "bias": Replicate()}

    def partition(name, module, mesh):
        for pname, param in list(module.named_parameters(recurse=False)):
            module.register_parameter(pname, nn.Parameter(
                distribute_tensor(param, mesh, [placements[pname]], src_data_rank=None),
                requires_grad=param.requires_grad))

    class Conv1DParallel(type(base)):
        def _apply(self, module, mesh):
            return distribute_module(
                module, mesh, partition,
                partial(base._prepare_input_fn, base.input_layouts, base.desired_input_layouts),
                partial(base._prepare_output_fn, base.output_layouts, base.use_local_output))

    return Conv1DParallel()


def _local_kwargs(kwargs: dict, plan: Plan) -> dict:
    """A KV cache of (k, v) pairs with the k/v heads on dim 1, cut to this rank's heads."""
    kv = plan.kv_heads
    out = dict(kwargs)
    for key in CACHE_KWARGS:
        cache = kwargs.get(key)
        if kv is None or not isinstance(cache, (list, tuple)):
            continue
        out[key] = [tuple(t[:, : kv // plan.tp].clone()
                          if isinstance(t, torch.Tensor) and t.dim() > 1 and t.shape[1] == kv else t
                          for t in pair) if isinstance(pair, (list, tuple)) else pair
                    for pair in cache]
    return out


# -- the report section --------------------------------------------------------------------------

def tp_scaling(model, args=(), kwargs=None, *, chip="h100-sxm", degrees=(1, 2, 4, 8),
               mode: str = "compiled") -> list[dict]:
    """One rank's time at each tensor-parallel degree, and where it goes.

    Every degree, 1 included, is one rank of the same Megatron plan captured the same way, so the
    rows compare like with like (analyze(model) without tp= captures the unsplit model, possibly
    at another level of ops: its time can differ a little from the tp=1 row).

    Per degree: time_s (one rank's time: the sum of its kernels' times, collectives not overlapped
    with compute, as in Megatron's tensor parallelism where each all-reduce is on the critical
    path), speedup against the first degree, the share of that time in kernels bound by compute /
    memory / communication / overhead, the regime, comm_s (the collectives' link time),
    comm_bytes (bytes one rank sends), collectives (how many), flops and weights_bytes (one rank's).
    """
    from .api import analyze   # analyze builds on this module for tp=
    rows = []
    for tp in degrees:
        with tensor_parallel(model, tp, args, kwargs) as (local, local_args, local_kwargs):
            r = analyze(local, local_args, local_kwargs, chip=chip, mode=mode)
        share = r.regime_share
        collectives = [k for k in r.kernels if k.category == "collective"]
        rows.append({
            "tp": tp, "time_s": r.time_s, "regime": r.regime,
            "compute_share": share["compute"], "memory_share": share["memory"],
            "comm_share": share["communication"], "overhead_share": share["overhead"],
            "comm_s": sum(k.timing.comm_s for k in collectives),
            "comm_bytes": sum(n.comm_bytes for n in r.nodes),
            "collectives": len(collectives), "flops": r.flops, "weights_bytes": r.weights_bytes,
        })
    for row in rows:
        row["speedup"] = rows[0]["time_s"] / row["time_s"] if row["time_s"] else 0.0
    return rows


def format_tp_scaling(rows: list[dict]) -> str:
    """The rows of tp_scaling as a table that fits 100 columns. time: one rank's; comp ...
    ovhd: shares of that time by the regime that bounds each kernel; link: the collectives' link
    time; sent: bytes one rank sends; weights: one rank's."""
    table = [[r["tp"], seconds(r["time_s"]), f"{r['speedup']:.2f}x", percent(r["compute_share"]),
              percent(r["memory_share"]), percent(r["comm_share"]), percent(r["overhead_share"]),
              r["regime"], seconds(r["comm_s"]), si(r["comm_bytes"], "B"),
              si(r["weights_bytes"], "B")]
             for r in rows]
    headers = ["tp", "time", "speedup", "comp", "mem", "comm", "ovhd", "regime", "link",
               "sent", "weights"]
    return tabulate(table, headers=headers, tablefmt="simple", disable_numparse=True,
                    colalign=("right",) * 7 + ("left",) + ("right",) * 3)
