"""The cost record every pass reads and writes: FLOPs and bytes of one node or one kernel."""
from __future__ import annotations

from dataclasses import dataclass, replace

# Matrix categories run on tensor/matrix units; the rest on vector units.
CATEGORIES = ("matmul", "conv", "attention", "pointwise", "reduction", "norm", "view", "copy",
              "collective", "other")
MATRIX_CATEGORIES = frozenset({"matmul", "conv", "attention"})
# Categories that never launch a kernel of their own: metadata-only ops.
FREE_CATEGORIES = frozenset({"view"})
# Categories whose ops a fusing compiler writes kernels for (Inductor's generated code); the
# others run a library's kernel each (or none).
GENERATED_CATEGORIES = frozenset({"pointwise", "reduction", "norm", "copy"})

# Weight formats a weight-only what-if dequantizes inside its matmul: that kernel is its own
# implementation (Cost.variant "int8 weights"), whose streaming a time model prices apart. fp8
# weights beside 16-bit activations are among them: no tensor core multiplies bf16 by fp8
# (Hopper's wgmma takes two 8-bit operands or two 16-bit ones), so each weight is converted.
DEQUANTIZED = ("int8", "int4", "fp8")


def dequantizing(weights: str) -> str:
    """The variant of a matmul that dequantizes `weights` (a DEQUANTIZED format) as it reads."""
    return f"{weights} weights"


COST_KEY = "fxroof.cost"      # node.meta key written by annotate.py
KERNEL_KEY = "fxroof.kernel"  # node.meta key written by fuse() (index into the kernel list)


@dataclass(frozen=True)
class Cost:
    """FLOPs count 2 per multiply-add (PyTorch's convention); bytes are bytes."""
    flops: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    category: str = "other"
    dtype: str = ""         # compute dtype short name ("bf16", "fp32", ...): picks the peak used
    known: bool = True      # False: no formula for this op; counted in coverage, never a silent zero
    note: str = ""          # e.g. "causal" for attention
    # Which of the op's implementations a CPU build of PyTorch runs, where the call's shapes pick
    # it: a convolution goes through oneDNN or PyTorch's own code, whose fixed costs differ; or
    # the dequantizing kernel a weight-only what-if puts in a matmul's place ("int8 weights").
    # "" where there is no choice. A chip measured op by op may cost each apart.
    variant: str = ""
    # Collectives only: bytes each rank sends over its chip-to-chip link (the algorithm factor
    # already applied, e.g. 2(n-1)/n of the buffer for a ring all-reduce) and the number of
    # sequential latency-bound steps (2(n-1) for a ring all-reduce).
    comm_bytes: int = 0
    comm_steps: int = 0
    # All-reduce only: the bytes each rank sends where the switch reduces (NVLink SHARP, NCCL's
    # NVLS): its buffer once into the switch and its 1/n share of the result back out, (n+1)/n
    # of the buffer each way. A chip whose links have it takes the faster (timing.comm_time).
    nvls_bytes: int = 0
    comm_ranks: int = 0     # the group's size: how many of a peer-to-peer board's links it has
    # The step between the group's ranks in the world: 1 (or 0, not known) for neighbours, tp
    # for a data-parallel group across a tensor-parallel mesh: how it spreads over servers.
    comm_stride: int = 0
    # An all-to-all: each rank sends a share of its buffer to every other rank, so past one
    # server most of its bytes cross the servers' NICs, not one ring boundary (timing.py).
    comm_exchange: bool = False
    grid: tuple = ()        # matrix ops: the (batch, M, N, K) GEMM a library tiles; layer norm:
                            # (rows, row elements); embedding, index_select: (indices, row
                            # elements, element bytes); a training batch norm over a
                            # channels-first tensor: (channels, elements a channel, passes);
                            # a group norm there: its reduction's (rows, row elements)
                            # (annotate.with_grid)
    # Convolutions on channels-first (NCHW) tensors in 16-bit: the bytes of each tensor a GPU
    # library transposes to channels-last for its tensor-core kernels and back (formulas/conv.py).
    # Not in the bytes above, which are the graph's: a time model charges them where the program
    # leaves the layout channels-first.
    relayout: tuple = ()
    # Norms that must finish a reduction before their elementwise pass (a batch norm in
    # training, a group norm, their gradients and layer norm's weight gradients): the bytes of
    # each tensor the second pass reads again. Not in the bytes above, the op's minimum: a time
    # model charges them where the tensor does not stay in the chip's L2 between the passes.
    reread: tuple = ()
    # Convolutions with a bias, on CUDA: cuDNN's convolution takes none, so PyTorch adds it in a
    # kernel of its own over the output (read and written), and the backward sums the output's
    # gradient for it in another; the bytes that kernel moves. Eager only: a compiler fuses the
    # add into the next pointwise kernel.
    bias_bytes: int = 0
    # An 8-bit matmul whose activations a what-if scales at each call (whatif.Quantization
    # .activations): the bytes each kernel moves that quantizes them before it (a reduction for
    # their maximum, a cast). Not in the bytes above, the op's own: a time model charges them as
    # kernels of their own.
    quantize: tuple = ()
    # ... and for each, whether a fusing compiler folds it into the kernel making the
    # activations (a scale a row, after an op whose kernel the compiler writes)
    quantize_folds: tuple = ()
    # An op PyTorch runs on a GPU with a kernel of its own that its instructions can bound, not
    # its FLOPs or bytes (a channels-first depthwise convolution: formulas/conv.py; softmax and
    # layer norm: formulas/norm_instructions.py): the thread instructions it issues, which a
    # GPU's schedulers issue at a fixed rate (chips/expected.py). 0 where a library kernel runs
    # it; a compiled program's own kernels for these ops are Inductor's, not counted.
    issued: int = 0
    # A fused attention kernel's forward: the exponentials of its softmax, one per score (query
    # x key), which a GPU computes on its special-function units beside the products
    # (chips/expected.py). The backward's are left out: it is priced at the forward's share.
    exponentials: int = 0
    # A fused attention kernel under a causal mask: each query block skips the key blocks wholly
    # above the diagonal, so it computes about half the products its FLOPs count (PyTorch's
    # dense convention, which FlopCounterMode keeps).
    causal: bool = False
    # ... and under a sliding window: each query sees only the `window` keys before it, and a
    # query block skips the key blocks wholly outside (0: no window)
    window: int = 0

    def __post_init__(self):
        if self.category not in CATEGORIES:
            raise ValueError(f"unknown category {self.category!r}; expected one of {CATEGORIES}")

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written

    def with_copy(self, nbytes: int, note: str) -> "Cost":
        """This cost with a copy PyTorch makes before the op's kernel: `nbytes` read and written
        once more, and the note saying so; itself where nothing is copied."""
        if not nbytes:
            return self
        return replace(self, bytes_read=self.bytes_read + nbytes,
                       bytes_written=self.bytes_written + nbytes, note=note)

    def __add__(self, other: "Cost") -> "Cost":
        # Sums keep FLOPs and bytes; category/dtype are only meaningful for single rows.
        return Cost(self.flops + other.flops, self.bytes_read + other.bytes_read,
                    self.bytes_written + other.bytes_written, "other",
                    known=self.known and other.known, comm_bytes=self.comm_bytes + other.comm_bytes,
                    comm_steps=self.comm_steps + other.comm_steps,
                    nvls_bytes=self.nvls_bytes + other.nvls_bytes,
                    comm_ranks=max(self.comm_ranks, other.comm_ranks),
                    comm_stride=max(self.comm_stride, other.comm_stride),
                    comm_exchange=self.comm_exchange or other.comm_exchange)
