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

from fxroof.chips import Chip
from fxroof.chips import chip as find_chip
from fxroof.chips.chip import memory_share
from fxroof.chips.timing import GRAPH_MODE, MODES
from fxroof.cost import COST_KEY
from fxroof.cost.annotate import annotate
from fxroof.cost.whatif import Quantization, WhatIf, quantize_graph
from fxroof.cost.whatif import parse as parse_quantization
from fxroof.fuse import fuse, unfused
from fxroof.fuse.layout import channels_last_nodes
from fxroof.fuse.policy import classify, coordinate_descent_tuning
from fxroof.graph.autocast import AMP_DTYPES, with_amp
from fxroof.graph.capture import Captured, capture
from fxroof.graph.data_parallel import is_wrapped, layout_of
from fxroof.graph.memory import footprint, state_reads
from fxroof.graph.nodes import PHASE_KEY, module_path
from fxroof.graph.routing import Routing
from fxroof.graph.routing import parse as parse_routing
from fxroof.graph.tensors import dtype_name
from fxroof.graph.training import OPTIMIZERS, capture_step, check_recompute
from fxroof.report import notes as report_notes
from fxroof.report.build import kernel_rows, node_rows
from fxroof.report.records import ModeSummary, Report
from fxroof.report.units import si

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
                                loss_fn=loss_fn, device=_device(target))
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


def _device(target: Target) -> str:
    """The PyTorch device type the target's chip runs: "cuda" for a GPU, else "cpu"."""
    return "cuda" if target.chip.kind == "gpu" else "cpu"


def _amp(model, target: Target):
    """The model as target.amp runs it: under CUDA's autocast policy for a GPU, the CPU's for
    a CPU (the model itself where amp is "")."""
    return with_amp(model, _device(target), target.amp) if target.amp else model


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
    # A cache holds the weights and KV cache between passes in the share the footprint leaves
    # it (chip.memory_share); what it holds a CPU library still packs from it, once L2 has
    # lost them.
    gone = memory_share(memory.total, chip.cache_bytes)
    packs = gone < 1 and chip.kind == "cpu" and bool(chip.l2_bytes)
    state = state_reads(gm, captured.weights) if gone or packs else {}
    streamed = _scaled(state, gone)
    cached = _scaled(state, 1 - gone) if packs else {}
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
        notes=captured.notes + report_notes.estimate_notes(chip)
        + report_notes.matrix_unit_notes(nodes, chip, target.quantize)
        + report_notes.matmul_share_notes(nodes, chip)
        + report_notes.decomposed_notes(compiled, nodes) + report_notes.network_notes(nodes, chip)
        + _whatif_notes(gm, whatif, target) + _routing_notes(gm, captured, target)
        + report_notes.repeated_kv_notes(gm, nodes) + report_notes.fused_recurrence_notes(nodes)
        + report_notes.engine_attention_notes(nodes)
        + ((_FSDP_NOTE if target.fsdp else _DP_NOTE),) * (target.dp > 1),
        training=target.optimizer if target.train else "", dp=target.dp, fsdp=target.fsdp,
        provenance=provenance)
    after = (report_notes.host_estimate_notes(report) + report_notes.alignment_notes(report)
             + report_notes.cuda_core_notes(report)       # notes that read the kernels' times
             + report_notes.channel_block_notes(report) + report_notes.group_row_notes(report))
    return dataclasses.replace(report, notes=report.notes + after)


def _scaled(state: dict, share: float) -> dict:
    """{node: {storage: bytes}} of `state`, each storage's bytes times `share` (none at 0)."""
    if share <= 0:
        return {}
    return {n: {s: b * share for s, b in found.items()} for n, found in state.items()}


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


# What each part of a what-if looks for, where a graph has none of it
_UNMATCHED = {"weights": "no matmul reads a weight",
              "kv_cache": "no input is written in place (a KV cache the step updates)",
              "matmul": "the graph has no matmul or convolution"}


def _whatif_notes(gm, whatif: WhatIf, target: Target) -> tuple:
    """What the what-if changed and did not. Fused kernels count their bytes from tensor sizes,
    not from the ops' Cost records: a quantized tensor read by an op that fuses keeps its
    unquantized size in compiled mode."""
    q, kept = whatif.quantization, whatif.convs_kept
    notes = [f"priced as the checkpoint ships, from {q.source}; --quantize none prices it in "
             f"the model's dtype"] if q and q.source else []
    notes += [f"what-if {q.label}: {_UNMATCHED[part]}, so its {part.replace('_', ' ')} part "
              f"changed nothing" for part in whatif.unmatched]
    if kept:
        notes.append(f"{kept} convolution{'s keep their' if kept > 1 else ' keeps its'} 16-bit "
                     f"weights: weight-only schemes are matmul kernels; 'w8a8' or 'fp8' runs "
                     f"convolutions on 8-bit operands, as TensorRT's int8 and fp8 engines do")
    fusable = sum(1 for n in gm.graph.nodes if n.name in whatif.requantized and classify(
        n, n.meta[COST_KEY], getattr(n.target, "overloadpacket", None))[0] != "solo")
    if fusable:
        notes.append(f"{fusable} fusable ops read quantized tensors: in compiled mode their fused "
                     f"kernels count those reads at the unquantized size")
    dtype = q.matmul if q and "matmul" not in whatif.unmatched else ""
    convs = any(n.name in whatif.requantized and n.meta[COST_KEY].category == "conv"
                for n in gm.graph.nodes)
    products = "matmuls and convolutions" if convs else "matmuls"
    if dtype and target.train:
        scales = ("are found at each call by kernels of their own (gap part 'quantize')"
                  if target.quantize.activations else
                  f"are not counted ('{'fp8' if dtype == 'fp8' else 'w8a8'}+dq' counts them)")
        notes.append(f"{dtype} training: every product of the forward and the backward runs on "
                     f"{dtype} operands; the weights stay in full precision, and the casts and "
                     f"scales of each operand {scales}")
    elif dtype and target.quantize.activations:      # the kernels dynamic scales run
        per = target.quantize.activations
        notes.append(f"{dtype} {products} read their operands in 8 bits at the {dtype} peak; their "
                     f"activations are quantized at each call, a scale a {per} from their "
                     f"absolute maximum, by {'one kernel' if per == 'row' else 'two kernels'} "
                     f"before each matmul (gap part 'quantize'; compiled, a row's scale is found "
                     f"in the kernel making the row where the compiler writes it); the {dtype} "
                     f"kernels' own pace at a few rows is not modelled "
                     f"(docs/whatif-and-parallel.md)")
    elif dtype:      # scales fixed ahead of time: the cast goes into the op making them
        notes.append(f"{dtype} {products} read their operands in 8 bits at the {dtype} peak, the "
                     f"activations' scales fixed ahead of time (their cast fused into the op "
                     f"making them); scales found at each call run kernels of their own before "
                     f"each matmul, which '{dtype if dtype == 'fp8' else 'w8a8'}+dq' (a scale a "
                     f"row) or '+dq-tensor' counts (docs/time-model.md, torchao)")
    if dtype and target.chip.matrix_dtype(dtype) != dtype:    # the bytes shrink all the same
        notes.append(f"{target.chip.name} has no {dtype} matrix units: {dtype} {products} run at "
                     f"its {target.chip.matrix_dtype(dtype)} peak")
    return tuple(notes)
