"""LLM inference: prefill and decode side by side, a whole generation, the critical batch.

    g = fxroof.generation("models/llama.py", prompt=512, new_tokens=128, batch=1, chip="a100")
    print(g)                  # prefill | first decode step | last decode step, then the totals
    c = fxroof.critical_batch("models/llama.py", chip="a100", ctx=512)
    print(c)                  # where decode's linear layers, and the whole step, turn compute-bound

Workloads follow models/llama.py's convention: keyword options phase ("prefill" | "decode"),
batch, seq (prompt tokens, prefill) and ctx (tokens already cached, decode), plus any `options`.
Every decode step's time comes from the first and last steps, each kernel being affine in ctx,
checked at a third (docs/sweeps.md says why); where that fails, from the steps themselves.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from fxroof.chips.timing import REGIMES, intensity
from fxroof.errors import one_line
from fxroof.graph.parallel import LM_HEADS
from fxroof.graph.prompt_logits import last_position_logits, output_head
from fxroof.pipeline import Target, no_full_gc, target_of
from fxroof.report import tables
from fxroof.report.records import Report
from fxroof.report.streams import host_and_device, schedule
from fxroof.report.units import percent, ratio, seconds, si
from fxroof.studies.evaluator import Evaluator, builder, totals
from fxroof.studies.sweep import Sweep, cells, title, unfit_note
from fxroof.studies.workload import DEFAULT_SPEC, UnknownOption

__all__ = ["CriticalBatch", "Generation", "critical_batch", "generation"]

EVERY_STEP_UP_TO = 64      # steps reported one by one when affinity fails
INTERPOLATION_POINTS = 9
# Decode steps scheduled one by one where every kernel is affine in ctx (a step of Llama-2-7B's
# 481 kernels takes about 4 ms to schedule); those between are interpolated, each step's time
# being smooth in ctx but where a kernel turns from one bound to another
AFFINE_SAMPLES = 257
# every decode step's time is reported (Generation.step_s); past this a generation is refused
MAX_NEW_TOKENS = 2 ** 20


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
    step_cost_s: float = 0.0     # a serving engine's own work per forward pass, as stated
    prompt_logits: str = "last"  # the prompt's step computes the last position's, or "all"
    prompt_tokens: int = 0       # a sequence's tokens in the prompt's step, images' included

    # every forward pass, prefill and each decode step, pays the stated step cost once
    prefill_s = property(lambda self: self.prefill.time_s + self.step_cost_s)
    decode_s = property(lambda self: sum(self.step_s) + self.new_tokens * self.step_cost_s)
    total_s = property(lambda self: self.prefill_s + self.decode_s)

    # new tokens a second over the whole generation, every sequence of the batch counted
    tokens_per_s = property(lambda self: self.batch * self.new_tokens / self.total_s
                            if self.total_s else 0.0)
    # every phase fits in the chip's memory (the last decode step holds the largest KV cache)
    fits = property(lambda self: all(r.fits for r in (self.prefill, self.first, self.last)))
    # the mean decode step: the time between two tokens of one sequence
    per_token_s = property(lambda self: self.decode_s / self.new_tokens if self.new_tokens else 0.0)

    def to_dict(self) -> dict:
        named = ("prompt", "prompt_tokens", "new_tokens", "batch", "whatif", "method",
                 "step_cost_s", "prompt_logits", "prefill_s",
                 "decode_s", "total_s", "tokens_per_s", "per_token_s", "fits")
        return {"schema": "fxroof.generation/1", "chip": self.prefill.chip.name,
                "mode": self.prefill.mode, **{k: getattr(self, k) for k in named},
                "prefill": totals(self.prefill), "decode_first": totals(self.first),
                "decode_last": totals(self.last), "step_s": list(self.step_s),
                "notes": list(self.notes)}

    def __str__(self) -> str:
        b, n, prompt = self.batch, self.new_tokens, self.prompt
        figures = [cells(r) for r in (self.prefill, self.first, self.last)]
        # a purely recurrent model reads fixed states, not keys: its cache does not grow
        attends = self.last.memory.kv_cache > self.first.memory.kv_cache or n == 1
        prompt = self.prompt_tokens or prompt        # a vision-language prompt's images too
        rows = [["tokens/step", f"{b}x{prompt}", f"{b}x1", f"{b}x1"],
                *([["keys read", f"≤{prompt}", f"{prompt + 1}", f"{prompt + n}"]] * attends),
                *([name, *(f[name] for f in figures)] for name in figures[0])]
        table = tables.table(rows, ["", "prefill", "decode, step 1", f"decode, step {n}"], "lrrr")
        share = self.decode_s / self.total_s if self.total_s else 0.0
        lines = [title("generation", self.prefill, f"batch {b}, prompt {prompt} + {n} new tokens"),
                 "", table, "",
                 f"total {seconds(self.total_s)} = prefill {seconds(self.prefill_s)} "
                 f"({percent(1 - share)}) + {n} decode steps {seconds(self.decode_s)} "
                 f"({percent(share)})",
                 f"first token after {seconds(self.prefill_s)} · then one every "
                 f"{seconds(self.per_token_s)} · {si(self.tokens_per_s, 'tokens/s')} overall",
                 f"decode steps: {self.method}"]
        unfit = [] if self.fits else [unfit_note(self.prefill.chip)]
        return "\n".join(tables.wrap(lines + unfit + [self.serving_note] + list(self.notes)))

    @property
    def serving_note(self) -> str:
        """What the graph does not hold: a serving engine's work between forward passes."""
        if self.step_cost_s:
            return (f"each forward pass includes a stated step cost of "
                    f"{seconds(self.step_cost_s)} (the serving engine's own work)")
        return ("the graph holds the model's forward passes only: a serving engine's scheduling, "
                "sampling and detokenising between steps are not in these times (state them "
                "with step_cost_s=, --step-cost-us)")


# the options an LLM study calls its workload with (models/llama.py's convention)
LLM_OPTIONS = "batch, phase ('prefill' or 'decode'), seq (the prompt's tokens) and ctx (the " \
              "cached ones)"


@contextmanager
def _llm_options(study: str):
    """A workload that does not take an LLM study's options is told which ones it must."""
    try:
        yield
    except UnknownOption as e:
        raise UnknownOption(f"{e}; {study} calls its workload with {LLM_OPTIONS}, the "
                            f"options models/llama.py's takes") from e


@no_full_gc()
@_llm_options("a generation")
def generation(workload="", *, prompt: int, new_tokens: int, batch: int = 1,
               options: dict | None = None, step_cost_s: float = 0.0,
               prompt_logits: str = "last", target: Target | None = None,
               **fields) -> Generation:
    """Prefill of `prompt` tokens then `new_tokens` decode steps, for `batch` sequences.

    workload: a workload spec or function following models/llama.py's options (default: the
    bundled Llama-2-7B). target: the Target, or its fields as keywords (chip=, mode=,
    quantize=, tp=, ...), for every phase; with tp > 1 the times are one rank's.
    step_cost_s: seconds a serving engine spends on each forward pass beyond the model's graph
    (scheduling, sampling, detokenising), added to prefill and to every decode step.
    prompt_logits: "last" (default): the prompt's step computes the logits of each sequence's
    last position only, as serving engines and transformers' generate do; "all": every
    position's, as the model's forward writes it and gpt-fast's prefill runs it.
    """
    if prompt < 1 or new_tokens < 1 or batch < 1:
        raise ValueError("prompt, new_tokens and batch must be >= 1")
    _not_given(options, "a generation", batch="--batch (batch=)", phase="",
               seq="--prompt (prompt=)", ctx="--prompt and --new-tokens")
    if new_tokens > MAX_NEW_TOKENS:
        raise ValueError(f"new_tokens={new_tokens:,}: a generation reports each decode step's "
                         f"time, up to {MAX_NEW_TOKENS:,} of them")
    if not (isinstance(step_cost_s, (int, float)) and 0 <= step_cost_s < float("inf")):
        raise ValueError(f"step_cost_s must be a number of seconds >= 0, got {step_cost_s!r}")
    if prompt_logits not in PROMPT_LOGITS:
        raise ValueError(f"prompt_logits={prompt_logits!r}: choose {' or '.join(PROMPT_LOGITS)}")
    workload, target = workload or DEFAULT_SPEC, target_of(target, **fields)

    def phase(name: str, variable: str, probes, build_with=None) -> Evaluator:
        options_at = {**(options or {}), "batch": batch, "phase": name}
        build = builder(workload, variable, options_at)
        return Evaluator(build_with(build) if build_with else build, variable, probes, target)

    heads: list = []            # the output head's name as the prompt's builds find it

    def prompt_step(asked: str):
        heads.clear()
        prompts = phase("prefill", "seq", [prompt],
                        lambda build: _prompt_builds(build, asked, heads))
        return prompts, prompts.point(prompt)
    unsliced = ""               # why the head could not read the last position alone
    try:
        prompts, point = prompt_step(prompt_logits)
    except Exception as e:       # a model whose code after its head needs every position
        if prompt_logits == "all" or not any(heads):
            raise
        unsliced, prompt_logits = one_line(e, name=True), "all"
        prompts, point = prompt_step("all")
    prefill = point.report
    # a vision-language prompt's images (--hf images=N) are tokens of its step too, as its
    # inputs hold them (an encoder-decoder's first input is its source: not the prompt's)
    prompt_tokens = point.items // batch if prompts.unit == "tokens" and \
        (options or {}).get("images") else prompt
    last, mid = prompt + new_tokens - 1, prompt + (new_tokens - 1) // 2
    steps = [prompt, mid, last] if new_tokens > 3 else range(prompt, last + 1)
    decode = phase("decode", "ctx", steps)
    notes = [f"note: {decode.why_not}"] if decode.why_not else []
    notes += _prompt_logits_note(prefill, batch, prompt, prompt_logits, heads, unsliced)
    if unsliced:
        notes.append(f"note: the output head could not read the last position alone "
                     f"({unsliced}), so every position's logits are priced")
    notes += [f"note: ctx={p.value}: {p.note}" for p in map(decode.point, steps) if p.note]
    first, middle, final = (decode.point(c).report for c in (prompt, mid, last))
    notes += _analysis_notes(prefill, first)
    if first.mode == "compiled" and first.chip.kind == "gpu" and first.regime == "overhead":
        notes.append("note: each decode step waits on its kernels' launches from Python; "
                     "serving engines replay decode as a CUDA graph (mode='cudagraphs', "
                     "--mode cudagraphs)")
    step_s = new_tokens > 3 and _affine_steps(first, middle, final, mid - prompt, new_tokens)
    method = ("each kernel's compute, memory and overhead time affine in ctx, from the first "
              f"and last steps; checked at ctx={mid}"
              + (f"; {AFFINE_SAMPLES} steps scheduled, those between interpolated"
                 if new_tokens > AFFINE_SAMPLES else ""))
    if not step_s and new_tokens <= EVERY_STEP_UP_TO:
        step_s = [decode.point(c).time_s for c in range(prompt, last + 1)]
        method = "every step reported" + (
            " (kernels are not affine in ctx here)" if new_tokens > 3 else "")
    elif not step_s:
        step_s = _interpolated(decode, prompt, last)
        method = (f"interpolated between {INTERPOLATION_POINTS} steps (kernels are not affine in "
                  f"ctx here): approximate")
    return Generation(prompt, new_tokens, batch, prefill, first, final, tuple(step_s), method,
                      target.whatif, tuple(notes), float(step_cost_s), prompt_logits,
                      prompt_tokens)


# which positions' logits a prompt's step computes: engines' and generate()'s, or the forward's
PROMPT_LOGITS = ("last", "all")


def _prompt_builds(build, asked: str, heads: list):
    """The prompt's builds, the model's output head (graph/prompt_logits.py) put in `heads`
    and, where `asked` is "last", made to read each sequence's last position; a model with no
    head it can name is built as it is."""
    def built(value):
        model, args, kwargs = build(value)
        head = output_head(model)
        heads.append(head)
        if head is None or asked == "all":
            return model, args, kwargs
        return last_position_logits(model, head), args, kwargs
    return built


def _analysis_notes(prefill: Report, decode: Report) -> list:
    """What each phase's analysis assumed or found (its report's notes: a checkpoint's
    quantization, a model's text-only prompt, attention's kernel), once each: named by phase
    where only one of them says it."""
    both = [n for n in prefill.notes if n in decode.notes]
    return ([f"note: {n}" for n in both]
            + [f"note (prompt): {n}" for n in prefill.notes if n not in both]
            + [f"note (decode): {n}" for n in decode.notes if n not in both])


def _not_given(options: dict | None, study: str, **own: str) -> None:
    """A ValueError where `options` sets one the study sets itself (`own`: name -> where the
    study takes it, or "" where it decides it alone), which it would override unseen."""
    clash = [name for name in own if name in (options or {})]
    if clash:
        name = clash[0]
        where = f": give it as {own[name]}" if own[name] else ""
        raise ValueError(f"{study} sets {name} itself{where}, not as an option "
                         f"(--set {name}={options[name]!r})")


def _prompt_logits_note(prefill: Report, batch: int, prompt: int, asked: str,
                        heads: list, unsliced: str = "") -> list:
    """Which positions' logits the prompt's step computes (`heads`: the output head's name as
    its builds found it, None where none could be told apart): the last one's, as engines do,
    or every one's, and then the output head's share of the time to the first token, which
    engines and transformers' generate do not pay."""
    name = heads[-1] if heads else None
    if prompt < 2 or not prefill.time_s or (name is None and asked == "last" and not heads):
        return []
    if name is not None and asked == "last":
        return ["note: the prompt's step computes each sequence's last logits only, as serving "
                "engines and transformers' generate do; gpt-fast's prefill computes every "
                "position's (--prompt-logits all, prompt_logits='all')"]
    own = [k for k in prefill.kernels if k.category == "matmul" and (
        k.module.rpartition(".")[2] in LM_HEADS if name is None else
        k.module == name or k.module.endswith("." + name))]
    rows = max((n.grid[0] * n.grid[1] for k in own for n in prefill.nodes
                if n.name in k.nodes and len(n.grid) == 4), default=0)
    if rows < batch * prompt:
        return []
    share = sum(k.time_s for k in own) / prefill.time_s
    why = ("as the model's code writes it" if unsliced else
           "as asked (prompt_logits='all')" if asked == "all" else
           "as the model's code writes it (its output head could not be told apart)")
    return [f"note: the prompt's step computes logits for all {prompt:,} positions, {why}, its "
            f"output head {share:.0%} of its time; serving engines and transformers' generate "
            f"compute the last position's only, so the first token comes that much sooner"]


def _affine_steps(first: Report, mid: Report, last: Report, j_mid: int, n: int):
    """Each decode step's time from per-kernel affinity in ctx, or None if it does not hold."""
    if not len(first.kernels) == len(mid.kernels) == len(last.kernels):
        return None
    for a, m, b in zip(first.kernels, mid.kernels, last.kernels):
        if not (a.nodes == m.nodes == b.nodes and a.category == b.category and a.dtype == b.dtype):
            return None
        for f in ("flops", "bytes_read", "bytes_written"):   # integers: the check is exact
            if (getattr(m, f) - getattr(a, f)) * (n - 1) != (getattr(b, f) - getattr(a, f)) * j_mid:
                return None
    # compute, memory and link times are affine in ctx, the kernel's time (their bound) is not;
    # each step is scheduled as a report's is (the host issuing, collectives beside compute)
    # each kernel's first and last step (None: constant in ctx)
    span = {id(a): (a.expected, None if (a.flops, a.bytes, a.expected.comm_s)
                    == (b.flops, b.bytes, b.expected.comm_s) else b.expected)
            for a, b in zip(first.kernels, last.kernels)}

    def step(f: float):
        def parts(k):
            a, b = span[id(k)]
            return host_and_device(a if b is None else a.between(b, f))
        return schedule(first.kernels, parts).end_s
    at = _spaced(0, n - 1, AFFINE_SAMPLES)
    return _filled(at, [step(j / (n - 1)) for j in at])


def _interpolated(decode: Evaluator, first: int, last: int) -> list:
    at = _spaced(first, last, INTERPOLATION_POINTS)
    return _filled(at, [decode.point(c).time_s for c in at])


def _spaced(first: int, last: int, points: int) -> list:
    """Up to `points` whole numbers from `first` to `last`, both ends among them, evenly spaced."""
    if points > last - first:
        return list(range(first, last + 1))
    return sorted({first + round(i * (last - first) / max(1, points - 1)) for i in range(points)})


def _filled(at: list, times: list) -> list:
    """A value for every whole number from at[0] to at[-1]: `times` at `at`, lines between."""
    steps = []
    for lo, hi, t_lo, t_hi in zip(at, at[1:], times, times[1:]):
        steps += [t_lo + (t_hi - t_lo) * (c - lo) / (hi - lo) for c in range(lo, hi)]
    return steps + [times[-1]]


# -- critical batch -------------------------------------------------------------------------------

@dataclass(frozen=True)
class CriticalBatch:
    """Where batching turns decode compute-bound on a chip: a decode linear reads its weights
    once for the whole batch, so its intensity is about the batch (docs/sweeps.md).
    Regimes are the roofline floor's (KernelRow.timing): tile padding would move the turn."""
    ctx: int
    ridge: float                 # FLOP/B where the decode matmuls' dtype turns compute-bound
    dtype: str
    linear_batch: int | None     # smallest batch where every linear layer is compute-bound
    step_batch: int | None       # smallest batch where the whole step is, None: not up to max
    fit_batch: int | None        # largest batch whose footprint fits, None: every one up to max
    max_batch: int
    sweep: Sweep                 # every batch evaluated on the way, in batch order

    def to_dict(self) -> dict:
        return {"schema": "fxroof.critical_batch/1", "ctx": self.ctx, "ridge": self.ridge,
                "dtype": self.dtype, "linear_batch": self.linear_batch,
                "step_batch": self.step_batch, "fit_batch": self.fit_batch,
                "max_batch": self.max_batch,
                "points": [{**p.to_dict(), "fits": p.report.fits, "linear_intensity": linear_intensity(p.report),
                            "linear_regime": linear_regime(p.report)} for p in self.sweep.points]}

    def __str__(self) -> str:
        rows = [[p.value, seconds(p.time_s), si(p.throughput, "tok/s"),
                 ratio(linear_intensity(p.report)), linear_regime(p.report),
                 _floor_regime(p.report.kernels), cells(p.report)["memory"]]
                for p in self.sweep.points]
        table = tables.table(rows, ["batch", "step time", "throughput", "linear FLOP/B",
                                     "linears", "whole step", "memory"], "rrrrllr")
        never = f"none up to batch {self.max_batch}"
        chip = self.sweep.chip
        fit = (f"every one up to {self.max_batch}" if self.fit_batch is None else
               "none, not even 1" if self.fit_batch == 0 else str(self.fit_batch))
        lines = [title("critical batch", self.sweep.points[0].report,
                       subject=f" decode at ctx {self.ctx}"),
                 f"{self.dtype} ridge point {ratio(self.ridge)} FLOP/B; a decode linear's "
                 f"intensity is about the batch", "", table, "",
                 f"every linear layer compute-bound from batch: {self.linear_batch or never}",
                 f"the whole step compute-bound from batch: {self.step_batch or never}"
                 + ("" if self.step_batch else
                    " (attention reads each sequence's own KV cache: its intensity does not "
                    "grow with batch)"),
                 f"largest batch that fits in {chip.name}'s {si(chip.mem_bytes, 'B')} of memory: "
                 f"{fit}" + ("" if all(p.report.fits for p in self.sweep.points) else
                             " (rows marked ! do not fit)")]
        return "\n".join(tables.wrap(lines))


def _matmuls(r: Report) -> list:
    """The kernels that run a matrix product: library ones, and those Inductor decomposes into
    reductions under coordinate descent tuning (their node is still a matmul)."""
    products = {n.name for n in r.nodes if n.category == "matmul"}
    return [k for k in r.kernels if k.category == "matmul" or products.intersection(k.nodes)]


def linear_intensity(r: Report) -> float:
    ks = _matmuls(r)
    return intensity(sum(k.flops for k in ks), sum(k.bytes for k in ks))


def _floor_regime(kernels) -> str:
    """The roofline regime (on the chip, the host's launches aside) that holds the most of these
    kernels' floor time."""
    time = {g: sum(k.timing.device_s for k in kernels if k.timing.device_regime == g)
            for g in REGIMES}
    return max(REGIMES, key=time.get) if kernels else "-"


def linear_regime(r: Report) -> str:
    """On the roofline: "compute" when every matmul kernel is compute-bound, "mixed" when some
    are, else the regime of most matmul floor time."""
    regimes = {k.timing.device_regime for k in _matmuls(r)}
    if "compute" in regimes:
        return "compute" if regimes == {"compute"} else "mixed"
    return _floor_regime(_matmuls(r))


@no_full_gc()
@_llm_options("the critical batch")
def critical_batch(workload="", *, ctx: int = 512, options: dict | None = None,
                   max_batch: int = 4096, target: Target | None = None,
                   **fields) -> CriticalBatch:
    """Smallest batches at which decode's linear layers, then the whole step, are compute-bound.

    Batches double from 1 until each turns (or max_batch), then a bisection finds the first one;
    each predicate is taken to be monotone in batch (more rows per weight read). target: the
    Target or its fields as keywords; with tp > 1 one rank of the split is searched.
    """
    _not_given(options, "the critical batch", batch="", phase="", ctx="--ctx (ctx=)")
    workload, target = workload or DEFAULT_SPEC, target_of(target, **fields)
    ladder = [1 << i for i in range(max_batch.bit_length())]       # powers of 2 up to max_batch
    ev = Evaluator(builder(workload, "batch", {**(options or {}), "phase": "decode", "ctx": ctx}),
                   "batch", ladder[:3], target)

    def first(holds) -> int | None:
        hi = next((b for b in ladder if holds(ev.point(b).report)), None)
        lo = (hi or 0) // 2          # the ladder's step before hi: it does not hold there
        while hi is not None and hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if holds(ev.point(mid).report) else (mid, hi)
        return hi

    linear = first(lambda r: linear_regime(r) == "compute")
    step = first(lambda r: _floor_regime(r.kernels) == "compute")
    too_big = first(lambda r: not r.fits)     # the footprint grows with batch: KV, activations
    dtype = ev.point(1).report.matrix_dtype
    return CriticalBatch(ctx, target.chip.ridge(dtype), dtype, linear, step,
                         None if too_big is None else too_big - 1, max_batch,
                         Sweep.of(ev, sorted(ev.points)))
