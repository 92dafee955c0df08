"""One chip's figures, in SI units, each with its source.

Chip file schema (one entry of chips.json, or a user's own chip file). Units are in the key names;
the loader converts to SI (FLOP/s, bytes/s, bytes, seconds). Figures are DENSE peaks: many vendor
pages print the with-sparsity figure, which is twice the dense one.

    {
      "name": "h100-sxm",                       short lookup name
      "title": "NVIDIA H100 SXM5 80GB",         what a report prints
      "kind": "gpu",                            gpu | tpu | cpu | accelerator
      "aliases": ["h100"],                      optional, other lookup names
      "peak_TFLOPS": {"fp32": 67, "bf16": 989.4, ...},
                    dense matrix-unit peak per dtype: fp32 tf32 bf16 fp16 fp8 int8 (int8 in TOP/s);
                    "fp32" is required and is the plain (non-tensor-core) fp32 figure, 1 FMA = 2 FLOPs
      "vector_TFLOPS": 67,                      non-matrix work (elementwise, reductions)
      "mem_bw_GBps": 3350,                      memory bandwidth, GB = 1e9 bytes
      "mem_GB": 80,                             memory capacity, GB = 1e9 bytes
      "link_bw_GBps": 450,                      chip-to-chip, ONE direction (NVLink: half the
                                                bidirectional total)
      "link_latency_us": 5,                     per collective step
      "launch_us": 7,                           per kernel launched by a compiled program
                                                (torch.compile's default: on a GPU, Inductor's
                                                wrapper calling the Triton launcher)
      "dispatch_us": 10,                        per op in PyTorch eager, from Python on the host
      "sources": {"peak_flops": "...", "mem_bw": "...", ...}
                    keyed by Chip field name (peak_flops, vector_flops, mem_bw, mem_bytes, link_bw,
                    link_latency_s, launch_s, dispatch_s, and the optional figures below), plus
                    "peak_flops.<dtype>" where one dtype has its own source. Each value is a
                    datasheet title and URL, or "estimate: <reason>". Required for every figure in
                    the shipped table; in a user's file a missing source defaults to the file itself.

      Optional figures, written by `fxroof calibrate` (the shipped table has the host's,
      estimated: view_dispatch_us and glue_us on GPUs and CPUs, program_call_us and
      graph_launch_us on GPUs):
      "cache_MB": 32, "cache_bw_GBps": 90       a kernel whose bytes moved fit in the last-level
                                                cache moves them at cache_bw instead of mem_bw
      "view_dispatch_us": 1.1                   eager cost of a view op (reshape, transpose, ...):
                                                no kernel, but a call from Python all the same
      "glue_us": 3.4                            eager: per op of model code, what its Python
                                                costs beyond the op's own call (module calls,
                                                arguments, arithmetic between ops): the host's,
                                                whatever the device; not paid by a loop of one op
      "program_call_us": 18                     compiled: entering the compiled program (guards,
                                                wrapper), once per call, before its first kernel
      "graph_launch_us": 1.3                    GPU: per kernel of a CUDA graph's replay
                                                (torch.compile's mode="reduce-overhead"; the
                                                "cudagraphs" mode); absent: launch_us
      "op_dispatch_us": {"gelu": 9.1, ...}      eager cost of one call of an op, by the op name
                                                reports print; other ops cost dispatch_us. A
                                                name may carry the implementation a CPU build
                                                picks by shape, "conv2d(onednn)" and
                                                "conv2d(native)"; without its own entry it
                                                costs as the plain name
      "matrix_bw_fraction": {"fp32": 0.7, ...}  per dtype: the rate a library matrix product
                                                streaming its weights attains, over mem_bw (a
                                                CPU's matrix-vector product: 0.4-1.2); at most
                                                READ_STREAM_CEILING: a read-only stream does not
                                                pay the copy's write-allocate reads; measured on
                                                2,048-element weight rows, and "fp32#256" on
                                                rows of 256 (a one-row product between or past
                                                them: a line in the width, chip.rows_rate)
      "op_TFLOPS": {"max_pool2d": 0.0002, ...}  eager rate of an op's work, by op name; other ops
                                                run at vector_TFLOPS (matrix ops: at peak_TFLOPS;
                                                a matrix op's entry is its fp32 rate, and other
                                                dtypes scale it as peak_TFLOPS does, unless
                                                "linear:bf16" states its rate in that dtype: a
                                                CPU without a bf16 matrix path runs each matrix
                                                op through another fallback)
      "threads": 2                              the intra-op threads the rates were measured with:
                                                an eager elementwise op too small for ATen to
                                                split runs on one of them (timing.py)
      "region_us": 1.6                          with several threads: what an eager op that ATen
                                                splits over them pays to start and join them
                                                (an OpenMP parallel region; timing.py)

      Optional figures of the expected-time model (fxroof/chips/expected.py; docs/time-model.md),
      in the shipped table for GPUs; a chip without one has no gap of that kind:
      "sm_count": 132                           streaming multiprocessors (compute units): the
                                                waves a kernel's tiles make
      "attention_efficiency": 0.35              share of the dense peak PyTorch's fused attention
                                                kernel (FlashAttention-2) reaches; absent: the
                                                matmul_efficiency
      "cudnn_attention_efficiency": 0.64        the same for cuDNN's fused attention, which
                                                PyTorch's SDPA runs first on Hopper from 2.11
                                                (expected.attention_share)
      "matmul_efficiency": 0.80                 share of the dense matrix peak a large library
                                                GEMM reaches (maximum achievable matmul FLOPS)
      "fp32_matmul_efficiency": 0.70            share of the fp32 peak a large fp32 GEMM reaches
                                                where it runs on the CUDA cores (TF32 off, as
                                                PyTorch's matmul default; no TF32 units);
                                                absent: the matmul_efficiency
      "bw_efficiency": 0.90                     share of mem_bw a streaming copy reaches, its
                                                latency waits taken out (expected.WAIT_NORM)
      "collective_efficiency": 0.81             share of link_bw a large ring all-reduce's bus
                                                bandwidth reaches (nccl-tests busbw)
      "peer_links": 7                           link_bw is that many links, one to each peer (a
                                                board wired all to all, no switch: MI300X's
                                                xGMI); a group of n ranks has n-1 of them.
                                                Absent: a switch, every group gets link_bw
      "node_gpus": 8                            GPUs one server's NVLink joins: a collective
                                                over more ranks crosses the network between
                                                servers (timing.comm_options)
      "network_GBps": 400                       the server's scale-out network, ONE direction,
                                                all its NICs together (the reference system's:
                                                a DGX's eight); with node_gpus
      "network_efficiency": 0.94                share of network_GBps a ring's bus bandwidth
                                                reaches across servers (NCCL's measured rate a
                                                NIC)
      "nvls_efficiency": 0.85                   GPUs on an NVSwitch that reduces in the switch
                                                (NVLink SHARP, NCCL's NVLS all-reduce): the share
                                                of a ring's link rate NVLS keeps (NCCL's
                                                nvlsEfficiency); absent: rings only
      "nvls_channels": 16                       the CTAs NCCL runs an NVLS all-reduce on within a
                                                node (src/transport/nvls.cc): with the group
                                                they set its chunks, so its pipeline's fill
      "kernel_floor_us": 1                      time every kernel takes on the chip on top of
                                                its work (start, first loads, drain)
      "memory_latency_ns": 354                  a load's round trip to DRAM: a kernel with too few
                                                loads in flight waits it (chips/launch.py)
      "sm_threads": 2048                        threads an SM holds at once
      "l2_MiB": 50                              the L2 cache (the last level on the chip): a
                                                norm's second pass over a tensor finds in it
                                                what fits (Cost.reread)
      "clock_MHz": 1830                         the SM clock the dense peaks are rated at: an
                                                NVIDIA SM computes 16 exponentials a clock
                                                (its special-function units), which a fused
                                                attention kernel's softmax waits on
    }
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Iterator

from fxroof.graph.tensors import dtype_name

KINDS = ("gpu", "tpu", "cpu", "accelerator")
# mem_bw is a copy's bytes read plus bytes written; where each written line is first read
# (write-allocate), memory moves 3 bytes for every 2 counted, so a stream that only reads can
# reach 3/2 of mem_bw and no more
READ_STREAM_CEILING = 1.5
DTYPES = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8")
HALF = ("bf16", "fp16")

# Scalar figures: Chip field -> (file key, factor from file unit to SI).
SCALARS = {
    "vector_flops": ("vector_TFLOPS", 1e12),
    "mem_bw": ("mem_bw_GBps", 1e9),
    "mem_bytes": ("mem_GB", 1e9),
    "link_bw": ("link_bw_GBps", 1e9),
    "link_latency_s": ("link_latency_us", 1e-6),
    "launch_s": ("launch_us", 1e-6),
    "dispatch_s": ("dispatch_us", 1e-6),
}
# Optional scalar figures (0: not modelled) and optional per-op tables: field -> (key, factor).
OPTIONAL_SCALARS = {
    "cache_bytes": ("cache_MB", 1e6),
    "cache_bw": ("cache_bw_GBps", 1e9),
    "view_dispatch_s": ("view_dispatch_us", 1e-6),
    "glue_s": ("glue_us", 1e-6),
    "program_call_s": ("program_call_us", 1e-6),
    "graph_launch_s": ("graph_launch_us", 1e-6),
    "sm_count": ("sm_count", 1.0),
    "matmul_efficiency": ("matmul_efficiency", 1.0),
    "fp32_matmul_efficiency": ("fp32_matmul_efficiency", 1.0),
    "attention_efficiency": ("attention_efficiency", 1.0),
    "cudnn_attention_efficiency": ("cudnn_attention_efficiency", 1.0),
    "bw_efficiency": ("bw_efficiency", 1.0),
    "collective_efficiency": ("collective_efficiency", 1.0),
    "nvls_efficiency": ("nvls_efficiency", 1.0),
    "nvls_channels": ("nvls_channels", 1.0),
    "peer_links": ("peer_links", 1.0),
    "node_gpus": ("node_gpus", 1.0),
    "network_bw": ("network_GBps", 1e9),
    "network_efficiency": ("network_efficiency", 1.0),
    "kernel_floor_s": ("kernel_floor_us", 1e-6),
    "memory_latency_s": ("memory_latency_ns", 1e-9),
    "sm_threads": ("sm_threads", 1.0),
    "l2_bytes": ("l2_MiB", 2.0 ** 20),
    "clock_hz": ("clock_MHz", 1e6),
    "threads": ("threads", 1.0),
    "region_s": ("region_us", 1e-6),
}
EFFICIENCIES = ("matmul_efficiency", "bw_efficiency", "collective_efficiency",   # shares, <= 1
                "nvls_efficiency", "attention_efficiency", "network_efficiency",
                "cudnn_attention_efficiency", "fp32_matmul_efficiency")
OP_TABLES = {
    "op_dispatch_s": ("op_dispatch_us", 1e-6),
    "op_dispatch_cold_s": ("op_dispatch_cold_us", 1e-6),
    "op_flops": ("op_TFLOPS", 1e12),
    "matrix_bw_fraction": ("matrix_bw_fraction", 1.0),
}
PEAK_KEY, PEAK_UNIT = "peak_TFLOPS", 1e12
FIGURES = ("peak_flops", *SCALARS)            # every field that must carry a source
OPTIONAL_FIGURES = (*OPTIONAL_SCALARS, *OP_TABLES)    # carry a source when present
FILE_KEYS = ({"name", "title", "kind", "aliases", PEAK_KEY, "sources"}
             | {k for k, _ in (*SCALARS.values(), *OPTIONAL_SCALARS.values(), *OP_TABLES.values())})

class ChipError(ValueError):
    """A chip that cannot be found or a chip file that cannot be used; the message names the cause."""


class FrozenMap(Mapping):
    """A read-only, hashable, picklable dict (MappingProxyType is neither hashable nor picklable)."""
    __slots__ = ("_d",)

    def __init__(self, items=()):
        object.__setattr__(self, "_d", dict(items))

    def __getitem__(self, key):
        return self._d[key]

    def __iter__(self) -> Iterator:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __hash__(self) -> int:
        return hash(frozenset(self._d.items()))

    def __setattr__(self, name, value):
        raise AttributeError("FrozenMap is read-only")

    def __reduce__(self):
        return (FrozenMap, (self._d,))

    def __repr__(self) -> str:
        return f"FrozenMap({self._d!r})"


def positive(value: Any, what: str) -> float:
    """value as a float, or ChipError naming `what` when it is not a positive finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not (math.isfinite(value) and value > 0):
        raise ChipError(f"{what} must be a positive number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Chip:
    """One chip, SI units, dense peaks. Made from a chip file, or in code (validated either way).

    vector_flops is the rate for non-matrix work. On NVIDIA GPUs it is the fp32 CUDA-core figure:
    PyTorch's elementwise and reduction kernels compute in fp32 ("opmath") even on half-precision
    tensors, so packed half-precision rates would flatter them.

    The optional figures come from measuring a machine (fxroof calibrate, docs/calibration.md):
    eager ops differ more than one dispatch figure and one vector rate can hold, so
    op_dispatch_s and op_flops hold them per op; cache_bytes/cache_bw let the small tensors of a
    CPU-sized model move at the speed of the cache they live in rather than of DRAM. The
    expected-time figures (sm_count, sm_threads, the efficiencies, kernel_floor_s,
    memory_latency_s, clock_hz) are docs/time-model.md's.
    """
    name: str
    title: str
    kind: str
    peak_flops: Mapping[str, float] = field(hash=False)  # dtype -> dense FLOP/s (int8: OP/s)
    vector_flops: float       # FLOP/s for elementwise / reduction work
    mem_bw: float             # bytes/s
    mem_bytes: float          # bytes
    link_bw: float            # bytes/s, one direction, chip to chip
    link_latency_s: float     # per collective step
    launch_s: float           # per kernel launched by a compiled program
    dispatch_s: float         # per op of PyTorch eager dispatch from Python
    sources: Mapping[str, str] = field(default_factory=dict, hash=False, compare=False)
    aliases: tuple[str, ...] = field(default=(), compare=False)
    cache_bytes: float = 0.0  # last-level cache; 0: not modelled (every byte at mem_bw)
    cache_bw: float = 0.0     # bytes/s of a kernel whose bytes fit in cache_bytes
    view_dispatch_s: float = 0.0  # eager: per view op the model calls (no kernel); 0: free
    glue_s: float = 0.0       # eager: per op, model code's Python beyond the op's own call
    program_call_s: float = 0.0   # compiled: per call of the program, before its first kernel
    graph_launch_s: float = 0.0   # per kernel replayed from a CUDA graph; 0: launch_s
    # the expected-time model's figures (expected.py); 0: not modelled, no gap of that kind
    sm_count: float = 0.0
    matmul_efficiency: float = 0.0
    # fp32 products on the CUDA cores (no TF32): their own share; 0: matmul_efficiency
    fp32_matmul_efficiency: float = 0.0
    attention_efficiency: float = 0.0   # fused attention kernels; 0: matmul_efficiency
    cudnn_attention_efficiency: float = 0.0   # cuDNN's, where SDPA runs it; 0: the above
    bw_efficiency: float = 0.0
    collective_efficiency: float = 0.0
    nvls_efficiency: float = 0.0   # all-reduce over an NVLink SHARP switch (timing.comm_time)
    nvls_channels: float = 0.0     # NCCL's NVLS CTAs in a node; 0: no pipeline fill charged
    peer_links: float = 0.0   # link_bw split over this many direct peer links; 0: a switch
    node_gpus: float = 0.0    # GPUs a server's links join; 0: not known (one server holds any group)
    network_bw: float = 0.0   # bytes/s one way through a server's NICs together; with node_gpus
    network_efficiency: float = 0.0
    kernel_floor_s: float = 0.0
    memory_latency_s: float = 0.0
    sm_threads: float = 0.0
    l2_bytes: float = 0.0     # bytes; 0: a second pass reads everything from DRAM
    clock_hz: float = 0.0     # the SM clock the peaks are rated at; 0: not modelled
    threads: float = 0.0      # CPU: the intra-op threads its rates hold for (0 or 1: one)
    region_s: float = 0.0     # CPU, several threads: an op ATen splits opens a parallel region
    op_dispatch_s: Mapping[str, float] = field(default_factory=dict, hash=False)  # op -> s
    op_flops: Mapping[str, float] = field(default_factory=dict, hash=False)       # op -> FLOP/s
    # CPU: each op's tiny call once a sweep of the core's L2 (l2_bytes) has pushed its code and
    # data out; an op in a model pays it in the share that ran through that cache since its
    # op last ran (timing.cold_shares)
    op_dispatch_cold_s: Mapping[str, float] = field(default_factory=dict, hash=False)
    matrix_bw_fraction: Mapping[str, float] = field(default_factory=dict, hash=False)  # dtype ->

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise ChipError(f"chip name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.title, str) or not self.title.strip():
            raise ChipError(f"chip {self.name!r}: title must be a non-empty string")
        if self.kind not in KINDS:
            raise ChipError(f"chip {self.name!r}: kind must be one of {', '.join(KINDS)}, "
                            f"got {self.kind!r}")
        if not isinstance(self.peak_flops, Mapping):
            raise ChipError(f"chip {self.name!r}: peak_flops must be a mapping dtype -> FLOP/s")
        unknown = sorted(set(self.peak_flops) - set(DTYPES))
        if unknown:
            raise ChipError(f"chip {self.name!r}: unknown dtype(s) in peak_flops: "
                            f"{', '.join(map(str, unknown))}; expected among {', '.join(DTYPES)}")
        if "fp32" not in self.peak_flops:
            # Every fallback ends at fp32, so it must be there.
            raise ChipError(f"chip {self.name!r}: peak_flops needs an 'fp32' figure")
        peaks = {d: positive(self.peak_flops[d], f"chip {self.name!r}: peak_flops[{d!r}]")
                 for d in DTYPES if d in self.peak_flops}   # table order, whatever the input order
        object.__setattr__(self, "peak_flops", FrozenMap(peaks))
        for f in SCALARS:
            object.__setattr__(self, f, positive(getattr(self, f), f"chip {self.name!r}: {f}"))
        if (self.cache_bytes > 0) != (self.cache_bw > 0):
            raise ChipError(f"chip {self.name!r}: cache_bytes and cache_bw go together "
                            f"(got {self.cache_bytes!r} and {self.cache_bw!r})")
        for f in OPTIONAL_SCALARS:
            if getattr(self, f):
                object.__setattr__(self, f, positive(getattr(self, f), f"chip {self.name!r}: {f}"))
        for f in OP_TABLES:
            table = getattr(self, f)
            if not isinstance(table, Mapping) or not all(isinstance(k, str) and k for k in table):
                raise ChipError(f"chip {self.name!r}: {f} must be a mapping op name -> number")
            object.__setattr__(self, f, FrozenMap(
                {op: positive(v, f"chip {self.name!r}: {f}[{op!r}]") for op, v in table.items()}))
        over = [f for f in EFFICIENCIES if getattr(self, f) > 1]
        if over:
            raise ChipError(f"chip {self.name!r}: {', '.join(over)} is a share, at most 1")
        if self.node_gpus and self.node_gpus != int(self.node_gpus):
            raise ChipError(f"chip {self.name!r}: node_gpus counts GPUs, a whole number; got "
                            f"{self.node_gpus!r}")
        if (self.node_gpus > 0) != (self.network_bw > 0):
            raise ChipError(f"chip {self.name!r}: node_gpus and network_GBps go together (a "
                            f"group past one server's GPUs crosses its network)")
        if self.peer_links and self.peer_links != int(self.peer_links):
            raise ChipError(f"chip {self.name!r}: peer_links counts links, a whole number; "
                            f"got {self.peer_links!r}")
        bad = {d: v for d, v in self.matrix_bw_fraction.items()
               if not _width_key(d) or v > READ_STREAM_CEILING}
        if bad:
            raise ChipError(f"chip {self.name!r}: matrix_bw_fraction holds a rate over mem_bw (at "
                            f"most {READ_STREAM_CEILING}) per dtype among {', '.join(DTYPES)} "
                            f"(\"fp32#256\": weight rows of 256 elements); got {bad}")
        sources = dict(self.sources)
        known = set(FIGURES) | set(OPTIONAL_FIGURES) | {f"peak_flops.{d}" for d in DTYPES}
        extra = sorted(set(sources) - known)
        if extra:
            raise ChipError(f"chip {self.name!r}: sources has unknown key(s) {', '.join(extra)}; "
                            f"expected among {', '.join((*FIGURES, *OPTIONAL_FIGURES))} or "
                            f"peak_flops.<dtype>")
        for f in (*FIGURES, *(f for f in OPTIONAL_FIGURES if getattr(self, f))):
            # A Chip made in code may omit sources; say so rather than leave a hole.
            sources.setdefault(f, "unsourced")
        object.__setattr__(self, "sources", FrozenMap(sources))
        object.__setattr__(self, "aliases", tuple(self.aliases))

    def matrix_dtype(self, dtype: Any = "bf16") -> str:
        """The peak_flops key a matrix op in `dtype` runs at on this chip.

        Fallbacks when the chip has no figure of its own for the dtype:
        - fp8, int8 -> bf16, then fp16: without native support the matmul is done by upcasting to
          half precision (e.g. fp8 weights on an A100 run as a bf16 GEMM).
        - bf16 <-> fp16: NOT substituted for each other. A chip that lists only one half type has
          no matrix-unit path for the other (T4 has no bf16 tensor cores; TPUs and Zen 4 CPUs have
          no fp16 matrix path), so it runs at about the fp32 rate.
        - tf32 -> fp32 (no TF32 unit).
        - anything else (fp64, complex, integer types, unknown names) -> fp32. There is no fp64
          figure: fp32 gives a lower bound on the time of fp64 work.
        """
        name = dtype_name(dtype)
        if name in self.peak_flops:
            return name
        if name in ("fp8", "int8"):
            for half in HALF:
                if half in self.peak_flops:
                    return half
        return "fp32"

    @property
    def nvidia(self) -> bool:
        """An NVIDIA GPU: CUDA's and cuDNN's rules (TF32, channels-last tensor-core kernels)
        apply; what ROCm's libraries do on an AMD GPU is not modelled."""
        return self.kind == "gpu" and self.title.startswith("NVIDIA")

    def tensor_cores(self, dtype: Any) -> bool:
        """Whether this NVIDIA GPU runs matrix work in `dtype` on tensor cores: it has them (a
        16-bit or TF32 peak above its fp32 one; the P100 has none) and a figure of its own for
        the dtype (bf16 on a V100 falls back to the CUDA cores)."""
        name = dtype_name(dtype)
        return (self.nvidia and name != "fp32" and name in self.peak_flops
                and max(self.peak_flops.get(d, 0.0) for d in ("tf32", *HALF))
                > self.peak_flops["fp32"])

    def matrix_flops(self, dtype: Any = "bf16") -> float:
        """Dense matrix-unit peak FLOP/s for `dtype`, with the fallbacks of `matrix_dtype`."""
        return self.peak_flops[self.matrix_dtype(dtype)]

    def group_link_bw(self, ranks: int) -> float:
        """Bytes/s each way a rank of a group of `ranks` can send: link_bw through a switch, or
        the links to the group's other ranks on a board wired peer to peer (0: not known)."""
        if not self.peer_links or ranks <= 1:
            return self.link_bw
        return self.link_bw * min(ranks - 1, self.peer_links) / self.peer_links

    def ranks_a_server(self, ranks: int, stride: int = 1) -> int:
        """How many of a group's `ranks` share a server, the group's ranks `stride` apart in a
        world packed server by server (a data-parallel group across a tensor-parallel mesh of
        tp ranks: stride tp); the whole group where the chip has no server figures."""
        if not self.node_gpus:
            return ranks
        return max(1, min(ranks, int(self.node_gpus) // max(1, stride)))

    def nodes(self, ranks: int, stride: int = 1) -> int:
        """Servers a group of `ranks` spans (ranks_a_server); 1 where the chip has no server
        figures (its links are taken to join any group)."""
        return math.ceil(ranks / self.ranks_a_server(ranks, stride)) if ranks > 1 else 1

    def bandwidth(self, nbytes: float) -> float:
        """Bytes/s for a kernel that moves `nbytes`: the cache's when they fit in it."""
        return self.cache_bw if self.cache_bytes and nbytes <= self.cache_bytes else self.mem_bw

    def eager_dispatch(self, op: str, cold: float = 0.0) -> float:
        """Seconds of eager overhead for one call of `op` (an op name as reports print it, or
        with the implementation that runs it: "convolution(onednn)", which falls back to
        "convolution" where the chip has no figure of its own for it). cold: the share of the
        op's code and data the work since its last call pushed out of the core's cache, which
        costs the difference to its cold call where the chip measured one."""
        hot = _per_op(self.op_dispatch_s, op, self.dispatch_s)
        if cold and (chilled := _per_op(self.op_dispatch_cold_s, op, None)):
            return hot + min(cold, 1.0) * max(chilled - hot, 0.0)
        return hot

    def eager_vector_flops(self, op: str) -> float:
        """FLOP/s of `op`'s non-matrix work when eager PyTorch runs it."""
        return _per_op(self.op_flops, op, self.vector_flops)

    def matrix_bandwidth_share(self, dtype: Any, width: int = 0) -> float:
        """The rate a library matrix product in `dtype` attains streaming its operands, over
        mem_bw (1 where not measured). width: the elements in each of its weights' rows, where
        the chip measured rows that short too ("fp32#256"): a one-row product walks its weights
        row by row, and each row costs a fixed time besides its bytes."""
        unit = self.matrix_dtype(dtype)
        share = self.matrix_bw_fraction.get(unit, 1.0)
        narrow = _numbered(self.matrix_bw_fraction, unit)
        if width and narrow and unit in self.matrix_bw_fraction:
            # the time per row is a line in its width, a fixed cost per row plus its bytes: on
            # an AVX2 EPYC at one thread, fp32 F.linear on one row over weights no cache holds
            # streamed 7.5 GB/s with rows of 256 and 13.8 with rows of 2,048 (71 ns a row beside
            # 15.7 GB/s); the line puts 512 and 1,024 at 10.1 and 12.3 GB/s, measured 9.6 and
            # 13.4 (docs/calibration.md). rows_rate draws that line, in the width.
            share = rows_rate({**narrow, MATRIX_PROBE_WIDTH: share}, width)
        return share

    def eager_matrix_flops(self, op: str, dtype: Any, rows: int = 0) -> float:
        """FLOP/s of matrix op `op` in `dtype` when eager PyTorch runs it: its entry for that
        dtype ("linear:bf16"), else its fp32 entry scaled by the chip's own dtype ratio.
        rows: the product's rows (tokens, pixels), where the op was also measured on fewer
        ("linear#4"): see rows_rate."""
        rate, unit = self.matrix_flops(dtype), self.matrix_dtype(dtype)
        if unit != "fp32" and (own := _per_op(self.op_flops, dtype_op(op, unit), None)):
            return own
        own = _per_op(self.op_flops, op, None)
        if own and rows:
            own = rows_rate({**self._row_rates(op), PROBE_ROWS: own}, rows)
        return rate * own / self.peak_flops["fp32"] if own else rate

    def few_rows_measured(self, op: str, rows: int) -> bool:
        """Whether matrix op `op` on `rows` rows runs at a rate measured on fewer rows than the
        layer probe's (SkinnyProbe's, whose weights come from the cache, not the core's L2)."""
        return 0 < rows < PROBE_ROWS and bool(self._row_rates(op))

    def _row_rates(self, op: str) -> dict:
        """{rows: fp32 rate} of matrix op `op` measured on fewer rows than the layer probe's
        ("linear#4"; "conv2d(native)#49", else "conv2d#49")."""
        for name in (op, op.split("(", 1)[0]):
            if found := _numbered(self.op_flops, name):
                return found
        return {}

    def half_dtype(self) -> str:
        """The 16-bit dtype with the faster matrix peak here (bf16 on a tie): the one a user
        moving off fp32 would pick (a T4 has fp16 tensor cores only)."""
        return max(HALF, key=self.matrix_flops)

    def ridge(self, dtype: Any = "bf16") -> float:
        """Arithmetic intensity (FLOP/byte) where matrix work in `dtype` turns compute-bound."""
        return self.matrix_flops(dtype) / self.mem_bw

    def to_dict(self) -> dict:
        """Plain JSON-ready dict in SI units (FLOP/s, bytes/s, bytes, seconds)."""
        return {
            "name": self.name, "title": self.title, "kind": self.kind,
            "peak_flops": dict(self.peak_flops),
            **{f: getattr(self, f) for f in SCALARS},
            **{f: getattr(self, f) for f in OPTIONAL_SCALARS if getattr(self, f)},
            **{f: dict(getattr(self, f)) for f in OP_TABLES if getattr(self, f)},
            "sources": dict(self.sources),
        }


def _per_op(table: Mapping, op: str, default):
    """table[op]; for "op(variant)" without an entry of its own, table["op"] ("op(variant):dtype"
    falls back to "op:dtype"), and for "op(library-kind)" table["op(library)"] before that (a
    chip calibrated before the kind was measured apart); else default."""
    if op in table:
        return table[op]
    name, _, dtype = op.partition(":")
    plain, _, variant = name.partition("(")
    broader = [f"{plain}({variant.split('-', 1)[0]})"] if "-" in variant else []
    for key in (*broader, plain):
        if (found := table.get(f"{key}:{dtype}" if dtype else key)) is not None:
            return found
    return default


# The layer probe's products have 1,024 rows (tokens or pixels: measure/probes.MatrixProbe); a
# calibrated CPU also times its linear on 4 tokens and its native convolution on 4 and 49
# pixels (SkinnyProbe), as a small batch or a small image's last stages have.
PROBE_ROWS = 1024
# Between two calls of each of SkinnyProbe's products the other two run, moving about 2.37 MB
# (two 1 MiB weights of 256 x 1,024 fp32 and their activations: 256 and 1,024 channels on 49 and
# 4 pixels): its few-row rates paid the pass over their weights from the cache in the share that
# traffic earns (l2_share), about 0.59 on a core of 2 MiB of L2.
FEW_ROWS_PROBE_BETWEEN = 2 * 256 * 1024 * 4 + (256 + 1024) * (49 + 4) * 4


def l2_share(between: float, l2_bytes: float) -> float:
    """How much of what a core's L2 held the `between` bytes moved since have pushed out: none
    up to half the L2, all from twice it, on a line in the logarithm in between (a sweep of the
    L2's own size moves twice it, a copy's read and write). Measured as an op's cold call
    (timing.cold_shares) and as a linear's weights' pass (docs/calibration.md)."""
    if between <= 0:
        return 0.0
    if l2_bytes <= 0:           # no L2 figure: a second pass finds nothing there
        return 1.0
    return min(1.0, max(0.0, math.log2(2 * between / l2_bytes) / 2))


def memory_share(footprint: float, cache_bytes: float) -> float:
    """How much of a model's state (weights, KV cache) each pass finds gone from the last-level
    cache, the footprint being what a pass touches: none while it fits in a quarter of the
    cache, all once it fills the cache, on a line in the logarithm in between (0 where no cache
    is modelled). A cache is no cliff: on a 2-vCPU EPYC (Zen 4) VM calibrated at 16.8 MB, fp32
    F.linear of 64 x 256 -> 1,024 at one thread, its weights taken in turn from a ring of 1 MiB
    matrices, paid over its hot time 7%-16% of what a ring of 48 MiB adds with 4 MiB in the
    ring, 22%-49% with 6, 32%-47% with 8, 61%-76% with 12, 70%-92% with 16 and 83%-100% with 24
    (five runs; docs/calibration.md). The line gives 0, 29%, 50%, 79%, 100% and 100%."""
    if not cache_bytes or footprint <= 0:
        return 0.0
    return min(1.0, max(0.0, 1 + math.log2(footprint / cache_bytes) / 2))


def row_op(op: str, rows: int) -> str:
    """The op_flops key of matrix op `op`'s fp32 rate on `rows` rows."""
    return f"{op}#{rows}"


def rows_rate(measured: dict, rows: int) -> float:
    """A library product's rate on `rows` rows, from its rates measured on a few row counts
    ({rows: rate}): its time through them is a line between each two (below the fewest, their
    rate; above the most, theirs). For a linear that line is a pass over its weights each call
    that the rows do not share, as if it computed m0 rows more: on an AVX2 EPYC at one thread,
    fp32 F.linear 256 -> 1,024 (78 µs on 4 rows, 5,915 on 1,024; m0 9.6 rows) puts 16, 64, 128
    and 256 rows at 146, 421, 787 and 1,520 µs, measured 145, 414, 776 and 1,478. A native
    convolution's product is not a line in its pixels (MKL takes a slower kernel for very few
    columns), hence a third point (docs/calibration.md)."""
    points = sorted(measured.items())
    if rows <= points[0][0]:
        return points[0][1]
    for (a, ra), (b, rb) in zip(points, points[1:]):
        if rows <= b:
            # time per unit of work at a row count is rows / rate; a line between a and b
            ta, tb = a / ra, b / rb
            return rows / (ta + (tb - ta) * (rows - a) / (b - a))
    return points[-1][1]


# The elements in each weight row of the one-row probe that matrix_bw_fraction's plain dtype
# entries were measured on (2048 x 2048 weights: measure/microbench.matrix_bandwidth).
MATRIX_PROBE_WIDTH = 2048


def _numbered(table: Mapping, name: str) -> dict:
    """{N: value} of the entries of `table` named "name#N" (a figure measured at N rows or N
    elements a row)."""
    return {int(key.rpartition("#")[2]): value for key, value in table.items()
            if key.rpartition("#")[0] == name}


def _width_key(key: str) -> bool:
    """A matrix_bw_fraction key: a dtype, or a dtype and a row width ("fp32#256")."""
    dtype, mark, width = key.partition("#")
    return dtype in DTYPES and (not mark or (width.isdigit() and int(width) > 0))


def dtype_op(op: str, dtype: str) -> str:
    """The op_flops key of matrix op `op`'s own rate in `dtype` (fp32's is the plain name)."""
    return op if dtype == "fp32" else f"{op}:{dtype}"


def chip_from_json(entry: Any, where: str, *, require_sources: bool) -> Chip:
    """A Chip from one parsed chip object of the file schema; errors say `where` it came from."""
    if not isinstance(entry, dict):
        raise ChipError(f"{where}: a chip must be a JSON object, got {type(entry).__name__}")
    if "chips" in entry and "name" not in entry:
        raise ChipError(f"{where}: holds a table of chips; a chip file holds one chip object")
    label = f"{where}, chip {entry['name']!r}" if isinstance(entry.get("name"), str) else where
    unknown = sorted(set(entry) - FILE_KEYS)
    if unknown:
        raise ChipError(f"{label}: unknown key(s) {', '.join(unknown)} (a typo?); "
                        f"expected among {', '.join(sorted(FILE_KEYS))}")
    required = ["name", "title", "kind", PEAK_KEY, *(k for k, _ in SCALARS.values())]
    missing = [k for k in required if k not in entry]
    if missing:
        raise ChipError(f"{label}: missing required figure(s) {', '.join(missing)}")
    peaks = entry[PEAK_KEY]
    if not isinstance(peaks, dict):
        raise ChipError(f"{label}: {PEAK_KEY} must be an object dtype -> TFLOP/s")
    bad = sorted(set(peaks) - set(DTYPES))
    if bad:
        raise ChipError(f"{label}: unknown dtype(s) in {PEAK_KEY}: {', '.join(bad)}; "
                        f"expected among {', '.join(DTYPES)}")
    if "fp32" not in peaks:
        raise ChipError(f"{label}: missing required figure {PEAK_KEY}.fp32")
    peak_flops = {d: positive(v, f"{label}: {PEAK_KEY}.{d}") * PEAK_UNIT for d, v in peaks.items()}
    scalars = {f: positive(entry[key], f"{label}: {key}") * unit for f, (key, unit) in SCALARS.items()}
    scalars |= {f: positive(entry[key], f"{label}: {key}") * unit
                for f, (key, unit) in OPTIONAL_SCALARS.items() if key in entry}
    present = [f for f, (key, _u) in (*OPTIONAL_SCALARS.items(), *OP_TABLES.items()) if key in entry]
    for f, (key, unit) in OP_TABLES.items():
        if key in entry:
            table = entry[key]
            if not isinstance(table, dict):
                raise ChipError(f"{label}: {key} must be an object op name -> number")
            scalars[f] = {op: positive(v, f"{label}: {key}.{op}") * unit for op, v in table.items()}
    sources = entry.get("sources", {})
    if not isinstance(sources, dict) or not all(
            isinstance(v, str) and v.strip() for v in sources.values()):
        raise ChipError(f"{label}: sources must be an object of non-empty strings")
    if require_sources:
        unsourced = [f for f in (*FIGURES, *present) if f not in sources]
        if unsourced:
            raise ChipError(f"{label}: no source for {', '.join(unsourced)}")
    sources = {f: sources.get(f, f"chip file {where}") for f in (*FIGURES, *present)} | sources
    aliases = entry.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise ChipError(f"{label}: aliases must be a list of names")
    try:
        return Chip(name=entry["name"], title=entry["title"], kind=entry["kind"],
                    peak_flops=peak_flops, sources=sources, aliases=tuple(aliases), **scalars)
    except ChipError as e:
        raise ChipError(f"{where}: {e}") from None
