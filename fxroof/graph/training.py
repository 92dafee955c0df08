"""One training step as one aten graph: the forward, the backward of a loss, the optimizer update.

make_fx traces a step function on a fake copy of the model (parameters in, gradients by
`loss.backward()`, the update in place on parameters and optimizer state), so a 70B-shaped
model needs no memory and the user's model, its gradients and its mode are never touched.
Ops are traced in execution order, so the three phases are consecutive runs of nodes: each
node's PHASE_KEY says which ("forward", "backward", "optimizer"); optimizer-state placeholders
are tagged "optimizer". The graph returns the loss and the gradients, which a real step keeps
until the next zero_grad.
"""
from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from copy import deepcopy

import torch
import torch.distributed as dist
import torch.fx as fx
import torch.fx.traceback as fx_traceback
from torch._functorch._aot_autograd.logging_utils import setup_stacktrace_preservation_hooks
from torch.fx.experimental.proxy_tensor import get_proxy_mode, make_fx

from fxroof.graph.capture import (Captured, CaptureError, FakeCopier, finish_graph,
                                  is_dtensor_model, local_shards, quiet_torch, tensor_leaves)
from fxroof.graph.tensors import storage

PHASE_KEY = "fxroof.phase"
RECOMPUTED_KEY = "fxroof.recomputed"   # a forward op the backward runs again (checkpointing)
PHASES = ("forward", "backward", "optimizer")
OPTIMIZERS = ("adamw", "sgd", "none")
HALF = (torch.float16, torch.bfloat16)
# torch.optim.AdamW's defaults; the values change no cost, the update's ops are what count.
LR, BETAS, EPS, WEIGHT_DECAY = 1e-3, (0.9, 0.999), 1e-8, 1e-2


def capture_step(model, args=(), kwargs=None, *, optimizer: str = "adamw",
                 loss_fn=None, dp: int = 1, fsdp: bool = False,
                 recompute: bool = False) -> Captured:
    """The training step of `model` on these inputs as one graph, its nodes tagged by phase.

    The loss: `loss_fn(output)` when given, else the output's own `.loss` (a Hugging Face model
    given labels), else the mean of the first floating-point output. optimizer: "adamw" (two
    fp32 states per parameter, and fp32 master weights for half-precision parameters), "sgd"
    (no state) or "none" (forward and backward only). dp > 1: one rank of DDP, its gradients
    averaged over the default process group (the caller's, e.g. a fake one) in DDP's buckets,
    or for a tensor-parallel model over the "dp" dimension of its shards' (dp, tp) mesh; with
    fsdp, sharded over it instead (FSDP2's fully_shard, _Sharded). recompute: each block
    (_units) under torch.utils.checkpoint, its forward run again in the backward, those ops
    tagged RECOMPUTED_KEY. A model with DTensor weights (fxroof.graph.parallel's tensor_parallel):
    one rank's step, its weights, gradients and optimizer state the rank's shards, the
    collectives DTensor emits in the forward and the backward in the graph."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of "
                         f"{', '.join(OPTIMIZERS)}")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"a training step needs an nn.Module, not {type(model).__name__}")
    args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
    split = is_dtensor_model(model)
    fake = FakeCopier(_fake_mode(model) if split else None)
    # a step runs the model in training mode (dropout on); a tensor-parallel copy's fake shards
    # are kept (their mode is the step's), only its modules copied
    copy = (deepcopy(model, {id(t): t for t in (*model.parameters(), *model.buffers())})
            if split else fake.copy(model)).train()
    args, kwargs = fake.inputs(args), fake.inputs(dict(kwargs or {}))
    # DTensor weights enter as this rank's shards, leaves that take their gradients, and are
    # wrapped back inside the trace, so the collectives DTensor emits are traced in both passes
    named = dict(copy.named_parameters())
    shards, wrap = local_shards(named)
    named = {k: p if shards[k] is p else shards[k].detach().requires_grad_(p.requires_grad)
             for k, p in named.items()}
    params = {k: p for k, p in named.items() if p.requires_grad}
    if not params:
        raise ValueError(f"{type(model).__name__} has no parameter that requires grad: "
                         f"nothing to train")
    frozen = {**{k: p for k, p in named.items() if k not in params}, **dict(copy.named_buffers())}
    group = _data_parallel_group(model, dp) if dp > 1 and not fsdp else None
    sharded = _Sharded(copy, params, dp) if fsdp else None
    recomputed: list = []       # node counts where each block's recomputation starts and ends
    for name in _units(copy) if recompute else ():
        _checkpointed(copy.get_submodule(name), recomputed)
    with fake.mode:
        if sharded:
            params = sharded.shards()
        states = [_state(p, optimizer) for p in params.values()]
    marks = []      # node counts where the forward and the backward end

    def step(params, frozen, states, args, kwargs):
        with torch.enable_grad(), sharded.gathering(params) if sharded else nullcontext():
            tensors = frozen if sharded else wrap({**params, **frozen})
            out = torch.func.functional_call(copy, tensors, args, kwargs)
            loss = _loss(out, loss_fn)
            marks.append(len(get_proxy_mode().tracer.graph.nodes))
            # each backward op then carries its autograd node's sequence number, which the
            # forward op that made that node carries too (AOTAutograd's own hooks)
            setup_stacktrace_preservation_hooks([loss.grad_fn])
            if group is not None:
                _Buckets(list(params.values()), group)
            loss.backward()     # not autograd.grad: reentrant checkpointing refuses that
        grads = [p.grad for p in params.values()]
        marks.append(len(get_proxy_mode().tracer.graph.nodes))
        with torch.no_grad():
            for p, g, state in zip(params.values(), grads, states):
                if g is not None and optimizer != "none":
                    _update(optimizer, p, g, *state)
        return loss, [g for g in grads if g is not None]

    step._orig_mod = copy     # make_fx records module paths relative to `_orig_mod`
    try:
        with quiet_torch(), fx_traceback.preserve_node_meta():
            gm = make_fx(step, tracing_mode="fake", record_module_stack=True)(
                params, frozen, states, args, kwargs)
    except (ValueError, TypeError):     # the user's loss or inputs: already one clear line
        raise
    except Exception as e:
        raise CaptureError(type(model).__name__, [("make_fx of a training step", e)]) from e
    holders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    state_count = sum(len(s) for s in states)
    weights = frozenset(n.name for n in holders[:len(params) + len(frozen)])
    _tag_phases(gm, marks, holders[len(params) + len(frozen):][:state_count])
    nodes = list(gm.graph.nodes)
    for start, end in zip(recomputed[::2], recomputed[1::2]):
        for node in nodes[start:end]:
            node.meta[RECOMPUTED_KEY] = True
    _backward_modules(gm)
    return finish_graph(gm, "make_fx", weights, type(model).__name__)


class _Buckets:
    """DDP's gradient buckets: about 25 MiB each (the first 1 MiB, so that communication starts
    early), in reverse parameter order, the order the backward makes gradients. A bucket is
    averaged over the ranks by one all-reduce as soon as the backward has made all its
    gradients, so the collectives sit among the backward's ops where DDP issues them."""

    def __init__(self, params: list, group):
        self.params, self.group, self.buckets, self.ready = params, group, [[]], set()
        size = 0
        for i in reversed(range(len(params))):
            self.buckets[-1].append(i)
            size += params[i].numel() * params[i].element_size()
            if size >= (dist._DEFAULT_FIRST_BUCKET_BYTES if len(self.buckets) == 1 else 25 << 20):
                self.buckets.append([])
                size = 0
        for i, p in enumerate(params):
            p.register_post_accumulate_grad_hook(lambda p, i=i: self._made(i))

    def _made(self, i: int) -> None:
        self.ready.add(i)
        bucket = next(b for b in self.buckets if i in b)
        if self.ready.issuperset(bucket):
            import torch.distributed._functional_collectives as funcol
            grads = [self.params[j].grad for j in bucket]
            flat = funcol.all_reduce(torch.cat([g.flatten() for g in grads]), "avg", self.group)
            for j, g in zip(bucket, flat.split([g.numel() for g in grads])):
                self.params[j].grad = g.view_as(self.params[j])


class _Sharded:
    """FSDP2 (`fully_shard`) on one rank of N, modelled on the graph rather than run: each unit's
    trainable parameters (one unit per layer of the outermost ModuleLists, else per top-level
    child, and the root for the rest), one flat shard of 1/N per dtype, are the step's inputs.
    A unit's forward first all-gathers its shards (and prefetches the next unit's); its saved
    weights are not kept for the backward (reshard after forward) but gathered again when the
    backward first needs them (the unit before it in the forward prefetched alongside); the
    gather's own backward, a reduce-scatter, leaves each shard its 1/N of the gradient. The
    optimizer then updates shards: weights, gradients and optimizer state are all 1/N. The root
    keeps its gathered weights for the backward, as FSDP2 does."""

    def __init__(self, model: torch.nn.Module, params: dict, ranks: int):
        self.ranks, units = ranks, _units(model)
        trainable = {id(p) for p in params.values()}
        self.groups: dict[str, list] = {}      # "unit:dtype" -> [(param, [(module, attr)])]
        where: dict[int, list] = {}
        for name, m in model.named_modules():
            for attr, p in list(m._parameters.items()):
                if p is None or id(p) not in trainable:
                    continue
                if id(p) not in where:
                    unit = max((u for u in units if f"{name}.".startswith(u + ".")),
                               key=len, default="")
                    where[id(p)] = []
                    self.groups.setdefault(f"{unit}:{str(p.dtype)[6:]}", []).append(
                        (p, where[id(p)]))
                where[id(p)].append((m, attr))
                del m._parameters[attr]      # the gathered view stands in for it
        self.order = list(dict.fromkeys(k for u in ["", *units] for k in self.groups
                                        if k.rsplit(":", 1)[0] == u))
        for key in self.order:
            unit = model.get_submodule(key.rsplit(":", 1)[0])
            unit.register_forward_pre_hook(lambda *_, key=key: self._forward(key))

    def shards(self) -> dict:
        """{unit:dtype: this rank's flat shard}, to make in the fake mode."""
        first = {key: self.groups[key][0][0] for key in self.order}
        return {key: torch.empty(math.ceil(sum(p.numel() for p, _ in self.groups[key])
                                           / self.ranks), dtype=first[key].dtype,
                                 device=first[key].device, requires_grad=True)
                for key in self.order}

    @contextmanager
    def gathering(self, shards: dict):
        self.params, self.gathered, self.regathered = shards, {}, {}
        with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
            yield

    def _gather(self, key: str) -> torch.Tensor:
        import torch.distributed._functional_collectives as funcol
        return funcol.all_gather_single(self.params[key], 0, dist.group.WORLD)

    def _forward(self, key: str) -> None:
        at = self.order.index(key)
        for k in self.order[at:at + 2]:
            if k not in self.gathered:
                flat = self._gather(k)
                self.gathered[k] = storage(flat)
                sizes = [p.numel() for p, _ in self.groups[k]]
                pieces = (flat[:sum(sizes)] if flat.numel() > sum(sizes) else flat).split(sizes)
                for (p, holders), piece in zip(self.groups[k], pieces):
                    for m, attr in holders:
                        m.__dict__[attr] = piece.view(p.shape)

    def _pack(self, t: torch.Tensor):
        key = next((k for k, s in self.gathered.items() if not k.startswith(":")   # not root
                    and s == storage(t)), None)
        return t if key is None else (key, t.shape, t.stride(), t.storage_offset())

    def _unpack(self, saved):
        if isinstance(saved, torch.Tensor):
            return saved
        key, shape, stride, offset = saved
        at = self.order.index(key)
        for k in (key, *[k for k in self.order[max(at - 1, 0):at] if not k.startswith(":")]):
            if k not in self.regathered:
                with torch.no_grad():
                    self.regathered[k] = self._gather(k)
        return self.regathered[key].as_strided(shape, stride, offset)


def _data_parallel_group(model: torch.nn.Module, dp: int):
    """The group DDP averages gradients over: the default one, or for a model with DTensor
    weights the "dp" dimension of the (dp, tp) mesh they lie on, which must have `dp` ranks."""
    meshes = {p.device_mesh._get_root_mesh() for p in model.parameters()
              if hasattr(p, "device_mesh")}
    if not meshes:
        return dist.group.WORLD
    mesh = meshes.pop()
    if meshes or "dp" not in (mesh.mesh_dim_names or ()) or mesh["dp"].size() != dp:
        raise ValueError(f"dp={dp} with a tensor-parallel model needs its weights on one device "
                         f"mesh with a 'dp' dimension of {dp} ranks (give tp= and dp= to analyze)")
    return mesh.get_group("dp")


def _fake_mode(model: torch.nn.Module):
    """The fake mode a tensor-parallel copy's shards were made in."""
    from torch._guards import detect_fake_mode
    return detect_fake_mode(list(local_shards(dict(model.named_parameters()))[0].values()))


def _units(model: torch.nn.Module) -> list[str]:
    """The blocks FSDP shards and checkpointing wraps one by one: the layers of the outermost
    ModuleLists (a transformer's), else the model's top-level children."""
    units: list[str] = []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.ModuleList) and not any(name.startswith(u + ".") for u in units):
            units += [f"{name}.{i}" for i in range(len(m))]
    return units or [name for name, _ in model.named_children()]


def _checkpointed(block: torch.nn.Module, spans: list) -> None:
    """Run `block` under non-reentrant checkpointing; each later call of its forward (the
    recomputation in the backward) appends the traced node counts it starts and ends at."""
    from torch.utils.checkpoint import checkpoint
    forward, ran = block.forward, []

    def counted(*args, **kwargs):
        nodes = get_proxy_mode().tracer.graph.nodes
        start = len(nodes)
        try:        # the recomputation stops early (an exception) once it has what it needs
            return forward(*args, **kwargs)
        finally:
            spans.extend([start, len(nodes)] if ran else [])
            ran.append(True)

    block.forward = lambda *args, **kwargs: checkpoint(counted, *args, use_reentrant=False,
                                                       **kwargs)


def _state(p: torch.Tensor, optimizer: str) -> tuple:
    """The optimizer's state for `p`: AdamW's two moments in fp32, and an fp32 master copy of a
    half-precision parameter (mixed-precision training updates the master, then copies it)."""
    if optimizer != "adamw":
        return ()
    master = (torch.empty_like(p, dtype=torch.float32),) if p.dtype in HALF else ()
    return (*master, torch.zeros_like(p, dtype=torch.float32),
            torch.zeros_like(p, dtype=torch.float32))


def _update(optimizer: str, p, g, *state) -> None:
    """torch.optim's single-tensor update, op for op, at step 1 (bias corrections are Python
    floats there, no kernel)."""
    if optimizer == "sgd":
        p.add_(g, alpha=-LR)
        return
    master, exp_avg, exp_avg_sq = state if len(state) == 3 else (p, *state)
    g = g.to(master.dtype) if g.dtype != master.dtype else g
    beta1, beta2 = BETAS
    master.mul_(1 - LR * WEIGHT_DECAY)
    exp_avg.lerp_(g, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    denom = (exp_avg_sq.sqrt() / (1 - beta2) ** 0.5).add_(EPS)
    master.addcdiv_(exp_avg, denom, value=-LR / (1 - beta1))
    if master is not p:
        p.copy_(master)


def _loss(out, loss_fn) -> torch.Tensor:
    own = out.get("loss") if isinstance(out, dict) else getattr(out, "loss", None)
    if loss_fn is not None and own is not None:
        raise ValueError("the model returns its own loss (labels given) and loss_fn is given: "
                         "give one")
    if loss_fn is not None:
        loss = loss_fn(out)
    elif own is not None:
        loss = own
    else:
        floats = [t for t in tensor_leaves(out) if t.is_floating_point()]
        if not floats:
            raise ValueError("the model returns no floating-point tensor to take a loss of; "
                             "give loss_fn=")
        loss = floats[0].mean()
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.is_floating_point():
        raise ValueError(f"the loss must be a floating-point tensor of one element, got "
                         f"{type(loss).__name__}{tuple(getattr(loss, 'shape', ()))}")
    if not loss.requires_grad:
        raise ValueError("the loss does not depend on any trainable parameter")
    return loss


def _tag_phases(gm: fx.GraphModule, marks: list, state: list) -> None:
    """Nodes before the first mark ran the forward and the loss, those before the second the
    backward, the rest the optimizer; optimizer-state placeholders belong to the optimizer."""
    for i, node in enumerate(gm.graph.nodes):
        node.meta[PHASE_KEY] = PHASES[sum(i >= m for m in marks)]
    for node in state:
        node.meta[PHASE_KEY] = "optimizer"


def _backward_modules(gm: fx.GraphModule) -> None:
    """A backward op's module is that of the forward op with its sequence number: the gradient
    of `mlp.c_fc`'s matmul reads as `mlp.c_fc`."""
    stacks = {n.meta["seq_nr"]: n.meta["nn_module_stack"] for n in gm.graph.nodes
              if n.meta.get(PHASE_KEY) == "forward" and n.meta.get("nn_module_stack")
              and "seq_nr" in n.meta}
    for n in gm.graph.nodes:
        if n.meta.get(PHASE_KEY) == "backward" and n.meta.get("seq_nr") in stacks:
            n.meta["nn_module_stack"] = stacks[n.meta["seq_nr"]]
