"""The notes a report carries: what a prediction assumes or leaves out, said where it matters.

Each function takes what the analysis made (the graph's node and kernel rows, the chip, the
report) and returns a tuple of sentences, empty when there is nothing to say. The notes that read
the analysis's own target (routing, what-ifs) stay with it in fxroof.pipeline.
"""
from __future__ import annotations

from collections import Counter

from fxroof.chips import Chip, chips
from fxroof.chips.expected import FLASH_DTYPES, attention_share, runs_cudnn_attention
from fxroof.chips.launch import CHANNEL_BLOCK
from fxroof.chips.timing import unit_dtype
from fxroof.cost.annotate import CHANNEL_NORMS, GROUP_NORMS
from fxroof.cost.record import MATRIX_CATEGORIES
from fxroof.graph import flash_attention, latent_attention
from fxroof.graph.compiled_branches import repeated_kv
from fxroof.graph.fused_recurrences import KERNELS as FUSED_KERNELS
from fxroof.report.records import Report
from fxroof.report.units import seconds, si


def repeated_kv_notes(gm, nodes) -> tuple:
    """Grouped-query attention whose k/v heads are copied out first: what it costs, and that
    other runs of the same model do not pay it."""
    attention = {n.name for n in nodes if n.category == "attention"}
    chain = {n.name for n in repeated_kv(gm, attention)}
    copies = [n for n in nodes if n.name in chain and n.bytes_written]
    if not copies:
        return ()
    written = sum(n.bytes_written for n in copies)
    return (f"attention's k/v heads are copied out to the query heads first ({len(copies)} "
            f"copies, {si(written, 'B')} written: transformers' repeat_kv, the branch "
            f"torch.compile runs); serving engines' attention kernels read the k/v heads as they "
            f"are, and transformers in eager mode folds a one-token query into the k/v groups",)


def fused_recurrence_notes(nodes) -> tuple:
    """Recurrent mixers captured as the kernels engines run (fxroof.graph.fused_recurrences):
    a reader comparing with an eager CPU run of transformers should know."""
    libraries = sorted({FUSED_KERNELS[name] for n in nodes
                        if (name := n.op.removesuffix("_backward")) in FUSED_KERNELS})
    if not libraries:
        return ()
    count = sum(n.op in FUSED_KERNELS for n in nodes)     # a backward is the same mixer's
    mixers = f"{count} recurrent token mixer" + ("s" if count != 1 else "")
    return (f"{mixers} run as {', '.join(libraries)} kernels, as serving engines and training "
            f"stacks run them, not as the reference code transformers falls back to without "
            f"those packages",)


# Attention captured as the kernels engines run, not transformers' code for it: its kind
# (_engine_kind) -> (what it is, one and many; what runs, and how transformers' code differs)
ENGINE_ATTENTION = {
    "latent": (
        ("latent attention", "latent attentions"), f"{latent_attention.KERNEL} over the cached "
        "latent rows, kv_b_proj folded into the query and the output, as serving engines run a "
        "decode step; transformers' own code expands every cached row through kv_b_proj in each "
        "step"),
    "sinks": (
        ("attention with sinks", "attentions with sinks"), f"{flash_attention.SINK_KERNEL}, "
        "the kernel vLLM and transformers' hub kernel run: the k/v heads read once, the scores "
        "kept on chip, the key blocks outside the causal mask or a window skipped; "
        "transformers' eager attention, its code without the hub kernel, writes every score "
        "out"),
    "window": (
        ("sliding-window attention", "sliding-window attentions"),
        f"{flash_attention.WINDOW_KERNEL}, as FlashAttention and serving engines run a prompt "
        "longer than the window: the key blocks outside it skipped; transformers' SDPA reads a "
        "mask of the window and computes every product"),
    "chunk": (
        ("chunked attention", "chunked attentions"),
        f"{flash_attention.CHUNK_KERNEL}, as serving engines run a prompt longer than a "
        "chunk (vLLM's chunked local attention): no key outside a query's chunk read; "
        "transformers' SDPA reads a mask of the chunks and computes every product"),
}
ENGINE_OPS = frozenset({latent_attention.OP.__name__, flash_attention.OP.__name__})


def _engine_kind(node) -> str:
    """Which ENGINE_ATTENTION a node is ("" for none): the flash op's sinks are in its note
    (attention.engine_flash_attention), and one with sinks and a window counts as sinks; a
    chunked layer's calls say their chunk."""
    if node.op == latent_attention.OP.__name__:
        return "latent"
    if node.op == flash_attention.OP.__name__:
        return "sinks" if "sinks" in node.note else "chunk" if "chunk" in node.note \
            else "window"
    return ""


def engine_attention_notes(nodes) -> tuple:
    """Attention captured as engines run it (fxroof.graph.latent_attention, .flash_attention):
    a reader comparing with transformers' own code should know."""
    # one a layer: a chunked layer's whole chunks and its last one are two calls
    counts = Counter(kind for kind, _ in {(_engine_kind(n), n.module) for n in nodes})
    return tuple(f"{counts[kind]} {one if counts[kind] == 1 else many} "
                 f"run{'s' if counts[kind] == 1 else ''} as {how} (priced at the chip's "
                 f"fused-attention share of its peak)"
                 for kind, ((one, many), how) in ENGINE_ATTENTION.items() if counts[kind])


# The roofline's own figures; a chip whose source for one of them is an estimate rather than a
# published or measured value says so in every report (`fxroof chips NAME` shows why).
ROOFLINE_FIGURES = {"peak_flops": "peak FLOP/s", "mem_bw": "memory bandwidth"}


def estimate_notes(chip: Chip) -> tuple:
    guessed = [label for field, label in ROOFLINE_FIGURES.items()
               if chip.sources.get(field, "").lower().startswith("estimate")]
    if not guessed:
        return ()
    verb = "is an estimate" if len(guessed) == 1 else "are estimates"
    return (f"{chip.name}'s {' and '.join(guessed)} {verb}, not a published or measured figure "
            f"(`fxroof chips {chip.name}` says how it was made)",)


# An eager GPU step whose host issuing takes this share of its time or more says what that rests on.
HOST_NOTE_SHARE = 0.25


def host_estimate_notes(report: Report) -> tuple:
    """An eager GPU step bound by its host is priced from the table's estimates of the host's
    CPU (its dispatch, the model code around each op, a view call), not from this host: say so,
    and how to measure it."""
    chip, share = report.chip, report.regime_share.get("overhead", 0.0)
    if report.mode != "eager" or chip.kind != "gpu" or share < HOST_NOTE_SHARE or \
            not chip.sources.get("dispatch_s", "").lower().startswith("estimate"):
        return ()
    return (f"{share:.0%} of this eager step is the host issuing its ops, priced at "
            f"{seconds(chip.dispatch_s)} an op's dispatch, {seconds(chip.glue_s)} of model code "
            f"around it and {seconds(chip.view_dispatch_s)} a view call, estimates of a server's "
            f"CPU (hosts differ: one H200 server's took 13-23 µs an op in all); `fxroof calibrate "
            f"--device cuda` measures the host at hand",)


# A GPU's tensor-core GEMM kernels load their operands 16 bytes at a time, so the rows of each
# must start on a 16-byte boundary: a product whose depth or width is no multiple of this many
# elements falls to slower kernels ("most kernels targeting Tensor Cores require 128b aligned
# memory accesses", NVIDIA/cutlass#75; the requirement is cuBLAS's too). Not priced: no
# measurement here separates those kernels, so the report says where they run.
ALIGNED_ELEMENTS = {"fp16": 8, "bf16": 8, "fp8": 16, "int8": 16}
# kernels that a note names hold at least this share of the predicted kernel time
KERNEL_NOTE_SHARE = 0.02


def alignment_notes(report: Report) -> tuple:
    """Name the GPU matrix products whose N or K (the strides of their row-major operands and
    result) is no multiple of 16 bytes, when together they hold a noticeable share of the step."""
    if report.chip.kind != "gpu":
        return ()
    by_name = {n.name: n for n in report.nodes}
    off = []          # (kernel time, node, the dimensions off the boundary, the boundary)
    # a kernel that its launch or the host bounds loses nothing to narrower loads
    for k in report.kernels:
        if k.category != "matmul" or k.regime not in ("compute", "memory"):
            continue
        for node in (by_name[name] for name in k.nodes if name in by_name):
            step = ALIGNED_ELEMENTS.get(node.dtype)
            if step and node.category == "matmul" and len(node.grid) == 4 and \
                    (bad := [int(d) for d in node.grid[2:] if int(d) % step]):
                off.append((k.time_s, node, bad, step))
                break
    total = sum(k.time_s for k in report.kernels)
    share = sum(t for t, *_ in off) / total if total else 0.0
    if share < KERNEL_NOTE_SHARE:
        return ()
    worst = sorted(off, key=lambda o: -o[0])[:3]
    named = ", ".join(f"{node.module or node.name} ({' and '.join(f'{d:,}' for d in bad)}, not "
                      f"a multiple of {step})" for _, node, bad, step in worst)
    many = len(off) > 1
    return (f"{len(off)} matrix product{'s' * many} ({share:.0%} of the predicted kernel time) "
            f"{'have' if many else 'has'} a width or depth off the 16-byte boundary GPU "
            f"tensor-core kernels load by: {named}; {'they fall' if many else 'it falls'} to "
            f"slower kernels, which this prediction does not price: expect "
            f"{'them' if many else 'it'} slower than shown. Padding the dimension to a multiple "
            f"of 64 avoids it (nanoGPT pads GPT-2's 50,257-token vocabulary to 50,304)",)


def _row_waits(report: Report, ops, width: int) -> tuple:
    """(nodes, kernels, seconds) of the norms of `ops` carrying a grid of `width`, whose launch
    walks a row a block (chips/launch.py), and the waits of their kernels; nothing where the
    waits hold less than KERNEL_NOTE_SHARE of the run."""
    nodes = [n for n in report.nodes if n.op in ops and len(n.grid) == width]
    names = {n.name for n in nodes}
    kernels = [k for k in report.kernels if names.intersection(k.nodes)]
    waits = sum(dict(k.expected.gap).get("occupancy", 0.0) for k in kernels)
    if not report.time_s or waits / report.time_s < KERNEL_NOTE_SHARE:
        return [], [], 0.0
    return nodes, kernels, waits


def channel_block_notes(report: Report) -> tuple:
    """The fix, where a step's channels-first training batch norms wait on memory for a
    noticeable share of it (a block a channel, each thread a load at a time:
    chips/launch.channel_blocks): how long, and the layout whose kernels span the batch."""
    waiting, kernels, waits = _row_waits(report, CHANNEL_NORMS, 3)
    if not waiting:
        return ()
    return (f"{len(kernels)} training batch-norm kernels over channels-first tensors wait on "
            f"memory for {seconds(waits)} ({waits / report.time_s:.0%} of the step): PyTorch's "
            f"and cuDNN's kernels give each channel one block of {CHANNEL_BLOCK} threads, each "
            f"loading one element at a time. Channels-last tensors (model and input "
            f".to(memory_format=torch.channels_last)) take kernels whose grid spans the batch",)


def group_row_notes(report: Report) -> tuple:
    """The fix, where eager group norms wait on memory for a noticeable share of the run (their
    reductions a block a row, each thread a load at a time: chips/launch.group_rows): how long,
    and torch.compile, whose reductions over few long rows split each row over many blocks."""
    waiting, kernels, waits = _row_waits(report, GROUP_NORMS, 2)
    if not waiting:
        return ()
    rows = sorted({n.grid[0] for n in waiting})
    blocks = f"{rows[0]:,}" if len(rows) == 1 else f"{rows[0]:,}-{rows[-1]:,}"
    return (f"{len(kernels)} group-norm kernels wait on memory for {seconds(waits)} "
            f"({waits / report.time_s:.0%} of the time): PyTorch's reduce each (sample, group) "
            f"row, or each (sample, channel) in the backward, in one block of threads loading one "
            f"element at a time, {blocks} blocks here. torch.compile splits such rows over many "
            f"blocks (the compiled mode prices it so)",)


def cuda_core_notes(report: Report) -> tuple:
    """The classic fix, where it is one: fp32 products computing on a GPU's CUDA cores (TF32
    off, PyTorch's matmul default) that hold a noticeable share of the step, on a chip whose TF32
    tensor cores would run them faster (on GeForce cards TF32 has the fp32 peak, but GEMMs reach
    more of it)."""
    chip = report.chip
    if not chip.tensor_cores("tf32") or unit_dtype(chip, "matmul", "fp32") != "fp32":
        return ()
    cores = chip.matrix_flops("fp32") * (chip.fp32_matmul_efficiency or chip.matmul_efficiency
                                         or 1.0)
    tensor = chip.matrix_flops("tf32") * (chip.matmul_efficiency or 1.0)
    total = sum(k.time_s for k in report.kernels)
    held = sum(k.time_s for k in report.kernels if k.category == "matmul" and k.dtype == "fp32"
               and k.regime == "compute")
    if tensor <= cores or not total or held / total < KERNEL_NOTE_SHARE:
        return ()
    return (f"fp32 matrix products ({held / total:.0%} of the predicted kernel time) run on "
            f"{chip.name}'s CUDA cores, whose GEMMs reach {si(cores, 'FLOP/s')}; with "
            f"torch.backends.cuda.matmul.allow_tf32 = True (or "
            f"torch.set_float32_matmul_precision('high'); the command line's --tf32) they would "
            f"run on its TF32 tensor cores, {si(tensor, 'FLOP/s')}",)


def matmul_share_notes(nodes, chip: Chip) -> tuple:
    """A GPU with no achievable-matmul share prices its matrix kernels at the whole dense peak,
    which no GPU measured reaches: say so (a calibrated chip's peak is itself measured)."""
    if chip.kind != "gpu" or chip.matmul_efficiency or \
            chip.sources.get("peak_flops", "").startswith("measured") or \
            not any(n.category in MATRIX_CATEGORIES and n.flops for n in nodes):
        return ()
    shares = [c.matmul_efficiency for c in chips() if c.kind == "gpu" and c.matmul_efficiency]
    return (f"{chip.name} has no measured achievable-matmul share: its matrix kernels are priced "
            f"at the whole dense peak, where the GPUs measured reach {min(shares):.0%}-"
            f"{max(shares):.0%} of theirs (`fxroof chips` gives each chip's figures)",)


def decomposed_notes(kernels, nodes) -> tuple:
    """Say when compiled products of one row run as reductions (the process asked Inductor for
    coordinate descent tuning): the time depends on it."""
    matrix = {n.name for n in nodes if n.category == "matmul"}
    count = sum(len(matrix.intersection(k.nodes)) for k in kernels if k.category == "reduction")
    if not count:
        return ()
    return (f"torch._inductor.config.coordinate_descent_tuning is on: compiled products of one "
            f"row ({count} here) run as Triton reductions (Inductor decomposes them into a "
            f"multiply and a sum, which takes in the dtype casts and gathers that feed them)",)


# Servers of eight GPUs are the common build; a GPU with no server figures prices a larger group
# over its own links, which the report says once the group passes it.
USUAL_SERVER_GPUS = 8


def network_notes(nodes, chip: Chip) -> tuple:
    """Collectives whose group passes one server cross the network between servers: say what the
    network is taken to be (the chip's reference system), or that the chip has no figure for it."""
    if chip.kind != "gpu":
        return ()
    groups = {(n.comm_ranks, n.comm_stride) for n in nodes if n.comm_ranks > 1}
    if not chip.node_gpus:
        ranks = max((n for n, _ in groups), default=0)
        return (f"{chip.name} has no server figures (node_gpus, network_GBps): collectives over "
                f"{ranks} ranks are priced over its links as if one server held them all",) \
            if ranks > USUAL_SERVER_GPUS else ()
    spread = max(groups, key=lambda g: chip.nodes(*g), default=(0, 0))
    servers = chip.nodes(*spread)
    if servers == 1:
        return ()
    per_server, gpus = chip.ranks_a_server(*spread), int(chip.node_gpus)
    shared = (f", {per_server}/{gpus} of it theirs (the groups beside them share the NICs)"
              if per_server < gpus else "")
    return (f"collectives over {spread[0]} ranks span {servers} servers of {gpus} GPUs, "
            f"{per_server} of their ranks on each: the expected time paces their rings (and an "
            f"all-reduce's tree) by the servers' network, {chip.network_bw / 1e9:g} GB/s a server "
            f"each way ({chip.name}'s reference system; a chip file's network_GBps states "
            f"another){shared}; the floor by the links alone",)


def matrix_unit_notes(nodes, chip: Chip, quantize) -> tuple:
    """A half-precision matmul on a chip without matrix units for that type (bf16 on a V100 or
    T4) runs at a slower rate than the dtype suggests: say which, and at what peak."""
    if quantize and quantize.matmul:      # the what-if's operands, noted by _whatif_notes
        return ()
    notes = []
    for category, flag in (("conv", "torch.backends.cudnn.allow_tf32, PyTorch's default"),
                           ("matmul", "torch.backends.cuda.matmul.allow_tf32")):
        if any(n.category == category and n.dtype == "fp32" and n.flops for n in nodes) \
                and unit_dtype(chip, category, "fp32") == "tf32":
            notes.append(f"fp32 {category} FLOPs run on {chip.name}'s TF32 tensor cores, "
                         f"{si(chip.matrix_flops('tf32'), 'FLOP/s')} ({flag}); with it off, at "
                         f"the fp32 peak, {si(chip.matrix_flops('fp32'), 'FLOP/s')}")
    share = attention_share(chip)
    if share and any(n.category == "attention" and n.flops and n.dtype in FLASH_DTYPES
                     and n.op not in ENGINE_OPS for n in nodes):   # SDPA's kernels
        # the kernel its time assumes, and what else PyTorch could run there
        cudnn = runs_cudnn_attention(chip)
        kernel = ("cuDNN's fused attention (SDPA's first choice on Hopper from PyTorch 2.11),"
                  if cudnn else "SDPA's flash backend, FlashAttention-2,")
        if cudnn:
            other = (f"; with torch.backends.cuda.enable_cudnn_sdp(False), or before PyTorch "
                     f"2.11, FlashAttention-2 at {chip.attention_efficiency:.0%}")
        elif chip.cudnn_attention_efficiency:
            other = (f"; PyTorch 2.11 and later run cuDNN's at "
                     f"{chip.cudnn_attention_efficiency:.0%}")
        else:
            other = "; another attention kernel (cuDNN's, FlashAttention-3) can run faster"
        notes.append(f"attention runs {kernel} at {share:.0%} of {chip.name}'s dense peak at "
                     f"head size 128, where its GEMMs reach {chip.matmul_efficiency:.0%}"
                     + (" (a smaller head, less: its exponentials, one per score, take the same "
                        "time)" if chip.clock_hz else "") + other)
    for dtype in sorted({n.dtype for n in nodes if n.category in MATRIX_CATEGORIES and n.flops}):
        runs_as = chip.matrix_dtype(dtype)
        if dtype in ("bf16", "fp16") and runs_as != dtype:
            other = next((h for h in ("fp16", "bf16") if h in chip.peak_flops), "")
            note = (f"{chip.name} has no {dtype} matrix units: {dtype} matmuls run at its "
                    f"{runs_as} peak, {si(chip.matrix_flops(dtype), 'FLOP/s')}")
            if other:
                note += f" ({other}: {si(chip.matrix_flops(other), 'FLOP/s')})"
            # cuBLAS emulates the missing type on CUDA cores below that peak: community torch.mm
            # runs (docs/time-model.md, "a fourth batch") reach 0.68 of it on a V100, 0.49 on
            # an RTX 2080 Ti; neither share is modelled, so the note gives the range
            if chip.kind == "gpu" and runs_as == "fp32":
                note += f"; measured GPUs emulate {dtype} at about half to two thirds of that peak"
            notes.append(note)
        elif dtype in ("bf16", "fp16") and chip.nvidia and not chip.tensor_cores(dtype):
            # a GPU without tensor cores (the P100) lists its 16-bit rate as the fp32 one
            notes.append(f"{chip.name} has no tensor cores: {dtype} matmuls are computed in fp32 "
                         f"on its CUDA cores, at {si(chip.matrix_flops(dtype), 'FLOP/s')}")
    return tuple(notes)
