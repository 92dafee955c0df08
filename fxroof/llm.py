"""LLM inference: prefill and decode side by side, a whole generation, the critical batch.

    g = fxroof.llm.generation("models/llama.py", prompt=512, new_tokens=128, batch=1, chip="a100")
    print(g)                  # prefill | first decode step | last decode step, then the totals
    c = fxroof.llm.critical_batch("models/llama.py", chip="a100", ctx=512)
    print(c)                  # where decode's linear layers, and the whole step, turn compute-bound

Workloads follow models/llama.py's convention: keyword options phase ("prefill" | "decode"),
batch, seq (prompt tokens, prefill) and ctx (tokens already cached, decode), plus any `options`.

A generation is the prompt's forward pass (prefill), then `new_tokens` decode steps; step j feeds
one token per sequence at position prompt + j and attends over prompt + j + 1 keys. The context
grows, so the steps are not all alike. Every shape in a decode step is affine in ctx (the cached
keys read, the cache written), so each kernel's FLOPs and bytes are too, and so are its compute,
memory and communication times; its time, their maximum, is then exact at every step from the
first and last steps alone. A third step (the middle one) checks the affinity; should it fail
(a fusion that changes with ctx), every step is reported on its own (or, past 64 steps,
interpolated between 9 of them, and the result says so).
"""
from __future__ import annotations

from dataclasses import dataclass

from . import tables
from .chips import Chip, chip as find_chip
from .report import Report
from .roofline import Timing
from .sweep import Sweep
from .symbolic import Evaluator, Point, builder, no_full_gc
from .units import percent, ratio, seconds, si
from .whatif import parse as parse_quantization
from .workload import DEFAULT_SPEC

__all__ = ["CriticalBatch", "Generation", "critical_batch", "generation"]

EVERY_STEP_UP_TO = 64      # steps reported one by one when affinity fails
INTERPOLATION_POINTS = 9


@dataclass(frozen=True)
class Generation:
    prompt: int
    new_tokens: int
    batch: int
    prefill: Report
    first: Report                # decode step 0 (ctx = prompt)
    last: Report                 # decode step new_tokens - 1 (ctx = prompt + new_tokens - 1)
    step_s: tuple                # every decode step's time
    method: str                  # "affine in ctx", "every step" or "interpolated"
    whatif: str = ""
    notes: tuple = ()

    @property
    def prefill_s(self) -> float:
        return self.prefill.time_s

    @property
    def decode_s(self) -> float:
        return sum(self.step_s)

    @property
    def total_s(self) -> float:
        return self.prefill_s + self.decode_s

    @property
    def tokens_per_s(self) -> float:
        """New tokens a second over the whole generation, every sequence of the batch counted."""
        return self.batch * self.new_tokens / self.total_s if self.total_s else 0.0

    @property
    def per_token_s(self) -> float:
        """Mean decode step: the time between two tokens of one sequence."""
        return self.decode_s / self.new_tokens if self.new_tokens else 0.0

    def to_dict(self) -> dict:
        def phase(r: Report) -> dict:
            return {"time_s": r.time_s, "regime": r.regime, "regime_share": r.regime_share,
                    "flops": r.flops, "bytes": r.summary.bytes, "memory": r.memory.to_dict()}
        return {"schema": "fxroof.generation/1", "chip": self.prefill.chip.name,
                "mode": self.prefill.mode, "prompt": self.prompt, "new_tokens": self.new_tokens,
                "batch": self.batch, "whatif": self.whatif, "method": self.method,
                "prefill": phase(self.prefill), "decode_first": phase(self.first),
                "decode_last": phase(self.last), "step_s": list(self.step_s),
                "prefill_s": self.prefill_s, "decode_s": self.decode_s, "total_s": self.total_s,
                "tokens_per_s": self.tokens_per_s, "per_token_s": self.per_token_s,
                "notes": list(self.notes)}

    def __str__(self) -> str:
        p, a, b = self.prefill, self.first, self.last
        n, last_ctx = self.new_tokens, self.prompt + self.new_tokens - 1

        def row(name, f):
            return [name, f(p), f(a), f(b)]
        rows = [["tokens/step", f"{self.batch}x{self.prompt}", f"{self.batch}x1",
                 f"{self.batch}x1"],
                ["keys read", f"≤{self.prompt}", f"{self.prompt + 1}", f"{last_ctx + 1}"],
                row("time", lambda r: seconds(r.time_s)),
                row("regime", lambda r: f"{r.regime} {percent(r.regime_share[r.regime])}"),
                row("FLOPs", lambda r: si(r.flops, "FLOP")),
                row("bytes moved", lambda r: si(r.summary.bytes, "B")),
                row("FLOP/B", lambda r: ratio(r.intensity)),
                row("weights", lambda r: si(r.memory.weights, "B")),
                row("KV cache", lambda r: si(r.memory.kv_cache, "B")),
                row("activations", lambda r: si(r.memory.activations, "B"))]
        table = tables.table(rows, ["", "prefill", "decode, step 1", f"decode, step {n}"],
                              ("left", "right", "right", "right"))
        share = self.decode_s / self.total_s if self.total_s else 0.0
        lines = [f"fxroof generation · {p.model} on {p.chip.title}{tables.rank_label(p)} · "
                 f"{p.mode} · batch "
                 f"{self.batch}, prompt {self.prompt} + {n} new tokens"
                 + (f" · what-if {self.whatif}" if self.whatif else ""), "", table, "",
                 f"total {seconds(self.total_s)} = prefill {seconds(self.prefill_s)} "
                 f"({percent(1 - share)}) + {n} decode steps {seconds(self.decode_s)} "
                 f"({percent(share)})",
                 f"first token after {seconds(self.prefill_s)} · then one every "
                 f"{seconds(self.per_token_s)} · {si(self.tokens_per_s, 'tokens/s')} overall",
                 f"decode steps: {self.method}"]
        return "\n".join(tables.wrap(lines + list(self.notes)))


def generation(workload="", *, prompt: int, new_tokens: int, batch: int = 1,
               chip: "str | Chip" = "h100-sxm", mode: str = "compiled",
               options: dict | None = None, quantize=None, tp: int = 1) -> Generation:
    """Prefill of `prompt` tokens then `new_tokens` decode steps, for `batch` sequences.

    workload: a workload spec or function following models/llama.py's options (default: the
    bundled Llama-2-7B). quantize: a what-if (fxroof.whatif) applied to every phase.
    tp: tensor-parallel degree; the times are one rank's (fxroof.parallel).
    """
    if prompt < 1 or new_tokens < 1 or batch < 1:
        raise ValueError("prompt, new_tokens and batch must be >= 1")
    with no_full_gc():
        return _generation(workload, prompt, new_tokens, batch, chip, mode, options, quantize, tp)


def _generation(workload, prompt, new_tokens, batch, chip, mode, options, quantize,
                tp) -> Generation:
    workload = workload or DEFAULT_SPEC
    q = parse_quantization(quantize)
    target = find_chip(chip)
    common = {**(options or {}), "batch": batch}
    prefill = Evaluator(builder(workload, "seq", {**common, "phase": "prefill"}), "seq", [prompt],
                        chip=target, mode=mode, quantize=q, tp=tp).point(prompt).report
    last = prompt + new_tokens - 1
    mid = prompt + (new_tokens - 1) // 2
    steps = list(dict.fromkeys([prompt, last, mid])) if new_tokens > 3 else list(
        range(prompt, last + 1))
    decode = Evaluator(builder(workload, "ctx", {**common, "phase": "decode"}), "ctx", steps,
                       chip=target, mode=mode, quantize=q, tp=tp)
    at = {ctx: decode.point(ctx) for ctx in steps}
    notes = [f"note: {decode.why_not}"] if decode.why_not else []
    notes += [f"note: ctx={p.value}: {p.note}" for p in at.values() if p.note]
    if new_tokens <= 3:
        step_s, method = [at[c].time_s for c in steps], "every step reported"
    else:
        step_s = _affine_steps(at[prompt].report, at[mid].report, at[last].report, mid - prompt,
                               new_tokens)
        method = ("each kernel's compute, memory and overhead time affine in ctx, from the "
                  f"first and last steps; checked at ctx={mid}")
        if step_s is None and new_tokens <= EVERY_STEP_UP_TO:
            step_s = [decode.point(c).time_s for c in range(prompt, last + 1)]
            method = "every step reported (kernels are not affine in ctx here)"
        elif step_s is None:
            step_s, method = _interpolated(decode, prompt, last), (
                f"interpolated between {INTERPOLATION_POINTS} steps (kernels are not affine in "
                f"ctx here): approximate")
    return Generation(prompt, new_tokens, batch, prefill, at[prompt].report, at[last].report,
                      tuple(step_s), method, q.label if q else "", tuple(notes))


def _affine_steps(first: Report, mid: Report, last: Report, j_mid: int, n: int):
    """Each decode step's time from per-kernel affinity in ctx, or None if it does not hold."""
    ka, km, kb = first.kernels, mid.kernels, last.kernels
    if not len(ka) == len(km) == len(kb):
        return None
    varying, constant = [], 0.0
    for a, m, b in zip(ka, km, kb):
        if not (a.nodes == m.nodes == b.nodes and a.category == b.category and a.dtype == b.dtype):
            return None
        for f in ("flops", "bytes_read", "bytes_written"):   # integers: the check is exact
            if (getattr(m, f) - getattr(a, f)) * (n - 1) != (getattr(b, f) - getattr(a, f)) * j_mid:
                return None
        if (a.flops, a.bytes, a.timing.comm_s) == (b.flops, b.bytes, b.timing.comm_s):
            constant += a.time_s
        else:
            varying.append((a.timing, b.timing))
    steps = []
    for j in range(n):
        f = j / (n - 1)
        t = constant
        for ta, tb in varying:
            t += Timing(ta.compute_s + (tb.compute_s - ta.compute_s) * f,
                        ta.memory_s + (tb.memory_s - ta.memory_s) * f,
                        ta.comm_s + (tb.comm_s - ta.comm_s) * f, ta.overhead_s,
                        ta.serial_overhead).time_s
        steps.append(t)
    return steps


def _interpolated(decode: Evaluator, first: int, last: int) -> list:
    at = sorted({first + round(i * (last - first) / (INTERPOLATION_POINTS - 1))
                 for i in range(INTERPOLATION_POINTS)})
    times = {c: decode.point(c).time_s for c in at}
    steps = []
    for c in range(first, last + 1):
        hi = next(x for x in at if x >= c)
        lo = max(x for x in at if x <= c)
        steps.append(times[lo] if hi == lo else
                     times[lo] + (times[hi] - times[lo]) * (c - lo) / (hi - lo))
    return steps


# -- critical batch -------------------------------------------------------------------------------

@dataclass(frozen=True)
class CriticalBatch:
    """Where batching turns decode compute-bound on a chip.

    A decode linear reads its K x N weights once for the whole batch and does 2*B*K*N FLOPs, so
    at 16 bits its intensity is 2BKN / (2KN + 2BK + 2BN) ~ B FLOP/byte while B << K, N: it turns
    compute-bound near batch = the chip's ridge point (peak FLOP/s / memory bytes/s).
    """
    ctx: int
    ridge: float                 # FLOP/B where the decode matmuls' dtype turns compute-bound
    dtype: str
    linear_batch: int | None     # smallest batch where every linear layer is compute-bound
    step_batch: int | None       # smallest batch where the whole step is, None: not up to max
    max_batch: int
    sweep: Sweep                 # every batch evaluated on the way, in batch order

    def to_dict(self) -> dict:
        return {"schema": "fxroof.critical_batch/1", "ctx": self.ctx, "ridge": self.ridge,
                "dtype": self.dtype, "linear_batch": self.linear_batch,
                "step_batch": self.step_batch, "max_batch": self.max_batch,
                "points": [{**p.to_dict(), "linear_intensity": linear_intensity(p.report),
                            "linear_regime": linear_regime(p.report)} for p in self.sweep.points]}

    def __str__(self) -> str:
        s = self.sweep
        rows = [[p.value, seconds(p.time_s), si(p.throughput, "tok/s"),
                 ratio(linear_intensity(p.report)), linear_regime(p.report),
                 f"{p.regime} {percent(p.report.regime_share[p.regime])}"] for p in s.points]
        table = tables.table(rows, ["batch", "step time", "throughput", "linear FLOP/B",
                                     "linears", "whole step"],
                              ("right", "right", "right", "right", "left", "left"))
        first = s.points[0].report
        never = f"none up to batch {self.max_batch}"
        lines = [f"fxroof critical batch · {first.model} decode at ctx {self.ctx} on "
                 f"{s.chip.title}{tables.rank_label(first)} · {s.mode}"
                 + (f" · what-if {s.whatif}" if s.whatif else ""),
                 f"{self.dtype} ridge point {ratio(self.ridge)} FLOP/B; a decode linear's "
                 f"intensity is about the batch", "", table, "",
                 f"every linear layer compute-bound from batch: {self.linear_batch or never}",
                 f"the whole step compute-bound from batch: {self.step_batch or never}"
                 + ("" if self.step_batch else
                    " (attention reads each sequence's own KV cache: its intensity does not "
                    "grow with batch)")]
        return "\n".join(tables.wrap(lines))


def linear_intensity(r: Report) -> float:
    ks = [k for k in r.kernels if k.category == "matmul"]
    moved = sum(k.bytes for k in ks)
    return sum(k.flops for k in ks) / moved if moved else 0.0


def linear_regime(r: Report) -> str:
    """"compute" when every matmul kernel is compute-bound, "mixed" when some are, else the
    regime of most matmul time."""
    ks = [k for k in r.kernels if k.category == "matmul"]
    if ks and all(k.regime == "compute" for k in ks):
        return "compute"
    if any(k.regime == "compute" for k in ks):
        return "mixed"
    share: dict = {}
    for k in ks:
        share[k.regime] = share.get(k.regime, 0.0) + k.time_s
    return max(share, key=share.get) if share else "-"


def critical_batch(workload="", *, chip: "str | Chip" = "h100-sxm", ctx: int = 512,
                   mode: str = "compiled", options: dict | None = None, quantize=None,
                   max_batch: int = 4096, tp: int = 1) -> CriticalBatch:
    """Smallest batches at which decode's linear layers, then the whole step, are compute-bound.

    Batches double from 1 until each turns (or max_batch), then a bisection finds the first one;
    each predicate is taken to be monotone in batch (more rows per weight read). tp: one rank of
    a tensor-parallel split is searched.
    """
    with no_full_gc():
        return _critical_batch(workload, chip, ctx, mode, options, quantize, max_batch, tp)


def _critical_batch(workload, chip, ctx, mode, options, quantize, max_batch,
                    tp) -> CriticalBatch:
    workload = workload or DEFAULT_SPEC
    q = parse_quantization(quantize)
    target = find_chip(chip)
    ladder = [1 << i for i in range(max_batch.bit_length()) if 1 << i <= max_batch]
    ev = Evaluator(builder(workload, "batch", {**(options or {}), "phase": "decode", "ctx": ctx}),
                   "batch", ladder[:3], chip=target, mode=mode, quantize=q, tp=tp)
    points: dict = {}

    def at(b: int) -> Point:
        if b not in points:
            points[b] = ev.point(b)
        return points[b]

    def first(holds) -> int | None:
        lo = 0
        for b in ladder:
            if holds(at(b).report):
                hi = b
                break
            lo = b
        else:
            return None
        while hi - lo > 1:          # holds at hi, not at lo
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if holds(at(mid).report) else (mid, hi)
        return hi

    linear = first(lambda r: linear_regime(r) == "compute")
    step = first(lambda r: r.regime == "compute")
    dtype = at(1).report.matrix_dtype
    s = Sweep("batch", tuple(points[b] for b in sorted(points)), ev.method, ev.unit, target, mode,
              q.label if q else "", tuple(filter(None, [ev.why_not])))
    return CriticalBatch(ctx, target.ridge(dtype), dtype, linear, step, max_batch, s)
