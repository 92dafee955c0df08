"""Report rows from an annotated graph and a kernel list: each node's cost, each kernel timed
on the chip, its roofline floor and its expected time."""
from __future__ import annotations

import torch.fx as fx

from fxroof.chips import Chip
from fxroof.chips.chip import l2_share
from fxroof.chips.expected import expected
from fxroof.chips.launch import launch_of
from fxroof.chips.timing import (cold_shares, kernel_timing, overhead_per_kernel, rate_op,
                                  unit_dtype)
from fxroof.cost import COST_KEY, Cost
from fxroof.fuse.policy import SOLO_CATEGORIES
from fxroof.graph.nodes import PHASE_KEY, RECOMPUTED_KEY, module_path
from fxroof.report.records import KernelRow, NodeRow
from fxroof.report.streams import collective_waits


def _main(kernel, by_name: dict):
    """The node that names a kernel (an eager kernel is its one op): its main node, else its
    first of the kernel's category, else its first."""
    members = [by_name[n] for n in kernel.nodes if n in by_name]
    return by_name.get(kernel.main) or next((m for m in members if m.category == kernel.category),
                                            members[0] if members else None)


def node_rows(gm: fx.GraphModule) -> tuple:
    rows = []
    for node in gm.graph.nodes:
        cost: Cost | None = node.meta.get(COST_KEY)
        if node.op != "call_function" or cost is None or (cost.category == "view" and cost.known):
            continue
        rows.append(NodeRow(node.name, op_name(node), module_path(node), cost.category, cost.flops,
                            cost.bytes_read, cost.bytes_written, cost.dtype, cost.known, cost.note,
                            cost.comm_bytes, cost.comm_steps, cost.variant, cost.grid,
                            node.meta.get(PHASE_KEY, ""), node.meta.get(RECOMPUTED_KEY, False),
                            cost.relayout, cost.nvls_bytes, cost.comm_ranks, cost.comm_stride,
                            cost.comm_exchange,
                            cost.exponentials, cost.reread, cost.bias_bytes, cost.quantize,
                            cost.quantize_folds, cost.causal, cost.issued, cost.window))
    return tuple(rows)


def kernel_rows(kernels, chip: Chip, mode: str, nodes: tuple, streamed: dict | None = None,
                gm: fx.GraphModule | None = None, channels_last: frozenset = frozenset(),
                cached: dict | None = None) -> tuple:
    """streamed: {node name: {storage: bytes}} of state the node reads from memory on every pass
    (memory.state_reads, where the footprint outgrows the chip's cache); none by default.
    cached: the same where the cache holds it, which the rest of a pass's traffic pushes out
    of the core's L2 in part (chip.l2_share). gm: the
    graph, whose edges say which kernels wait for a collective (streams.collective_waits).
    channels_last: names of the convolution nodes the program runs channels-last
    (fuse/layout.py); the other channels-first ones run the transposes their nodes name."""
    waits = collective_waits(gm, kernels) if gm is not None else [()] * len(kernels)
    by_name = {n.name: n for n in nodes}
    streamed, cached = streamed or {}, cached or {}
    passed = sum(k.bytes for k in kernels)     # a pass's traffic, run again and again
    mains = [_main(k, by_name) for k in kernels]
    # an eager op finds its code and data as cold as the work since its last call left them
    cold = cold_shares(chip, [m.cost_key if m else k.category for k, m in zip(kernels, mains)],
                       [k.bytes for k in kernels]) if mode == "eager" else [0.0] * len(kernels)
    rows = []
    for i, (k, main) in enumerate(zip(kernels, mains)):
        members = [by_name[n] for n in k.nodes if n in by_name]
        op = main.op if main else ""
        # the op whose own call runs the kernel (eager ops; a compiled program's library
        # calls): a chip measured op by op costs it as that op
        key = rate_op(mode, k.category, main.cost_key) if main else ""
        state: dict = {}
        held: dict = {}
        for n in k.nodes:
            state.update(streamed.get(n, {}))
            held.update(cached.get(n, {}))
        kept = sum(held.values())          # cached weights' bytes
        comm = {"comm_bytes": sum(m.comm_bytes for m in members),
                "comm_steps": sum(m.comm_steps for m in members),
                "nvls_bytes": sum(m.nvls_bytes for m in members),
                "comm_ranks": max((m.comm_ranks for m in members), default=0)}
        dtype = unit_dtype(chip, k.category, k.dtype)
        # an 8-bit matmul's activations quantized at each call: kernels of their own before it,
        # each launched (eager: an op of its own) as any kernel is, but those a compiled
        # program folds into the kernel making the activations
        quantizing = tuple(b for m in members for b, folds in zip(m.quantize, m.quantize_folds)
                           if mode == "eager" or not folds) if chip.kind == "gpu" else ()
        timing = kernel_timing(chip, flops=k.flops, bytes_moved=k.bytes, category=k.category,
                               dtype=dtype,
                               overhead_s=overhead_per_kernel(chip, mode, key, k.views, i == 0,
                                                              cold[i])
                               + len(quantizing) * overhead_per_kernel(chip, mode),
                               rate_op=key, streamed_bytes=min(sum(state.values()), k.bytes_read),
                               cached_bytes=min(kept, k.bytes_read),
                               # the rest of the pass pushes them out, or they never fit
                               cached_share=l2_share(max(passed - k.bytes, kept), chip.l2_bytes),
                               elements=k.space,
                               # a layer norm's (rows, row): the rows ATen splits over threads
                               rows=main.grid[0] if main and len(main.grid) == 2 else 0,
                               # a matrix product's rows, its batches' together (grid
                               # (batch, rows, columns, depth)): tokens, pixels
                               matrix_rows=main.grid[0] * main.grid[1] if main
                               and len(main.grid) == 4 and k.category in ("matmul", "conv")
                               else 0,
                               # its depth: the length of each weight row a one-row product walks
                               matrix_width=main.grid[3] if main and len(main.grid) == 4
                               and k.category == "matmul" else 0,
                               **comm)
        label = (op if len(members) == 1 else f"{op} +{len(members) - 1}") if main \
            else k.category
        exp = expected(chip, timing, k.category, main.grid if main else (),
                       # the main node's category: a product Inductor decomposed into a
                       # reduction still streams its operands as a matrix kernel does
                       launch=launch_of(chip, mode, op, main.category if main else k.category,
                                        # an in-place write into a cache loops over what it
                                        # touches, not the cache
                                        min(k.space, k.bytes), main.grid if main else (),
                                        k.bytes),
                       relayout=tuple(b for m in members for b in m.relayout
                                      if m.name not in channels_last)
                       if dtype in TENSOR_CORE_DTYPES and chip.tensor_cores(dtype) else (),
                       dtype=dtype, variant=k.variant or (main.variant if main else ""),
                       exponentials=sum(m.exponentials for m in members),
                       causal=any(m.causal for m in members),
                       window=max((m.window for m in members), default=0),
                       # a fused kernel's norm reads again too: a compiler's reduction too
                       # long to hold on chip loops over its input once more (Cost.reread)
                       reread=tuple(b for m in members for b in m.reread),
                       # eager only: a compiled program adds the bias in its next fused kernel
                       bias_bytes=sum(m.bias_bytes for m in members)
                       if mode == "eager" and chip.nvidia else 0,
                       quantize=quantizing,
                       # PyTorch's own kernel (Cost.issued): eager, or a library call in a
                       # compiled program (a softmax there is Inductor's code), unless the
                       # program made the convolution channels-last, which cuDNN runs; a
                       # pointwise function's math is the same libdevice code in Inductor's
                       # kernel, its members' loads and stores counted as if apart
                       issued=sum(m.issued for m in members if m.name not in channels_last
                                  and (mode == "eager" or m.category in SOLO_CATEGORIES
                                       or m.category == "pointwise"))
                       if chip.nvidia else 0,
                       comm_stride=max((m.comm_stride for m in members), default=0),
                       comm_exchange=any(m.comm_exchange for m in members), **comm)
        # a collective says which of NCCL's algorithms its expected time took
        reason = f"{k.reason}: {exp.algorithm}" if exp.algorithm else k.reason
        rows.append(KernelRow(tuple(k.nodes), label, k.module, k.category, dtype,
                              k.flops, k.bytes_read, k.bytes_written, reason, timing, exp,
                              main.phase if main else "", waits[i]))
    return tuple(rows)


# cuDNN's tensor-core kernels take channels-last operands in these dtypes (Cost.relayout).
TENSOR_CORE_DTYPES = frozenset({"fp16", "bf16", "tf32"})


# Ops whose keyword picks a different kernel: the name carries it ("gelu(tanh)"), so that tables
# tell them apart and a chip measured op by op can cost each (a CPU's tanh GELU is 3x the erf's).
_VARIANTS = {"gelu": "approximate"}


def op_name(node: fx.Node) -> str:
    target = node.target
    name = getattr(target, "__name__", str(target))
    packet = getattr(target, "overloadpacket", None)
    name = getattr(packet, "__name__", name) if packet is not None else name
    variant = node.kwargs.get(_VARIANTS[name]) if name in _VARIANTS else None
    return f"{name}({variant})" if isinstance(variant, str) and variant != "none" else name


