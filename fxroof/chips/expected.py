"""The expected time of one kernel on a real chip, beside its roofline floor (timing.Timing).

The floor prices FLOPs at the dense peak and bytes at the datasheet bandwidth, with compute and
memory overlapping perfectly. A real kernel takes longer. The gap is named part by part, each
part from a physical figure of the chip (Chip: sm_count, matmul_efficiency,
fp32_matmul_efficiency, attention_efficiency, bw_efficiency, collective_efficiency,
nvls_efficiency, peer_links, kernel_floor_s, clock_hz) or from the design of the libraries
that run the kernel (cuBLAS tile shapes, NCCL's latencies, XLA's overlap, the dequantizing
kernels' streaming share). A chip without a figure has no gap of that kind, so a CPU's expected
time is its floor. docs/time-model.md gives each figure's source.

    tiles       a matrix kernel computes whole tiles, in whole waves over the SMs (splitting its
                reduction only where the tiles leave SMs idle)
    matmul      library GEMMs reach matmul_efficiency of the dense peak (fp32 ones on the CUDA
                cores fp32_matmul_efficiency of the fp32 peak), fused attention
                kernels attention_efficiency where the chip has that figure (cuDNN's,
                cudnn_attention_efficiency, where PyTorch's SDPA runs it: attention_share)
    softmax     a fused attention kernel's exponentials, one per score, run on the SMs'
                special-function units (16 a clock per SM), after its products: a smaller head
                has fewer products per exponential, so it reaches less of the peak
    issue       a kernel of PyTorch's own that its instructions bound (a channels-first
                depthwise convolution; softmax, layer norm, transcendental activations and
                dropout on a fast memory, Cost.issued): an SM issues 128 thread instructions a
                clock (clock_hz), on the SMs its blocks occupy (sm_count, the launch's blocks)
    bandwidth   streaming kernels reach bw_efficiency of the memory bandwidth
    dequant     a matmul dequantizing int8 or int4 weights streams them at a share of a 16-bit
                one's rate (DEQUANT_STREAM_SHARE)
    occupancy   a kernel waits a memory latency before its bytes flow, and more where its
                launch has too few loads in flight to cover it: its waits and its streaming
                add in quadrature (memory_latency_s, sm_threads; the kernel's launch,
                chips/launch.py)
    collective  NCCL's base latency per collective; rings reach collective_efficiency of the link,
                an all-reduce in an NVLink SHARP switch nvls_efficiency of that; a group past one
                server is paced by the server's network (network_bw, network_efficiency) and
                waits its latency on the steps between servers (timing.comm_options)
    overlap     compute and memory overlap imperfectly on a GPU (XLA's factor); a kernel bound
                by its instructions adds its issue and its memory as a 2-norm (WAIT_NORM)
    latency     every kernel's fixed time on the chip, kernel_floor_s, on top of its work
    layout      a channels-first convolution's transposes of its operands to channels-last,
                kernels of their own the library runs before its tensor-core kernel
                (Cost.relayout)
    reduction   a matrix kernel whose reduction is split (tiles) sums its partial products in
                a second kernel
    reread      a norm that reduces a tensor before its elementwise pass reads it twice: the
                second pass finds in the L2 cache (l2_bytes) only what fits (Cost.reread)
    quantize    an 8-bit matmul's activations quantized at each call (a what-if's dynamic
                scales): a kernel or two of their own before it, each moving its bytes at a
                copy's pace (Cost.quantize)
    bias        a cuDNN convolution's bias, added over its output (or its gradient summed) by
                a kernel of its own, eager (Cost.bias_bytes)

Each part is the time it adds when applied after those before it: the parts sum to the expected
time on the chip less the floor's exactly (the host's dispatch and launches are the schedule's,
report/streams.py).
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

import torch

from fxroof.chips.chip import Chip
from fxroof.chips.launch import Launch, latency_time
from fxroof.chips.timing import REGIMES, Timing, comm_options
from fxroof.cost.record import MATRIX_CATEGORIES, dequantizing

GAP_PARTS = ("tiles", "matmul", "softmax", "issue", "bandwidth", "dequant", "occupancy",
             "collective", "overlap", "latency", "layout", "reduction", "reread", "quantize",
             "bias")

# The tiles cuBLAS picks among for a GEMM's output (NVIDIA, "Matrix Multiplication Background
# User's Guide", 2.3 "Typical Tile Dimensions in cuBLAS"); a library takes the one that wastes
# least, so the smallest padded work among them is charged. A dim shorter than a tile gets a tile
# of the next power of two, down to 8 (cuBLASLt's tiles run from 8x8, cublasLtMatmulTile_t): a
# matrix-vector product is not padded to 64 rows.
GEMM_TILES = ((256, 128), (128, 256), (128, 128), (256, 64), (64, 256), (128, 64), (64, 128),
              (64, 64))
SMALLEST_TILE = 8
# The reduction runs in blocks of 64 (CUTLASS's Ampere tensor-op threadblock, GemmShape<...,
# 64>, cutlass/gemm/device/default_gemm_configuration.h). Libraries split it across SMs only
# when the output tiles alone leave SMs idle: FlashAttention's split-KV takes one split once
# its blocks nearly fill the SMs (num_splits_heuristic, flash_attn/flash_api.cpp: at 0.8 of
# them), DeepGEMM's split-K only below half the SMs (sgl-project/DeepGEMM#77). fxroof splits
# where the tiles are fewer than the SMs, into as many whole-k-block parts as fill one wave;
# otherwise the tiles run in whole waves. Among tilings that occupy alike, the one splitting
# least: a split costs a second kernel.
K_BLOCK = 64
# Each part keeps at least the mainloop's pipeline of k-blocks in flight (CUTLASS's Ampere
# tensor-op default, kStages = 3, the same default_gemm_configuration.h): a shorter part would
# never fill it, so a short reduction is not split.
PIPELINE_STAGES = 3
# A split reduction's parts write fp32 partial products, which a second kernel reads and sums
# into the output: cuBLAS's cublasLt::splitKreduce_kernel after its splitK GEMMs, FlashAttention's
# flash_fwd_splitkv_combine_kernel after split-KV (Dao-AILab/quack#157: "splits write fp32
# partials to a workspace; a separate ... reduce kernel sums them", "mirrors cuBLAS's
# splitKreduce_kernel").
PARTIAL_BYTES = 4
OUTPUT_BYTES = {"fp32": 4, "tf32": 4, "fp8": 1, "int8": 4}     # 16-bit outputs: 2
# FlashAttention-2 blocks 128 or 64 query rows per thread block; each block covers a whole head.
ATTENTION_ROWS = (128, 64)
# A fused attention kernel computes one exponential per score (query x key) beside the 4 x head
# size FLOPs of its two products, and an NVIDIA SM computes 16 exponentials a clock on its
# special-function units (CUDA C++ Programming Guide, "Arithmetic Instructions": 16 results per
# clock per SM for exp2 and the other special functions, compute capability 7.x to 9.0): an
# H100 SXM's 989 TFLOPS of matmul beside 3.9 T exponentials a second (Shah et al.,
# FlashAttention-3, 2024). FlashAttention-2 runs its softmax between its two products in the
# same warps, so the exponentials' time adds to the products'. The kernels' published shares of
# the peak (attention_efficiency) are taken at head size 128, that of their papers' headline runs.
EXP_PER_CLOCK_PER_SM = 16
# An NVIDIA SM since Volta has four processing blocks, each with a warp scheduler that issues one
# warp instruction (32 threads) a clock (NVIDIA Tesla V100, A100 and H100 architecture
# whitepapers, "SM architecture"): 128 thread instructions a clock, whatever they are.
ISSUE_PER_CLOCK_PER_SM = 4 * 32
ATTENTION_HEAD = 128
# A matmul that dequantizes int8 or int4 weights as it reads them streams them slower than a
# 16-bit one: its converts and scales take issue slots from the loads. gpt-fast's README
# (commit 32971d3, "Memory Bandwidth (GB/s)", Llama-2-7B at batch 1 on an A100): 1,397.31 GB/s in
# bf16, 1,069.20 with int8 weights, 862.69 with int4 (group 32): shares 0.765 and 0.617 of the
# 16-bit rate (an A100's; other GPUs take them as estimates). fp8 weights take int8's: a byte a
# weight, one convert and one scale each (an estimate: no fp8 weight-only bandwidth was found
# apart from torchao's H100 row, which the bench checks it against).
DEQUANT_STREAM_SHARE = {dequantizing("int8"): 1069.20 / 1397.31,
                        dequantizing("int4"): 862.69 / 1397.31,
                        dequantizing("fp8"): 1069.20 / 1397.31}
# PyTorch's flash backend takes 16-bit inputs only (sdp_utils: check_flash_attention_dtype)
FLASH_DTYPES = ("fp16", "bf16")
# XLA's GPU cost model: time = compute + memory - 0.95 min(compute, memory)
# (memory_compute_parallelism, xla/service/gpu/model/gpu_performance_model_base.h).
OVERLAP = 0.95
# NCCL's base latency of one ring collective, Simple and LL protocols (src/graph/tuning.cc,
# baseLat; as torch/_inductor/comm_analysis.py copies it): 8.4 us and 6.6 us.
NCCL_BASE_S = (8.4e-6, 6.6e-6)
# A kernel whose waits and streaming take alike is slower than either: loads queue as the
# bandwidth fills, so each waits longer than the idle latency. The two add as a 2-norm, which
# puts te42kyfo/gpu-benches' streaming kernels at every occupancy on seven NVIDIA GPUs at
# 0.81x-1.42x of measured (mean |log error| 0.062), where the larger of the two gave 0.64x-1.14x
# (0.099), and 3- and 4-norms 0.065 and 0.075 (bench/bench_memory_stream.py).
WAIT_NORM = 2


@dataclass(frozen=True)
class Expected:
    """A kernel's expected time, in the parts Timing has, plus the chip's fixed time per kernel
    and how well compute and memory overlap (1: perfectly, the roofline's max)."""
    compute_s: float
    memory_s: float
    comm_s: float
    overhead_s: float
    latency_s: float = 0.0
    overlap: float = 1.0
    serial_overhead: bool = False
    floor: Timing | None = None     # the floor it was built from (None: interpolated)
    tiled_s: float = 0.0            # the floor's compute over whole tiles and waves
    streamed_s: float = 0.0         # the memory time at the chip's bandwidth share, before the
                                    # latency its loads wait (memory_s adds it)
    relayout_s: float = 0.0         # transposes of a channels-first convolution's operands,
                                    # run before it
    reduction_s: float = 0.0        # the kernel summing a split reduction's partials, run after
    reread_s: float = 0.0           # a two-pass norm's second read of what L2 does not hold
    quantize_s: float = 0.0         # kernels quantizing an 8-bit matmul's activations, run
                                    # before it
    bias_s: float = 0.0             # a convolution's bias kernel, run after it
    bandwidth_s: float = 0.0        # the memory time at the bandwidth share, before a
                                    # dequantizing kernel's own share (streamed_s divides it)
    algorithm: str = ""             # a collective's: the fastest of NCCL's (timing.comm_time)
    products_s: float = 0.0         # a matrix kernel's compute at its share of the peak,
                                    # before an attention kernel's exponentials (compute_s adds
                                    # them)
    issue_s: float = 0.0            # the time its schedulers take to issue its instructions,
                                    # where those bound it (compute_s takes the larger)

    @property
    def gap(self) -> tuple:
        """((part, seconds), ...) in GAP_PARTS order, summing to the time on the chip less the
        floor's (device_s; the host's part is the schedule's, report/streams.py): each part the
        time it adds when applied after those before it. Worked out when asked: a sweep builds
        thousands of kernels and reads none of their gaps."""
        if self.floor is None:
            return ()
        f = self.floor
        # compute, memory, communication, overlap, latency, the kernels run beside it
        state = [f.compute_s, f.memory_s, f.comm_s, 1.0, 0.0, 0.0]
        issued = self.issue_s and self.issue_s >= self.compute_s
        arithmetic = (self.products_s or self.tiled_s) if issued else self.compute_s
        steps = ((0, self.tiled_s), (0, self.products_s or arithmetic), (0, arithmetic),
                 (0, self.compute_s),
                 (1, self.bandwidth_s or self.streamed_s),
                 (1, self.streamed_s), (1, self.memory_s), (2, self.comm_s), (3, self.overlap),
                 (4, self.latency_s),
                 # the kernels run beside it, one part each, added in turn
                 *((5, sum(self._serial[:i])) for i in range(1, len(self._serial) + 1)))
        times = [_seconds(*state, 0.0, False)]
        for i, value in steps:
            state[i] = value
            times.append(_seconds(*state, 0.0, False))
        return tuple(zip(GAP_PARTS, (after - before for before, after in zip(times, times[1:]))))

    @property
    def time_s(self) -> float:
        return _seconds(self.compute_s, self.memory_s, self.comm_s, self.overlap, self.latency_s,
                        self.serial_s, self.overhead_s, self.serial_overhead)

    @property
    def device_s(self) -> float:
        """The time on the chip alone, host dispatch left out: what a profiler's kernel rows sum."""
        return _seconds(self.compute_s, self.memory_s, self.comm_s, self.overlap, self.latency_s,
                        self.serial_s, 0.0, False)

    @property
    def _serial(self) -> tuple:
        # in GAP_PARTS order: layout, reduction, reread, quantize, bias
        return (self.relayout_s, self.reduction_s, self.reread_s, self.quantize_s, self.bias_s)

    @property
    def serial_s(self) -> float:
        """Memory work run before or after the kernel's own: its operands' transposes, the sum
        of its split reduction, a norm's second pass, the quantizing of an 8-bit matmul's
        activations, a convolution's bias kernel."""
        return sum(self._serial)

    @property
    def regime(self) -> str:
        """The largest part; a kernel's fixed time on the chip counts as overhead, its
        transposes and partial-sum reduction as memory."""
        return self._largest(max(self.overhead_s, self.latency_s))

    @property
    def device_regime(self) -> str:
        """The regime of its time on the chip (device_s), the host's part left out; on a CPU,
        where the host is the chip, the regime."""
        return self.regime if self.serial_overhead else self._largest(self.latency_s)

    def _largest(self, fixed: float) -> str:
        parts = (self.compute_s, self.memory_s + self.serial_s, self.comm_s, fixed)
        return REGIMES[parts.index(max(parts))]

    def between(self, other: Expected, f: float) -> Expected:
        """The kernel a fraction f of the way to `other` (work linear in a size, such as the
        context of a decode step): compute, memory and communication interpolated."""
        return dataclasses.replace(self, floor=None, **{
            p: getattr(self, p) + (getattr(other, p) - getattr(self, p)) * f
            for p in ("compute_s", "memory_s", "comm_s")})


@dataclass(frozen=True)
class Tiling:
    """How a matrix kernel runs on the SMs: the tensor work its tiles occupy over the work it
    asks for, and the parts its reduction is split into (1: not split)."""
    factor: float = 1.0
    splits: int = 1
    waves: int = 0        # of its blocks over the SMs; 0: not known


def tiling(grid: tuple, sms: float, category: str) -> Tiling:
    """Whole tiles of its (batch, M, N) output in whole waves over `sms` SMs, each over whole
    k-blocks of its reduction K; fewer tiles than SMs split K to fill one wave, each part at
    least PIPELINE_STAGES k-blocks (K_BLOCK). The library's tile is the one occupying least,
    splitting least among equals. Tiling() where either is unknown."""
    if len(grid) != 4 or not sms or not math.prod(grid):
        return Tiling()
    batch, m, n, k = grid
    tiles = [(rows, n) for rows in ATTENTION_ROWS] if category == "attention" else GEMM_TILES
    blocks = math.ceil(k / K_BLOCK)
    best = (math.inf, 1, 0)
    for tm, tn in tiles:
        tm, tn = min(tm, _pow2(m)), min(tn, _pow2(n))
        count = batch * math.ceil(m / tm) * math.ceil(n / tn)
        splits = max(1, min(blocks // PIPELINE_STAGES, int(sms) // count)) if count < sms else 1
        waves = math.ceil(count * splits / sms)
        best = min(best, (waves * sms * tm * tn * math.ceil(blocks / splits) * K_BLOCK, splits,
                          waves))
    return Tiling(best[0] / (batch * m * n * k), best[1], best[2])


def _pow2(x: int) -> int:
    """The power of two at or above x, at least the smallest tile."""
    return max(SMALLEST_TILE, 1 << (int(x) - 1).bit_length())


def expected(chip: Chip, floor: Timing, category: str, grid: tuple = (), comm_bytes: float = 0,
             comm_steps: int = 0, launch: Launch | None = None,
             relayout: tuple = (), nvls_bytes: float = 0, comm_ranks: int = 0,
             dtype: str = "", variant: str = "", exponentials: float = 0,
             reread: tuple = (), bias_bytes: float = 0, quantize: tuple = (),
             comm_stride: int = 0,
             comm_exchange: bool = False, causal: bool = False, issued: float = 0,
             window: int = 0) -> Expected:
    """The expected time of a kernel whose floor is `floor`. grid: a matrix kernel's output and
    reduction as (batch, M, N, K); comm_bytes/steps/ranks/stride/exchange, nvls_bytes: a
    collective's (Cost);
    launch: how a memory kernel's threads walk its data (chips/launch.py; None: no latency
    bound); relayout: the bytes of each tensor transposed around it (Cost.relayout), charged on
    a GPU; dtype: the unit's, which says whether attention runs the fused flash kernel (16-bit
    only; PyTorch takes its memory-efficient kernel otherwise, priced as a GEMM); variant: the
    implementation (Cost.variant), a dequantizing matmul streaming at its share;
    exponentials: a fused attention kernel's softmax's (Cost.exponentials); reread: the bytes of
    each tensor a norm's second pass reads again (Cost.reread), charged on a GPU; bias_bytes: what
    a convolution's bias kernel moves (Cost.bias_bytes), a kernel of its own on a GPU; quantize:
    the bytes of each kernel quantizing an 8-bit matmul's activations before it (Cost.quantize),
    charged on a GPU; causal: a
    fused attention kernel under a causal mask, which skips the key blocks above the diagonal,
    and window: its sliding window's keys, the blocks before it skipped too;
    issued: the thread instructions of a kernel its instructions bound (Cost.issued)."""
    matrix = category in MATRIX_CATEGORIES
    gpu = chip.kind == "gpu"
    collective = bool(comm_bytes or comm_steps)
    tiles = tiling(grid, chip.sm_count, category) if matrix else Tiling()
    flash = category == "attention" and dtype in FLASH_DTYPES
    # a causal flash kernel computes only the blocks on and below the diagonal, and takes no
    # less than its longest block, the last queries' against every key: in one wave (a short
    # prompt), as long as without the mask; a CPU's skips whole key blocks of its own
    share = 1.0
    if (causal or window) and gpu and flash:
        share = max(causal_share(grid, window, causal), 1 / (tiles.waves or 1))
    elif causal and not gpu and category == "attention":
        share = cpu_causal_share(grid)
    tiled = floor.compute_s * tiles.factor * share
    comm, algorithm = floor.comm_s, ""
    if gpu and collective:
        options = comm_options(chip, comm_bytes, comm_steps, NCCL_BASE_S,
                               chip.collective_efficiency or 1.0, nvls_bytes,
                               chip.nvls_efficiency, comm_ranks, int(chip.nvls_channels),
                               chip.network_efficiency or 1.0, comm_stride, comm_exchange)
        algorithm = min(options, key=options.get)
        comm = options[algorithm]
    bandwidth = floor.memory_s / (chip.bw_efficiency or 1.0)
    # (a dequantizing product that Inductor decomposed into a reduction is the same kernel)
    dequant = gpu and (matrix or category == "reduction")
    streamed = bandwidth / (DEQUANT_STREAM_SHARE.get(variant, 1.0) if dequant else 1.0)
    loads = gpu and floor.memory_s and not collective
    # the first loads' round trip before bytes flow (latency + bytes / bandwidth, as a
    # collective's); and Little's law: the waits of too few loads in flight, which add to the
    # streaming as a norm (WAIT_NORM)
    fill = chip.memory_latency_s if loads else 0.0
    waited = latency_time(chip, launch) if loads else 0.0
    memory = max(streamed + fill, _norm(waited, streamed))
    fused = attention_share(chip) if flash else 0.0
    # an fp32 product or convolution (TF32 off, or no TF32 units) runs on the CUDA cores, whose
    # GEMMs reach a share of the fp32 peak of their own, as fp32 attention does on a GPU without
    # TF32 units (with them it runs on the tensor cores, timing.peak_for); a 16-bit product the
    # chip has no units for keeps the tensor share (emulated: the report's notes say so)
    cores = category in ("matmul", "conv") or (category == "attention"
                                                and not chip.tensor_cores("tf32"))
    simt = chip.fp32_matmul_efficiency if gpu and cores and dtype == "fp32" else 0.0
    efficiency = fused or simt or chip.matmul_efficiency or 1.0
    rate = exp_rate(chip) if gpu else 0.0
    if fused and rate and exponentials:
        # the published share is the products' and the exponentials' together at head size
        # 128: the products alone run at the share that leaves room for the exponentials (a
        # backward, whose exponentials are not counted, keeps the forward's share)
        reference = chip.matrix_flops(dtype) / (4 * ATTENTION_HEAD * rate)
        efficiency = 1 / max(1.0, 1 / fused - reference)
    products = tiled / efficiency if matrix else tiled
    # the exponentials run in the same blocks, so in the same whole waves as the products
    softmax = exponentials / rate * tiles.factor * share if rate else 0.0
    # a kernel of scalar code takes at least the clocks its schedulers need to issue it, on the
    # SMs its blocks occupy
    sms = min(chip.sm_count, launch.blocks) if launch and launch.blocks > 0 else chip.sm_count
    issue = issued / (ISSUE_PER_CLOCK_PER_SM * sms * chip.clock_hz) \
        if gpu and issued and chip.sm_count and chip.clock_hz else 0.0
    overlap = OVERLAP if gpu else 1.0
    if issue > products + softmax and memory:
        # its loads and stores take the same issue slots as its arithmetic, so the two add as
        # the waits and the streaming do (WAIT_NORM)
        overlap = (issue + memory - _norm(issue, memory)) / min(issue, memory)
    return Expected(max(products + softmax, issue), memory, comm, floor.overhead_s,
                    0.0 if collective else chip.kernel_floor_s,   # a collective's is NCCL's base
                    overlap, floor.serial_overhead, floor, tiled, streamed,
                    relayout_s=sum(transpose_time(chip, b) for b in relayout) if gpu else 0.0,
                    reduction_s=(reduction_time(chip, grid, tiles.splits, dtype)
                                 if gpu and tiles.splits > 1 else 0.0),
                    reread_s=sum(reread_time(chip, b) for b in reread) if gpu else 0.0,
                    quantize_s=sum(copy_kernel_time(chip, b) for b in quantize) if gpu else 0.0,
                    bias_s=copy_kernel_time(chip, bias_bytes) if gpu and bias_bytes else 0.0,
                    bandwidth_s=bandwidth, algorithm=algorithm, products_s=products,
                    issue_s=issue)


def runs_cudnn_attention(chip: Chip) -> bool:
    """Whether PyTorch's scaled_dot_product_attention runs cuDNN's fused kernel on `chip`: the
    chip has a figure for it (Hopper), the process leaves that backend on
    (torch.backends.cuda.enable_cudnn_sdp), and this PyTorch puts it first. sdp_utils.cpp's
    check_prefer_cudnn_attention() puts cuDNN ahead of FlashAttention-2 on sm90/sm100 when the
    cuDNN is newer than 9.15.0; that code is in 2.10, and 2.11 is the first release whose
    bundled cuDNN passes it (huggingface/transformers#48163, 2026-08-31). A build without
    cuDNN (a CPU one) is read by its release, as the one the user deploys."""
    if not chip.cudnn_attention_efficiency or not torch.backends.cuda.cudnn_sdp_enabled():
        return False
    version = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if version:
        return version > 91500
    release = tuple(int(p) for p in re.findall(r"\d+", torch.__version__)[:2])
    return release >= (2, 11)


def attention_share(chip: Chip) -> float:
    """The share of the dense peak a fused attention kernel reaches on `chip`: cuDNN's where
    SDPA runs it (runs_cudnn_attention), else FlashAttention-2's; 0 where neither is known."""
    return chip.cudnn_attention_efficiency if runs_cudnn_attention(chip) \
        else chip.attention_efficiency


def causal_share(grid: tuple, window: int = 0, causal: bool = True) -> float:
    """The share of its (query, key) products a causal flash kernel computes: each block of
    ATTENTION_ROWS[0] queries reads the keys up to its last query (PyTorch's is_causal: query i
    sees keys 0..i), in whole blocks of K_BLOCK keys, and skips the rest; under a sliding
    `window` (query i sees keys i - window + 1..i) also the blocks wholly before its first
    query's window, its queries the last keys' (a decode step's one query sees the window
    before it). Not `causal`, a window reaches as far after a query (ModernBERT's local
    attention). grid: attention's (batch x heads, queries, head size, K), whose K is twice the
    keys (two products over equal head sizes, annotate.with_grid). 1 where the grid is
    unknown."""
    if len(grid) != 4 or not grid[1] or not grid[3]:
        return 1.0
    queries, keys, rows = int(grid[1]), max(1, int(grid[3]) // 2), ATTENTION_ROWS[0]
    offset = max(keys - queries, 0) if window else 0
    blocks = math.ceil(queries / rows)
    read = 0
    after = window - 1 if window and not causal else 0      # keys a query sees after it
    for i in range(blocks):
        end = min(queries, (i + 1) * rows) + offset + after
        last = min(keys, math.ceil(end / K_BLOCK) * K_BLOCK)
        first = max(0, (i * rows + offset - window + 1) // K_BLOCK * K_BLOCK) if window else 0
        read += max(last - first, 0)
    return read / (blocks * keys)


# PyTorch's CPU flash attention (aten/src/ATen/native/cpu/FlashAttentionKernel.cpp,
# flash_attention_kernel_impl) takes queries in blocks of 256 from 768 queries, of 64 from 192,
# else of 32, and keys in blocks of 512: (fewest queries, block) from the largest.
CPU_ATTENTION_ROWS = ((768, 256), (192, 64), (0, 32))
CPU_KEY_BLOCK = 512


def cpu_causal_share(grid: tuple) -> float:
    """The share of its (query, key) products PyTorch's CPU flash attention computes under
    is_causal: a block of queries reads the key blocks up to its last query, each one whole
    (cpu_flash_attention: num_keys, then blocks of min(512, keys - n)), so no key is skipped
    up to 512 keys. grid as causal_share's. Timed on a Zen 4 core, causal over unmasked at
    8 heads of 64: 1.00 at 512 tokens, 0.84 at 640, 0.78 at 768, 0.76 at 1,024, 0.63 at
    2,048, 0.58 at 3,072, where this gives 1.00, 0.84, 0.78, 0.75, 0.62 and 0.58
    (docs/time-model.md)."""
    if len(grid) != 4 or not grid[1] or not grid[3]:
        return 1.0
    queries, keys = int(grid[1]), max(1, int(grid[3]) // 2)
    rows = min(queries, next(block for least, block in CPU_ATTENTION_ROWS if queries >= least))
    step = min(CPU_KEY_BLOCK, keys)
    read = 0
    for m in range(0, queries, rows):
        block = min(rows, queries - m)
        read += block * sum(min(step, keys - n) for n in range(0, min(m + block, keys), step))
    return read / (queries * keys)


def exp_rate(chip: Chip) -> float:
    """Exponentials a second the chip's special-function units compute: 16 a clock per SM
    (0 where it has no clock or SM figure)."""
    return EXP_PER_CLOCK_PER_SM * chip.sm_count * chip.clock_hz


def reduction_time(chip: Chip, grid: tuple, splits: int, dtype: str) -> float:
    """The kernel summing a split reduction: it reads `splits` fp32 partials of the (batch, M, N)
    output and writes the output."""
    batch, m, n, _ = grid
    return copy_kernel_time(chip, batch * m * n * (PARTIAL_BYTES * splits
                                                   + OUTPUT_BYTES.get(dtype, 2)))


def reread_time(chip: Chip, nbytes: float) -> float:
    """A second pass over a tensor of `nbytes`: what the L2 cache does not hold comes again from
    memory at the chip's bandwidth share. The first pass leaves at most the cache's worth
    resident (a chip without an L2 figure, none), and the second pass's reads of that part
    are taken as free."""
    missed = max(0.0, nbytes - chip.l2_bytes)
    return missed / (chip.mem_bw * (chip.bw_efficiency or 1.0)) if missed else 0.0


def transpose_time(chip: Chip, nbytes: float) -> float:
    """One transpose kernel: it reads and writes `nbytes`."""
    return copy_kernel_time(chip, 2 * nbytes)


def copy_kernel_time(chip: Chip, nbytes_moved: float) -> float:
    """A kernel of its own that moves `nbytes_moved` at the pace of a copy (the chip's bandwidth
    share), after its first loads' round trip, plus a kernel's fixed time."""
    return (nbytes_moved / (chip.mem_bw * (chip.bw_efficiency or 1.0)) + chip.memory_latency_s
            + chip.kernel_floor_s)


def _norm(a: float, b: float) -> float:
    """(a^p + b^p)^(1/p), p = WAIT_NORM, scaled by the larger so that tiny times do not
    underflow."""
    big = max(a, b)
    return big * (1 + (min(a, b) / big) ** WAIT_NORM) ** (1 / WAIT_NORM) if big else 0.0


def _seconds(compute, memory, comm, overlap, latency, relayout, overhead, serial) -> float:
    """On the chip: the work (compute and memory overlapped as far as `overlap` says), then the
    kernel's fixed time and its operands' transposes; the host's overhead hides behind it, or
    adds to it on a CPU."""
    work = compute + memory - overlap * min(compute, memory)   # overlap 1: the roofline's max
    device = max(work, comm) + latency + relayout
    return device + overhead if serial else max(device, overhead)
