"""How a memory kernel's threads walk its data, and the memory latency they wait (Little's law).

A GPU hides memory latency with the loads its resident threads have in flight. A kernel with few
threads, or whose threads each walk a long row one load after another, cannot keep enough bytes
in flight to stream at the bandwidth: it takes at least its rounds of waiting, one memory latency
each. Its blocks run in waves of what the SMs hold at once (sm_threads per SM); in each wave a
thread waits `rounds` latencies, one per loop step whose loads wait on memory (loads issued
together wait once), and the wave costs its blocks' launch and retirement on top. PyTorch's
elementwise kernels give a thread a few elements loaded together, so a large tensor makes few
rounds and only a small one is latency-bound; a kernel that gives one block a whole row (one
block per token, or per channel: a training batch norm over a channels-first tensor) or walks a
grid-stride loop makes many. These waits and the streaming of the
bytes add as a norm (expected.WAIT_NORM). docs/time-model.md gives the sources.
"""
from __future__ import annotations

import math
import re
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from fxroof.chips.chip import Chip
from fxroof.cost.annotate import CHANNEL_NORMS, GROUP_NORMS
from fxroof.cost.record import MATRIX_CATEGORIES

# PyTorch's elementwise kernels: 128 threads a block, 4 elements a thread, loaded together
# (aten/src/ATen/native/cuda/thread_constants.h, num_threads() and thread_work_size()); also
# taken for Inductor's pointwise and reduction kernels. From PyTorch 2.7 a thread of the
# vectorized kernel takes 8 (CUDALoops.cuh, elems_per_thread: 16 where its inputs and output
# are one byte in all; thread_constants.h's thread_work_size() 8); 2.6 gave 8 only to ops of
# under 4 bytes in all, none of a 16-bit float's. As the headers of each release's wheel say:
# 2.5 and 2.6 4, 2.7, 2.8, 2.11 and 2.13 8.
ELEMENTWISE_BLOCK, ELEMENTWISE_PER_THREAD = 128, 4
WIDE_ELEMENTWISE_RELEASE, WIDE_ELEMENTWISE_PER_THREAD = (2, 7), 8
# index_select (the CUDA path of embedding): blocks of 128 threads, at most 8 blocks per SM;
# up to 16 indices, one index at a time over its row; more, before PyTorch 2.8, a grid-stride loop
# over the output (aten/src/ATen/native/cuda/Indexing.cu, index_select_out_cuda_impl)
GATHER_BLOCK, GATHER_BLOCKS_PER_SM, GATHER_SMALL_INDICES = 128, 8, 16
GATHERS = frozenset({"embedding", "index_select"})
# From PyTorch 2.8, index_select of more than 16 indices runs as a gather (pytorch/pytorch#151715;
# 2.7.1's libtorch_cuda holds indexSelectLargeIndex, 2.8.0's does not). Rows of a multiple of 16
# bytes go to vectorized_gather_kernel: a block of up to 256 threads per (index, 4 KiB of its
# row), each thread loading the index, then 16 bytes (aten/src/ATen/native/cuda/
# IndexKernelUtils.cu); other rows to the scatter-gather kernel, PyTorch's elementwise launch
# with each element's index loaded before it (ScatterGatherKernel.cu).
GATHER_RELEASE = (2, 8)
VECTOR_GATHER_BYTES, VECTOR_GATHER_BLOCK = 16, 256


def _release(version: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


# The PyTorch whose eager kernels are priced: the one installed, that runs the model, unless
# a caller prices a run another release made (priced_as).
TORCH_RELEASE = _release(torch.__version__)
_priced = [TORCH_RELEASE]


def priced_release() -> tuple[int, int]:
    """The PyTorch release whose eager kernels' launches are priced."""
    return _priced[-1]


@contextmanager
def priced_as(release: tuple[int, int]):
    """Price eager kernels as PyTorch `release` launches them (a published run of another
    release, set beside fxroof's prediction)."""
    _priced.append(tuple(release))
    try:
        yield
    finally:
        _priced.pop()

# layer_norm: a block of 128 threads per row, 4 elements a thread a step, one pass for the
# statistics and one to normalise (aten/src/ATen/native/cuda/layer_norm_kernel.cu,
# launch_vectorized_layer_norm_kernel and vectorized_layer_norm_kernel_impl)
LAYER_NORM_BLOCK, LAYER_NORM_VECTOR = 128, 4
LAYER_NORMS = frozenset({"layer_norm", "native_layer_norm"})
# A training batch norm over a channels-first tensor: PyTorch's CUDA kernels give each channel
# one block of 512 threads (Normalization.cuh, MAX_BLOCK_SIZE; batch_norm_stats_cuda_template
# and batch_norm_backward_cuda_template launch blocks(input.size(1))), each thread walking the
# channel's elements one load a step, a Welford update between (batch_norm_collect_statistics_
# kernel); the gradient's kernel walks them twice, its sums and then dx. cuDNN's kernels for the
# same call, which a float16 step under autocast runs, are taken to be built alike: named for a
# per-channel reduction and 512 threads (bn_fw_tr_1C11_kernel_NCHW<__half, float, 512, ...>,
# bn_bw_1C11_kernel_new<..., 512, ...>). NVIDIA builds only: ROCm's take 256 threads and MIOpen's
# kernels, not modelled.
# (The ops: annotate.CHANNEL_NORMS, which gives them their grid; an instance norm among them,
# ATen's batch norm over samples x channels.)
CHANNEL_BLOCK = 512
# A group norm over a channels-first tensor: its moments one block a (sample, group) and its
# gradient's sums one block a (sample, channel), each thread walking the row one load a step
# (group_norm_kernel.cu: RowwiseMomentsCUDAKernel and ComputeInternalGradientsCUDAKernel), 512
# threads a block (cuda_utils::kCUDABlockReduceNumThreads), a warp where the row is shorter.
# The elementwise pass after each is PyTorch's elementwise launch over the whole tensor. (The
# ops: annotate.GROUP_NORMS.)
ROW_REDUCE_BLOCK, ROW_REDUCE_WARP = 512, 32
# A wave costs more than its loads' round trip: its blocks are launched, compute their indices,
# store and retire. te42kyfo/gpu-benches (commit 1c36d50): a one-load-per-thread kernel at 3%
# occupancy (gpu-stream, read) takes 608-683 ns a wave, the same GPUs' DRAM pointer chase
# (gpu-latency) 317-405 ns; the difference on the five GPUs with both, V100 to H100, is 192-278
# ns, median 245 (bench/bench_memory_stream.py derives it).
WAVE_OVERHEAD_S = 245e-9


@dataclass(frozen=True)
class Launch:
    """A kernel's grid as far as its memory latency goes: `blocks` of `block` threads, each
    thread waiting `rounds` memory latencies one after another."""
    blocks: int
    block: int
    rounds: int = 1


def latency_time(chip: Chip, launch: Launch | None) -> float:
    """The memory latency a kernel waits: its blocks in waves of what the SMs hold at once, each
    wave `rounds` latencies and the wave's own cost. 0 where the chip has no latency or thread
    figure."""
    if launch is None or not (chip.memory_latency_s and chip.sm_count and chip.sm_threads) \
            or launch.blocks <= 0:
        return 0.0
    per_sm = max(1, int(chip.sm_threads) // max(1, launch.block))
    waves = math.ceil(launch.blocks / (chip.sm_count * per_sm))
    return waves * (launch.rounds * chip.memory_latency_s + WAVE_OVERHEAD_S)


def elementwise(elements: int, per_thread: int = ELEMENTWISE_PER_THREAD) -> Launch | None:
    """PyTorch's elementwise launch over `elements`, `per_thread` a thread (also taken for
    Inductor's pointwise and reduction kernels, whose threads hold as many elements or more):
    one round per thread."""
    if elements <= 0:
        return None
    per_block = ELEMENTWISE_BLOCK * per_thread
    return Launch(math.ceil(elements / per_block), ELEMENTWISE_BLOCK)


def eager_per_thread(release: tuple[int, int] | None = None) -> int:
    """Elements a thread of PyTorch `release`'s elementwise kernels takes (the one priced)."""
    release = release or priced_release()
    return WIDE_ELEMENTWISE_PER_THREAD if release >= WIDE_ELEMENTWISE_RELEASE \
        else ELEMENTWISE_PER_THREAD


def copy(bytes_moved: float) -> Launch | None:
    """A copy of `bytes_moved` at full occupancy: blocks of 128 threads, each loading 8 bytes
    and storing 8 (PyTorch's vectorized copy of four half-precision elements; gpu-benches'
    scale kernel). A matrix kernel's operands are taken to stream as this does: the rate
    gpt-fast and gpu-benches measure for a copy, waits included, no faster."""
    threads = math.ceil(bytes_moved / 16)
    return Launch(math.ceil(threads / ELEMENTWISE_BLOCK), ELEMENTWISE_BLOCK) if threads else None


def row_per_block(rows: int, row: int, block_cap: int, passes: int = 1, extra: int = 0) -> Launch:
    """One block per row of `row` elements, min(row, block_cap) threads walking it one element a
    step, `passes` times over (a norm reads its row twice); `extra` rounds before the walk (a
    position looked up first)."""
    block = max(1, min(row, block_cap))
    return Launch(rows, block, passes * math.ceil(row / block) + extra)


def channel_blocks(channels: int, per_channel: int, passes: int) -> Launch:
    """A training batch norm's kernel over a channels-first tensor: a block of CHANNEL_BLOCK
    threads a channel, each walking the channel's `per_channel` elements one load a step,
    `passes` times."""
    return Launch(channels, CHANNEL_BLOCK, passes * math.ceil(per_channel / CHANNEL_BLOCK))


def group_rows(rows: int, row: int) -> Launch:
    """A group norm's reduction: a block a row of `row` elements, ROW_REDUCE_BLOCK threads (a
    warp for a row shorter than that), each thread walking the row one load a step."""
    block = ROW_REDUCE_BLOCK if row >= ROW_REDUCE_BLOCK else ROW_REDUCE_WARP
    return Launch(rows, block, math.ceil(row / block))


def gather(chip: Chip, indices: int, row: int, item_bytes: int = 2,
           release: tuple[int, int] | None = None) -> Launch | None:
    """index_select of `indices` rows of `row` elements of `item_bytes` each, as PyTorch
    `release` runs it. Up to 16 indices, the blocks walk one index's row after another, each
    step an index load and then the element (two waits). More: before 2.8 a grid-stride loop
    over every output element, two waits a step; from 2.8 a gather, one index and one load of
    16 bytes (or of the elements a thread takes) per thread."""
    if indices <= 0 or row <= 0 or not chip.sm_count:
        return None
    release = release or priced_release()
    cap = int(chip.sm_count) * GATHER_BLOCKS_PER_SM
    if indices <= GATHER_SMALL_INDICES:
        blocks = min(math.ceil(row / GATHER_BLOCK), cap)
        threads = blocks * min(row, GATHER_BLOCK)
        return Launch(blocks, min(row, GATHER_BLOCK), indices * (1 + math.ceil(row / threads)))
    total = indices * row
    if release >= GATHER_RELEASE:
        row_bytes = row * item_bytes
        if row_bytes % VECTOR_GATHER_BYTES:
            per_block = ELEMENTWISE_BLOCK * eager_per_thread(release)
            return Launch(math.ceil(total / per_block), ELEMENTWISE_BLOCK, 2)
        vectors = row_bytes // VECTOR_GATHER_BYTES          # threads a row needs
        slices = math.ceil(vectors / VECTOR_GATHER_BLOCK)   # blocks a row takes
        block = min(VECTOR_GATHER_BLOCK, math.ceil(vectors / 32) * 32)
        return Launch(indices * slices, block, 2)
    blocks = min(math.ceil(total / GATHER_BLOCK), cap)
    threads = blocks * min(total, GATHER_BLOCK)
    return Launch(blocks, min(total, GATHER_BLOCK), 2 * math.ceil(total / threads))


def launch_of(chip: Chip, mode: str, op: str, category: str, space: int,
              grid: tuple = (), bytes_moved: float = 0) -> Launch | None:
    """The launch fxroof takes for a kernel: PyTorch's index_select for an eager gather, where it
    knows its (indices, row, element bytes), its row-per-block kernel for an eager layer norm,
    where it knows its (rows, row), and its block a channel for an eager training batch norm over
    a channels-first tensor on an NVIDIA GPU, where it knows its (channels, elements a channel,
    passes), and its block a row for an eager group norm's reduction there, where it knows its
    (rows, row); a copy of its `bytes_moved` for a matrix kernel (its operands
    stream no faster); else the elementwise launch over the kernel's loop. Collectives (NCCL's
    latencies) are priced elsewhere."""
    if chip.kind != "gpu" or category == "collective":
        return None
    if category in MATRIX_CATEGORIES:
        return copy(bytes_moved)
    if mode == "eager" and op in GATHERS and len(grid) == 3:
        return gather(chip, *grid)
    if mode == "eager" and op in CHANNEL_NORMS and len(grid) == 3 and chip.nvidia:
        return channel_blocks(*grid)
    if mode == "eager" and op in GROUP_NORMS and len(grid) == 2 and chip.nvidia:
        return group_rows(*grid)
    if mode == "eager" and op in LAYER_NORMS and len(grid) == 2:
        rows, row = grid
        return Launch(rows, LAYER_NORM_BLOCK,
                      2 * math.ceil(row / (LAYER_NORM_BLOCK * LAYER_NORM_VECTOR)))
    # PyTorch's own elementwise kernels (gpu_kernel: pointwise ops, copies) take the release's
    # elements a thread; other kernels fxroof does not know, and Inductor's, the plain launch
    wide = mode == "eager" and category in ("pointwise", "copy")
    return elementwise(space, eager_per_thread() if wide else ELEMENTWISE_PER_THREAD)
