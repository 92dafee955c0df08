"""Cross-check fuse/ against the real thing: the kernels torch.compile's Inductor emits.

    inductor_kernels(model, args)   # Inductor's post-fusion scheduler nodes, with its own bytes
    compare(model, args)            # total bytes and kernel counts: Inductor against fxroof

The model is compiled on the CPU (full graph, static shapes, no_grad, compiled-graph caches off)
between two `torch._dynamo.reset()` calls, so dynamo state is fresh (and the caller's other
compiled functions are forgotten). The scheduler's nodes are read right after fusion through
Inductor's `_post_fusion_custom_pass` hook, which then stops the compile: no code generation.
Bytes are the scheduler's own account (each buffer a kernel touches counted once, at most its
size), but each buffer of a fused node costs what its most demanding member reads of it.
Where and why the two differ: docs/fusion.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fxroof.cost.annotate import annotate
from fxroof.fuse.fuser import fuse
from fxroof.graph.capture import capture
from fxroof.measure.runner import checked_call

__all__ = ["Comparison", "InductorKernel", "compare", "inductor_kernels"]


@dataclass(frozen=True)
class InductorKernel:
    name: str              # the scheduler node's name, e.g. "op5_op6_op7"
    ops: tuple[str, ...]      # Inductor's ops fused into it
    origins: tuple[str, ...]  # the aten graph nodes it was lowered from (sorted names)
    bytes_read: int
    bytes_written: int
    extern: bool           # a library (extern) kernel: mm, addmm, convolution, sdpa...
    kind: str              # the scheduler node's class
    target: str = ""       # the library kernel called, for extern kernels
    reads: tuple = ()      # (buffer, bytes) per buffer read, Inductor's names (arg<i>_1: inputs)

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written


@dataclass(frozen=True)
class Comparison:
    inductor: tuple        # InductorKernel
    fxroof: tuple          # fxroof.fuse.Kernel

    @property
    def inductor_bytes(self) -> int:
        return sum(k.bytes for k in self.inductor)

    @property
    def fxroof_bytes(self) -> int:
        return sum(k.bytes for k in self.fxroof)

    @property
    def rel_diff(self) -> float:
        """(fxroof - Inductor) / Inductor, in bytes."""
        return (self.fxroof_bytes - self.inductor_bytes) / self.inductor_bytes \
            if self.inductor_bytes else 0.0

    def __str__(self) -> str:
        lines = [f"Inductor: {len(self.inductor)} kernels, {self.inductor_bytes} bytes; "
                 f"fxroof: {len(self.fxroof)} kernels, {self.fxroof_bytes} bytes "
                 f"({self.rel_diff:+.1%})", "  Inductor:"]
        lines += [f"    {k.name:<24} {'extern ' + k.target if k.extern else k.kind:<40} "
                  f"r={k.bytes_read:<9} w={k.bytes_written:<9} {','.join(k.origins)[:60]}"
                  for k in self.inductor]
        lines.append("  fxroof:")
        lines += [f"    {k.category:<10} r={k.bytes_read:<9} w={k.bytes_written:<9} "
                  f"{','.join(k.nodes)[:70]}  ({k.reason})" for k in self.fxroof]
        return "\n".join(lines)


class _Stop(Exception):
    """Raised from the scheduler hook: the fused nodes are read, code generation is not needed."""


def inductor_kernels(model, args=(), kwargs=None, *,
                     layout_optimization: bool = False) -> list[InductorKernel]:
    """Compile `model` with Inductor on the CPU and return its kernels after fusion.

    layout_optimization: Inductor's own default is on: it copies conv inputs and weights to
    channels-last on every call (unless the weights are frozen). fxroof keeps the model's
    layouts, so the cross-check turns it off unless asked.
    """
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    if not hasattr(inductor_config, "_post_fusion_custom_pass"):
        raise RuntimeError(f"the cross-check with Inductor reads its fused nodes through "
                           f"_post_fusion_custom_pass, which torch {torch.__version__} does not "
                           f"have: it needs a later release")
    args, kwargs = checked_call(args, kwargs)
    kernels: list[InductorKernel] = []

    def snapshot(nodes):
        kernels.extend(k for k in map(_kernel, nodes) if k is not None)
        raise _Stop()

    torch._dynamo.reset()
    compiled = torch.compile(model, backend="inductor", fullgraph=True, dynamic=False)
    try:
        with inductor_config.patch(_post_fusion_custom_pass=snapshot, fx_graph_cache=False,
                                   fx_graph_remote_cache=False,
                                   layout_optimization=layout_optimization), \
                functorch_config.patch(enable_autograd_cache=False), torch.no_grad():
            try:
                compiled(*args, **kwargs)
            except Exception as e:   # Inductor wraps what the hook raised
                if not _caused_by_stop(e):
                    raise
    finally:
        torch._dynamo.reset()
    return kernels


def compare(model, args=(), kwargs=None, *, matmul_epilogues: bool = False,
            layout_optimization: bool = False, backend: str = "cpp") -> Comparison:
    """Inductor's kernels and fxroof's fused kernels for the same model and inputs. Inductor
    compiles for the CPU, so fxroof follows its C++ backend unless `backend` says otherwise."""
    ours = fuse(annotate(capture(model, args, kwargs).gm), matmul_epilogues=matmul_epilogues,
                backend=backend)
    theirs = inductor_kernels(model, args, kwargs, layout_optimization=layout_optimization)
    return Comparison(tuple(theirs), ours)


def _caused_by_stop(err: BaseException | None) -> bool:
    for _ in range(16):                  # the chain of causes, as deep as Inductor wraps
        if err is None or isinstance(err, _Stop):
            return err is not None
        err = getattr(err, "inner_exception", None) or err.__cause__ or err.__context__
    return False


def _kernel(node) -> InductorKernel | None:
    """One post-fusion scheduler node as a kernel; None for nodes that launch nothing."""
    from torch._inductor import ir
    from torch._inductor.scheduler import NopKernelSchedulerNode

    inner = node.node if node.is_extern() else None
    if isinstance(node, NopKernelSchedulerNode) or isinstance(inner, ir.MultiOutput):
        return None   # a MultiOutput picks one output of a library kernel: no launch of its own
    reads, writes = _accesses(node, reads=True), _accesses(node, reads=False)
    origins = sorted({o.name for sub in node.get_nodes() if sub.node is not None
                      for o in sub.node.origins})
    target = "" if inner is None else str(getattr(inner, "op_overload", None) or getattr(
        inner, "python_kernel_name", "") or type(inner).__name__)
    return InductorKernel(node.get_name(), tuple(s.get_name() for s in node.get_nodes()),
                          tuple(origins), int(sum(reads.values())), int(sum(writes.values())),
                          bool(node.is_extern()), type(node).__name__, target,
                          tuple(sorted(reads.items())))


def _accesses(node, *, reads: bool) -> dict:
    """Bytes per buffer, Inductor's account, with one repair for fused nodes.

    Inductor bounds each buffer's bytes by the loop's numel times its loads only for plain nodes;
    for a fused node it takes every buffer whole, so a fused gather (embedding) would read its
    whole table. Here each buffer of a fused node costs what its most demanding member node's
    own account says, never more than Inductor's whole-buffer figure.
    """
    from torch._inductor.scheduler import FusedSchedulerNode

    whole = node.get_read_write_buffer_accesses(include_reads=reads, include_writes=not reads)
    if not isinstance(node, FusedSchedulerNode):
        return whole
    most: dict = {}
    for sub in (sub for sub in node.get_nodes() if sub is not node):
        for buf, size in _accesses(sub, reads=reads).items():
            most[buf] = max(most.get(buf, 0), size)
    return {buf: min(size, most.get(buf, size)) for buf, size in whole.items()}
