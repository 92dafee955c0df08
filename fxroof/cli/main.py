"""The `fxroof` command: analyze, compare, check, sweep, generate, critical-batch, measure,
calibrate, diff and chips.

Exit codes: 0 success (all checks hold), 1 a check failed, 2 a usage, input or capture error.
Errors print one line on stderr; --debug shows the traceback instead. torch loads only when a
command runs, so that `fxroof --help` answers at once.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import sys
from importlib import import_module
from pathlib import Path

from fxroof.errors import one_line
from fxroof.studies.workload import DEFAULT_SPEC, load, parse_sets, parse_value

DEFAULT_CHIP = "h100-sxm"


class UsageError(ValueError):
    """A command-line value that does not parse."""


# -- arguments ------------------------------------------------------------------------------

def microseconds(text: str) -> float:
    """An option given in microseconds, as seconds."""
    return float(text) * 1e-6


def _workload_args() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("spec", nargs="?", default=DEFAULT_SPEC,
                   help="path/to/file.py[:FUNC] returning (model, args[, kwargs]); "
                        "default: the bundled Llama-2-7B")
    p.add_argument("--hf", metavar="CONFIG", help="a transformers config.json to build the model "
                   "from (meta device, no weights, the config's dtype): decoders, encoders, "
                   "encoder-decoders (T5, BART, Whisper: the decoder gets seq tokens too), "
                   "vision models (images at the config's size, or --set image_size= where it "
                   "gives none) and CLIP-like dual encoders; --set batch=, seq=, dtype= apply")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument for the workload function (repeatable)")
    p.add_argument("--chip", default=DEFAULT_CHIP, help=f"chip name or chip JSON file (default: "
                   f"{DEFAULT_CHIP}; `fxroof chips` lists them)")
    p.add_argument("--mode", default="compiled", help="compiled: fused kernels, as torch.compile "
                   "launches them (default); cudagraphs: the same replayed as a CUDA graph "
                   "(torch.compile mode=reduce-overhead; GPUs); eager: one kernel per op")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (one rank analyzed)")
    p.add_argument("--tf32", action="store_true", help="fp32 matmuls on an NVIDIA GPU's TF32 "
                   "tensor cores, as torch.backends.cuda.matmul.allow_tf32 = True runs them "
                   "(default: PyTorch's, the CUDA cores; convolutions take TF32 either way)")
    p.add_argument("--train", action="store_true", help="one training step (forward, backward of "
                   "the model's loss or the mean of its output, optimizer) instead of inference")
    p.add_argument("--optimizer", default="adamw",
                   help="with --train: adamw (default), sgd, or none (no update)")
    p.add_argument("--dp", "--world", type=int, default=1,
                   help="with --train: data-parallel degree, the ranks in the world "
                   "(one rank of DDP analyzed)")
    p.add_argument("--fsdp", action="store_true", help="with --train --dp N: shard parameters, "
                   "gradients and optimizer state over the N ranks (FSDP2) instead of DDP")
    checkpointing = p.add_mutually_exclusive_group()
    checkpointing.add_argument("--recompute", action="store_const", const="full", default=False,
                               help="with --train: activation checkpointing of every block (the "
                               "backward runs its forward again)")
    checkpointing.add_argument("--selective-recompute", dest="recompute", action="store_const",
                               const="selective", help="with --train: selective checkpointing "
                               "of every block, torchtitan's op policy (attention outputs and "
                               "every second matmul's kept, the rest run again)")
    checkpointing.add_argument("--recompute-every", dest="recompute", type=int, metavar="N",
                               help="with --train: activation checkpointing of every N-th block "
                               "(torchtitan's selective layer option; 1: every block)")
    p.add_argument("--quantize", metavar="SPEC", help="what-if: w8, w4, w4g64, wfp8, kv8, "
                   "kv-fp8, fp8, w8a8, joined with + (e.g. w4+kv8; fp8+dq: activations scaled "
                   "at each call, dq-tensor one scale a tensor); the model is not changed. With "
                   "--hf, a config's quantization_config is applied unless this is given "
                   "(none: the config's dtype)")
    p.add_argument("--amp", default="", metavar="DTYPE", help="automatic mixed precision: fp16 "
                   "or bf16, the model's forward within torch.autocast over its own weights")
    p.add_argument("--routing", metavar="SPEC", help="mixture-of-experts top-k routing to "
                   "assume: balanced (the default where routing decides sizes) or skew=S, a share "
                   "S of the tokens picking one hot expert")
    p.add_argument("--json", metavar="PATH", help="write the report as JSON ('-': stdout)")
    return p


def _profile_arg() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("profile", help="a trace torch.profiler wrote (prof.export_chrome_trace); "
                   "give --mode as it ran (eager or compiled)")
    return p


class _Parser(argparse.ArgumentParser):
    """argparse, its errors in one line like every other error (the usage is --help's)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fxroof", description="Where a PyTorch model's time goes "
                "on a given chip, and why.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    common = [_workload_args()]
    a = sub.add_parser("analyze", parents=common, help="analyze a workload on a chip")
    a.add_argument("--plot", metavar="PATH", help="also draw the roofline to a .png or .svg")
    a.add_argument("--tp-scaling", action="store_true",
                   help="with --tp N: also one rank's time at tp = 1, 2, 4, ... N")
    cmp = sub.add_parser("compare", parents=common, help="eager vs compiled: what fusion saves")
    for command in (a, cmp):
        command.add_argument("--trace", metavar="PATH", help="also write the predicted step as a "
                             "Chrome trace JSON (Perfetto, chrome://tracing), in --mode")
        command.add_argument("--html", metavar="PATH", help="also write a self-contained HTML "
                             "page: roofline, kernels, modules, modes, memory")
    sub.add_parser("compare-trace", parents=[_profile_arg(), *common],
                   help="a torch.profiler trace of a real run beside the prediction")
    c = sub.add_parser("check", parents=common, help="pre-deployment checks (exit 1 on failure)")
    c.add_argument("--max-time-ms", type=float, help="fail above this predicted time")
    c.add_argument("--min-coverage", type=float, help="fail below this share of ops with formulas")
    c.add_argument("--max-regime-share", action="append", default=[], metavar="REGIME=SHARE",
                   help="e.g. overhead=0.2 (repeatable)")
    c.add_argument("--no-memory-fit", action="store_true", help="skip the memory-fit check")
    c.add_argument("--lint", default="warn", help="dtype lint: warn (default), fail, or off")
    s = sub.add_parser("sweep", parents=common, help="one workload option over several values")
    s.add_argument("--over", required=True, metavar="KEY=V1,V2,...",
                   help="the option and its values, e.g. batch=1,2,4,8")
    s.add_argument("--html", metavar="PATH", help="also write the curves as an HTML page")
    g = sub.add_parser("generate", parents=common,
                       help="an LLM generation: prefill then decode steps, the time split")
    g.add_argument("--prompt", type=int, default=2048, help="prompt tokens (default 2048)")
    g.add_argument("--new-tokens", type=int, default=256, help="generated tokens (default 256)")
    g.add_argument("--step-cost-us", type=microseconds, default=0.0, metavar="US",
                   dest="step_cost_s",
                   help="a serving engine's own work per forward pass (scheduling, sampling), "
                        "added to prefill and every decode step (default 0: the graph only)")
    g.add_argument("--batch", type=int, default=1, help="sequences decoded together (default 1)")
    g.add_argument("--prompt-logits", choices=("last", "all"), default="last",
                   help="which positions' logits the prompt's step computes: last (default, as "
                        "serving engines and transformers' generate do) or all (the forward as "
                        "written, as gpt-fast's prefill)")
    b = sub.add_parser("critical-batch", parents=common,
                       help="the decode batch at which linears, then the step, turn compute-bound")
    b.add_argument("--ctx", type=int, default=512, help="KV-cache length (default 512)")
    b.add_argument("--max-batch", type=int, default=4096,
                   help="largest batch searched (default 4096)")
    m = sub.add_parser("measure",
                       help="run a workload for real here and put predicted beside measured")
    m.add_argument("spec", help="path/to/file.py[:FUNC]; it must build real tensors "
                   "(e.g. --set device=cpu --set preset=tiny for the bundled models)")
    m.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument for the workload function (repeatable)")
    m.add_argument("--chip", help="chip to predict with (default: calibrate this machine)")
    m.add_argument("--repeat", type=int, default=20, help="timed runs (default 20)")
    m.add_argument("--threads", type=int, help="CPU threads while measuring")
    m.add_argument("--mode", default="eager",
                   help="eager: node by node beside the eager prediction (default); compiled: "
                        "the model under torch.compile beside the compiled prediction")
    m.add_argument("--json", metavar="PATH", help="write the measurement as JSON ('-': stdout)")
    k = sub.add_parser("calibrate", help="measure this machine and write a chip file")
    k.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    k.add_argument("--out", required=True, metavar="PATH", help="chip JSON file to write")
    k.add_argument("--quick", action="store_true", help="fewer repeats, rougher figures")
    k.add_argument("--threads", type=int, default=None,
                   help="CPU threads torch uses while measuring (default: torch's setting)")
    k.add_argument("--like", metavar="CHIP",
                   help="GPU: its entry in the chip table, whose datasheet floor it keeps while "
                        "measuring the shares of it the GPU reaches (default: the entry named "
                        "as the driver names the GPU)")
    c = sub.add_parser("chips", help="list the chip table, or one chip's figures and sources")
    c.add_argument("names", nargs="*", metavar="CHIP",
                   help="chip names or chip JSON files: every figure with its source")
    c.add_argument("--json", action="store_true",
                   help="the chips as JSON (SI units, sources included)")
    d = sub.add_parser("diff", help="compare two --json reports")
    d.add_argument("a", help="report JSON (before)")
    d.add_argument("b", help="report JSON (after)")
    # --debug after the command too; this copy leaves the attribute alone when not given, so
    # that `fxroof --debug chips` keeps the top-level value
    for command in sub.choices.values():
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show tracebacks")
    return p


# -- commands -------------------------------------------------------------------------------

def _progress(message: str) -> None:
    """Progress for people at a terminal; CI logs and pipes stay clean."""
    if sys.stderr.isatty():
        print(message, file=sys.stderr, flush=True)


def _show_progress() -> None:
    """The library's progress lines (logger "fxroof", e.g. each value of a sweep) on a terminal."""
    import logging
    log = logging.getLogger("fxroof")
    if sys.stderr.isatty() and not log.handlers:     # main() may run many times in one process
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("  %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def _workload(ns):
    """The workload as a function of its options: a spec file's, or a transformers config's."""
    if ns.hf and ns.spec != DEFAULT_SPEC:
        raise UsageError(f"give a workload file or --hf CONFIG, not both ({ns.spec}, {ns.hf})")
    if ns.hf:
        from fxroof.cli.hf import config_options, from_config
        return lambda **options: from_config(ns.hf, **config_options(options))
    return lambda **options: load(ns.spec, options)


def _emit(ns, result, text=None) -> None:
    """Write the JSON if asked ('-': stdout, and then nothing else); print the tables."""
    if ns.json:
        data = json.dumps(result.to_dict(), indent=1)
        if ns.json != "-":
            Path(ns.json).write_text(data + "\n")
    print(data if ns.json == "-" else result if text is None else text)


def _target(ns):
    """What the command analyzes for: checked before the workload is built."""
    from fxroof.pipeline import Target
    if ns.optimizer != "adamw" and not ns.train:
        raise UsageError("--optimizer is for a training step: give --train too")
    quantize = ns.quantize
    if quantize is None and ns.hf:      # the checkpoint's own, where its config states one
        quantize = _checkpoint_quantization(ns.hf)
    return Target(chip=ns.chip, mode=ns.mode, quantize=quantize, tp=ns.tp, train=ns.train,
                  optimizer=ns.optimizer, dp=ns.dp, fsdp=ns.fsdp, recompute=ns.recompute,
                  routing=ns.routing, amp=ns.amp)


def _checkpoint_quantization(path):
    """The quantization a config's checkpoint ships with, as a what-if; None, said on stderr,
    where fxroof cannot price its method."""
    from fxroof.cli.checkpoint_quantization import QuantizationUnknown, of_config
    try:
        return of_config(path)
    except QuantizationUnknown as e:
        print(f"fxroof: {path}: its checkpoint's quantization is not priced ({e}): the weights "
              f"are priced in the config's dtype; --quantize states a scheme", file=sys.stderr)
        return None


def _report(ns):
    target = _target(ns)
    _progress(f"loading {ns.hf or ns.spec} ...")
    options = parse_sets(ns.set)
    model, args, kwargs = _workload(ns)(**options)
    _progress("capturing and analyzing (a 70B model takes about ten seconds) ...")
    from fxroof.pipeline import analyze
    report = analyze(model, args, kwargs, target=target)
    given = (("workload", f"--hf {ns.hf}" if ns.hf else ns.spec), ("options", options)) \
        + ((("tf32", True),) if ns.tf32 else ())
    return dataclasses.replace(report, provenance=given + report.provenance)


def cmd_analyze(ns) -> None:
    report = _report(ns)
    if ns.plot:
        report.plot_roofline(ns.plot)
    _views(ns, report)
    _emit(ns, report, str(report) + ("\n\n" + _tp_scaling(ns) if ns.tp_scaling else ""))


def _tp_scaling(ns) -> str:
    """One rank's time and where it goes as the tensor-parallel degree doubles up to --tp."""
    from fxroof.studies.scaling import format_tp_scaling, tp_scaling
    if ns.tp < 2:
        raise UsageError("--tp-scaling needs --tp N with N >= 2")
    degrees = [d for d in (1, 2, 4, 8, 16, 32, 64) if d <= ns.tp]
    _progress(f"tensor-parallel degrees {degrees} ...")
    rows = tp_scaling(*_workload(ns)(**parse_sets(ns.set)), degrees=degrees, target=_target(ns))
    return "Tensor parallelism: one rank at each degree\n" + format_tp_scaling(rows)


def _views(ns, report) -> None:
    """The files asked for beside the tables: a Chrome trace, an HTML page."""
    if ns.trace:
        report.to_trace(ns.trace)
    if ns.html:
        report.to_html(ns.html)


def cmd_compare(ns) -> None:
    from fxroof.report import tables
    report = _report(ns)
    _views(ns, report)
    _emit(ns, report, tables.comparison(report))


def cmd_compare_trace(ns) -> None:
    from fxroof.measure.profile_trace import compare_trace   # loaded only when asked
    _emit(ns, compare_trace(_report(ns), ns.profile))


def _regime_limits(pairs) -> dict:
    from fxroof.chips.timing import REGIMES
    limits = {}
    for pair in pairs:
        regime, eq, value = pair.partition("=")
        if not eq or regime not in REGIMES or not isinstance(parse_value(value), (int, float)):
            raise UsageError(f"--max-regime-share expects REGIME=SHARE with REGIME one of "
                             f"{', '.join(REGIMES)}, got {pair!r}")
        limits[regime] = float(value)
    return limits


def cmd_check(ns) -> int:
    from fxroof.report import tables
    limits = _regime_limits(ns.max_regime_share)     # parse before the long capture
    report = _report(ns)
    result = report.check(max_time_ms=ns.max_time_ms, min_coverage=ns.min_coverage,
                          memory_fit=not ns.no_memory_fit, max_regime_share=limits, lint=ns.lint)
    _emit(ns, result, f"{tables.header(report)}\n\n{result}")
    return 0 if result.ok else 1


# The studies of a workload as a function of its options: each one's own options, and what it
# says while it runs.
STUDIES = {"sweep": ("sweep.sweep", ("over",), "analyzing {what} at each value of {ns.over} ..."),
           "generate": ("llm.generation", ("prompt", "new_tokens", "batch", "step_cost_s",
                                            "prompt_logits"),
                        "analyzing prefill and decode ..."),
           "critical-batch": ("llm.critical_batch", ("ctx", "max_batch"),
                              "searching batch sizes ...")}


def cmd_study(ns) -> None:
    name, own, progress = STUDIES[ns.command]
    module, _, function = name.partition(".")
    study = getattr(import_module(f"fxroof.studies.{module}"), function)
    _progress(progress.format(ns=ns, what=ns.hf or ns.spec))
    result = study(_workload(ns), options=parse_sets(ns.set), target=_target(ns),
                   **{k: getattr(ns, k) for k in own})
    if getattr(ns, "html", None):
        import_module("fxroof.report.html").write_html(result, ns.html)
    _emit(ns, result)


def cmd_measure(ns) -> None:
    from fxroof.chips.timing import MODES
    from fxroof.measure.runs import measure, measure_compiled
    if ns.mode not in MODES:
        raise UsageError(f"unknown mode {ns.mode!r}; expected one of {', '.join(MODES)}")
    model, args, kwargs = load(ns.spec, parse_sets(ns.set))
    how = measure if ns.mode == "eager" else functools.partial(
        measure_compiled, graphs=ns.mode == "cudagraphs")
    _progress("capturing, calibrating" + (", compiling" if ns.mode != "eager" else "")
              + " and timing ...")
    _emit(ns, how(model, args, kwargs, chip=ns.chip, repeat=ns.repeat, threads=ns.threads))


def _read_report(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is not JSON: {one_line(e)}") from e
    if not isinstance(data, dict) or not str(data.get("schema", "")).startswith("fxroof.report/"):
        raise UsageError(f"{path} is not an fxroof report (no 'schema': 'fxroof.report/1')")
    return data


def cmd_chips(ns) -> None:
    from fxroof.chips import chip, chips
    from fxroof.report import tables
    found = [chip(name) for name in ns.names] if ns.names else chips()
    if ns.json:
        print(json.dumps([c.to_dict() for c in found], indent=1))
    elif ns.names:
        print("\n\n".join(tables.chip_figures(c) for c in found))
    else:
        print(tables.chip_table(found))


COMMANDS = {"analyze": cmd_analyze, "compare": cmd_compare, "compare-trace": cmd_compare_trace,
            "check": cmd_check,
            **dict.fromkeys(STUDIES, cmd_study), "measure": cmd_measure,
            "calibrate": lambda ns: import_module("fxroof.measure.calibrate").cmd_calibrate(ns),
            "chips": cmd_chips,
            "diff": lambda ns: print(import_module("fxroof.report.tables").diff(
                _read_report(ns.a), _read_report(ns.b)))}


def _tf32(ns):
    """--tf32: PyTorch's flag for the command (chips/timing.unit_dtype reads it); else as set."""
    if not getattr(ns, "tf32", False):
        return contextlib.nullcontext()
    from fxroof.chips.timing import matmul_tf32
    return matmul_tf32(True)


def main(argv=None) -> int:
    try:
        ns = _parser().parse_args(argv)
    except SystemExit as e:          # argparse already printed its one-line usage error
        return 0 if e.code == 0 else 2
    from fxroof.graph.capture import CaptureError
    _show_progress()
    try:
        with _tf32(ns):
            return COMMANDS[ns.command](ns) or 0
    except BrokenPipeError:          # `fxroof analyze | head`: the reader left; not an error
        sys.stderr.close()           # (an OSError: it must come before the usage errors)
        return 0
    # ValueError covers the errors of workloads, chips, what-ifs and UsageError.
    except (CaptureError, ValueError, TypeError, ImportError, OSError) as e:
        if ns.debug:
            raise
        print(f"fxroof: {one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:           # fxroof's own failure: still one line, and says so
        if ns.debug:
            raise
        print(f"fxroof: internal error (a bug in fxroof; --debug shows the traceback): "
              f"{one_line(e, name=True)}", file=sys.stderr)
        return 3
