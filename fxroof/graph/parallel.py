"""Tensor parallelism: one rank of a model split Megatron-style over `tp` ranks.

    fxroof.analyze(model, args, tp=8)       # one rank of an 8-way split
    megatron_plan(model, tp=8)              # the plan alone: which layer is split how

PyTorch itself splits a fake copy of the model (DTensor's `parallelize_module` on a fake process
group: one rank, nothing sent), so the captured graph holds the local shard shapes and the real
collectives DTensor emits. The user's model is never touched. Which layouts the plan recognises,
what it refuses (with a ValueError naming the module) and what stays replicated:
docs/whatif-and-parallel.md.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
from collections import Counter
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
from torch import nn

from fxroof.graph.capture import STATED_NOTES, FakeCopier
from fxroof.graph.nodes import fold_layers
from fxroof.graph.routing import RoutedFakeMode

__all__ = ["Plan", "fake_process_group", "megatron_plan", "tensor_parallel"]

# Leaf names of the layouts the plan recognises (docs/whatif-and-parallel.md).
COLWISE = frozenset({"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj",   # Hugging Face Llama...
                     "wq", "wk", "wv", "w1", "w3",                           # models/llama.py
                     "c_attn", "c_fc",                                       # GPT-2
                     "fc1",                                  # BART, Whisper, OPT, CLIP, ViTs' MLP
                     "qkv_proj", "gate_up_proj",            # Phi-3; GLM-4's and Phi-3's MLPs
                     "q_b_proj", "kv_b_proj"})    # DeepSeek-V2/V3's latent attention, by heads
ROWWISE = frozenset({"o_proj", "down_proj", "wo", "w2", "c_proj",
                     "out_proj", "fc2"})                     # BART, Whisper, OPT, CLIP
ATTENTION_DENSE = "dense"    # Phi's attention output: row-split beside q/k/v projections only
QKV = frozenset({"q_proj", "k_proj", "v_proj", "wq", "wk", "wv", "c_attn",  # marks an attention
                 "qkv_proj", "q_b_proj", "kv_b_proj"})
FUSED_QKV = frozenset({"c_attn", "qkv", "query_key_value", "Wqkv", "qkv_proj"})
EMBEDDINGS = frozenset({"embed_tokens", "tok_embeddings", "wte"})
LM_HEADS = frozenset({"lm_head", "output", "proj_out"})                 # proj_out: Whisper
HEAD_ATTRS = ("n_heads", "n_kv_heads", "num_heads", "num_key_value_heads", "n_head",
              "num_attention_heads")
SPLIT_ATTRS = ("split_size",)   # Hugging Face GPT-2: width of each of q, k, v in c_attn's output
# Hugging Face Phi-3 cuts its packed q/k/v output at its config's head counts: the rank's copy of
# the attention gets a config of its own with this rank's
CONFIG_HEADS = ("num_attention_heads", "num_key_value_heads")
REPLICATE = " (Megatron would replicate k/v heads; not modelled)"
# k/v projections and the attributes that count k/v heads: where the heads are fewer than the
# ranks, each rank keeps one, as vLLM's and Megatron's QKV layers replicate them
KV_LEAVES = frozenset({"k_proj", "v_proj", "wk", "wv"})
KV_ATTRS = ("n_kv_heads", "num_key_value_heads")


@dataclass(frozen=True)
class Plan:
    """What `tensor_parallel` does to a copy of the model.

    styles: module path -> "colwise" | "rowwise" | "partial" | "embedding" | "lm_head"
            ("partial": a row split whose output stays each rank's partial sum)
    attrs:  module path -> {attribute: per-rank value} (head counts, GPT-2's split_size)
    kv_heads: k/v heads of the full model (for cutting a KV cache), or None when unknown
    reduced: paths of the mixture-of-experts blocks whose output is all-reduced once, their
            experts' row splits left as partial sums
    fused_experts: {path: ExpertLayout} of modules holding every expert's weights as 3-D
            parameters, split over the experts' intermediate size, their output all-reduced
            once
    configs: module path -> {config field: per-rank value}: attentions that read their head
            counts from their config (Phi-3's) get a copy of it with these
    kv_replicas: attention path -> r: its k/v heads, fewer than the ranks, each kept by r ranks
            (one a rank), as vLLM and Megatron replicate them
    """
    tp: int
    styles: dict
    attrs: dict
    kv_heads: int | None = None
    reduced: tuple = ()
    fused_experts: dict = dataclasses.field(default_factory=dict)
    configs: dict = dataclasses.field(default_factory=dict)
    kv_replicas: dict = dataclasses.field(default_factory=dict)


# -- the plan ------------------------------------------------------------------------------------

def _is_linear(m: nn.Module) -> bool:
    # Hugging Face's Conv1D (GPT-2) is a Linear with its weight stored (in, out).
    return isinstance(m, nn.Linear) or _is_conv1d(m)


def _is_conv1d(m: nn.Module) -> bool:
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf") and hasattr(m, "weight")


def _features(m: nn.Module) -> tuple[int, int]:
    """(in, out) features of a Linear or Conv1D."""
    return tuple(m.weight.shape) if _is_conv1d(m) else tuple(m.weight.shape)[::-1]


def megatron_plan(model: nn.Module, tp: int) -> Plan:
    """The Megatron-style split of `model` over `tp` ranks, or a ValueError saying why not."""
    if not isinstance(tp, int) or isinstance(tp, bool) or tp < 1:
        raise ValueError(f"tp must be a positive integer, got {tp!r}")
    linears = {name: m for name, m in model.named_modules() if _is_linear(m)}
    styles: dict[str, str] = {}
    parents: dict[str, set] = {}   # module path -> the leaf names of its split projections
    for name in linears:
        parent, _, leaf = name.rpartition(".")
        if leaf in COLWISE | ROWWISE:
            styles[name] = "colwise" if leaf in COLWISE else "rowwise"
            parents.setdefault(parent, set()).add(leaf)
    for parent, leaves in parents.items():
        # Phi names its attention's output `dense`, a name BERT gives both its MLP's Linears:
        # the output only beside q/k/v projections
        dense = f"{parent}.{ATTENTION_DENSE}" if parent else ATTENTION_DENSE
        if leaves & QKV and not leaves & ROWWISE and dense in linears:
            styles[dense] = "rowwise"
            leaves.add(ATTENTION_DENSE)
    styles = styles or _two_linear_blocks(model, linears)
    fused = _fused_experts(model, tp)
    if not styles and not fused:
        folded = Counter(fold_layers(n) for n in linears)   # layers.* x32
        found = ", ".join(n if k == 1 else f"{n} x{k}" for n, k in folded.items())
        raise ValueError(
            f"no tensor-parallel layout recognised in {type(model).__name__}: expected Llama-style "
            f"q/k/v/o_proj and gate/up/down_proj (or packed qkv_proj and gate_up_proj, DeepSeek's "
            f"q_b_proj/kv_b_proj), models/llama.py's wq/wk/wv/wo and w1/w3/w2, GPT-2's "
            f"c_attn/c_fc/c_proj, or modules with exactly two Linear children; Linear layers "
            f"found: {found or 'none'}")
    replicas = _kv_replicas(model, parents, linears, tp)
    for name, style in styles.items():
        parent, _, leaf = name.rpartition(".")
        if parent in replicas and leaf in KV_LEAVES:
            continue                  # one head a rank, its heads repeated first (tensor_parallel)
        d_in, d_out = _features(linears[name])
        side, split = ("out", d_out) if style == "colwise" else ("in", d_in)
        _per_rank(split, tp, f"{name}: {side}_features={split}")
    vocabs = {m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)}
    for name, m in model.named_modules():
        if isinstance(m, nn.Embedding) and name.rpartition(".")[2] in EMBEDDINGS:
            styles[name] = "embedding"
        elif isinstance(m, nn.Linear) and (name in LM_HEADS or (   # top level, or a wrapped
                name.rpartition(".")[2] in LM_HEADS and m.out_features in vocabs)):   # model's
            styles[name] = "lm_head"
    attrs, kv_heads, configs = _blocks(model, parents, linears, tp, replicas)
    reduced = _expert_blocks(model, parents)
    for block, leaves in reduced.items():
        styles.update(dict.fromkeys(leaves, "partial"))
    return Plan(tp, styles, attrs, kv_heads, tuple(reduced), fused, configs, replicas)


def _kv_replicas(model: nn.Module, parents: dict, linears: dict, tp: int) -> dict:
    """Attentions with separate k/v projections whose k/v heads are fewer than the ranks and
    divide them (their query heads dividing too): path -> how many ranks keep each k/v head."""
    replicas = {}
    for parent, leaves in parents.items():
        kv = sorted(leaves & KV_LEAVES)
        m = model.get_submodule(parent)
        head_dim = getattr(m, "head_dim", None)
        if not kv or leaves & FUSED_QKV or not isinstance(head_dim, int) or not head_dim:
            continue
        heads = _heads(linears, parent, kv[0], head_dim)
        q = sorted(leaves & {"q_proj", "wq"})
        queries = _heads(linears, parent, q[0], head_dim) if q else 0
        if heads and heads < tp and tp % heads == 0 and queries % tp == 0:
            replicas[parent] = tp // heads
    return replicas


def _heads(linears: dict, parent: str, leaf: str, head_dim: int) -> int:
    """The heads a projection of an attention at `parent` makes: its outputs over head_dim."""
    return _features(linears[f"{parent}.{leaf}" if parent else leaf])[1] // head_dim


# Experts whose weights one module holds as 3-D parameters, (experts, ., .) each: Hugging
# Face's MoE layers (gate_up_proj, the gate's and the up projection's outputs together, and
# down_proj, in F.linear's layout, or GPT-OSS's transposes), gpt-fast's and models/moe.py's
# (w1 and w3 up, w2 down, in either layout). Their own tensor-parallel plans (Hugging Face's
# base_model_tp_plan: "packed_colwise", "rowwise", "moe_tp_experts") split them over the
# intermediate size and all-reduce the experts' output once.
EXPERT_UP = frozenset({"gate_up_proj", "w1", "w3", "gate_proj", "up_proj"})
EXPERT_DOWN = frozenset({"down_proj", "w2"})


@dataclass(frozen=True)
class ExpertLayout:
    """Which dim of each stacked expert parameter is the intermediate one, and its size."""
    dims: dict          # parameter name -> the dim holding the intermediate size (or twice
                        # it: a packed gate and up projection, and its bias)
    size: int


def _expert_layout(module: nn.Module, hidden: set) -> ExpertLayout | None:
    """The layout of a module's stacked expert weights, or None where it holds none. `hidden`:
    the widths the model's tokens have (its embeddings', its routers' inputs), which tell the
    hidden dim of each parameter from its intermediate one. A ValueError where they cannot."""
    params = {n: p.shape for n, p in module.named_parameters(recurse=False) if p.dim() == 3}
    downs = [n for n in params if n in EXPERT_DOWN]
    ups = [n for n in params if n in EXPERT_UP]
    if len(downs) != 1 or not ups or len({params[n][0] for n in (*downs, *ups)}) != 1:
        return None
    (down,) = downs
    inner = [d for d in (1, 2) if params[down][d] not in hidden]
    packed = params.get("gate_up_proj")
    if len(inner) != 1 and packed is not None:
        # both of down's dims as wide as the tokens (gpt-oss: 2,880 and 2,880): the packed gate
        # and up projection's doubled dim is the intermediate one, down's layout its transpose
        doubled = [d for d in (1, 2) if packed[d] == 2 * packed[3 - d]]
        inner = [3 - doubled[0]] if len(doubled) == 1 else inner
    if len(inner) != 1:
        raise ValueError(f"{type(module).__name__}: cannot tell its experts' hidden size from "
                         f"their intermediate size in {down} {tuple(params[down])}")
    size = int(params[down][inner[0]])
    dims = {down: inner[0]}
    for up in ups:
        found = [d for d in (1, 2) if params[up][d] in (size, 2 * size)
                 and params[up][3 - d] in hidden]
        if len(found) == 2:     # a packed gate and up as wide as the hidden size: an up
            found = [3 - inner[0]]     # projection's layout is the down one's, transposed
        if len(found) != 1:
            return None
        dims[up] = found[0]
    bias = getattr(module, "gate_up_proj_bias", None)          # GPT-OSS: (experts, 2 x size)
    if isinstance(bias, nn.Parameter) and bias.dim() == 2 and bias.shape[1] == 2 * size:
        dims["gate_up_proj_bias"] = 1
    return ExpertLayout(dims, size)


def _hidden_widths(model: nn.Module) -> set:
    """The widths tokens have on their way through the model: its embeddings' and the inputs
    of its routers (a Linear whose outputs are as many as a ModuleList's or a stacked
    parameter's experts)."""
    widths = {m.embedding_dim for m in model.modules() if isinstance(m, nn.Embedding)}
    experts = {len(m) for m in model.modules() if isinstance(m, nn.ModuleList)} | {
        int(p.shape[0]) for n, p in model.named_parameters()
        if p.dim() == 3 and n.rpartition(".")[2] in EXPERT_UP | EXPERT_DOWN}
    widths |= {m.in_features for m in model.modules()
               if isinstance(m, nn.Linear) and m.out_features in experts}
    return widths


def _fused_experts(model: nn.Module, tp: int) -> dict:
    """{path: ExpertLayout} of the modules holding stacked expert weights, each checked to
    split by `tp`."""
    hidden = _hidden_widths(model)
    found = {}
    for name, m in model.named_modules():
        if layout := _expert_layout(m, hidden):
            _per_rank(layout.size, tp, f"{name or type(model).__name__}: experts' "
                                       f"intermediate size={layout.size}")
            found[name] = layout
    return found


def _expert_blocks(model: nn.Module, parents: dict) -> dict:
    """{mixture-of-experts block: its experts' row-split projections}. A block holds its
    experts in a ModuleList beside a router, a Linear with one output per expert. Its output is
    the router-weighted sum of the experts' outputs, linear in each, so the experts' partial
    sums can be summed first and all-reduced once, as gpt-fast and serving engines do, where a
    Megatron split of each expert would all-reduce every chosen expert's output."""
    modules = dict(model.named_modules())
    blocks: dict = {}
    for parent, leaves in parents.items():
        holder = parent.rpartition(".")[0]
        experts = modules.get(holder)
        if not holder or not isinstance(experts, nn.ModuleList):
            continue
        block = holder.rpartition(".")[0]
        if all(isinstance(modules[f"{parent}.{leaf}"], nn.Linear) for leaf in leaves) and any(
                _is_linear(m) and _features(m)[1] == len(experts)
                for m in modules[block].children()):
            blocks.setdefault(block, []).extend(
                f"{parent}.{leaf}" for leaf in sorted(leaves & ROWWISE))
    return blocks


def _per_rank(value: int, tp: int, what: str, why: str = "") -> int:
    if value % tp:
        raise ValueError(f"{what} does not divide by tp={tp}{why}")
    return value // tp


def _two_linear_blocks(model: nn.Module, linears: dict) -> dict:
    """The plain-MLP fallback: every module with exactly two Linear children, first colwise and
    second rowwise, when those cover every Linear layer of the model."""
    styles = {}
    for name, m in model.named_modules():
        children = [f"{name}.{c}".lstrip(".") for c, sub in m.named_children() if _is_linear(sub)]
        if len(children) == 2:
            if any(hasattr(m, a) for a in HEAD_ATTRS):
                raise ValueError(
                    f"{name or type(model).__name__}: attention with a fused q/k/v projection "
                    f"{children[0]!r} whose forward splits by the input's width, which a shard "
                    f"does not have; not supported by tp=")
            styles.update({children[0]: "colwise", children[1]: "rowwise"})
    return styles if set(styles) == set(linears) else {}


def _blocks(model: nn.Module, parents: dict, linears: dict, tp: int, replicas: dict):
    """Each block checked; per-rank head counts for each attention (its attributes', and its
    config's where it cuts a packed q/k/v by those; one k/v head where `replicas` keep them),
    the model's k/v head count."""
    attrs, kv_heads, configs = {}, None, {}
    for parent, leaves in parents.items():
        if not leaves & COLWISE or not leaves & (ROWWISE | {ATTENTION_DENSE}):
            raise ValueError(f"module {parent or type(model).__name__!r} has {sorted(leaves)}: a "
                             f"Megatron block needs a column-split (e.g. up_proj) and a row-split "
                             f"(e.g. down_proj) projection")
        if not leaves & QKV:
            continue
        m = model.get_submodule(parent)
        where = parent or type(model).__name__
        fused = leaves & FUSED_QKV
        config = getattr(m, "config", None)
        counts = {f: getattr(config, f, None) for f in CONFIG_HEADS}
        if fused and not any(hasattr(m, a) for a in SPLIT_ATTRS) and all(
                type(v) is int for v in counts.values()):
            configs[parent] = {f: _per_rank(v, tp, f"{where}: config.{f}={v}", REPLICATE)
                               for f, v in counts.items()}
            kv_heads = counts["num_key_value_heads"]
        elif fused and not any(hasattr(m, a) for a in SPLIT_ATTRS):
            raise ValueError(
                f"{where}: fused q/k/v projection {sorted(fused)[0]!r} is split in the forward by "
                f"the input's width, which a shard does not have; only a forward that splits by "
                f"an attribute (Hugging Face GPT-2's split_size) can be analyzed with tp=")
        if not fused and not any(isinstance(getattr(m, a, None), int)
                                 for a in (*HEAD_ATTRS, "head_dim")):
            raise ValueError(f"{where}: attention without head_dim or a head-count attribute "
                             f"({', '.join(HEAD_ATTRS)}): cannot tell how its heads split")
        values = {a: getattr(m, a, None) for a in HEAD_ATTRS + SPLIT_ATTRS}
        replicated = parent in replicas
        if local := {a: 1 if replicated and a in KV_ATTRS else
                     _per_rank(v, tp, f"{where}.{a}={v}", REPLICATE)
                     for a, v in values.items() if type(v) is int}:
            attrs[parent] = local
        head_dim = getattr(m, "head_dim", None)
        for leaf in leaves & QKV - fused if isinstance(head_dim, int) and head_dim else ():
            heads = _heads(linears, parent, leaf, head_dim)
            if not (replicated and leaf in KV_LEAVES):
                _per_rank(heads, tp, f"{where}.{leaf}: heads={heads}", REPLICATE)
            if replicated and leaf in ("q_proj", "wq") and \
                    type(getattr(m, "num_key_value_groups", None)) is int:
                # a rank's query heads share its one k/v head (transformers' repeat_kv)
                attrs.setdefault(parent, {})["num_key_value_groups"] = heads // tp
            kv_heads = heads if leaf in ("k_proj", "wk") else kv_heads
    return attrs, kv_heads, configs


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
def tensor_parallel(model: nn.Module, tp: int, args=(), kwargs=None, dp: int = 1):
    """Yields (rank-0 copy of `model` split by `megatron_plan`, args, kwargs) inside a fake process
    group of `dp * tp` ranks, which stays alive until the block ends (collective formulas read the
    group size from it). The ranks form a (dp, tp) mesh: the split is over its "tp" dimension, a
    training step's DDP averages over its "dp" one (fxroof.graph.training). `model` is not
    changed."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import parallelize_module

    if not isinstance(model, nn.Module):
        raise ValueError(f"tp= needs an nn.Module to split, got {type(model).__name__}")
    plan = megatron_plan(model, tp)
    args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
    # a routed mode, so that an expert loop over the router's picks can be traced on the shards
    # with the routing assumed (fxroof.graph.routing), as on one device
    fake = FakeCopier(RoutedFakeMode())
    with fake_process_group(dp * tp):
        local = fake.copy(model)
        mesh = init_device_mesh(next((t.device.type for t in local.parameters()), "cpu"),
                                (dp, tp), mesh_dim_names=("dp", "tp"))["tp"]
        modules = dict(local.named_modules())
        for path, values in plan.attrs.items():
            for attr, value in values.items():
                setattr(modules[path], attr, value)
        for path, values in plan.configs.items():    # the copy's own: the user's is shared
            modules[path].config = copy.copy(modules[path].config)
            for field, value in values.items():
                setattr(modules[path].config, field, value)
        for path, r in plan.kv_replicas.items():    # each k/v head r times: one a rank
            for leaf in KV_LEAVES & set(dict(modules[path].named_children())):
                _repeat_heads(modules[f"{path}.{leaf}"], modules[path].head_dim, r)
        if plan.kv_replicas:
            r = max(plan.kv_replicas.values())
            setattr(local, STATED_NOTES, (
                f"k/v heads fewer than tp={tp}: each rank keeps one (its k/v projection's and "
                f"its cache's), every head on {r} ranks, as vLLM's and Megatron's QKV layers "
                f"replicate them",))
        for path, style in plan.styles.items():    # module by module: torch 2.8 matches a
            # dotted path's names again from the top ("0.0" reaches block 0 itself)
            parallelize_module(modules[path], mesh, _style(style, modules[path]),
                               **_cut_locally(parallelize_module))
        for path, layout in plan.fused_experts.items():
            _split_fused_experts(modules[path], layout, tp)
        for path in (*plan.reduced, *plan.fused_experts):
            modules[path].register_forward_hook(partial(_all_reduce_output, mesh))
        yield local, fake.inputs(args), _local_kwargs(fake.inputs(dict(kwargs or {})), plan)


def _repeat_heads(linear: nn.Module, head_dim: int, r: int) -> None:
    """A k/v projection whose output heads each come r times in a row, so that a column split
    gives each rank one (rank i: head i // r)."""
    def repeated(t):
        heads = t.shape[0] // head_dim
        return nn.Parameter(t.reshape(heads, head_dim, *t.shape[1:]).repeat_interleave(r, 0)
                            .reshape(heads * r * head_dim, *t.shape[1:]),
                            requires_grad=t.requires_grad)
    linear.weight = repeated(linear.weight)
    if getattr(linear, "bias", None) is not None:
        linear.bias = repeated(linear.bias)
    linear.out_features = linear.weight.shape[0]


def _split_fused_experts(module: nn.Module, layout: ExpertLayout, tp: int) -> None:
    """This rank's share of a module of stacked expert weights: each expert's up outputs (the
    gate's and the up projection's) and its down projection's inputs cut to intermediate / tp.
    The weights are fake, so a cut's values do not matter, only its shape."""
    local = layout.size // tp
    for name, dim in layout.dims.items():
        param = getattr(module, name)
        length = local * (param.shape[dim] // layout.size)        # a packed gate and up: twice
        setattr(module, name, nn.Parameter(param.narrow(dim, 0, length).contiguous().clone(),
                                           requires_grad=param.requires_grad))
    for attr in ("intermediate_dim", "intermediate_size", "expert_dim"):
        if getattr(module, attr, None) == layout.size:
            setattr(module, attr, local)


def _all_reduce_output(mesh, module, args, output):
    """A mixture-of-experts block's output (or its first, beside router logits), each rank's
    partial sum, all-reduced: one collective for the block."""
    from torch.distributed.tensor import DTensor, Partial, Replicate

    def reduce(t):
        return DTensor.from_local(t, mesh, [Partial()], run_check=False).redistribute(
            mesh, [Replicate()]).to_local()
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return (reduce(output[0]), *output[1:])
    return reduce(output) if isinstance(output, torch.Tensor) else output


def _cut_locally(fn) -> dict:
    """src_data_rank=None: each rank cuts its own shard of a fake weight and nothing is sent. A
    release without it (torch 2.5) scatters rank 0's weights, which fake tensors cannot."""
    if "src_data_rank" not in inspect.signature(fn).parameters:
        raise ValueError(f"tp= splits a fake copy of the model with DTensor, whose ranks must cut "
                         f"their own shards (src_data_rank), which torch {torch.__version__} "
                         f"cannot: it needs a later release")
    return {"src_data_rank": None}


def _style(style: str, module: nn.Module):
    from torch.distributed.tensor import Partial, Replicate, Shard, distribute_module, \
        distribute_tensor
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel
    if style == "embedding":
        return RowwiseParallel(input_layouts=Replicate())
    if style == "partial":              # a Linear (_expert_blocks)
        return RowwiseParallel(output_layouts=Partial())
    if style == "lm_head":
        return ColwiseParallel(output_layouts=Replicate())
    colwise = style == "colwise"
    if not _is_conv1d(module):
        return ColwiseParallel() if colwise else RowwiseParallel()
    # Hugging Face's Conv1D stores its weight (in, out), the transpose of a Linear's: the shard
    # dims swap. Inputs and outputs are handled as for a Linear.
    placements = {"weight": Shard(1), "bias": Shard(0)} if colwise else \
        {"weight": Shard(0), "bias": Replicate()}

    def partition(name, module, mesh):
        for pname, param in list(module.named_parameters(recurse=False)):
            module.register_parameter(pname, nn.Parameter(
                distribute_tensor(param, mesh, [placements[pname]],
                                  **_cut_locally(distribute_tensor)),
                requires_grad=param.requires_grad))

    class Conv1DParallel(ColwiseParallel if colwise else RowwiseParallel):
        def _apply(self, module, mesh):
            if not colwise:
                self.desired_input_layouts = (Shard(-1),)
            inputs = partial(self._prepare_input_fn, self.input_layouts, self.desired_input_layouts)
            outputs = partial(self._prepare_output_fn, self.output_layouts, self.use_local_output)
            return distribute_module(module, mesh, partition, inputs, outputs)

    return Conv1DParallel()


def _local_kwargs(kwargs: dict, plan: Plan) -> dict:
    """A `cache` keyword of (k, v) pairs with the k/v heads on dim 1, cut to this rank's heads."""
    kv, cache = plan.kv_heads, kwargs.get("cache")
    if kv is None or not isinstance(cache, (list, tuple)):
        return kwargs

    def cut(t):    # a rank's heads, one where they are fewer than the ranks (kv_replicas)
        return t[:, : max(kv // plan.tp, 1)].clone() if isinstance(t, torch.Tensor) \
            and t.dim() > 1 and t.shape[1] == kv else t
    return {**kwargs, "cache": [tuple(map(cut, pair)) if isinstance(pair, (list, tuple)) else pair
                                for pair in cache]}
