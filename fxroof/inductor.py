"""Cross-check fuse.py against the real thing: the kernels torch.compile's Inductor emits.

    inductor_kernels(model, args)   # Inductor's post-fusion scheduler nodes, with its own bytes
    compare(model, args)            # total bytes and kernel counts: Inductor against fxroof

The model is compiled on the CPU (backend "inductor", full graph, static shapes, under no_grad,
compiled-graph caches off) between two `torch._dynamo.reset()` calls, so dynamo state is fresh
(and the caller's other compiled functions are forgotten). The scheduler's nodes are read right
after fusion through Inductor's `_post_fusion_custom_pass` hook, which then stops the compile:
code generation is not needed. Bytes are the scheduler's own account
(`BaseSchedulerNode.get_read_write_buffer_accesses`: each buffer a kernel touches counted once,
at most its size; a buffer made and used inside a fused kernel not counted), with one repair: for
a fused node Inductor counts every buffer whole, so a fused embedding would read its whole table;
here each buffer costs what the fused node's most demanding member reads of it.

Where the two differ, and why (tests/test_inductor.py asserts the bounds; all within 10% on the
bundled tiny models, one hand-written block at 11%):
- Layouts: Inductor's layout optimization copies conv inputs and weights to channels-last on
  every call (unless weights are frozen). fxroof keeps the model's layouts, so the cross-check
  turns it off (`layout_optimization=True` shows Inductor's default: ViT tiny -16%, ResNet -46%).
- Gathers: Inductor lowers embedding to indirect loads inside the next fused kernel; fxroof keeps
  gathers as library kernels, so their rows are written and read once more (GPT-2, BERT: +1-3%).
- Recomputation: Inductor recomputes cheap pointwise producers (a residual add, an embedding sum)
  in each consumer rather than writing them once; fxroof writes a tensor two kernels use.
- cat: Inductor's CPU backend writes each input of a cat with a kernel of its own and reads the
  result back (rotary `rotate_half` in Llama); fxroof fuses the cat into its consumer (Llama,
  MoE: -2-3%).
- CPU backend: it fuses loops sharing only outer dimensions (OuterLoopFusedSchedulerNode), and
  splits some masked softmaxes in two kernels; a GPU build, like fxroof, keeps a softmax whole.
- Copies inside ops: `q @ k.transpose(-2, -1)` on 4-D head-split views copies q, k and v to
  contiguous 3-D tensors before bmm (eager does the same); Inductor shows the copies as kernels,
  fxroof's matmul formula counts them inside the matmul kernel (same bytes, fewer kernels).
  sdpa on the CPU may likewise copy its inputs to the strides the flash kernel requires.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

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
    def inductor_count(self) -> int:
        return len(self.inductor)

    @property
    def fxroof_count(self) -> int:
        return len(self.fxroof)

    @property
    def rel_diff(self) -> float:
        """(fxroof - Inductor) / Inductor, in bytes."""
        return (self.fxroof_bytes - self.inductor_bytes) / self.inductor_bytes \
            if self.inductor_bytes else 0.0

    def __str__(self) -> str:
        lines = [f"Inductor: {self.inductor_count} kernels, {self.inductor_bytes} bytes; "
                 f"fxroof: {self.fxroof_count} kernels, {self.fxroof_bytes} bytes "
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

    args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
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
                compiled(*args, **(kwargs or {}))
            except Exception as e:   # Inductor wraps what the hook raised
                if not _caused_by_stop(e):
                    raise
    finally:
        torch._dynamo.reset()
    return kernels


def compare(model, args=(), kwargs=None, *, matmul_epilogues: bool = False,
            layout_optimization: bool = False) -> Comparison:
    """Inductor's kernels and fxroof's fused kernels for the same model and inputs."""
    from .annotate import annotate
    from .capture import capture
    from .fuse import fuse

    ours = fuse(annotate(capture(model, args, kwargs).gm), matmul_epilogues=matmul_epilogues)
    theirs = inductor_kernels(model, args, kwargs, layout_optimization=layout_optimization)
    return Comparison(tuple(theirs), ours)


def _caused_by_stop(err: BaseException | None) -> bool:
    seen = 0
    while err is not None and seen < 16:
        if isinstance(err, _Stop):
            return True
        err = getattr(err, "inner_exception", None) or err.__cause__ or err.__context__
        seen += 1
    return False


def _kernel(node) -> InductorKernel | None:
    """One post-fusion scheduler node as a kernel; None for nodes that launch nothing."""
    from torch._inductor import ir
    from torch._inductor.scheduler import NopKernelSchedulerNode

    if isinstance(node, NopKernelSchedulerNode):
        return None
    if node.is_extern() and isinstance(getattr(node, "node", None), ir.MultiOutput):
        return None   # picks one output of a library kernel: no launch of its own
    reads, writes = _accesses(node, reads=True), _accesses(node, reads=False)
    origins = sorted({o.name for sub in node.get_nodes() if sub.node is not None
                      for o in sub.node.origins})
    target = ""
    if node.is_extern():
        inner = node.node
        target = str(getattr(inner, "op_overload", None) or getattr(inner, "python_kernel_name", "")
                     or type(inner).__name__)
    return InductorKernel(node.get_name(), tuple(s.get_name() for s in node.get_nodes()),
                          tuple(origins), int(sum(reads.values())), int(sum(writes.values())),
                          bool(node.is_extern()), type(node).__name__, target)


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
    for sub in node.get_nodes():
        if sub is node:
            continue
        for buf, size in _accesses(sub, reads=reads).items():
            most[buf] = max(most.get(buf, 0), size)
    return {buf: min(size, most.get(buf, size)) for buf, size in whole.items()}
