"""Collectives: the functional c10d ops a per-rank graph holds (DTensor and torch.distributed's
functional API both emit them), costed as NCCL's ring algorithms run them.

Per rank, for a group of n ranks and a buffer of B bytes (for all-gather and reduce-scatter, B is
the FULL, gathered buffer, n times the shard):

    op              bytes sent over the link (comm_bytes)   sequential steps (comm_steps)
    all_reduce      2 (n-1)/n * B                            2 (n-1)
    all_gather      (n-1)/n * B                              n-1
    reduce_scatter  (n-1)/n * B                              n-1
    all_to_all      (n-1)/n * B                              n-1
    broadcast       B                                        n-1

The byte factors are NCCL's "bus bandwidth" factors (nccl-tests, doc/PERFORMANCE.md: a ring
all-reduce moves 2(n-1)/n of the buffer over each link, all-gather and reduce-scatter (n-1)/n,
all-to-all (n-1)/n, broadcast 1). The step counts are the ring's: a ring all-reduce is a
reduce-scatter (n-1 steps) then an all-gather (n-1 steps), each step paying the link latency once
(Patarasuk & Yuan, "Bandwidth optimal all-reduce algorithms for clusters of workstations", 2009;
NCCL's ring). All-to-all is counted as n-1 pairwise exchange rounds and broadcast as a pipelined
ring, whose first chunk reaches the last rank after n-1 hops. Tree and NVLS algorithms that NCCL
picks for some sizes are not modelled: the ring is the bandwidth-optimal upper bound on bytes.

bytes_read / bytes_written are the local buffers (input and output), i.e. the memory traffic of
the kernel. FLOPs are the reductions' adds: a ring all-reduce or reduce-scatter adds (n-1)/n of the
full buffer's elements on each rank; gathers, all-to-all and broadcast compute nothing.

The group size n comes from the op: all-gather and reduce-scatter pass it; for the others it is
the size of the process group the op names, which must still be alive when the graph is
annotated (fxroof.analyze(tp=...) keeps its fake group alive for that). When it is not, the
collective is marked unknown rather than costed with a guessed n.

wait_tensor (waiting for an async collective's result) moves nothing: a view.
"""
from __future__ import annotations

import torch

from ..cost import Cost
from ..tensors import footprint, numel
from .registry import OpCall, formula


def _ops(*names: str) -> list:
    """The ops of both functional namespaces that exist in this torch build."""
    found = []
    for ns in ("_c10d_functional", "c10d_functional"):
        namespace = getattr(torch.ops, ns)
        for name in names:
            try:
                found.append(getattr(namespace, name))
            except (AttributeError, RuntimeError):   # op not in this build
                pass
    return found


def group_size(group) -> int | None:
    """Ranks in the process group `group` (a name, as graphs carry it, or a ProcessGroup).

    None when the group cannot be resolved (no such live group)."""
    if hasattr(group, "size"):
        return int(group.size())
    try:
        from torch.distributed.distributed_c10d import _resolve_process_group
        return int(_resolve_process_group(group).size())
    except Exception:   # not initialised, destroyed, or torch built without distributed
        return None


def _buffers(call: OpCall) -> list[torch.Tensor]:
    """The tensors a collective sends: `input`, or `inputs` for the coalesced variants."""
    x = call.get("inputs")
    if x is None:
        x = call.get("input", call.get("tensor"))
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _local(call: OpCall, n: int | None) -> Cost:
    """A collective whose group size is unknown (marked unknown) or 1 (nothing to send)."""
    if n is None:
        return Cost(0, call.bytes_read(), call.bytes_written(), "collective", call.dtype,
                    known=False, note=f"group {call.get('group_name')!r} not alive: size unknown")
    return Cost(0, call.bytes_read(), call.bytes_written(), "collective", call.dtype, note="n=1")


def _ring(call: OpCall, n: int, *, comm_bytes: float, steps: int, adds: int = 0) -> Cost:
    return Cost(adds, call.bytes_read(), call.bytes_written(), "collective", call.dtype,
                note=f"ring n={n}", comm_bytes=round(comm_bytes), comm_steps=steps)


@formula(*_ops("all_reduce", "all_reduce_", "all_reduce_coalesced", "all_reduce_coalesced_"),
         category="collective")
def all_reduce(call: OpCall):
    n = group_size(call.get("group_name"))
    if not n or n == 1:
        return _local(call, n)
    buffers = _buffers(call)
    full = sum(footprint(t) for t in buffers)
    adds = sum(numel(t) for t in buffers) * (n - 1) // n   # reduce-scatter phase: (n-1)/n adds
    return _ring(call, n, comm_bytes=2 * (n - 1) / n * full, steps=2 * (n - 1), adds=adds)


@formula(*_ops("all_gather_into_tensor", "all_gather_into_tensor_out",
               "all_gather_into_tensor_coalesced"), category="collective")
def all_gather(call: OpCall):
    n = int(call.get("group_size"))
    if n == 1:
        return _local(call, n)
    full = n * sum(footprint(t) for t in _buffers(call))   # each rank ends with all n shards
    return _ring(call, n, comm_bytes=(n - 1) / n * full, steps=n - 1)


@formula(*_ops("reduce_scatter_tensor", "reduce_scatter_tensor_coalesced"), category="collective")
def reduce_scatter(call: OpCall):
    n = int(call.get("group_size"))
    if n == 1:
        return _local(call, n)
    buffers = _buffers(call)                               # the input is the full buffer
    full = sum(footprint(t) for t in buffers)
    adds = sum(numel(t) for t in buffers) * (n - 1) // n
    return _ring(call, n, comm_bytes=(n - 1) / n * full, steps=n - 1, adds=adds)


@formula(*_ops("all_to_all_single"), category="collective")
def all_to_all(call: OpCall):
    n = group_size(call.get("group_name"))
    if n is None:   # the split lists have one entry per rank, when given
        n = len(call.get("input_split_sizes") or ()) or None
    if not n or n == 1:
        return _local(call, n)
    return _ring(call, n, comm_bytes=(n - 1) / n * footprint(call.get("input")), steps=n - 1)


@formula(*_ops("broadcast", "broadcast_"), category="collective")
def broadcast(call: OpCall):
    n = group_size(call.get("group_name"))
    if not n or n == 1:
        return _local(call, n)
    return _ring(call, n, comm_bytes=footprint(call.get("input")), steps=n - 1)


@formula(*_ops("isend", "irecv"), category="collective")
def point_to_point(call: OpCall):
    """One buffer over one link, one latency: the sender's outgoing and the receiver's incoming
    direction each carry it once."""
    x = call.get("tensor")
    return Cost(0, call.bytes_read(), call.bytes_written(), "collective", call.dtype,
                note="point to point", comm_bytes=footprint(x), comm_steps=1)


@formula(*_ops("wait_tensor"), category="view")
def wait_tensor(call: OpCall):
    return Cost(category="view")   # waits for a collective's result; moves nothing
