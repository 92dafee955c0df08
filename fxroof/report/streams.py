"""Communication beside compute, and the host that issues both: a mode's kernels scheduled on
two streams fed by one host thread.

The host issues the kernels in graph order, each after its own fixed cost (eager dispatch, a
compiled program's launch, a CUDA graph's replay): it runs ahead of the chip, which queues what it
is given, so a short kernel after a long one waits for nothing, and the chip idles only where it
empties the queue faster than the host fills it (a step of many tiny kernels: overhead-bound).
Compute kernels run back to back in graph order on the compute stream, each from the later of its
issue and the previous one's end. A collective runs on the communication stream, from the moment
the program issues it (the compute before it is done) and the stream is free; a kernel that reads
its result waits for it. The step ends when both streams are done, and the communication that
outlasts the compute it runs beside is exposed. So DDP's all-reduce of a gradient bucket hides
behind the backward kernels after it until the optimizer reads the gradients, while tensor
parallelism's all-reduce, read by the very next kernel, hides nothing: the times then add up
exactly as in turn. The link is assumed to keep its full bandwidth beside compute (no contention
for memory or SMs). On a CPU the host is the device: a kernel's dispatch is part of its time on
the one stream, and nothing runs ahead.
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
    idle: tuple = ()    # per kernel: the seconds its stream stood idle waiting for the host to
                        # issue it (overhead the queue did not hide)
    issued: tuple = ()  # per kernel: when the host begins to issue it
    host_s: float = 0.0     # when the host has issued every kernel

    # the streams' idle time waiting for the host
    host_wait_s = property(lambda self: sum(self.idle))

    # the communication not hidden behind compute (nor behind the compute stream's waits for
    # the host)
    exposed_s = property(lambda self: max(self.end_s - self.compute_s - self.host_wait_s, 0.0))
    hidden_s = property(lambda self: self.comm_s - self.exposed_s)


def on_chip(k) -> tuple[float, float]:
    """(host, device) seconds of a kernel row's expected time: its issue cost on the host and
    its time on the chip; on a CPU (overhead serial with the work) all of it is the chip's."""
    return host_and_device(k.expected)


def on_chip_floor(k) -> tuple[float, float]:
    """on_chip of the roofline floor."""
    return host_and_device(k.timing)


def host_and_device(t) -> tuple[float, float]:
    """(host, device) seconds of a Timing or an Expected."""
    return (0.0, t.time_s) if t.serial_overhead else (t.overhead_s, t.device_s)


def schedule(kernels, parts=on_chip) -> Schedule:
    """The schedule of `kernels` (KernelRows in graph order, their `waits` naming the
    collectives whose results they read), parts(k) giving each one's (host, device) seconds.
    Waits on a collective that is not among `kernels` (another phase's) are already met."""
    comm_of = {k.nodes[0]: i for i, k in enumerate(kernels) if k.category == COLLECTIVE}
    starts, ends, idle, issued = [], [], [], []
    host = clock = link = compute = comm = 0.0
    for k in kernels:
        ready = max((ends[comm_of[w]] for w in k.waits if w in comm_of), default=0.0)
        issue, time = parts(k)
        on_link = k.category == COLLECTIVE
        # a collective starts once the compute before it is done and the link is free
        free = max(clock, link, ready) if on_link else max(clock, ready)
        start = max(free, host)
        if on_link:
            link = start + time
            comm += time
        else:
            clock = start + time
            compute += time
        issued.append(host)
        host += issue
        starts.append(start)
        ends.append(start + time)
        idle.append(start - free)
    # A kernel's launch overlaps the kernel before it (in a loop of steps, the host issues the
    # next step's first kernel while this one's last runs), so a lone kernel takes the longer
    # of its time and its launch; the step ends when the host has issued all of it.
    return Schedule(tuple(starts), tuple(ends), compute, comm, max(clock, link, host),
                    tuple(idle), tuple(issued), host)


def attribute(kernels, s: Schedule) -> list[tuple[int, str, float]]:
    """The step's expected time (`s`, the schedule of `kernels`) in (kernel index, regime,
    seconds) pieces summing to it. Where the host
    is the bottleneck (issuing takes longer than the compute stream is busy) the step is its
    issuing: each kernel's issue cost counts as overhead, and the time the chip runs on after
    the host is done goes to the kernels' regimes by their time on the chip. Otherwise each
    kernel counts its time on the chip to its regime there and the chip's wait for the host to
    issue it to overhead; a collective both scaled to the share of communication exposed."""
    pieces = []
    if s.host_s >= s.compute_s and s.host_s > 0:
        tail = (s.end_s - s.host_s) / (s.compute_s + s.comm_s or 1.0)
        for i, k in enumerate(kernels):
            issue, time = on_chip(k)
            pieces += [(i, "overhead", issue), (i, k.expected.device_regime, time * tail)]
        return pieces
    exposed = s.exposed_s / s.comm_s if s.comm_s else 1.0
    for i, (k, start, end, idle) in enumerate(zip(kernels, s.starts, s.ends, s.idle)):
        scale = exposed if k.category == COLLECTIVE else 1.0
        pieces += [(i, k.expected.device_regime, (end - start) * scale),
                   (i, "overhead", idle * scale)]
    return pieces


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
