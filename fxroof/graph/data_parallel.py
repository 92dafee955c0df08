"""Data-parallel training as PyTorch's own wrappers set it up: what one rank of DDP or FSDP2 does.

A model wrapped in `DistributedDataParallel`, or sharded with `fully_shard`, on a process group
(a fake one for a model too large to hold) is read, never run: the wrapper says how many ranks
share the step, DDP its gradient-bucket sizes, FSDP2 its units (one per fully_shard call),
whether each is gathered again for the backward, and its mixed-precision dtypes. `dp=` or
`fsdp=True` on a plain model sets up the same with PyTorch's defaults. The step is traced on a
plain fake copy (fxroof.graph.training), and the collectives are written into the trace where
the wrapper issues them:

    Buckets   DDP: gradients in the buckets PyTorch's own assignment makes (the function DDP's
              Reducer calls), each all-reduced once the backward has made all its gradients
    Sharded   FSDP2: a unit's shards all-gathered before its forward (the next unit prefetched)
              and again before its backward unless it keeps them, its gradients
              reduce-scattered after
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from fxroof.graph.capture import as_dtensor, dtensor_spec, tensor_leaves
from fxroof.graph.tensors import storage

DDP_BUCKET_BYTES = 25 << 20     # DistributedDataParallel's default bucket_cap_mb (25)


@dataclass(frozen=True)
class Layout:
    """How one rank's training step is shared with the others."""
    ranks: int
    bucket_caps: tuple = ()     # DDP: the first gradient bucket's bytes, then every later one's
    units: tuple = ()           # FSDP: (unit path, parameter paths, gathered again for backward)
    param_dtype: torch.dtype | None = None    # FSDP mixed precision: weights gathered in this,
    reduce_dtype: torch.dtype | None = None   # gradients reduce-scattered in this
    group: Any = None           # the wrapper's process group; None: the default one
    replicas: int = 1           # HSDP: each shard's copies, kept in step by an all-reduce
    replicate_group: Any = None

    @property
    def fsdp(self) -> bool:
        """Sharded (FSDP2), rather than replicated with its gradients all-reduced (DDP)."""
        return bool(self.units)

    @property
    def world(self) -> int:
        """The data-parallel ranks in all."""
        return self.ranks * self.replicas


def is_wrapped(model: torch.nn.Module) -> bool:
    """Wrapped in DistributedDataParallel, or sharded by fully_shard."""
    return (isinstance(model, torch.nn.parallel.DistributedDataParallel)
            or bool(_fsdp_states(model)))


def layout_of(model: torch.nn.Module, dp: int = 1, fsdp: bool = False):
    """(the module a step trains, its Layout; None for a rank alone). A wrapper's own figures
    win; dp/fsdp must agree with them."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        ranks = model.process_group.size()
        _agree(dp, fsdp, ranks, "DistributedDataParallel", fsdp_ok=False)
        return model.module, Layout(ranks, bucket_caps=(dist._DEFAULT_FIRST_BUCKET_BYTES,
                                                        model.bucket_bytes_cap),
                                    group=model.process_group)
    states = _fsdp_states(model)
    if states:
        layout = _fsdp_layout(model, states)
        _agree(dp, fsdp, layout.world, "fully_shard", fsdp_ok=True)
        return model, layout
    if dp == 1:
        return model, None
    group = _mesh_group(model, dp)
    if fsdp:
        units, members = blocks(model), {}
        for k, _ in model.named_parameters():
            unit = max((u for u in units if k.startswith(u + ".")), key=len, default="")
            members.setdefault(unit, []).append(k)
        return model, Layout(dp, units=tuple(
            (u, tuple(members[u]), u != "") for u in ("", *units) if u in members), group=group)
    return model, Layout(dp, bucket_caps=(dist._DEFAULT_FIRST_BUCKET_BYTES, DDP_BUCKET_BYTES),
                         group=group)


def _mesh_group(model: torch.nn.Module, dp: int):
    """The group a plain model's gradients are averaged or sharded over: the default one
    (None), or for a model with DTensor weights the "dp" dimension of the (dp, tp) mesh they
    lie on, which must have `dp` ranks."""
    meshes = {_root_mesh(p.device_mesh) for p in model.parameters()
              if hasattr(p, "device_mesh")}
    if not meshes:
        return None
    mesh = meshes.pop()
    if meshes or "dp" not in (mesh.mesh_dim_names or ()) or mesh["dp"].size() != dp:
        raise ValueError(f"dp={dp} with a tensor-parallel model needs its weights on one device "
                         f"mesh with a 'dp' dimension of {dp} ranks (give tp= and dp= to analyze)")
    return mesh.get_group("dp")


def _root_mesh(mesh):
    """The mesh a sub-mesh (mesh["tp"]) was cut from: the mesh's own method (torch 2.11 on), or
    the device mesh module's registry, where torch 2.8 keeps it."""
    if hasattr(mesh, "_get_root_mesh"):
        return mesh._get_root_mesh()
    from torch.distributed.device_mesh import _mesh_resources
    return _mesh_resources.get_root_mesh(mesh)


def _agree(dp: int, fsdp: bool, ranks: int, wrapper: str, fsdp_ok: bool) -> None:
    if dp not in (1, ranks):
        raise ValueError(f"dp={dp}, but the model's {wrapper} runs over {ranks} ranks: give one")
    if fsdp and not fsdp_ok:
        raise ValueError(f"fsdp=True, but the model is wrapped in {wrapper}: give one")


def blocks(model: torch.nn.Module) -> list[str]:
    """The blocks FSDP shards and checkpointing wraps one by one by default: the layers of the
    outermost ModuleLists (a transformer's), else the model's top-level children."""
    units: list[str] = []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.ModuleList) and not any(name.startswith(u + ".") for u in units):
            units += [f"{name}.{i}" for i in range(len(m))]
    return units or [name for name, _ in model.named_children()]


# -- FSDP2's own records -----------------------------------------------------------------------

def _fsdp_states(model: torch.nn.Module) -> list:
    """[(module path, FSDPState)] of every module fully_shard was called on."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:         # a torch without FSDP2
        return []
    states = {}     # fully_shard([a, b]) makes one state for both: the first path names it
    for name, m in model.named_modules():
        if isinstance(m, FSDPModule):
            states.setdefault(id(m._get_fsdp_state()), (name, m._get_fsdp_state()))
    return list(states.values())


def _fsdp_layout(model: torch.nn.Module, states: list) -> Layout:
    paths = {id(m): name for name, m in model.named_modules()}
    units, meshes, policies = [], {}, set()
    for name, state in states:
        groups = getattr(state, "_fsdp_param_groups", None) or [state._fsdp_param_group]
        for group in (g for g in groups if g is not None):
            info = group.mesh_info
            replicate = getattr(info, "replicate_mesh_dim", None)    # HSDP's second dimension
            if info.mesh.ndim != (1 if replicate is None else 2):
                raise ValueError(f"fully_shard over a {info.mesh.ndim}-D mesh is not modelled "
                                 f"yet: shard over a 1-D mesh, or a 2-D one (HSDP)")
            meshes[(info.mesh.size(info.shard_mesh_dim),
                    1 if replicate is None else info.mesh.size(replicate))] = info
            policies.add((group.mp_policy.param_dtype, group.mp_policy.reduce_dtype))
            params = tuple(".".join(filter(None, (paths[id(fp._module_info.module)],
                                                  fp._module_info.param_name)))
                           for fp in group.fsdp_params)
            # the root keeps its weights for the backward (FSDP2's default for it)
            again = group.post_forward_mesh_info is not None and not (
                name == "" and state._auto_reshard_after_forward)
            units.append((name, params, again))
    if len(meshes) > 1 or len(policies) > 1:
        raise ValueError("fully_shard units over meshes of different sizes or with different "
                         "mixed-precision policies are not modelled yet")
    ((ranks, replicas), info), = meshes.items()
    split = next((k for k, p in model.named_parameters()
                  if getattr(p, "device_mesh", info.mesh) != info.mesh), None)
    if split:       # sharded over dp and split over tp: a plain copy would lose the split
        raise ValueError(f"fully_shard over tensor-parallel weights ({split!r} lies on a mesh "
                         f"of its own) is not read from the wrapper yet: analyze the plain model "
                         f"with tp=, dp= and fsdp=True")
    sharded = {p for _, params, _ in units for p in params}
    loose = [k for k, p in model.named_parameters() if p.requires_grad and k not in sharded]
    if loose:
        raise ValueError(f"parameter {loose[0]!r} is in no fully_shard unit: FSDP2 needs "
                         f"fully_shard on the root module too")
    (param_dtype, reduce_dtype), = policies
    return Layout(ranks, units=tuple(units), param_dtype=param_dtype,
                  reduce_dtype=reduce_dtype, group=info.shard_process_group, replicas=replicas,
                  replicate_group=getattr(info, "replicate_process_group", None))


def plain_copy(model: torch.nn.Module, fake) -> torch.nn.Module:
    """A fake copy (FakeCopier `fake`) of a fully_shard-ed model as the plain model it shards:
    whole parameters, its own classes, FSDP2's hooks left out. FSDP2 refuses deepcopy, so each
    sharded module is rebuilt as its own class, innermost first, from a copy of its state."""
    from torch.distributed.fsdp import FSDPModule
    gone = object()     # stands for FSDP's state in the copy's hooks, which are then dropped
    memo = {**fake.memo(model), **{id(s): gone for _, s in _fsdp_states(model)}}
    for m in reversed(list(model.modules())):
        if isinstance(m, FSDPModule):
            cls = next(c for c in type(m).__mro__ if not issubclass(c, FSDPModule))
            memo[id(m)] = plain = cls.__new__(cls)
            plain.__dict__.update(deepcopy(m.__dict__, memo))
    copy = fake.copy(model, memo)
    for m in copy.modules():
        for hooks in (m._forward_pre_hooks, m._forward_hooks):
            for key in [k for k, f in hooks.items() if getattr(f, "__self__", None) is gone]:
                del hooks[key]
    return copy


# -- the collectives in the trace --------------------------------------------------------------

class Buckets:
    """DDP's gradient buckets over `params` in reverse order (the order the backward makes
    gradients, which DDP's rebuilt buckets follow), sized as DDP's Reducer sizes them. A bucket
    is averaged over the ranks by one all-reduce as soon as all its gradients are made, so the
    collectives sit among the backward's ops where DDP issues them."""

    def __init__(self, params: list, layout: Layout):
        self.params, self.group, self.ready = params, layout.group or dist.group.WORLD, set()
        order = list(reversed(range(len(params))))
        assigned, _ = dist._compute_bucket_assignment_by_size(
            [params[i] for i in order], list(layout.bucket_caps), [False] * len(params))
        self.buckets = [[order[j] for j in bucket] for bucket in assigned]
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


class _Gather(torch.autograd.Function):
    """FSDP2's all-gather of a flat shard, cast to the compute dtype first; its backward the
    reduce-scatter of the gradient in the reduce dtype (HSDP: then the all-reduce of that part
    across the replicas), back in the shard's dtype."""

    @staticmethod
    def forward(ctx, shard, dtype, reduce_dtype, group, replicas):
        import torch.distributed._functional_collectives as funcol
        ctx.dtypes, ctx.groups = (shard.dtype, reduce_dtype), (group, replicas)
        return funcol.all_gather_tensor(shard.to(dtype), 0, group)

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed._functional_collectives as funcol
        (dtype, reduce_dtype), (group, replicas) = ctx.dtypes, ctx.groups
        part = funcol.reduce_scatter_tensor(grad.to(reduce_dtype), "avg", 0, group)
        if replicas is not None:    # HSDP: the shard's copies averaged across replica groups
            part = funcol.all_reduce(part, "avg", replicas)
        return part.to(dtype), None, None, None, None


class Sharded:
    """FSDP2 on one rank of N, its units as `layout` gives them: each unit's trainable
    parameters, one flat shard of 1/N per dtype, are the step's inputs. A unit's forward first
    all-gathers its shards (and prefetches the next unit's); a unit gathered again for the
    backward does not keep its weights saved for it but gathers them when the backward first
    needs them (the unit before it in the forward prefetched alongside); each gather's
    backward, a reduce-scatter, leaves each shard its 1/N of the gradient. The optimizer then
    updates shards: weights, gradients and optimizer state are all 1/N."""

    def __init__(self, model: torch.nn.Module, params: dict, layout: Layout, wrap=None):
        self.layout, self.group = layout, layout.group or dist.group.WORLD
        # a tensor-parallel model's weights are DTensors: the step trains their local shards,
        # which `wrap` ({name: shard} -> {name: DTensor}) makes DTensors again once gathered
        self.wrap = wrap or (lambda ts: ts)
        unit_of = {p: unit for unit, params_, _ in layout.units for p in params_}
        again = {unit for unit, _, regathered in layout.units if regathered}
        names = {id(p): k for k, p in model.named_parameters() if k in params}
        self.groups: dict[str, list] = {}      # "unit:dtype" -> [(name, tensor, [(module, attr)])]
        where: dict[int, list] = {}
        for m in model.modules():
            for attr, p in list(m._parameters.items()):
                if p is None or id(p) not in names:
                    continue
                if id(p) not in where:
                    k, where[id(p)] = names[id(p)], []
                    self.groups.setdefault(f"{unit_of[k]}:{str(p.dtype)[6:]}", []).append(
                        (k, params[k], where[id(p)]))
                where[id(p)].append((m, attr))
                del m._parameters[attr]      # the gathered view stands in for it
        self.order = [k for u, _, _ in layout.units for k in self.groups
                      if k.rsplit(":", 1)[0] == u]
        self.again = {k for k in self.order if k.rsplit(":", 1)[0] in again}
        for key in self.order:
            unit = model.get_submodule(key.rsplit(":", 1)[0])
            unit.register_forward_pre_hook(lambda _, args, key=key: self._forward(key, args))
            unit.register_forward_hook(lambda _, __, out, key=key: self._after_forward(key, out))

    def shards(self) -> dict:
        """{unit:dtype: this rank's flat shard}, to make in the fake mode."""
        first = {key: self.groups[key][0][1] for key in self.order}
        return {key: torch.empty(math.ceil(sum(p.numel() for _, p, _ in self.groups[key])
                                           / self.layout.ranks), dtype=first[key].dtype,
                                 device=first[key].device, requires_grad=True)
                for key in self.order}

    @contextmanager
    def gathering(self, shards: dict):
        self.params, self.gathered, self.regathered = shards, {}, {}
        with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
            yield

    def _gather(self, key: str) -> torch.Tensor:
        shard = self.params[key]
        dtype = self.layout.param_dtype or shard.dtype
        return _Gather.apply(shard, dtype, self.layout.reduce_dtype or dtype, self.group,
                             self.layout.replicate_group)

    def _forward(self, key: str, args: tuple) -> tuple:
        """Gathers before a unit's forward; its inputs cast to the compute dtype, as FSDP2's
        mixed precision casts them."""
        at = self.order.index(key)
        for k in self.order[at:at + 2]:
            if k not in self.gathered:
                flat = self._gather(k)
                self.gathered[k] = storage(flat)
                self._bind(k, flat)
        dtype = self.layout.param_dtype
        return args if dtype is None else tuple(
            a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
            for a in args)

    def _after_forward(self, key: str, out) -> None:
        """FSDP2's pre-backward hook, on the unit's output: once its gradient arrives, the unit
        is gathered again and its modules bound to that, for its backward and for a
        checkpointed forward run again there (which calls no forward hook)."""
        if key in self.again:
            t = next((t for t in tensor_leaves(out) if t.requires_grad), None)
            if t is not None:
                t.register_hook(lambda _: self._before_backward(key))

    def _before_backward(self, key: str) -> None:
        with torch.enable_grad():    # off in backward hooks: the views must carry grad as well
            self._bind(key, self._regather(key))

    def _regather(self, key: str) -> torch.Tensor:
        """The unit gathered again for the backward (the one before it prefetched), with grad:
        reentrant checkpointing takes the weights' gradients from its run again, other
        backwards only values from it."""
        at = self.order.index(key)
        for k in (key, *[k for k in self.order[max(at - 1, 0):at] if k in self.again]):
            if k not in self.regathered:
                with torch.enable_grad():
                    self.regathered[k] = self._gather(k)
        return self.regathered[key]

    def _bind(self, key: str, flat: torch.Tensor) -> None:
        """The unit's modules take views of the gathered flat tensor as their parameters."""
        sizes = [p.numel() for _, p, _ in self.groups[key]]
        pieces = (flat[:sum(sizes)] if flat.numel() > sum(sizes) else flat).split(sizes)
        for (name, p, holders), piece in zip(self.groups[key], pieces):
            whole = self.wrap({name: piece.view(p.shape)})[name]
            for m, attr in holders:
                m.__dict__[attr] = whole

    def _pack(self, t: torch.Tensor):
        local = getattr(t, "_local_tensor", t)      # a DTensor weight: where its shard lies
        key = next((k for k, s in self.gathered.items()
                    if k in self.again and s == storage(local)), None)
        if key is None:
            return t
        spec = None if local is t else dtensor_spec(t)
        return key, local.shape, local.stride(), local.storage_offset(), spec

    def _unpack(self, saved):
        if isinstance(saved, torch.Tensor):
            return saved
        key, shape, stride, offset, spec = saved
        local = self._regather(key).as_strided(shape, stride, offset)
        return local if spec is None else as_dtensor(local, spec)
