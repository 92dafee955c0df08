"""Collectives: the functional c10d ops of a per-rank graph (DTensor and torch.distributed's
functional API emit them), costed per rank as NCCL's ring algorithms run them: the bytes each rank
sends over its link (comm_bytes) and the sequential latency-bound steps (comm_steps). bytes_read
and bytes_written are the local buffers; FLOPs the reductions' adds. The group size comes from the
op or from the live process group it names; when neither says, the collective is marked unknown
rather than costed with a guessed size. The factors and their sources: docs/whatif-and-parallel.md.
"""
from __future__ import annotations

import torch

from fxroof.cost.formulas.registry import OpCall, formula
from fxroof.cost.record import Cost
from fxroof.graph.tensors import footprint, numel


# NVIDIA, "GB200 NVL Partition User Guide": "partitions that have less than or equal to four GPUs
# will not benefit from multicast and can accomplish all traffic through unicast"; NVLS is the
# switch's multicast, and NCCL keeps 4 H200s on its ring (Bekman, Machine Learning Engineering,
# network/README.md, "SHARP"). Nor for more ranks than one NVSwitch joins: the chips that have
# NVLS are HGX boards of 8 GPUs, and a larger group crosses the network, where NCCL runs its rings
# and trees through the servers' NICs (chips/timing.py, comm_options).
NVLS_MIN_RANKS, NVLS_MAX_RANKS = 5, 8


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


def group_stride(group) -> int:
    """The step between the world ranks of process group `group` (a name or a ProcessGroup): 1
    for neighbours, tp for a data-parallel group across a tensor-parallel mesh; 0 where it cannot
    be read (no live group) or the ranks are not evenly spaced."""
    try:
        from torch.distributed.distributed_c10d import (_resolve_process_group,
                                                        get_process_group_ranks)
        ranks = get_process_group_ranks(group if hasattr(group, "size")
                                        else _resolve_process_group(group))
    except Exception:   # not initialised, destroyed, or torch built without distributed
        return 0
    steps = {b - a for a, b in zip(ranks, ranks[1:])}
    return steps.pop() if len(steps) == 1 else 0


def _buffers(call: OpCall) -> list[torch.Tensor]:
    """The tensors a collective sends: `input`, or `inputs` for the coalesced variants."""
    x = call.get("inputs", call.get("input", call.get("tensor")))
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _ring(call: OpCall, n: int | None, link, *, gathered: bool = False,
          reduces: bool = False, switch: float = 0, exchange: bool = False) -> Cost:
    """A collective over a ring of n ranks. link(n): (bytes each rank sends, as a share of the
    full buffer; sequential steps). The full buffer is the input (n inputs when `gathered`); a
    reduction adds (n-1)/n of its elements on each rank. switch: the share of the full buffer
    each rank sends where the switch reduces instead (Cost.nvls_bytes); 0: no such algorithm."""
    if n is None:
        return call.cost(0, "collective", known=False,
                         note=f"group {call.get('group_name')!r} not alive: size unknown")
    if n <= 1:
        return call.cost(0, "collective", note="n=1")
    buffers = _buffers(call)
    full = (n if gathered else 1) * sum(footprint(t) for t in buffers)
    adds = sum(numel(t) for t in buffers) * (n - 1) // n if reduces else 0
    share, steps = link(n)
    return call.cost(adds, "collective", note=f"n={n}", comm_bytes=round(share * full),
                     comm_steps=steps, nvls_bytes=round(switch(n) * full) if switch else 0,
                     comm_ranks=n, comm_stride=group_stride(call.get("group_name")),
                     comm_exchange=exchange)


@formula(*_ops("all_reduce", "all_reduce_", "all_reduce_coalesced", "all_reduce_coalesced_"),
         category="collective")
def all_reduce(call: OpCall):
    # a reduce-scatter then an all-gather: twice (n-1)/n of the buffer, in twice n-1 steps. In
    # the switch (NCCL's NVLS, src/device/all_reduce.h): each rank's whole buffer goes in to be
    # summed, and the rank that owns a 1/n slice sends its sum back in for the switch to copy to
    # all: (n+1)/n of the buffer out of each rank, the same into it. Only for 5 to 8 ranks
    return _ring(call, group_size(call.get("group_name")), lambda n: (2 * (n - 1) / n, 2 * (n - 1)),
                 reduces=True,
                 switch=lambda n: (n + 1) / n if NVLS_MIN_RANKS <= n <= NVLS_MAX_RANKS else 0)


@formula(*_ops("all_gather_into_tensor", "all_gather_into_tensor_out",
               "all_gather_into_tensor_coalesced"), category="collective")
def all_gather(call: OpCall):
    # each rank ends with all n shards: the full buffer is n times its input
    return _ring(call, int(call.get("group_size")), lambda n: ((n - 1) / n, n - 1), gathered=True)


@formula(*_ops("reduce_scatter_tensor", "reduce_scatter_tensor_coalesced"), category="collective")
def reduce_scatter(call: OpCall):
    return _ring(call, int(call.get("group_size")), lambda n: ((n - 1) / n, n - 1), reduces=True)


@formula(*_ops("all_to_all_single"), category="collective")
def all_to_all(call: OpCall):
    # n-1 pairwise exchange rounds; the split lists have one entry per rank, when given
    n = group_size(call.get("group_name")) or len(call.get("input_split_sizes") or ()) or None
    return _ring(call, n, lambda n: ((n - 1) / n, n - 1), exchange=True)


@formula(*_ops("broadcast", "broadcast_"), category="collective")
def broadcast(call: OpCall):
    # a pipelined ring: the whole buffer over each link, the first chunk n-1 hops to the last rank
    return _ring(call, group_size(call.get("group_name")), lambda n: (1, n - 1))


@formula(*_ops("isend", "irecv"), category="collective")
def point_to_point(call: OpCall):
    """One buffer over one link, one latency: the sender's outgoing and the receiver's incoming
    direction each carry it once."""
    return call.cost(0, "collective", note="point to point",
                     comm_bytes=footprint(call.get("tensor")), comm_steps=1, comm_ranks=2)


@formula(*_ops("wait_tensor"), category="view")
def wait_tensor(call: OpCall):
    return Cost(category="view")   # waits for a collective's result; moves nothing
