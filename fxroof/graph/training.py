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

import dataclasses
import inspect
from contextlib import contextmanager, nullcontext
from copy import deepcopy

import torch
import torch.fx as fx
import torch.fx.traceback as fx_traceback
from torch._functorch._aot_autograd.logging_utils import setup_stacktrace_preservation_hooks
from torch.fx.experimental.proxy_tensor import get_proxy_mode, make_fx

from fxroof.graph.autocast import autocast_notes, cuda_autocast_as_cpu
from fxroof.graph.capture import (Captured, CaptureError, FakeCopier, finish_graph,
                                  is_dtensor_model, local_shards, quiet_torch, tensor_leaves)
from fxroof.graph.compiled_branches import transformers_compiling
from fxroof.graph.cuda_dropout import cuda_dropout
from fxroof.graph.data_parallel import Buckets, Layout, Sharded, blocks, is_wrapped, plain_copy
from fxroof.graph.fused_recurrences import fused_recurrences
from fxroof.graph.nodes import FOREACH_KEY, PHASE_KEY, RECOMPUTED_KEY

PHASES = ("forward", "backward", "optimizer")
OPTIMIZERS = ("adamw", "sgd", "none")
# activation checkpointing of every block: "full" runs its whole forward again in the backward;
# "selective" keeps what torchtitan's op policy keeps (SAVED_BY_SELECTIVE) and runs the rest again
# (a whole number n: every n-th block in full, check_recompute)
RECOMPUTE = ("full", "selective")
HALF = (torch.float16, torch.bfloat16)
# torch.optim.AdamW's defaults; the values change no cost, the update's ops are what count.
LR, BETAS, EPS, WEIGHT_DECAY = 1e-3, (0.9, 0.999), 1e-8, 1e-2


def capture_step(model, args=(), kwargs=None, *, optimizer: str = "adamw",
                 loss_fn=None, layout: Layout | None = None,
                 recompute: bool | str | int = False, device: str = "cpu") -> Captured:
    """The training step of `model` on these inputs as one graph, its nodes tagged by phase.

    The loss: `loss_fn(output)` when given, else the output's own `.loss` (a Hugging Face model
    given labels), else the mean of the first floating-point output. optimizer: "adamw" (two
    fp32 states per parameter, and fp32 master weights for half-precision parameters), "sgd"
    (no state) or "none" (forward and backward only). layout: one rank of data-parallel
    training (fxroof.graph.data_parallel.layout_of: DDP's gradient buckets, or FSDP2's shards;
    `model` the module inside a DDP wrapper, or a fully_shard-ed model). recompute: each block
    (data_parallel.blocks) under torch.utils.checkpoint, its forward run again in the
    backward, those ops tagged RECOMPUTED_KEY; "selective": the block's attention outputs and
    every second matmul's output kept (selective_policy), only the rest run again; a whole
    number n: every n-th block in full (check_recompute). A model with DTensor weights
    (fxroof.graph.parallel's tensor_parallel): one rank's step, its weights, gradients and
    optimizer state the rank's shards, the collectives DTensor emits in the forward and the
    backward in the graph. device: where the step runs, "cpu" or "cuda" (a GPU's dropout is
    one fused kernel, cuda_dropout)."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of "
                         f"{', '.join(OPTIMIZERS)}")
    check_recompute(recompute)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"a training step needs an nn.Module, not {type(model).__name__}")
    args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
    fsdp = layout is not None and layout.fsdp
    split = not is_wrapped(model) and is_dtensor_model(model)
    fake = FakeCopier(_fake_mode(model) if split else None)
    # a step runs the model in training mode (dropout on); a tensor-parallel copy's fake shards
    # are kept (their mode is the step's), only its modules copied
    copy = (deepcopy(model, {id(t): t for t in (*model.parameters(), *model.buffers())})
            if split else plain_copy(model, fake) if is_wrapped(model)
            else fake.copy(model)).train()
    args, kwargs = fake.inputs(args), fake.inputs(dict(kwargs or {}))
    if "use_cache" in inspect.signature(copy.forward).parameters:
        # a training step keeps no KV cache (Hugging Face turns it off for checkpointing too):
        # a cache the forward grows would grow again when a checkpointed block runs again
        kwargs.setdefault("use_cache", False)
    # DTensor weights enter as this rank's shards, leaves that take their gradients, and are
    # wrapped back inside the trace, so the collectives DTensor emits are traced in both passes
    named = dict(copy.named_parameters())
    shards, wrap = local_shards(named)
    named = {k: p if shards[k] is p else shards[k].detach().requires_grad_(p.requires_grad)
             for k, p in named.items()}
    params = {k: p for k, p in named.items() if p.requires_grad}
    if not params:
        raise ValueError(f"{type(copy).__name__} has no parameter that requires grad: "
                         f"nothing to train")
    frozen = {**{k: p for k, p in named.items() if k not in params}, **dict(copy.named_buffers())}
    sharded = Sharded(copy, params, layout, wrap) if fsdp else None
    recomputed: list = []       # (forward, recomputation): node counts each starts and ends at
    every = recompute if type(recompute) is int else 1      # True is an int, and every block
    for i, name in enumerate(blocks(copy) if recompute else ()):
        if (i + 1) % every == 0:
            _checkpointed(copy.get_submodule(name), recomputed, recompute == "selective")
    with fake.mode:
        if sharded:
            params = sharded.shards()
        states = [_state(p, optimizer) for p in params.values()]
    marks = []      # node counts where the forward and the backward end
    updates = []    # (first node, end, dtype) of each parameter's update

    def step(params, frozen, states, args, kwargs):
        with torch.enable_grad(), sharded.gathering(params) if sharded else nullcontext():
            tensors = wrap(frozen if sharded else {**params, **frozen})
            out = torch.func.functional_call(copy, tensors, args, kwargs)
            loss = _loss(out, loss_fn)
            marks.append(_traced())
            # each backward op then carries its autograd node's sequence number, which the
            # forward op that made that node carries too (AOTAutograd's own hooks)
            setup_stacktrace_preservation_hooks([loss.grad_fn])
            if layout is not None and not fsdp:
                Buckets(list(params.values()), layout)
            loss.backward()     # not autograd.grad: reentrant checkpointing refuses that
        grads = [p.grad for p in params.values()]
        marks.append(_traced())
        with torch.no_grad():
            for p, g, state in zip(params.values(), grads, states):
                if g is not None and optimizer != "none":
                    start = _traced()
                    _update(optimizer, p, g, *state)
                    updates.append((start, _traced(), p.dtype))
        return loss, [g for g in grads if g is not None]

    step._orig_mod = copy     # make_fx records module paths relative to `_orig_mod`
    autocasts: list = []    # the autocast regions the forward enters (graph.autocast)
    try:   # transformers' and the recurrent mixers' code as a compiled step runs it
        with quiet_torch(), fx_traceback.preserve_node_meta(), cuda_autocast_as_cpu(autocasts), \
                transformers_compiling(), fused_recurrences(), _checkpointing_as_eager(), \
                (cuda_dropout() if device == "cuda" else nullcontext()):
            gm = make_fx(step, tracing_mode="fake", record_module_stack=True)(
                params, frozen, states, args, kwargs)
    except (ValueError, TypeError):     # the user's loss or inputs: already one clear line
        raise
    except Exception as e:
        raise CaptureError(type(copy).__name__, [("make_fx of a training step", e)]) from e
    holders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    state_count = sum(len(s) for s in states)
    weights = frozenset(n.name for n in holders[:len(params) + len(frozen)])
    _tag_phases(gm, marks, holders[len(params) + len(frozen):][:state_count])
    nodes = list(gm.graph.nodes)
    _tag_updates(nodes, updates)
    for forward, again in recomputed:
        _recomputed_as(nodes[slice(*again)], nodes[slice(*forward)])
    _backward_modules(gm)
    done = finish_graph(gm, "make_fx", weights, type(copy).__name__)
    return dataclasses.replace(done, notes=autocast_notes(autocasts) + done.notes)


def check_recompute(recompute) -> None:
    """ValueError unless `recompute` is False, True or "full" (every block run again in the
    backward), "selective" (selective_policy), or a whole number n >= 1: every n-th block in
    full, the 2nd, 4th, ... for 2, as torchtitan's selective layer option counts them
    (torchtitan/parallelisms/parallelize_llama.py; its default "2 = checkpoint every other
    layer", torchtitan/config_manager.py)."""
    if isinstance(recompute, bool) or recompute in RECOMPUTE or \
            (type(recompute) is int and recompute >= 1):
        return
    raise ValueError(f"unknown recompute {recompute!r}; expected True, False, "
                     f"{', '.join(map(repr, RECOMPUTE))} or a whole number n >= 1 (every n-th "
                     f"block)")


def _fake_mode(model: torch.nn.Module):
    """The fake mode a tensor-parallel copy's shards were made in."""
    from torch._guards import detect_fake_mode
    return detect_fake_mode(list(local_shards(dict(model.named_parameters()))[0].values()))


# torchtitan's op policy for selective checkpointing (torchtitan/parallelisms/
# parallelize_llama.py, no_recompute_list and _custom_policy, 2024-04): attention kernels' outputs
# are kept, and matmuls' but every second one's. Its Llama has no biases; a Linear with one
# (addmm) counts as a matmul here, or a GPT-2 would keep none. The CPU's flash kernel stands for
# CUDA's, as a step traced on the CPU calls it where a GPU calls theirs.
MATMULS = frozenset({torch.ops.aten.mm.default, torch.ops.aten.addmm.default})
SAVED_BY_SELECTIVE = MATMULS | frozenset(getattr(torch.ops.aten, name).default for name in (
    "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu")
    if hasattr(torch.ops.aten, name))


def selective_policy():
    """A fresh policy for one checkpointed call (torch.utils.checkpoint's context_fn makes one
    per call): keep SAVED_BY_SELECTIVE's outputs but every second matmul's, counting the forward's
    matmuls and the recomputation's apart so both make the same choice."""
    from torch.utils.checkpoint import CheckpointPolicy
    counts = {False: 0, True: 0}

    def policy(ctx, func, *args, **kwargs):
        if func in MATMULS:
            counts[ctx.is_recompute] += 1
            if counts[ctx.is_recompute] % 2 == 0:
                return CheckpointPolicy.PREFER_RECOMPUTE
        return (CheckpointPolicy.MUST_SAVE if func in SAVED_BY_SELECTIVE
                else CheckpointPolicy.PREFER_RECOMPUTE)
    return policy


@contextmanager
def _checkpointing_as_eager():
    """torch.utils.checkpoint takes any proxy mode for torch.compile's and, there, selective
    checkpointing only tags each op with its policy for AOTAutograd's partitioner to act on
    (`_is_compiling`): the backward would recompute nothing. make_fx traces what eager runs, so
    within the block checkpointing is told it is not compiling; restored on exit."""
    import torch.utils.checkpoint as checkpointing
    original = checkpointing._is_compiling
    checkpointing._is_compiling = lambda *args, **kwargs: False
    try:
        yield
    finally:
        checkpointing._is_compiling = original


def _checkpointed(block: torch.nn.Module, spans: list, selective: bool = False) -> None:
    """Run `block` under non-reentrant checkpointing (selective: under selective_policy); each
    call of its forward within the backward (the recomputation) appends to `spans` the traced
    node counts its block's last forward call and it start and end at."""
    from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts
    forward, ran = block.forward, []
    context = ({"context_fn": lambda: create_selective_checkpoint_contexts(selective_policy())}
               if selective else {})

    def counted(*args, **kwargs):
        start = _traced()
        again = torch._C._current_graph_task_id() != -1    # called by the autograd engine
        try:        # the recomputation stops early (an exception) once it has what it needs
            return forward(*args, **kwargs)
        finally:
            if again and ran:
                spans.append((ran[-1], (start, _traced())))
            elif not again:
                ran.append((start, _traced()))

    block.forward = lambda *args, **kwargs: checkpoint(counted, *args, use_reentrant=False,
                                                       **context, **kwargs)


def _recomputed_as(again: list, forward: list) -> None:
    """Tag a recomputation's nodes, each with the module path of the forward op it runs again:
    traced within the backward, they carry the module whose backward asked for them. Matched in
    order by op, so that a selective recomputation skips what its policy kept."""
    at = 0
    for node in again:
        node.meta[RECOMPUTED_KEY] = True
        if node.op != "call_function":
            continue
        match = next((i for i in range(at, len(forward)) if forward[i].op == "call_function"
                      and forward[i].target is node.target), None)
        if match is not None:
            node.meta["nn_module_stack"] = dict(forward[match].meta.get("nn_module_stack") or {})
            at = match + 1


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


def _tag_updates(nodes: list, updates: list) -> None:
    """Each op of a parameter's update gets the FOREACH_KEY it shares with the same op of the
    other parameters of its dtype: torch.optim's foreach path runs those as one."""
    for start, end, dtype in updates:
        seen: dict = {}
        for node in nodes[start:end]:
            if node.op == "call_function":
                k = seen[node.target] = seen.get(node.target, -1) + 1
                node.meta[FOREACH_KEY] = (str(node.target), k, str(dtype))


def _traced() -> int:
    """Nodes traced so far: where a phase, an update or a recomputation starts or ends."""
    return len(get_proxy_mode().tracer.graph.nodes)


def _backward_modules(gm: fx.GraphModule) -> None:
    """A backward op's module is that of the forward op with its sequence number: the gradient
    of `mlp.c_fc`'s matmul reads as `mlp.c_fc`. A recomputed forward op keeps its own
    (_recomputed_as): its sequence number is the backward op's that asked for it."""
    stacks = {n.meta["seq_nr"]: n.meta["nn_module_stack"] for n in gm.graph.nodes
              if n.meta.get(PHASE_KEY) == "forward" and n.meta.get("nn_module_stack")
              and "seq_nr" in n.meta}
    for n in gm.graph.nodes:
        if n.meta.get(PHASE_KEY) == "backward" and n.meta.get("seq_nr") in stacks \
                and not n.meta.get(RECOMPUTED_KEY):
            n.meta["nn_module_stack"] = stacks[n.meta["seq_nr"]]
