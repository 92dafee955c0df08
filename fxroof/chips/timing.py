"""Pure roofline math: how long one kernel takes on a chip at the least, and what bounds it.
This is the floor; expected.py adds what a real run adds to it (docs/time-model.md).

A kernel's time is the largest of four costs, because each resource works in parallel with the
others (the host launches the next kernel while the GPU runs this one; memory and math units
overlap within a kernel):
  compute   FLOPs / peak of the unit that runs it (matrix units at the kernel's dtype for matmul,
            conv and attention; vector units otherwise)
  memory    bytes / memory bandwidth (the cache's, on a chip that models one, when they fit in it)
  comm      collective latency + algorithm factor x bytes / link bandwidth (GPUs: NCCL's faster
            protocol, low-latency for small messages)
  overhead  the fixed cost of getting the kernel onto the chip: eager dispatch from Python per op,
            or a launch from a compiled program / CUDA graph
The regime is whichever of the four is largest. "overhead" therefore means exactly what the seed
says: the fixed launch/dispatch cost exceeds the work.

On a CPU the host *is* the device: dispatching the next op cannot overlap with running this one,
so there the overhead adds to the work instead of hiding behind it (`serial_overhead`).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace

import torch

from fxroof.chips import Chip
from fxroof.chips.chip import FEW_ROWS_PROBE_BETWEEN, l2_share
from fxroof.cost.record import MATRIX_CATEGORIES

REGIMES = ("compute", "memory", "communication", "overhead")
# compiled: torch.compile's default, each fused kernel launched by the compiled program;
# cudagraphs: the same kernels replayed as a CUDA graph (torch.compile(mode="reduce-overhead"),
# as LLM servers and gpt-fast decode); eager: one kernel per op, each dispatched from Python.
MODES = ("compiled", "cudagraphs", "eager")
GRAPH_MODE = "cudagraphs"


@dataclass(frozen=True)
class Timing:
    compute_s: float
    memory_s: float
    comm_s: float
    overhead_s: float
    serial_overhead: bool = False

    @property
    def time_s(self) -> float:
        work = self.device_s
        return work + self.overhead_s if self.serial_overhead else max(work, self.overhead_s)

    # the time on the chip alone, the host's part left out
    device_s = property(lambda self: max(self.compute_s, self.memory_s, self.comm_s))

    @property
    def regime(self) -> str:
        parts = (self.compute_s, self.memory_s, self.comm_s, self.overhead_s)
        return REGIMES[parts.index(max(parts))]

    @property
    def device_regime(self) -> str:
        """The regime on the chip alone, the host's issue cost left out (the roofline's own)."""
        return replace(self, overhead_s=0.0).regime


def overhead_per_kernel(chip: Chip, mode: str, op: str = "", views: int = 0,
                        first: bool = False, cold: float = 0.0) -> float:
    """Fixed cost of one kernel: an eager op's dispatch (per op where the chip was measured op by
    op), the model code's glue around it and the view ops called before it, a launch from a
    compiled program, or a CUDA graph's pace per kernel as it replays; the first kernel of a
    compiled program (replayed or not) also pays for entering it (guards, wrapper).
    op: the op whose own call runs the kernel (`rate_op`): every eager kernel's; in a compiled
    program a library call's (a matrix kernel), which on a CPU costs what that op's call costs
    (entering oneDNN for a convolution: several launches' worth). cold: an eager op's share of
    its cold call (cold_shares)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if mode == GRAPH_MODE:      # the front end's pace through the graph, then its launch
        return (chip.graph_launch_s or chip.launch_s) + (chip.program_call_s if first else 0.0)
    if mode == "compiled":
        # on a CPU a launch is a call from the host: a library op's costs a launch and what its
        # own eager call costs beyond a typical op's (entering oneDNN)
        extra = max(chip.eager_dispatch(op) - chip.dispatch_s, 0.0) \
            if op and chip.kind == "cpu" and chip.op_dispatch_s else 0.0
        return chip.launch_s + extra + (chip.program_call_s if first else 0.0)
    return chip.eager_dispatch(op, cold) + chip.glue_s + views * chip.view_dispatch_s


def cold_shares(chip: Chip, ops: list, moved: list) -> list[float]:
    """For eager kernels in order, each run by op `ops[i]` and moving `moved[i]` bytes: the share
    of its op's cold call it pays (Chip.eager_dispatch), by the bytes the kernels between it and
    its op's previous call moved (chip.l2_share: none up to half the core's L2, all from twice
    it, calibration's sweep, a copy of l2_bytes, moving that much). On a 2-vCPU Sapphire
    Rapids VM (2 MiB of L2) a tiny torch.add took 1.7 us after nothing, 2.4 after reading
    1 MiB, 5.2 after copying 1 MiB (2 moved), 8.0 after copying 2 (4 moved), 14.7 after
    copying 16 (docs/calibration.md, "Cold calls"). A forward runs again
    and again, so an op's first call follows its last one of the pass before. All 0 on a chip
    without cold calls measured."""
    if not (chip.kind == "cpu" and chip.l2_bytes and chip.op_dispatch_cold_s) or not ops:
        return [0.0] * len(ops)
    n, before = len(ops), [0.0]          # before[j]: bytes of kernels 0..j-1 over two passes
    for j in range(2 * n):
        before.append(before[-1] + moved[j % n])
    last = {op: j - n for j, op in enumerate(ops)}     # each op's last call in the pass before
    shares = []
    for i, op in enumerate(ops):
        shares.append(l2_share(before[i + n] - before[last[op] + n + 1], chip.l2_bytes))
        last[op] = i
    return shares


def rate_op(mode: str, category: str, main_op: str) -> str:
    """The op whose own measured rate a kernel runs at: an eager kernel's op; in a compiled
    program only a matrix kernel's, which still calls the library (fused code has no such op)."""
    return main_op if mode == "eager" or category in MATRIX_CATEGORIES else ""


def peak_for(chip: Chip, category: str, dtype: str, op: str = "", rows: int = 0) -> float:
    """FLOP/s of the unit that runs work of this category and dtype. `op` names the PyTorch op
    whose own kernel runs it (eager ops; a compiled program's library calls), which may have a
    rate of its own on a chip measured op by op, and for a product of few `rows` (tokens) a
    lower one there too."""
    if category in MATRIX_CATEGORIES:
        dtype = dtype or "fp32"
        if category == "attention" and dtype == "fp32" and chip.tensor_cores("tf32"):
            # PyTorch's memory-efficient attention computes fp32 as three TF32 products each
            # (CUTLASS's 3xTF32, OpMultiplyAddFastF32, from compute capability 8.0), whatever
            # the TF32 flags say
            return chip.peak_flops["tf32"] / FAST_F32_PRODUCTS
        return chip.eager_matrix_flops(op, dtype, rows) if op else chip.matrix_flops(dtype)
    return chip.eager_vector_flops(op) if op else chip.vector_flops


FAST_F32_PRODUCTS = 3      # big x big + big x small + small x big, the small x small dropped


@contextlib.contextmanager
def matmul_tf32(on: bool):
    """PyTorch's flag for fp32 matrix products on TF32 tensor cores (which unit_dtype reads),
    set for the block, then put back as it was."""
    was = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = was


def unit_dtype(chip: Chip, category: str, dtype: str) -> str:
    """The dtype whose matrix peak runs a kernel on this chip. PyTorch runs fp32 matrix work on
    a GPU's TF32 tensor cores where its flags allow it (CUDA semantics, "TensorFloat-32 (TF32) on
    Ampere (and later) devices"): convolutions by default (torch.backends.cudnn.allow_tf32),
    matrix products only when asked (torch.backends.cuda.matmul.allow_tf32, or a
    float32_matmul_precision below "highest"). A chip without a TF32 figure keeps fp32."""
    if not chip.nvidia or dtype != "fp32" or "tf32" not in chip.peak_flops:
        return dtype
    allowed = torch.backends.cudnn.allow_tf32 if category == "conv" \
        else torch.backends.cuda.matmul.allow_tf32 if category == "matmul" else False
    return "tf32" if allowed else dtype


# NCCL (and RCCL) pick, per collective, the protocol its own cost model says finishes first
# (NVIDIA/nccl src/graph/tuning.cc). A chip's link_latency_s is the per-step latency of the Simple
# protocol, which moves data at the link's full bandwidth. The LL protocol cuts the per-step
# latency to about 0.18x (NCCL's table: 0.6 vs 3.4 us per ring step over NVLink, 1.0 vs 5.7 us
# over PCIe) at half the bandwidth (each 8-byte store carries 4 bytes of data and a 4-byte flag):
# it wins the small all-reduces of decode with tensor parallelism, Simple the large ones.
LL_LATENCY = 0.18
LL_BANDWIDTH = 0.5
# An all-reduce that the NVSwitch reduces (NVLS) takes 25 us before its bytes flow, in one go
# rather than per ring step (tuning.cc, hwLatencies: NVLink, NVLS, Simple): it loses to the LL
# ring up to about a megabyte and wins from there on a wide enough group, as NCCL's own log on an
# 8 x H200 node says it does (LL ring to 1 MiB, NVLS from 2 MiB; Bekman, Machine Learning
# Engineering, network/README.md, "SHARP").
NVLS_LATENCY_S = 25e-6
# Within a node NCCL's NVLS all-reduce runs three warp groups as a pipeline, a chunk at a time:
# scatter into the switch's buffers, reduce and broadcast through the switch, gather out
# (src/device/all_reduce.h, RunWorkColl<..., NCCL_ALGO_NVLS, NCCL_PROTO_SIMPLE>, oneNode). Each
# of its channels x ranks (one head per rank) concurrent operations takes chunks of 128 KiB
# (NCCL_NVLS_CHUNKSIZE, src/transport/nvls.cc), cut to 64, 32 and 16 KiB for smaller buffers
# (src/enqueue.cc) so that a mid-size all-reduce still makes a few rounds. A pipeline of three
# stages that pace alike takes rounds + 2 stage times: a buffer of few rounds pays the fill.
NVLS_STAGES = 3
NVLS_CHUNK_BYTES = 128 * 1024
NVLS_CHUNK_CUTS = ((64, 65536), (8, 32768), (2, 16384))   # (rounds below which, chunk bytes)


def nvls_chunk(nbytes: float, operations: int) -> int:
    """The chunk NCCL gives each concurrent NVLS operation for an all-reduce of `nbytes`
    (src/enqueue.cc: smaller while the buffer holds fewer than 64, 8, 2 chunks an operation)."""
    chunk = NVLS_CHUNK_BYTES
    for rounds, cut in NVLS_CHUNK_CUTS:
        if nbytes < rounds * operations * chunk and chunk > cut:
            chunk = cut
    return chunk


def nvls_fill(nbytes: float, ranks: int, channels: int) -> float:
    """How much longer than its bytes alone an NVLS all-reduce of an `nbytes` buffer takes:
    (rounds + stages - 1) / rounds, one round being a chunk through each of channels x ranks
    operations; 1 where the channels or the group are not known."""
    if not (channels and ranks and nbytes):
        return 1.0
    operations = int(channels) * ranks
    rounds = max(1, math.ceil(nbytes / (operations * nvls_chunk(nbytes, operations))))
    return (rounds + NVLS_STAGES - 1) / rounds


# Past one server a ring enters and leaves each server once per channel, through its NICs, and
# every byte a rank sends crosses a server boundary on some channel: the ring moves at the slower
# of the rank's link and the server's NICs together. NCCL's tuning model prices a ring over more
# than two servers at the inter-server bus bandwidth (src/graph/tuning.cc, speedInter), and its
# maintainers read a multi-server ring's bus bandwidth as "the total NIC bandwidth"
# (NVIDIA/nccl-tests#160). The steps that cross servers wait the network's latency, and an
# all-reduce may run NCCL's tree instead: up and down a chain within each server and a binary
# tree across servers, 2 ((ranks a server - 1) link steps + log2(servers) network steps), moving
# twice the buffer at 0.92 of the ring's bus bandwidth. The latencies and the tree's share are
# NCCL's defaults (ncclTunerConstantsDefaults: hwLat NET, Ring 14 us Simple and 2.7 us LL, Tree
# 14 us Simple; as torch/_inductor/comm_analysis.py copies them). Only the expected time prices
# the network; the floor keeps the links alone, a bound that still holds. On two servers NCCL's
# tree can beat the NICs by keeping traffic on NVLink (nccl-tests#196): not modelled.
NET_STEP_S = 14e-6
NET_STEP_LL_S = 2.7e-6
TREE_SHARE = 0.92


def all_to_all_bytes_time(chip: Chip, comm_bytes: float, ranks: int, per_server: int,
                          link_bw: float, network_share: float) -> float:
    """The bytes' time of an all-to-all past one server: of the buffer (comm_bytes is (n-1)/n of
    it) a rank sends 1/n to each other rank, those on its server over its link, the others
    through the server's NICs, of which every GPU of the server, in this group or the ones
    beside it, takes its 1/node_gpus at once; the two flows run together."""
    buffer = comm_bytes * ranks / (ranks - 1)
    within = buffer * (per_server - 1) / ranks
    across = buffer * (ranks - per_server) / ranks
    return max(within / link_bw, across / (chip.network_bw * network_share / chip.node_gpus))


def comm_time(chip: Chip, comm_bytes: float, comm_steps: int, nvls_bytes: float = 0,
              ranks: int = 0) -> float:
    """The roofline floor of a collective: latency per sequential step plus the bytes each rank
    sends over its link; on a GPU, the faster of NCCL's Simple and LL protocols, and for an
    all-reduce on a chip whose switch reduces (Chip.nvls_efficiency), of those and NVLS: its
    latency plus nvls_bytes over the link. ranks: the group's size, which on a board wired peer
    to peer says how many links it has (Chip.group_link_bw). The expected time takes the same
    options with NCCL's costs on top (comm_options' other arguments, expected.py)."""
    options = comm_options(chip, comm_bytes, comm_steps, nvls_bytes=nvls_bytes, ranks=ranks)
    return min(options.values()) if options else 0.0


def comm_options(chip: Chip, comm_bytes: float, comm_steps: int, base_s: tuple = (0.0, 0.0),
                 efficiency: float = 1.0, nvls_bytes: float = 0, nvls_share: float = 1.0,
                 ranks: int = 0, nvls_channels: int = 0, network_share: float = 0.0,
                 stride: int = 1, exchange: bool = False) -> dict:
    """{algorithm: seconds} of the ones a collective can run on this chip (comm_time's
    arguments); comm_time, the floor, is the fastest with none of the rest. The expected time
    adds each protocol's per-collective base latency, base_s = (Simple, LL), the share of the
    link's bandwidth a ring reaches (efficiency), the share of that NVLS keeps (nvls_share),
    NVLS's pipeline fill over its channels (nvls_channels: nvls_fill) and, for a group past one
    server (Chip.nodes; stride: the step between its ranks in the world), the network between
    servers at network_share of its rate (0: links only, as the floor). A group with fewer ranks
    a server than the server holds shares its NICs with the groups beside it, which run the
    same collective at once (the data-parallel groups of a tensor-parallel mesh). exchange: an
    all-to-all, whose bytes to other servers each cross the NICs (all_to_all_bytes_time)."""
    if not comm_bytes and not comm_steps:
        return {}
    bw = link = chip.group_link_bw(ranks) * efficiency
    servers = chip.nodes(ranks, stride) if network_share else 1
    per_server = chip.ranks_a_server(ranks, stride)
    crossing = 0.0       # the steps between servers
    if servers > 1:
        # an all-to-all's rounds with every rank of another server; a ring's one a server
        crossing = comm_steps * ((ranks - per_server) if exchange else (servers - 1)) / (ranks - 1)
        bw = min(link, chip.network_bw * network_share * per_server / chip.node_gpus)
    within = comm_steps - crossing
    if exchange and servers > 1:
        return {"all-to-all": base_s[0] + within * chip.link_latency_s + crossing * NET_STEP_S
                + all_to_all_bytes_time(chip, comm_bytes, ranks, per_server, link,
                                        network_share)}
    options = {"ring": (base_s[0] + within * chip.link_latency_s + crossing * NET_STEP_S
                        + comm_bytes / bw)}
    if chip.kind != "gpu":           # gloo (CPUs) and ICI (TPUs) have no LL protocol
        return options
    options = {"ring Simple": options["ring"],
               "ring LL": (base_s[1] + within * chip.link_latency_s * LL_LATENCY
                           + crossing * NET_STEP_LL_S + comm_bytes / (bw * LL_BANDWIDTH))}
    if servers > 1 and comm_steps == 2 * (ranks - 1):     # an all-reduce's steps: its tree
        depth = int(math.log2(servers))                    # NCCL's log2i: the floor
        options["tree"] = (base_s[0] + 2 * ((per_server - 1) * chip.link_latency_s
                                            + depth * NET_STEP_S)
                           + comm_bytes * ranks / (ranks - 1) / (bw * TREE_SHARE))
    if nvls_bytes and chip.nvls_efficiency and servers == 1:      # reduced in the switch
        # the buffer itself: nvls_bytes is (n+1)/n of it (Cost.nvls_bytes)
        buffer = nvls_bytes * ranks / (ranks + 1) if ranks else 0
        options["NVLS"] = (NVLS_LATENCY_S + nvls_bytes / (bw * nvls_share)
                           * nvls_fill(buffer, ranks, nvls_channels))
    return options


# ATen runs an elementwise or copy loop (TensorIterator) in chunks of at least this many
# elements, one chunk per thread (at::internal::GRAIN_SIZE, aten/src/ATen/Parallel.h): a smaller
# op runs on one thread however many there are.
GRAIN_SIZE = 32768
SPLIT_CATEGORIES = ("pointwise", "copy")
# A layer norm splits its rows over the threads, one row at least a thread (at::parallel_for
# with a grain of 1, aten/src/ATen/native/cpu/layer_norm_kernel.cpp).
ROW_SPLIT_CATEGORIES = ("norm",)


def splits(chip: Chip, category: str, elements: int, rows: int = 0) -> bool:
    """Whether ATen runs an eager op over several of the chip's threads: an elementwise or copy
    loop of more than one chunk, a layer norm of more than one row."""
    if chip.threads <= 1:
        return False
    if category in SPLIT_CATEGORIES:
        return elements > GRAIN_SIZE
    return category in ROW_SPLIT_CATEGORIES and rows > 1


def kernel_timing(chip: Chip, *, flops: float, bytes_moved: float, category: str, dtype: str,
                  overhead_s: float, comm_bytes: float = 0, comm_steps: int = 0,
                  nvls_bytes: float = 0, comm_ranks: int = 0, rate_op: str = "",
                  streamed_bytes: float = 0, elements: int = 0, rows: int = 0,
                  matrix_rows: int = 0, matrix_width: int = 0, cached_bytes: float = 0,
                  cached_share: float = 0.0) -> Timing:
    """rate_op: the op whose own rate a chip measured op by op applies (Chip.op_flops): an eager
    kernel's op, or the library op a compiled matrix kernel calls.
    streamed_bytes: the part of bytes_moved that comes from memory whatever the chip's cache
    (the weights of a model too large to stay cached between passes).
    elements: the kernel's loop size; an eager elementwise op on a CPU measured with several
    threads gets the share of them ATen splits it over (GRAIN_SIZE). rows: a layer norm's rows.
    An eager op that ATen splits also pays the chip's parallel region (region_s).
    matrix_rows: a matrix product's rows (tokens, pixels): fewer than the layer probe's run
    at their own rate where the chip measured it (Chip.eager_matrix_flops); one row (decode's)
    is the kernel a chip's matrix_bw_fraction was measured on. matrix_width: its depth, the
    elements in each row of a linear's weights, which one row walks row by row.
    cached_bytes: weights a CPU library product reads from the last-level cache, the share
    cached_share of them gone from the core's L2 since their last read (chip.l2_share)."""
    one_row = category == "matmul" and matrix_rows == 1
    compute = flops / peak_for(chip, category, dtype, rate_op,
                               matrix_rows if matrix_rows > 1 else 0) if flops else 0.0
    rest = bytes_moved - streamed_bytes
    memory = streamed_bytes / chip.mem_bw + rest / chip.bandwidth(rest)
    if rate_op and category in MATRIX_CATEGORIES:
        # a library matrix product streams its weights below the copy bandwidth (a CPU's
        # matrix-vector product: 40-70% of it), where the chip measured that
        share = chip.matrix_bandwidth_share(dtype or "fp32", matrix_width if one_row else 0)
        memory /= share
        if one_row and (dtype or "fp32") in chip.matrix_bw_fraction:
            # that measurement ran this very kernel, its compute with it: it computes at least
            # that fast, whatever the layer-shaped rate (ATen's one-row kernel for a dtype
            # without a fast matrix path is not its many-row fallback)
            compute = min(compute, bytes_moved / (chip.mem_bw * share))
        elif chip.kind == "cpu" and category in ("matmul", "conv") and (streamed_bytes
                                                                         or cached_bytes):
            # a CPU library packs its weights before its arithmetic on them, a pass from
            # wherever they are that the layer probe's weights, in the core's L2, never paid:
            # from memory (ResNet-50's last-stage 3x3 convolution, 9.4 MB of weights, 2.2 ms in
            # a loop, 3.6 ms in the model) or from the last-level cache, for the share of them
            # gone from L2 (a linear of 4 x 256 -> 1,024: 24 us of work hot, 75 after an 8 MiB
            # copy); a rate measured on few rows already paid it from the cache in the share
            # its probe's turns earn (FEW_ROWS_PROBE_BETWEEN: 52 us of that work in them)
            cache_bw = chip.cache_bw or chip.mem_bw
            paid = l2_share(FEW_ROWS_PROBE_BETWEEN, chip.l2_bytes) \
                if chip.cache_bw and chip.few_rows_measured(rate_op, matrix_rows) else 0.0
            compute += max(streamed_bytes / packed_from_memory(chip, category, dtype, matrix_width)
                           + cached_bytes * cached_share / cache_bw
                           - paid * (streamed_bytes + cached_bytes) / cache_bw, 0.0)
    if rate_op and chip.threads > 1 and elements and category in SPLIT_CATEGORIES:
        slower = chip.threads / min(chip.threads, math.ceil(elements / GRAIN_SIZE))
        compute, memory = compute * slower, memory * slower
    if rate_op and chip.region_s and splits(chip, category, elements, rows):
        overhead_s += chip.region_s
    comm = comm_time(chip, comm_bytes, comm_steps, nvls_bytes=nvls_bytes, ranks=comm_ranks)
    return Timing(compute, memory, comm, overhead_s, serial_overhead=chip.kind == "cpu")


def packed_from_memory(chip: Chip, category: str, dtype: str, width: int) -> float:
    """Bytes/s at which a CPU library's linear packs weights that no cache holds: row by row,
    as its one-row product walks them (matrix_bandwidth_share at their rows' width), not at the
    copy's pace. On a 2-vCPU EPYC (Zen 4) at one thread, fp32 F.linear on 4-512 rows paid a
    median 8.0 GB/s of its weights with rows of 256 once a 16 MiB copy had run, where its
    one-row probe streamed 9.0 GB/s at 256 (docs/calibration.md, "Packing from memory"). A
    convolution's pass stays at mem_bw: timed the same way, 1x1 and 3x3 convolutions of
    0.6-9.4 MB of weights paid 21-74 GB/s of them."""
    share = chip.matrix_bandwidth_share(dtype or "fp32", width) if category == "matmul" else 1.0
    return chip.mem_bw * share


def intensity(flops: float, bytes_moved: float) -> float:
    """Arithmetic intensity in FLOP/byte (inf for work that moves no bytes)."""
    return flops / bytes_moved if bytes_moved else float("inf") if flops else 0.0


def attainable_flops(chip: Chip, category: str, dtype: str, ai: float) -> float:
    """The roofline itself: min(peak, intensity x bandwidth)."""
    return min(peak_for(chip, category, dtype), ai * chip.mem_bw)
