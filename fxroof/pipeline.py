"""fxroof.analyze: capture -> annotate -> what-if -> fuse -> time model -> report, in one call.

`Target` is what an analysis aims at (chip, mode, what-if, tensor-parallel degree, fusion
options, inference or a training step): one frozen record, checked once, passed whole by sweeps,
LLM studies and the CLI.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import importlib.metadata
from dataclasses import dataclass

import torch
import torch.fx as fx

from fxroof.chips import Chip, chips
from fxroof.chips import chip as find_chip
from fxroof.chips.expected import FLASH_DTYPES, attention_share, runs_cudnn_attention
from fxroof.chips.timing import GRAPH_MODE, MODES, unit_dtype
from fxroof.cost import COST_KEY
from fxroof.cost.annotate import annotate
from fxroof.cost.record import MATRIX_CATEGORIES
from fxroof.cost.whatif import Quantization, quantize_graph
from fxroof.cost.whatif import parse as parse_quantization
from fxroof.fuse import fuse, unfused
from fxroof.fuse.layout import channels_last_nodes
from fxroof.fuse.policy import classify, coordinate_descent_tuning
from fxroof.graph.autocast import AMP_DTYPES, with_amp
from fxroof.graph.capture import Captured, capture
from fxroof.graph.compiled_branches import repeated_kv
from fxroof.graph.data_parallel import is_wrapped, layout_of
from fxroof.graph.fused_recurrences import KERNELS as FUSED_KERNELS
from fxroof.graph.memory import footprint, state_reads
from fxroof.graph.nodes import PHASE_KEY, module_path
from fxroof.graph.routing import Routing
from fxroof.graph.routing import parse as parse_routing
from fxroof.graph.tensors import dtype_name
from fxroof.graph.training import OPTIMIZERS, capture_step, check_recompute
from fxroof.report.build import kernel_rows, node_rows
from fxroof.report.records import ModeSummary, Report
from fxroof.report.units import seconds, si

__all__ = ["Target", "analyze", "no_full_gc", "report_of", "target_of"]


@contextlib.contextmanager
def no_full_gc():   # a decorator too: contextmanager's objects are ContextDecorators
    """Python's full (oldest-generation) collections put off while an analysis or a study runs,
    young ones kept: the passes make many short-lived cycles that young collections free, and
    full ones would walk the whole captured graph again and again, a cost that grows with depth
    (docs/fusion.md). Thresholds are restored."""
    old = gc.get_threshold()
    gc.set_threshold(old[0], old[1], 1 << 30)
    try:
        yield
    finally:
        gc.set_threshold(*old)


@dataclass(frozen=True)
class Target:
    """chip: a name, a chip file or a Chip. mode: "compiled" (fused kernels, as torch.compile
    runs them by default, each launched by the compiled program), "cudagraphs" (the same kernels
    replayed as a CUDA graph: torch.compile(mode="reduce-overhead"), as LLM servers decode; GPUs
    only) or "eager" (one kernel per op). quantize: a what-if such as "w4+kv8" (fxroof.cost.whatif).
    tp: tensor-parallel degree, > 1 analyzes one rank of a Megatron split (fxroof.graph.parallel),
    of inference or of a training step (with dp > 1: one rank of a (dp, tp) mesh, not fsdp).
    matmul_epilogues: let matmuls take pointwise epilogues when fusing.
    train: analyze one training step (forward, backward, optimizer; fxroof.graph.training)
    instead of inference; optimizer: "adamw", "sgd" or "none" (forward and backward only);
    dp: data-parallel degree of a training step, > 1 analyzes one rank of DDP; fsdp: shard
    parameters, gradients and optimizer state over those dp ranks (FSDP2) instead. recompute:
    activation checkpointing of every block, the backward running its forward again (True or
    "full"), or only what torchtitan's selective op policy does not keep ("selective": each
    attention's output and every second matmul's kept; fxroof.graph.training), or every n-th
    block in full (a whole number n, torchtitan's selective layer option).
    routing: the mixture-of-experts top-k routing to assume, "balanced" or "skew=0.5"
    (fxroof.graph.routing); None: balanced, where routing decides what runs.
    amp: "fp16" or "bf16" runs the model's forward within torch.autocast of that dtype over its
    own weights, as automatic mixed precision does (CUDA's policy on a GPU, traced on the CPU;
    the CPU's on a CPU): matrix ops in 16 bits, their weights cast at each call, what the
    policy keeps in fp32 in fp32. "" (the default): the model's own dtypes."""
    chip: Chip | str = "h100-sxm"
    mode: str = "compiled"
    quantize: Quantization | str | None = None
    tp: int = 1
    matmul_epilogues: bool = False
    train: bool = False
    optimizer: str = "adamw"
    dp: int = 1
    fsdp: bool = False
    recompute: bool | str | int = False
    routing: Routing | str | None = None
    amp: str = ""

    def __post_init__(self):
        # Names become records here, so that a misspelt chip or what-if fails before a capture.
        object.__setattr__(self, "chip", find_chip(self.chip))
        object.__setattr__(self, "quantize", parse_quantization(self.quantize))
        if self.routing is not None:
            object.__setattr__(self, "routing", parse_routing(self.routing))
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; expected one of {', '.join(MODES)}")
        if self.amp and self.amp not in AMP_DTYPES:
            raise ValueError(f"unknown amp {self.amp!r}; expected one of {', '.join(AMP_DTYPES)} "
                             f"(or '' for the model's own dtypes)")
        if self.mode == GRAPH_MODE and self.chip.kind != "gpu":
            raise ValueError(f"mode {GRAPH_MODE!r} replays CUDA graphs, which a GPU runs; "
                             f"{self.chip.name} is a {self.chip.kind}: use mode='compiled'")
        if isinstance(self.tp, bool) or not isinstance(self.tp, int) or self.tp < 1:
            raise ValueError(f"tp must be a whole number >= 1, got {self.tp!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; expected one of "
                             f"{', '.join(OPTIMIZERS)}")
        if self.train and self.quantize and (self.quantize.weights or self.quantize.kv_cache):
            raise ValueError("weight-only and KV-cache what-ifs model inference storage; a "
                             "training step updates its weights in full precision: fp8 or w8a8 "
                             "(8-bit matmuls) apply to it")
        if isinstance(self.dp, bool) or not isinstance(self.dp, int) or self.dp < 1:
            raise ValueError(f"dp must be a whole number >= 1, got {self.dp!r}")
        if self.dp > 1 and not self.train:
            raise ValueError("dp > 1 models the gradient all-reduce of a training step: it needs "
                             "train=True")
        check_recompute(self.recompute)
        if self.recompute and not self.train:
            raise ValueError("recompute=True checkpoints a training step's blocks: it needs "
                             "train=True")
        if self.fsdp and self.dp == 1:
            raise ValueError("fsdp=True shards a training step over its dp ranks: give dp > 1")
        if self.quantize is not None and self.matmul_epilogues:
            raise ValueError("quantization what-ifs need matmul_epilogues=False: a matmul fused "
                             "with its epilogues counts its bytes from tensor sizes, not its Cost")

    # the what-if's label, as reports print it; "" for none
    whatif = property(lambda self: self.quantize.label if self.quantize else "")


def target_of(target: Target | None = None, **fields) -> Target:
    """A Target from one, or from its fields given as keywords (chip=, mode=, ...)."""
    if target is None:
        return Target(**fields)
    if fields:
        raise TypeError(f"give target= or its fields ({', '.join(fields)}), not both")
    if not isinstance(target, Target):
        raise TypeError(f"target must be a fxroof.Target, not {type(target).__name__}")
    return target


@no_full_gc()
def analyze(model, example_inputs=(), example_kwargs=None, *, target: Target | None = None,
            loss_fn=None, **fields) -> Report:
    """Analyze `model` on a chip from its real graph.

    model: an nn.Module, fx.GraphModule or ExportedProgram; example inputs may be real, fake or
    meta tensors (meta: nothing is allocated). The target: `target=Target(...)` or its fields
    as keywords, chip="a100-80gb", mode="eager", quantize="w4", tp=8, matmul_epilogues=True,
    train=True, optimizer="sgd". loss_fn: with train=True, the loss as a function of the
    model's output (default: its own `.loss`, else the mean of its first output).
    The model itself is never changed.
    """
    target = target_of(target, **fields)
    if loss_fn is not None and not target.train:
        raise TypeError("loss_fn= is for a training step: give train=True too")
    if isinstance(model, torch.nn.Module) and is_wrapped(model) and (target.tp != 1
                                                                     or not target.train):
        raise ValueError(f"{type(model).__name__} is wrapped for data-parallel training "
                         f"(DistributedDataParallel or fully_shard): analyze it with train=True"
                         f"{' and without tp=' if target.tp != 1 else ''}, or analyze the plain "
                         f"model")
    if target.tp != 1:
        from fxroof.graph.parallel import tensor_parallel   # torch.distributed: only for tp
        with tensor_parallel(model, target.tp, example_inputs, example_kwargs,
                             target.dp) as (local, a, kw):
            report = analyze(local, a, kw, target=dataclasses.replace(target, tp=1),
                             loss_fn=loss_fn)
        return dataclasses.replace(report, tp=target.tp)
    if target.train:
        module, layout = (layout_of(model, target.dp, target.fsdp)
                          if isinstance(model, torch.nn.Module) else (model, None))
        if layout is not None:      # a wrapper's own degree and kind
            target = dataclasses.replace(target, dp=layout.world, fsdp=layout.fsdp)
        module = _amp(module, target)

        def step(recompute: bool):
            return capture_step(module, example_inputs, example_kwargs, layout=layout,
                                recompute=recompute, optimizer=target.optimizer,
                                loss_fn=loss_fn)
        with _process_group(layout):
            report = report_of(step(target.recompute), target)
            if target.recompute:     # what it saves: the same step's peak without recomputation
                plain = step(False)
                without = footprint(plain.gm, plain.weights).total
                report = dataclasses.replace(report, notes=report.notes + (
                    f"recomputation saves {si(without - report.memory.total, 'B')} of the "
                    f"step's peak memory ({si(without, 'B')} without it) for "
                    f"{si(report.recompute_flops, 'FLOP')} more work",))
            if layout is not None and layout.replicas > 1:
                report = dataclasses.replace(report, notes=report.notes + (
                    f"HSDP: parameters sharded over {layout.ranks} ranks and replicated "
                    f"{layout.replicas} times; each shard's gradient all-reduced across the "
                    f"replicas after its reduce-scatter",))
            return report
    return report_of(capture(_amp(model, target), example_inputs, example_kwargs,
                             target.routing), target)


def _amp(model, target: Target):
    """The model as target.amp runs it: under CUDA's autocast policy for a GPU, the CPU's for
    a CPU (the model itself where amp is "")."""
    return with_amp(model, "cuda" if target.chip.kind == "gpu" else "cpu", target.amp) \
        if target.amp else model


_DP_NOTE = ("each gradient bucket's all-reduce runs beside the backward kernels after it, at the "
            "link's full bandwidth (no contention with compute)")
_FSDP_NOTE = ("FSDP2 modelled on the graph: each unit's parameters all-gathered before its forward "
              "and again before its backward (the next unit prefetched), its gradients "
              "reduce-scattered after, beside compute at the link's full bandwidth")


def _process_group(layout):
    """A fake process group of the layout's ranks for a data-parallel step (no collective
    runs), kept alive while the report is built: collectives are costed by the group's size.
    A wrapper brings its own group; a tensor-parallel copy lies on tensor_parallel's mesh."""
    if layout is None or layout.group is not None:
        return contextlib.nullcontext()
    from fxroof.graph.parallel import fake_process_group   # torch.distributed: only for dp
    return fake_process_group(layout.ranks)


@no_full_gc()
def report_of(captured: Captured, target: Target) -> Report:
    """Every pass after capture: annotate, what-ifs, fuse, time model, report. Sweeps call this
    on graphs they captured once."""
    chip, provenance = target.chip, _provenance(captured)
    if target.train and not any(PHASE_KEY in n.meta for n in captured.gm.graph.nodes):
        raise ValueError("train=True needs a training step's graph (fxroof.analyze captures "
                         "one); sweeps and LLM studies analyze inference only")
    for given in dict(provenance)["inputs"]:
        if 0 in given["shape"]:      # every op would cost 0: a fast answer that means nothing
            raise ValueError(f"an input tensor of shape {tuple(given['shape'])} is empty "
                             f"(batch=0?): there is no work to analyze")
    _check_matmul_dtypes(captured.gm)
    gm = annotate(captured.gm)
    whatif = quantize_graph(gm, captured.weights, target.quantize, stored=not target.train)
    nodes = node_rows(gm)
    if not nodes:      # every regime share would be 0 of 0: nothing honest to say
        raise ValueError(f"{captured.name} runs no ops on these inputs: nothing to analyze")
    decompose = chip.kind == "gpu" and coordinate_descent_tuning()
    compiled = fuse(gm, matmul_epilogues=target.matmul_epilogues,
                    backend="cpp" if chip.kind == "cpu" else "triton",   # Inductor's code generator
                    decompose_products=decompose, stored=dict(whatif.stored))
    eager = unfused(gm, foreach=chip.kind == "gpu")   # torch.optim's default on GPUs
    memory = whatif.memory(footprint(gm, captured.weights))
    # A cache holds the weights and KV cache between passes only if everything fits in it;
    # where it does, a CPU library still packs its weights from it, once L2 has lost them.
    outgrown = bool(chip.cache_bytes) and memory.total > chip.cache_bytes
    packs = not outgrown and chip.kind == "cpu" and bool(chip.l2_bytes)
    state = state_reads(gm, captured.weights) if outgrown or packs else {}
    streamed, cached = (state, {}) if outgrown else ({}, state)
    report = Report(
        model=captured.name, capture=captured.strategy, chip=chip, mode=target.mode, nodes=nodes,
        eager=ModeSummary("eager", kernel_rows(eager, chip, "eager", nodes, streamed, gm,
                                               cached=cached)),
        compiled=ModeSummary("compiled", kernel_rows(      # launched, or replayed as a graph
            compiled, chip, target.mode if target.mode == GRAPH_MODE else "compiled", nodes,
            streamed, gm, cached=cached,
            channels_last=channels_last_nodes(gm, training=target.train)
            if chip.kind == "gpu" else frozenset())),
        memory=memory, whatif=target.whatif,
        notes=captured.notes + _estimate_notes(chip)
        + _matrix_unit_notes(nodes, chip, target.quantize) + _matmul_share_notes(nodes, chip)
        + _decomposed_notes(compiled, nodes)
        + _network_notes(nodes, chip)
        + _whatif_notes(gm, whatif.requantized, target) + _routing_notes(gm, captured, target)
        + _repeated_kv_notes(gm, nodes) + _fused_recurrence_notes(nodes)
        + ((_FSDP_NOTE if target.fsdp else _DP_NOTE),) * (target.dp > 1),
        training=target.optimizer if target.train else "", dp=target.dp, fsdp=target.fsdp,
        provenance=provenance)
    return dataclasses.replace(report, notes=report.notes + _host_estimate_notes(report)
                               + _alignment_notes(report) + _cuda_core_notes(report))


def _provenance(captured: Captured) -> tuple:
    """What was analyzed, for whoever reads the report later: the graph's inputs (weights
    aside), shape and dtype, and the versions that analyzed it."""
    inputs = [n.meta["val"] for n in captured.gm.graph.nodes if n.op == "placeholder"
              and n.name not in captured.weights and isinstance(n.meta.get("val"), torch.Tensor)]
    return (("inputs", [{"shape": [s if isinstance(s, int) else str(s) for s in t.shape],
                         "dtype": dtype_name(t.dtype)} for t in inputs]),
            ("fxroof", _version()), ("torch", torch.__version__))


@functools.cache
def _version() -> str:
    try:
        return importlib.metadata.version("fxroof")
    except importlib.metadata.PackageNotFoundError:      # run from a source tree
        return "unknown"


# Matrix ops eager PyTorch refuses when an integer tensor meets a float one (token ids fed to a
# Linear); fake tensors let them through, and the analysis would cost a model that cannot run.
_SAME_DTYPE_OPS = frozenset({"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "convolution",
                             "conv1d", "conv2d", "conv3d", "mv", "addmv", "dot"})


def _check_matmul_dtypes(gm) -> None:
    for node in gm.graph.nodes:
        packet = getattr(node.target, "overloadpacket", None)
        if node.op != "call_function" or getattr(packet, "__name__", "") not in _SAME_DTYPE_OPS:
            continue
        dtypes = {a.meta["val"].dtype for a in node.args
                  if isinstance(a, fx.Node) and isinstance(a.meta.get("val"), torch.Tensor)}
        if len({d.is_floating_point for d in dtypes}) > 1:
            where = f" (module {module_path(node)!r})" if module_path(node) else ""
            names = " and ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
            raise TypeError(f"dtype mismatch: {packet.__name__}{where} gets {names} tensors, "
                            f"which eager PyTorch refuses (an integer input fed to a float layer?)")


def _repeated_kv_notes(gm, nodes) -> tuple:
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


def _fused_recurrence_notes(nodes) -> tuple:
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


def _routing_notes(gm, captured: Captured, target: Target) -> tuple:
    """Which experts a router picks is data fake tensors lack: say what was assumed."""
    grouped = sum(1 for n in gm.graph.nodes if "routing assumed" in getattr(
        n.meta.get(COST_KEY), "note", ""))
    if captured.routing:
        return (f"expert routing assumed {captured.routing} (fxroof.graph.routing): the experts "
                f"each step runs and their tokens follow from it",)
    notes = [f"{grouped} grouped expert matmuls count every routed token once; the expert "
             f"weights they read assume balanced routing"] if grouped else []
    if target.routing is not None:
        notes.append(f"routing {target.routing.label} could not be traced on this model: "
                     f"its {captured.strategy} graph has no top-k values to assume")
    return tuple(notes)


# The roofline's own figures; a chip whose source for one of them is an estimate rather than a
# published or measured value says so in every report (`fxroof chips NAME` shows why).
ROOFLINE_FIGURES = {"peak_flops": "peak FLOP/s", "mem_bw": "memory bandwidth"}


def _estimate_notes(chip: Chip) -> tuple:
    guessed = [label for field, label in ROOFLINE_FIGURES.items()
               if chip.sources.get(field, "").lower().startswith("estimate")]
    if not guessed:
        return ()
    verb = "is an estimate" if len(guessed) == 1 else "are estimates"
    return (f"{chip.name}'s {' and '.join(guessed)} {verb}, not a published or measured figure "
            f"(`fxroof chips {chip.name}` says how it was made)",)


# An eager GPU step whose host issuing takes this share of its time or more says what that rests on.
HOST_NOTE_SHARE = 0.25


def _host_estimate_notes(report: Report) -> tuple:
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


def _alignment_notes(report: Report) -> tuple:
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


def _cuda_core_notes(report: Report) -> tuple:
    """The classic fix, where it is one: fp32 products computing on a GPU's CUDA cores (TF32
    off, PyTorch's matmul default) that hold a noticeable share of the step, on a chip whose TF32
    tensor cores would run them faster (on GeForce cards TF32 has the fp32 peak, but GEMMs reach
    more of it)."""
    chip = report.chip
    if not chip.nvidia or "tf32" not in chip.peak_flops \
            or unit_dtype(chip, "matmul", "fp32") != "fp32":
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


def _matmul_share_notes(nodes, chip: Chip) -> tuple:
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


def _decomposed_notes(kernels, nodes) -> tuple:
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


def _network_notes(nodes, chip: Chip) -> tuple:
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


def _matrix_unit_notes(nodes, chip: Chip, quantize) -> tuple:
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
                     for n in nodes):
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
    return tuple(notes)


def _whatif_notes(gm, requantized: frozenset, target: Target) -> tuple:
    """Fused kernels count their bytes from tensor sizes, not from the ops' Cost records: a
    quantized tensor read by an op that fuses keeps its unquantized size in compiled mode."""
    fusable = sum(1 for n in gm.graph.nodes if n.name in requantized and classify(
        n, n.meta[COST_KEY], getattr(n.target, "overloadpacket", None))[0] != "solo")
    notes = [f"{fusable} fusable ops read quantized tensors: in compiled mode their fused kernels "
             f"count those reads at the unquantized size"] if fusable else []
    dtype = target.quantize.matmul if target.quantize else ""
    if dtype and target.train:
        notes.append(f"{dtype} training: every matmul of the forward and the backward runs on "
                     f"{dtype} operands; the weights stay in full precision, and the casts and "
                     f"scales of each operand are not counted")
    elif dtype:      # what dynamic quantization runs around each 8-bit matmul
        notes.append(f"{dtype} matmuls read their operands in 8 bits at the {dtype} peak; the "
                     f"kernels that quantize the activations at each call (a scale from their "
                     f"absolute maximum, then a cast) are not counted: at small batches they can "
                     f"cost more than the halved bytes save (docs/time-model.md, torchao)")
    if dtype and target.chip.matrix_dtype(dtype) != dtype:    # the bytes shrink all the same
        notes.append(f"{target.chip.name} has no {dtype} matrix units: {dtype} matmuls run at its "
                     f"{target.chip.matrix_dtype(dtype)} peak")
    return tuple(notes)
