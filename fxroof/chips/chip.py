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
      "launch_us": 2,                           per kernel replayed from a compiled program
      "dispatch_us": 10,                        per op in PyTorch eager, from Python on the host
      "sources": {"peak_flops": "...", "mem_bw": "...", ...}
                    keyed by Chip field name (peak_flops, vector_flops, mem_bw, mem_bytes, link_bw,
                    link_latency_s, launch_s, dispatch_s), plus "peak_flops.<dtype>" where one dtype
                    has its own source. Each value is a datasheet title and URL, or
                    "estimate: <reason>". Required for every figure in the shipped table; in a user's
                    file a missing source defaults to the file itself.
    }
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Iterator

KINDS = ("gpu", "tpu", "cpu", "accelerator")
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
PEAK_KEY, PEAK_UNIT = "peak_TFLOPS", 1e12
FIGURES = ("peak_flops", *SCALARS)            # every field that must carry a source
FILE_KEYS = {"name", "title", "kind", "aliases", PEAK_KEY, "sources"} | {k for k, _ in SCALARS.values()}

# Names a dtype may arrive under (torch.dtype, its str, or fxroof's short names) -> DTYPES entry.
_DTYPE_ALIASES = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16",
                  "half": "fp16", "uint8": "int8"}


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


def short_dtype(dtype: Any) -> str:
    """'bf16' for "bf16", "bfloat16", torch.bfloat16; other dtypes keep a lower-case name."""
    name = str(dtype).lower().removeprefix("torch.")
    if name.startswith("float8"):
        return "fp8"
    return _DTYPE_ALIASES.get(name, name)


def positive(value: Any, what: str) -> float:
    """value as a float, or ChipError naming `what` when it is not a positive finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ChipError(f"{what} must be a positive number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ChipError(f"{what} must be a positive number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Chip:
    """One chip, SI units, dense peaks. Made from a chip file, or in code (validated either way).

    vector_flops is the rate for non-matrix work. On NVIDIA GPUs it is the fp32 CUDA-core figure:
    PyTorch's elementwise and reduction kernels compute in fp32 ("opmath") even on half-precision
    tensors, so packed half-precision rates would flatter them.
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
    launch_s: float           # per kernel replayed from a compiled program / CUDA graph
    dispatch_s: float         # per op of PyTorch eager dispatch from Python
    sources: Mapping[str, str] = field(default_factory=dict, hash=False, compare=False)
    aliases: tuple[str, ...] = field(default=(), compare=False)

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
        sources = dict(self.sources)
        extra = sorted(set(sources) - set(FIGURES) - {f"peak_flops.{d}" for d in DTYPES})
        if extra:
            raise ChipError(f"chip {self.name!r}: sources has unknown key(s) {', '.join(extra)}; "
                            f"expected among {', '.join(FIGURES)} or peak_flops.<dtype>")
        for f in FIGURES:
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
        name = short_dtype(dtype)
        if name in self.peak_flops:
            return name
        if name in ("fp8", "int8"):
            for half in HALF:
                if half in self.peak_flops:
                    return half
        return "fp32"

    def matrix_flops(self, dtype: Any = "bf16") -> float:
        """Dense matrix-unit peak FLOP/s for `dtype`, with the fallbacks of `matrix_dtype`."""
        return self.peak_flops[self.matrix_dtype(dtype)]

    def ridge(self, dtype: Any = "bf16") -> float:
        """Arithmetic intensity (FLOP/byte) where matrix work in `dtype` turns compute-bound."""
        return self.matrix_flops(dtype) / self.mem_bw

    def to_dict(self) -> dict:
        """Plain JSON-ready dict in SI units (FLOP/s, bytes/s, bytes, seconds)."""
        return {
            "name": self.name, "title": self.title, "kind": self.kind,
            "peak_flops": dict(self.peak_flops),
            **{f: getattr(self, f) for f in SCALARS},
            "sources": dict(self.sources),
        }


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
    sources = entry.get("sources", {})
    if not isinstance(sources, dict) or not all(
            isinstance(v, str) and v.strip() for v in sources.values()):
        raise ChipError(f"{label}: sources must be an object of non-empty strings")
    if require_sources:
        unsourced = [f for f in FIGURES if f not in sources]
        if unsourced:
            raise ChipError(f"{label}: no source for {', '.join(unsourced)}")
    sources = {f: sources.get(f, f"chip file {where}") for f in FIGURES} | sources
    aliases = entry.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise ChipError(f"{label}: aliases must be a list of names")
    try:
        return Chip(name=entry["name"], title=entry["title"], kind=entry["kind"],
                    peak_flops=peak_flops, sources=sources, aliases=tuple(aliases), **scalars)
    except ChipError as e:
        raise ChipError(f"{where}: {e}") from None
