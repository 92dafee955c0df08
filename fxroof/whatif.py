"""Quantization what-ifs: the bytes and the peak a quantized deployment would see, on the graph
captured from the 16-bit model, without touching the model.

    fxroof.analyze(model, args, kwargs, quantize="w4")          # int4 weights, group 128
    fxroof.analyze(model, args, kwargs, quantize="w8+kv8")      # int8 weights, int8 KV cache
    fxroof.analyze(model, args, kwargs, quantize="fp8")         # fp8 matmuls (W8A8, fp8 peak)

A pass between annotate and fuse: it rewrites the Cost record (node.meta["fxroof.cost"]) of every
node that touches a quantized tensor, and nothing else. Which tensors:
- weights: the weight placeholders read by matmul-category nodes (every linear layer, the output
  head included; embeddings, norms and biases stay 16-bit). Weight-only schemes (int8, int4, fp8
  storage) are dequantized inside the kernel, so the compute dtype and peak do not change.
- KV cache: the inputs the graph writes in place (fxroof.memory's definition), read and written
  at the cache dtype.
- fp8 / int8 matmuls: every matmul reads its 2-D+ operands at 1 byte an element and runs at the
  chip's fp8 / int8 peak (fallback to 16-bit where the chip has none, as Chip.matrix_dtype says).
  The cast of activations to 8 bits is assumed fused into the op that makes them.
Bytes are re-counted by the op's own formula on 1-byte stand-ins of the quantized tensors: the
difference says how many elements of them the op really moves (a gather moves only its rows),
and those elements are then charged at the quantized size, scales included:
    int4, group g, fp16 scales:  n/2 + (n/g)*2 bytes   (g=128: 0.5156 bytes an element)
    int8, one fp16 scale a row:  n + rows*2 bytes
Fused kernels count their bytes from tensor sizes, not from Cost records, so a quantized tensor
read by a fusable op would keep its 16-bit size in compiled mode; such reads are listed in
`notes`. Matmuls do not fuse unless matmul_epilogues=True, which is refused here for that reason.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch.multiprocessing.reductions import StorageWeakRef

from .cost import COST_KEY, Cost
from .dataflow import GATHERS, SCATTERS, SOLO_CATEGORIES, mutates
from .formulas import OpCall, lookup, pointwise
from .memory import Footprint, written_inputs
from .tensors import tensors_in

__all__ = ["Quantization", "WhatIf", "parse", "quantize_graph"]

FORMATS = {"int8": 8, "fp8": 8, "int4": 4}      # bits an element
MATMUL_DTYPES = ("fp8", "int8")
KV_FORMATS = ("fp8", "int8")


@dataclass(frozen=True)
class Quantization:
    """One what-if. Empty fields leave that part 16-bit."""
    weights: str = ""        # weight-only storage: "int8", "int4" or "fp8"
    group: int = 128         # weights per scale; 0: one scale per row (output channel)
    scale_bytes: int = 2     # fp16 scales
    kv_cache: str = ""       # "int8" (one fp16 scale per `kv_group` values) or "fp8" (no scales)
    kv_group: int = 128      # a head_dim of 128: one scale per head per token
    matmul: str = ""         # "fp8" or "int8": matmul operands in 8 bits, run at that peak

    def __post_init__(self):
        if self.weights and self.weights not in FORMATS:
            raise ValueError(f"weights must be one of {', '.join(FORMATS)}, got {self.weights!r}")
        if self.kv_cache and self.kv_cache not in KV_FORMATS:
            raise ValueError(f"kv_cache must be one of {', '.join(KV_FORMATS)}, "
                             f"got {self.kv_cache!r}")
        if self.matmul and self.matmul not in MATMUL_DTYPES:
            raise ValueError(f"matmul must be one of {', '.join(MATMUL_DTYPES)}, "
                             f"got {self.matmul!r}")
        if self.matmul and self.weights:
            raise ValueError(f"{self.matmul} matmuls already store weights in 8 bits; "
                             f"drop weights={self.weights!r}")
        if self.group < 0 or self.kv_group <= 0 or self.scale_bytes < 0:
            raise ValueError("group must be >= 0, kv_group > 0 and scale_bytes >= 0")

    @property
    def label(self) -> str:
        parts = []
        if self.weights:
            scales = "" if self.weights == "fp8" else (
                f" (g{self.group})" if self.group else " (per row)")
            parts.append(f"{self.weights} weights{scales}")
        if self.matmul:
            parts.append(f"{self.matmul} matmuls")
        if self.kv_cache:
            parts.append(f"{self.kv_cache} KV cache")
        return " + ".join(parts) or "none"

    def weight_bytes(self, elements: float, row: int) -> float:
        """Bytes of `elements` weights stored quantized; `row` is the weight's last dim."""
        if self.matmul:
            return elements                        # 8-bit operands, one scale per tensor
        bits = FORMATS[self.weights]
        if self.weights == "fp8":
            return elements * bits / 8
        group = self.group or row
        return elements * bits / 8 + math.ceil(elements / group) * self.scale_bytes

    def kv_bytes(self, elements: float) -> float:
        if self.kv_cache == "fp8":
            return elements
        return elements + math.ceil(elements / self.kv_group) * self.scale_bytes


_SPEC = re.compile(r"^(?:(?P<w>w8|w4|int8|int4|wfp8)(?:g(?P<g>\d+))?|(?P<kv>kv8|kv-int8|kvint8|"
                   r"kv-fp8|kvfp8)|(?P<mm>fp8|w8a8))$")


def parse(spec) -> Quantization | None:
    """A Quantization from None, a Quantization, or a spec string of "+"-joined parts:
    w8 (int8 weights, a scale per row), w4 / w4g64 (int4 weights, group 128 / 64), wfp8,
    kv8 / kv-fp8 (KV cache), fp8 / w8a8 (8-bit matmuls)."""
    if spec is None or isinstance(spec, Quantization):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"quantize must be a spec string or a Quantization, "
                        f"not {type(spec).__name__}")
    fields: dict = {}
    for part in filter(None, (p.strip().lower() for p in re.split(r"[+,]", spec))):
        m = _SPEC.match(part)
        if m is None:
            raise ValueError(f"unknown quantization {part!r}; expected w8, w4, w4g<N>, wfp8, "
                             f"kv8, kv-fp8, fp8 or w8a8, joined by '+'")
        if m["w"]:
            fields["weights"] = {"w8": "int8", "w4": "int4", "wfp8": "fp8"}.get(m["w"], m["w"])
            fields["group"] = int(m["g"]) if m["g"] else (0 if fields["weights"] == "int8" else 128)
        elif m["kv"]:
            fields["kv_cache"] = "fp8" if "fp8" in m["kv"] else "int8"
        else:
            fields["matmul"] = "fp8" if m["mm"] == "fp8" else "int8"
    return Quantization(**fields) if fields else None


@dataclass(frozen=True)
class WhatIf:
    """What quantize_graph changed: storage sizes, for the memory footprint, and caveats."""
    quantization: Quantization | None = None
    weight_saved: int = 0        # bytes fewer in weights
    kv_saved: int = 0            # bytes fewer in the KV cache
    notes: tuple = ()

    def memory(self, fp: Footprint) -> Footprint:
        if self.quantization is None:
            return fp
        return Footprint(fp.weights - self.weight_saved, fp.kv_cache - self.kv_saved, fp.inputs,
                         fp.activations)


def _storage(t: torch.Tensor):
    try:
        return StorageWeakRef(t.untyped_storage())
    except (RuntimeError, NotImplementedError):
        return None


def _inputs(node: fx.Node) -> list[torch.Tensor]:
    return tensors_in(fx.node.map_arg((node.args, node.kwargs), lambda n: n.meta.get("val")))


def quantize_graph(gm: fx.GraphModule, weights: frozenset, spec, *,
                   matmul_epilogues: bool = False) -> WhatIf:
    """Rewrite the annotated graph's Cost records for the what-if `spec`; None changes nothing."""
    q = parse(spec)
    if q is None:
        return WhatIf()
    if matmul_epilogues:
        raise ValueError("quantization what-ifs need matmul_epilogues=False: a matmul fused with "
                         "its epilogues counts its bytes from tensor sizes, not from its Cost")
    nodes = list(gm.graph.nodes)
    owner: dict = {}                                  # storage -> placeholder node
    for n in nodes:
        if n.op == "placeholder" and isinstance(n.meta.get("val"), torch.Tensor):
            owner.setdefault(_storage(n.meta["val"]), n)
    calls = [n for n in nodes if n.op == "call_function" and COST_KEY in n.meta]
    cache = written_inputs(gm, weights)

    # Which storages are quantized: weights a matmul reads, inputs written in place (the cache).
    quantized: dict = {}                              # storage -> ("weight" | "kv", placeholder)
    for n in calls:
        cost = n.meta[COST_KEY]
        for t in _inputs(n):
            ph = owner.get(_storage(t))
            if ph is None:
                continue
            if ph.name in weights and cost.category == "matmul" and (q.weights or q.matmul):
                quantized[_storage(t)] = ("weight", ph)
            elif q.kv_cache and _storage(t) in cache:
                quantized[_storage(t)] = ("kv", ph)

    fusable = 0
    for n in calls:
        cost = n.meta[COST_KEY]
        if cost.category == "view" or not cost.known:
            continue
        mm8 = bool(q.matmul) and cost.category == "matmul"
        ins = _inputs(n)
        touched = {id(t): t for t in ins + tensors_in(n.meta.get("val"))
                   if _storage(t) in quantized}
        if mm8:   # 2-D+ float operands (activations and weights); a bias stays 16-bit
            touched.update({id(t): t for t in ins if t.dim() >= 2 and t.is_floating_point()})
        if not touched:
            continue
        n.meta[COST_KEY] = _requantized(n, cost, list(touched.values()), quantized, q, mm8)
        fusable += not _solo(n, cost)
    notes = (f"{fusable} fusable ops read quantized tensors: in compiled mode their fused "
             f"kernels count those reads at the unquantized size",) if fusable else ()

    saved = {"weight": 0, "kv": 0}
    for kind, ph in {v[1].name: v for v in quantized.values()}.values():
        t = ph.meta["val"]
        n_bytes = t.untyped_storage().nbytes()
        elements = n_bytes // t.element_size()
        new = q.weight_bytes(elements, _row(ph)) if kind == "weight" else q.kv_bytes(elements)
        saved[kind] += n_bytes - round(new)
    return WhatIf(q, saved["weight"], saved["kv"], notes)


def _row(placeholder: fx.Node) -> int:
    """A weight's last dim as stored (nn.Linear: (out, in), so one scale a row is one an output
    channel), whatever view of it an op reads."""
    t = placeholder.meta["val"]
    return int(t.shape[-1]) if t.dim() else 1


def _solo(node: fx.Node, cost: Cost) -> bool:
    packet = getattr(node.target, "overloadpacket", None)
    return (cost.category in SOLO_CATEGORIES or mutates(node) or packet in GATHERS
            or packet in SCATTERS)


def _stand_in(t: torch.Tensor) -> torch.Tensor:
    """A 1-byte tensor addressing the same elements (shape and strides) as t."""
    return torch.empty_strided(tuple(int(s) for s in t.shape), tuple(int(s) for s in t.stride()),
                               dtype=torch.int8, device="meta")


def _recount(node: fx.Node, swap: dict) -> Cost:
    """The node's Cost with some tensors replaced (by id) by stand-ins, from its own formula."""
    def value(n):
        v = n.meta.get("val")
        return swap.get(id(v), v) if isinstance(v, torch.Tensor) else v
    out = node.meta.get("val")
    out = type(out)(swap.get(id(t), t) for t in out) if isinstance(out, (tuple, list)) else (
        swap.get(id(out), out))
    call = OpCall(node.target, fx.node.map_arg(node.args, value),
                  fx.node.map_arg(node.kwargs, value), out)
    entry = lookup(node.target)
    if entry is not None:
        result = entry.fn(call)
        if isinstance(result, Cost):
            return result
        return Cost(int(result), call.bytes_read(), call.bytes_written(), entry.category)
    return pointwise(call)


def _requantized(node: fx.Node, cost: Cost, touched: list, quantized: dict, q: Quantization,
                 mm8: bool) -> Cost:
    """Charge the quantized tensors' elements this node moves at their quantized size.

    Bytes are linear in the element size of a tensor, so one recount with 1-byte stand-ins gives
    how many of its elements the node reads and writes: (bytes at e - bytes at 1) / (e - 1).
    """
    read, written = cost.bytes_read, cost.bytes_written
    for t in {id(t): t for t in touched}.values():
        size = t.element_size()
        if size <= 1:
            continue
        ones = _recount(node, {id(t): _stand_in(t)})
        moved_read = (cost.bytes_read - ones.bytes_read) / (size - 1)
        moved_written = (cost.bytes_written - ones.bytes_written) / (size - 1)
        kind, ph = quantized.get(_storage(t), ("operand", None))
        if kind == "weight":
            row = _row(ph)
            bytes_of = (lambda e, row=row: q.weight_bytes(e, row))
        elif kind == "kv":
            bytes_of = q.kv_bytes
        else:
            bytes_of = (lambda e: e)                 # an 8-bit matmul operand
        read += round(bytes_of(moved_read) - moved_read * size) if moved_read else 0
        written += round(bytes_of(moved_written) - moved_written * size) if moved_written else 0
    note = ", ".join(filter(None, (cost.note, f"what-if {q.label}")))
    dtype = q.matmul if mm8 else cost.dtype
    return cost.replace(bytes_read=read, bytes_written=written, dtype=dtype, note=note)
