"""Communication beside compute: a mode's kernels scheduled on two streams.

Compute kernels run back to back in graph order on the compute stream. A collective runs on the
communication stream, from the moment the program issues it (the compute before it is done)
and the stream is free; a kernel that reads its result waits for it. The step ends when both
streams are done, and the communication that outlasts the compute it runs beside is exposed.
So DDP's all-reduce of a gradient bucket hides behind the backward kernels after it until the
optimizer reads the gradients, while tensor parallelism's all-reduce, read by the very next
kernel, hides nothing: the times then add up exactly as in turn. The link is assumed to keep
its full bandwidth beside compute (no contention for memory or SMs).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

COLLECTIVE = "collective"


@dataclass(frozen=True)
class Schedule:
    starts: tuple       # each kernel's start, seconds from the step's start
    ends: tuple         # and its end
    compute_s: float    # the compute stream's busy time
    comm_s: float       # the communication stream's busy time
    end_s: float        # when both streams are done: the step's time

    # the communication not hidden behind compute
    exposed_s = property(lambda self: max(self.end_s - self.compute_s, 0.0))
    hidden_s = property(lambda self: self.comm_s - self.exposed_s)


def schedule(kernels, duration=lambda k: k.time_s) -> Schedule:
    """The two-stream schedule of `kernels` (KernelRows in graph order, their `waits` naming the
    collectives whose results they read) with each kernel lasting `duration(k)`. Waits on a
    collective that is not among `kernels` (another phase's) are already met."""
    comm_of = {k.nodes[0]: i for i, k in enumerate(kernels) if k.category == COLLECTIVE}
    starts, ends = [], []
    clock = link = compute = comm = 0.0
    for k in kernels:
        ready = max((ends[comm_of[w]] for w in k.waits if w in comm_of), default=0.0)
        time = duration(k)
        if k.category == COLLECTIVE:
            start = max(clock, link, ready)
            link = start + time
            comm += time
        else:
            start = max(clock, ready)
            clock = start + time
            compute += time
        starts.append(start)
        ends.append(start + time)
    return Schedule(tuple(starts), tuple(ends), compute, comm, max(clock, link))


def collective_waits(gm: fx.GraphModule, kernels) -> list[tuple]:
    """For each kernel (fuser Kernels, in graph order), the collectives (named by their kernel's
    first node) whose results it reads, directly or through ops that run no kernel (views,
    waits on the collective's handle)."""
    owner = {name: i for i, k in enumerate(kernels) for name in k.nodes}
    comm = {i for i, k in enumerate(kernels) if k.category == COLLECTIVE}
    carried: dict[str, set] = {}      # node outside every kernel: the collectives it passes on
    waits = [set() for _ in kernels]
    for node in gm.graph.nodes:
        found = set()
        for arg in node.all_input_nodes:
            i = owner.get(arg.name)
            if i is None:
                found |= carried.get(arg.name, set())
            elif i in comm:
                found.add(kernels[i].nodes[0])
        i = owner.get(node.name)
        if i is None:
            carried[node.name] = found
        else:
            waits[i] |= found - {kernels[i].nodes[0]}
    return [tuple(sorted(w)) for w in waits]
