"""Quantization what-ifs: the bytes and the peak a quantized deployment would see, on the graph
captured from the 16-bit model, without touching the model.

    fxroof.analyze(model, args, kwargs, quantize="w4")          # int4 weights, group 128
    fxroof.analyze(model, args, kwargs, quantize="w8+kv8")      # int8 weights, int8 KV cache
    fxroof.analyze(model, args, kwargs, quantize="fp8")         # fp8 matmuls (W8A8, fp8 peak)
    fxroof.analyze(model, args, kwargs, quantize="fp8+dq")      # ... activations scaled per call

A pass between annotate and fuse: it rewrites the Cost record of every node that touches a
quantized tensor (weights read by matmuls, the KV cache, 8-bit matmul operands), and nothing
else, each op's formula telling how many of those elements it moves. What is quantized, the byte
arithmetic and the caveats: docs/whatif-and-parallel.md.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

import torch
import torch.fx as fx

from fxroof.cost.annotate import formula_cost
from fxroof.cost.formulas import OpCall
from fxroof.cost.formulas.memory import GATHERS
from fxroof.cost.record import COST_KEY, DEQUANTIZED, GENERATED_CATEGORIES, Cost, dequantizing
from fxroof.graph.memory import Footprint, written_inputs
from fxroof.graph.nodes import path_in_model, written_args
from fxroof.graph.tensors import storage, tensors_in

__all__ = ["Quantization", "WhatIf", "kept_module", "parse", "quantize_graph"]

FORMATS = {"int8": 8, "fp8": 8, "int4": 4}      # bits an element
EIGHT_BIT = ("fp8", "int8")                     # the KV cache's and the matmuls' formats
# How an 8-bit matmul's activations get their scale: "" fixed ahead of time (the cast fused into
# the op that makes them, TensorRT-LLM's fp8 engines), or found at each call from their absolute
# maximum: "row" a scale a row (token) in one kernel that reads the row, takes its maximum and
# writes it cast (vLLM's dynamic_per_token_scaled_fp8_quant, torchao's float8dq per row); "tensor"
# one scale for the whole tensor, a reduction over it and then the cast, two kernels (vLLM's
# segmented_max_reduction and scaled_fp8_quant, torchao's per tensor).
ACTIVATION_SCALES = ("", "row", "tensor")
SCALE_BYTES = 4                                 # fp32 scales
# The products 8-bit operands apply to: library GEMMs, and convolutions, which TensorRT's int8
# and fp8 engines and cuDNN run on 8-bit operands too. Weight-only schemes stay with matmuls:
# their dequantizing kernels (gpt-fast's, Marlin, torchao's) are GEMMs; no library runs a
# convolution on int4 weights and 16-bit activations.
EIGHT_BIT_PRODUCTS = ("matmul", "conv")


@dataclass(frozen=True)
class Quantization:
    """One what-if. Empty fields leave that part 16-bit."""
    weights: str = ""        # weight-only storage: "int8", "int4" or "fp8"
    group: int = 128         # weights per scale; 0: one scale per row (output channel)
    scale_bytes: int = 2     # fp16 scales
    kv_cache: str = ""       # "int8" (one fp16 scale per `kv_group` values) or "fp8" (no scales)
    kv_group: int = 128      # a head_dim of 128: one scale per head per token
    matmul: str = ""         # "fp8" or "int8": matmul and convolution operands in 8 bits, at
                             # that peak
    activations: str = ""    # 8-bit matmuls' activation scales: ACTIVATION_SCALES
    source: str = ""         # where a scheme that is no what-if comes from (a checkpoint's config)
    kept: tuple = ()         # module names a checkpoint keeps unquantized (kept_module's rule)

    def __post_init__(self):
        for name, allowed in (("weights", FORMATS), ("kv_cache", EIGHT_BIT), ("matmul", EIGHT_BIT)):
            if getattr(self, name) and getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, "
                                 f"got {getattr(self, name)!r}")
        if self.matmul and self.weights:
            raise ValueError(f"{self.matmul} matmuls already store weights in 8 bits; "
                             f"drop weights={self.weights!r}")
        if self.activations not in ACTIVATION_SCALES:
            raise ValueError(f"activations must be 'row' or 'tensor' (scales found at each call) "
                             f"or '' (fixed ahead of time), got {self.activations!r}")
        if self.activations and not self.matmul:
            raise ValueError("dynamic activation scales (dq) quantize the inputs of 8-bit "
                             "matmuls: add fp8 or w8a8")
        if self.group < 0 or self.kv_group <= 0 or self.scale_bytes < 0:
            raise ValueError("group must be >= 0, kv_group > 0 and scale_bytes >= 0")

    @property
    def label(self) -> str:
        group = f"g{self.group}" if self.group else "per row"
        scales = "" if self.weights == "fp8" else f" ({group})"
        dynamic = f" (activations scaled per {self.activations} at each call)" \
            if self.activations else ""
        parts = (self.weights and f"{self.weights} weights{scales}",
                 self.matmul and f"{self.matmul} matmuls{dynamic}",
                 self.kv_cache and f"{self.kv_cache} KV cache")
        return " + ".join(filter(None, parts)) or "none"

    def stored_bytes(self, kind: str, elements: float, row: int = 0) -> float:
        """Bytes of `elements` values of a quantized tensor: a "weight" (`row`: its last dim, as
        stored), the "kv" cache, or an 8-bit matmul "operand"; scales included."""
        if kind == "weight" and self.weights in ("int8", "int4"):
            scales = math.ceil(elements / (self.group or row)) * self.scale_bytes
            return elements * FORMATS[self.weights] / 8 + scales
        if kind == "kv" and self.kv_cache == "int8":
            return elements + math.ceil(elements / self.kv_group) * self.scale_bytes
        return elements        # fp8 weights or cache, 8-bit matmul operands: a byte, no scales

    def quantizing_kernels(self, elements: float, row: int, size: int) -> tuple:
        """The bytes each kernel moves that quantizes `elements` activations of `size` bytes
        (rows of `row`) at each call, before the matmul reads them in 8 bits: () where their
        scale is fixed ahead of time."""
        if not self.activations or size <= 1:
            return ()
        rows = math.ceil(elements / max(row, 1))
        if self.activations == "row":      # read, a maximum a row, written cast with its scale
            return (round(elements * size + elements + rows * SCALE_BYTES),)
        # per tensor: a reduction reads it for its maximum, then the cast reads it again
        return (round(elements * size + SCALE_BYTES), round(elements * size + elements))


_SPEC = re.compile(r"^(?:(?P<w>w8|w4|int8|int4|wfp8)(?:g(?P<g>\d+))?|(?P<kv>kv8|kv-int8|kvint8|"
                   r"kv-fp8|kvfp8)|(?P<mm>fp8|w8a8)|(?P<dq>dq|dq-row|dq-tensor))$")


def parse(spec) -> Quantization | None:
    """A Quantization from None (or "none"), a Quantization, or a spec string of "+"-joined parts:
    w8 (int8 weights, a scale per row), w4 / w4g64 (int4 weights, group 128 / 64), wfp8,
    kv8 / kv-fp8 (KV cache), fp8 / w8a8 (8-bit matmuls), dq / dq-tensor (their activations
    scaled at each call, a scale a row or one a tensor: "fp8+dq")."""
    if spec is None or isinstance(spec, Quantization):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"quantize must be a spec string or a Quantization, "
                        f"not {type(spec).__name__}")
    if spec.strip().lower() == "none":     # the model's own dtypes, said outright
        return None
    fields: dict = {}
    for part in filter(None, (p.strip().lower() for p in re.split(r"[+,]", spec))):
        m = _SPEC.match(part)
        if m is None:
            raise ValueError(f"unknown quantization {part!r}; expected w8, w4, w4g<N>, wfp8, "
                             f"kv8, kv-fp8, fp8, w8a8 or dq, joined by '+'")
        key = ("weights" if m["w"] else "kv_cache" if m["kv"] else "activations" if m["dq"]
               else "matmul")
        if key in fields:          # "w4+w8": which one was meant? say so, never keep the last
            raise ValueError(f"{spec!r} sets the {key.replace('_', ' ')} twice; give one")
        if m["dq"]:
            fields["activations"] = "tensor" if m["dq"].endswith("tensor") else "row"
        elif m["w"]:
            fields["weights"] = {"w8": "int8", "w4": "int4", "wfp8": "fp8"}.get(m["w"], m["w"])
            fields["group"] = int(m["g"]) if m["g"] else (0 if fields["weights"] == "int8" else 128)
        else:                      # kv8, kv-fp8, ...; fp8 or w8a8 (int8) matmuls
            fields[key] = "fp8" if "fp8" in part else "int8"
    return Quantization(**fields) if fields else None


def kept_module(path: str, patterns: tuple) -> bool:
    """Whether the module at `path` is one `patterns` keep out of the quantization, by
    transformers' rule for `modules_to_not_convert` (`should_convert_module`): a pattern matches
    from a name's start to a module boundary, as a regex with that boundary ("model.layers.*.
    self_attn"), or as its suffix ("lm_head"); llm-compressor's "re:" patterns are regexes.
    `path` is the model's own (graph.nodes.path_in_model)."""
    if not path:
        return False
    return any(re.match(key[3:], path) if key.startswith("re:") else
               re.match(rf"(?:{key})(?:(?<=\.)|(?=\.|$))", path) or path.endswith(key)
               for key in patterns)


@dataclass(frozen=True)
class WhatIf:
    """What quantize_graph changed: storage sizes, for the memory footprint, and caveats."""
    quantization: Quantization | None = None
    weight_saved: int = 0        # bytes fewer in weights
    kv_saved: int = 0            # bytes fewer in the KV cache
    requantized: frozenset = frozenset()   # nodes whose Cost was rewritten
    # the parts of the spec that matched nothing in this graph ("weights", "kv_cache",
    # "matmul"), and the convolutions a weight-only part left 16-bit: the report says so, so a
    # what-if that changed nothing never reads as one that changed nothing worth having
    unmatched: tuple = ()
    convs_kept: int = 0
    # (graph input name, stored bytes / bytes as captured) of each quantized weight: what a
    # fused kernel reading it moves, where fusion counts bytes from tensors, not from Costs
    stored: tuple = ()

    def memory(self, fp: Footprint) -> Footprint:
        if self.quantization is None:
            return fp
        return dataclasses.replace(fp, weights=fp.weights - self.weight_saved,
                                   kv_cache=fp.kv_cache - self.kv_saved)


def _shape_dtype(t: torch.Tensor) -> tuple:
    return tuple(int(d) for d in t.shape), t.dtype


def _row(t: torch.Tensor) -> int:
    """A weight's last dim as stored (nn.Linear: (out, in), so one scale a row is one an output
    channel), whatever view of it an op reads."""
    return int(t.shape[-1]) if t.dim() else 1


# Ops that move or select values without computing new ones: a value made of a cache's own
# values through these alone (a sliding window rolled along) is still a cache of past tokens.
_MOVES = ("view", "copy")


def recurrent_states(gm: fx.GraphModule, owner: dict, written: set) -> set:
    """Storages among `written` (inputs a step writes in place) that it writes with a value
    computed from their own contents: a recurrence's state (Mamba's h = decay * h + push, a
    linear attention's S), which engines keep at the model's precision, not a cache of past
    keys and values (written at new positions, or rolled along by moves alone)."""
    own: dict = {}         # node -> the written storages its value holds, moved or computed
    computed: dict = {}    # node -> those among them an op computed on along the way
    states = set()
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            val = n.meta.get("val")
            s = storage(val) if isinstance(val, torch.Tensor) else None
            own[n] = {s} if s in written and owner.get(s) is n else set()
            computed[n] = set()
            continue
        if n.op != "call_function":
            continue
        ins = n.all_input_nodes
        held = set().union(*(own.get(a, ()) for a in ins))
        cost = n.meta.get(COST_KEY)
        moves = cost is None or cost.category in _MOVES
        done = set().union(*(computed.get(a, ()) for a in ins)) | (set() if moves else held)
        own[n], computed[n] = held, done
        for target in written_args(n):
            val = target.meta.get("val")
            s = storage(val) if isinstance(val, torch.Tensor) else None
            sources = [a for a in ins if a is not target]
            if s in written and any(s in computed.get(a, ()) for a in sources):
                states.add(s)
            if target.op != "placeholder":
                # an op that updates an intermediate in place (a fused state update writing the
                # clone of a state the step then copies back): later readers see what it wrote
                own[target] = own.get(target, set()) | held
                computed[target] = computed.get(target, set()) | done
    return states


def quantize_graph(gm: fx.GraphModule, weights: frozenset, spec, stored: bool = True) -> WhatIf:
    """Rewrite the annotated graph's Cost records for the what-if `spec`; None changes nothing.
    stored=False: 8-bit matmuls read their operands in 8 bits but the weights are kept in full
    precision (a training step, whose optimizer updates them)."""
    q = parse(spec)
    if q is None:
        return WhatIf()
    owner: dict = {}                                  # storage -> the placeholder holding it
    for n in gm.graph.nodes:
        if n.op == "placeholder" and isinstance(n.meta.get("val"), torch.Tensor):
            owner.setdefault(storage(n.meta["val"]), n)
    calls = [n for n in gm.graph.nodes if n.op == "call_function" and COST_KEY in n.meta]
    cache = written_inputs(gm, weights)
    if q.kv_cache:
        cache -= recurrent_states(gm, owner, cache)

    # Which storages are quantized: weights a matmul reads (8-bit operands: a convolution too),
    # inputs written in place (the cache).
    quantized: dict = {}                              # storage -> (kind, the input's last dim)
    gathered = _gathered_into_products(calls)         # gathers feeding matmuls
    convs_kept = 0                                    # convolutions a weight-only part skips
    kept = {n for n in calls if q.kept and kept_module(path_in_model(n), q.kept)}
    for n in calls:
        category = n.meta[COST_KEY].category
        into_product = n not in kept and (category == "matmul" or n in gathered
                                          or category in EIGHT_BIT_PRODUCTS and bool(q.matmul))
        reads_weight = False
        for s in map(storage, OpCall.of(n).inputs):   # owner has every input's, the cache's too
            reads_weight |= s in owner and owner[s].name in weights
            # a matrix: a linear's bias, which addmm reads too, stays in its dtype
            if (s in owner and owner[s].name in weights and into_product
                    and owner[s].meta["val"].dim() >= 2
                    and (q.weights or q.matmul and stored)):
                quantized[s] = ("weight", _row(owner[s].meta["val"]))
            elif q.kv_cache and s in cache:
                quantized[s] = ("kv", 0)
        convs_kept += bool(q.weights) and category == "conv" and reads_weight
    if q.weights or (q.matmul and stored):
        # Weights this step reads no op of, shaped as one it quantizes: the experts its routing
        # skipped. A weight-only quantization stores every expert alike, so they count too.
        read = {s for n in gm.graph.nodes if n.op == "call_function"
                for s in map(storage, OpCall.of(n).inputs)}
        kinds = {_shape_dtype(owner[s].meta["val"]) for s, (kind, _) in quantized.items()
                 if kind == "weight"}
        for s, n in owner.items():
            if (n.name in weights and s not in read and s not in quantized
                    and _shape_dtype(n.meta["val"]) in kinds):
                quantized[s] = ("weight", _row(n.meta["val"]))

    requantized = set()
    for n in calls:
        cost = n.meta[COST_KEY]
        if cost.category == "view" or not cost.known:
            continue
        mm8 = bool(q.matmul) and cost.category in EIGHT_BIT_PRODUCTS and n not in kept
        ins = OpCall.of(n).inputs
        touched = {id(t): t for t in ins + tensors_in(n.meta.get("val"))
                   if storage(t) in quantized}
        if mm8:   # 2-D+ float operands (activations and weights); a bias stays 16-bit
            touched.update({id(t): t for t in ins if t.dim() >= 2 and t.is_floating_point()})
        if touched:
            n.meta[COST_KEY] = _requantized(n, cost, touched.values(), quantized, q, mm8)
            requantized.add(n.name)

    kinds = {kind for kind, _ in quantized.values()}
    products8 = sum(1 for n in calls if n.meta[COST_KEY].category in EIGHT_BIT_PRODUCTS)
    unmatched = tuple(part for part, asked, found in (
        ("weights", q.weights, "weight" in kinds), ("kv_cache", q.kv_cache, "kv" in kinds),
        ("matmul", q.matmul, products8 > 0)) if asked and not found)
    saved, stored = {"weight": 0, "kv": 0}, []
    for s, (kind, row) in quantized.items():
        t = owner[s].meta["val"]
        size = t.untyped_storage().nbytes()
        saved[kind] += size - round(q.stored_bytes(kind, size // t.element_size(), row))
        if kind == "weight" and size:
            stored.append((owner[s].name,
                           q.stored_bytes(kind, size // t.element_size(), row) / size))
    return WhatIf(q, saved["weight"], saved["kv"], frozenset(requantized), unmatched=unmatched,
                  convs_kept=convs_kept, stored=tuple(stored))


def _gathered_into_products(calls) -> set:
    """Gathers whose rows a matmul reads, views between them looked through: weights picked
    per token before the product (gpt-fast's experts, `self.w1[expert_indices]` into an
    einsum) are the product's weights."""
    found = set()
    for n in calls:
        if n.meta[COST_KEY].category != "matmul":
            continue
        todo = list(n.all_input_nodes)
        while todo:
            arg = todo.pop()
            cost = arg.meta.get(COST_KEY)
            if cost is not None and cost.category == "view":
                todo.extend(arg.all_input_nodes)
            elif getattr(arg.target, "overloadpacket", None) in GATHERS:
                found.add(arg)
    return found


def _made_by(node: fx.Node, t: torch.Tensor) -> str:
    """The category of the op whose kernel makes `t`, an input of `node`, views looked
    through; "" for a graph input (no kernel makes it)."""
    arg = next((a for a in node.all_input_nodes if a.meta.get("val") is t), None)
    while arg is not None and arg.op == "call_function":
        cost = arg.meta.get(COST_KEY)
        if cost is None or cost.category != "view" or not arg.all_input_nodes:
            return cost.category if cost is not None else ""
        arg = arg.all_input_nodes[0]
    return ""


def _stand_in(t: torch.Tensor) -> torch.Tensor:
    """A 1-byte tensor addressing the same elements (shape and strides) as t."""
    return torch.empty_strided(tuple(int(s) for s in t.shape), tuple(int(s) for s in t.stride()),
                               dtype=torch.int8, device="meta")


def _requantized(node: fx.Node, cost: Cost, touched, quantized: dict, q: Quantization,
                 mm8: bool) -> Cost:
    """Charge the quantized tensors' elements this node moves at their quantized size.

    Bytes are linear in the element size of a tensor, so one recount by the op's own formula with
    a 1-byte stand-in gives how many of its elements the node reads and writes:
    (bytes at e - bytes at 1) / (e - 1).
    """
    read, written, quantizing, folds = cost.bytes_read, cost.bytes_written, (), ()
    for t in touched:
        size = t.element_size()
        if size <= 1:
            continue
        ones = formula_cost(OpCall.of(node, {id(t): _stand_in(t)}))
        kind, row = quantized.get(storage(t), ("operand", 0))
        moved_read = (cost.bytes_read - ones.bytes_read) / (size - 1)
        moved_written = (cost.bytes_written - ones.bytes_written) / (size - 1)
        read += round(q.stored_bytes(kind, moved_read, row) - moved_read * size)
        written += round(q.stored_bytes(kind, moved_written, row) - moved_written * size)
        if mm8 and kind == "operand":    # an activation, cast to 8 bits before the matmul
            kernels = q.quantizing_kernels(moved_read, _row(t), size)
            # a scale a row is found in the kernel that makes the row, where a fusing compiler
            # writes that kernel (a norm, an activation function: vLLM's fused rms_norm and
            # silu_and_mul quants, Inductor's fusion of torchao's); a tensor's scale needs the
            # whole tensor first
            made = _made_by(node, t)
            folds += ((q.activations == "row" and made in GENERATED_CATEGORIES),) * len(kernels)
            quantizing += kernels
    note = ", ".join(filter(None, (cost.note, f"what-if {q.label}")))
    # a matmul reading int8 or int4 weights is a dequantizing kernel, not the library's GEMM
    # (its streaming share: chips/expected.DEQUANT_STREAM_SHARE), and so is a gather of them:
    # the rows it picks are cast up as they are read
    dequant = (not mm8 and cost.category in ("matmul", "copy") and q.weights in DEQUANTIZED
               and any(quantized.get(storage(t), ("",))[0] == "weight" for t in touched))
    return dataclasses.replace(cost, bytes_read=read, bytes_written=written,
                               dtype=q.matmul if mm8 else cost.dtype, note=note,
                               variant=dequantizing(q.weights) if dequant else cost.variant,
                               quantize=cost.quantize + quantizing,
                               quantize_folds=cost.quantize_folds + folds)
