"""The `fxroof` command: analyze, compare, check, sweep, generate, critical-batch, measure,
calibrate, diff and chips.

Exit codes: 0 success (all checks hold), 1 a check failed, 2 a usage, input or capture error.
Errors print one line on stderr; --debug shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import sys

from . import llm, tables
from .api import analyze
from .calibrate import cmd_calibrate, configure_parser as configure_calibrate
from .capture import CaptureError
from .checks import LINT_LEVELS
from .chips import ChipError, chips
from .roofline import MODES, REGIMES
from .sweep import sweep
from .workload import DEFAULT_SPEC, WorkloadError, load, parse_sets, parse_value

USAGE_ERRORS = (CaptureError, ChipError, WorkloadError, ValueError, TypeError, ImportError,
                OSError)


class UsageError(ValueError):
    """A command-line value that does not parse."""


# -- arguments ------------------------------------------------------------------------------

def _workload_args() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("spec", nargs="?", default=DEFAULT_SPEC,
                   help="path/to/file.py[:FUNC] returning (model, args[, kwargs]); "
                        "default: the bundled Llama-2-7B")
    p.add_argument("--hf", metavar="CONFIG", help="a transformers config.json to build the model "
                   "from (meta device, no weights); --set batch=, seq=, dtype= apply")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument for the workload function (repeatable)")
    p.add_argument("--chip", default="h100-sxm", help="chip name or chip JSON file")
    p.add_argument("--mode", default="compiled", choices=MODES)
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (one rank analyzed)")
    p.add_argument("--quantize", metavar="SPEC", help="what-if: w8, w4, w4g64, kv8, kv-fp8, fp8, "
                   "w8a8, joined with + (e.g. w4+kv8); the model is not changed")
    p.add_argument("--json", metavar="PATH", help="write the report as JSON ('-': stdout)")
    return p


def _debug_arg(top: bool = False) -> argparse.ArgumentParser:
    """--debug, before the command or after it. A subcommand's copy leaves the attribute alone
    when not given, so that `fxroof --debug chips` keeps the top-level value."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--debug", action="store_true", help="show tracebacks",
                   default=False if top else argparse.SUPPRESS)
    return p


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fxroof", description="Where a PyTorch model's time goes "
                                "on a given chip, and why.", parents=[_debug_arg(top=True)])
    sub = p.add_subparsers(dest="command", required=True)
    common = [_workload_args(), _debug_arg()]
    a = sub.add_parser("analyze", parents=common, help="analyze a workload on a chip")
    a.add_argument("--plot", metavar="PATH", help="also draw the roofline to a .png or .svg")
    a.add_argument("--tp-scaling", action="store_true",
                   help="with --tp N: also one rank's time at tp = 1, 2, 4, ... N")
    sub.add_parser("compare", parents=common, help="eager vs compiled: what fusion saves")
    c = sub.add_parser("check", parents=common, help="pre-deployment checks (exit 1 on failure)")
    c.add_argument("--max-time-ms", type=float, help="fail above this predicted time")
    c.add_argument("--min-coverage", type=float, help="fail below this share of ops with formulas")
    c.add_argument("--max-regime-share", action="append", default=[], metavar="REGIME=SHARE",
                   help="e.g. overhead=0.2 (repeatable)")
    c.add_argument("--no-memory-fit", action="store_true", help="skip the memory-fit check")
    c.add_argument("--lint", choices=LINT_LEVELS, default="warn",
                   help="dtype lint: warn (default), fail, or off")
    s = sub.add_parser("sweep", parents=common, help="one workload option over several values")
    s.add_argument("--over", required=True, metavar="KEY=V1,V2,...",
                   help="the option and its values, e.g. batch=1,2,4,8")
    g = sub.add_parser("generate", parents=common,
                       help="an LLM generation: prefill then decode steps, the time split")
    g.add_argument("--prompt", type=int, default=2048, help="prompt tokens (default 2048)")
    g.add_argument("--new-tokens", type=int, default=256, help="generated tokens (default 256)")
    g.add_argument("--batch", type=int, default=1)
    b = sub.add_parser("critical-batch", parents=common,
                       help="the decode batch at which linears, then the step, turn compute-bound")
    b.add_argument("--ctx", type=int, default=512, help="KV-cache length (default 512)")
    b.add_argument("--max-batch", type=int, default=4096)
    m = sub.add_parser("measure", parents=[_debug_arg()],
                       help="run a workload for real here and put predicted beside measured")
    m.add_argument("spec", help="path/to/file.py[:FUNC]; it must build real tensors "
                   "(e.g. --set device=cpu --set preset=tiny for the bundled models)")
    m.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    m.add_argument("--chip", help="chip to predict with (default: calibrate this machine)")
    m.add_argument("--repeat", type=int, default=20)
    m.add_argument("--threads", type=int, help="CPU threads while measuring")
    m.add_argument("--mode", default="eager", choices=MODES,
                   help="eager: node by node beside the eager prediction (default); compiled: "
                        "the model under torch.compile beside the compiled prediction")
    m.add_argument("--json", metavar="PATH", help="write the measurement as JSON")
    k = sub.add_parser("calibrate", parents=[_debug_arg()],
                       help="measure this machine and write a chip file")
    configure_calibrate(k)
    sub.add_parser("chips", parents=[_debug_arg()], help="list the chip table")
    d = sub.add_parser("diff", parents=[_debug_arg()], help="compare two --json reports")
    d.add_argument("a", help="report JSON (before)")
    d.add_argument("b", help="report JSON (after)")
    return p


# -- commands -------------------------------------------------------------------------------

def _progress(message: str) -> None:
    """Progress for people at a terminal; CI logs and pipes stay clean."""
    if sys.stderr.isatty():
        print(message, file=sys.stderr, flush=True)


def _workload(ns):
    """The workload as a function of its options: a spec file's, or a transformers config's."""
    if ns.hf:
        from .hf import from_config
        return lambda **options: from_config(ns.hf, **options)
    return lambda **options: load(ns.spec, options)


def _write_json(ns, result) -> None:
    if ns.json:
        text = json.dumps(result.to_dict(), indent=1)
        if ns.json == "-":
            print(text)
        else:
            with open(ns.json, "w") as f:
                f.write(text + "\n")


def _emit(ns, result, text=None) -> int:
    """Write the JSON if asked; print the tables unless the JSON went to stdout."""
    _write_json(ns, result)
    if ns.json != "-":
        print(result if text is None else text)
    return 0


def _report(ns):
    _progress(f"loading {ns.hf or ns.spec} ...")
    model, args, kwargs = _workload(ns)(**parse_sets(ns.set))
    _progress("capturing and analyzing (a 70B model takes about ten seconds) ...")
    return analyze(model, args, kwargs, chip=ns.chip, mode=ns.mode, tp=ns.tp,
                   quantize=ns.quantize)


def cmd_analyze(ns) -> int:
    report = _report(ns)
    if ns.plot:
        report.plot_roofline(ns.plot)
    text = str(report)
    if ns.tp_scaling:
        text += "\n\n" + _tp_scaling(ns)
    return _emit(ns, report, text)


def _tp_scaling(ns) -> str:
    """One rank's time and where it goes as the tensor-parallel degree doubles up to --tp."""
    from .parallel import format_tp_scaling, tp_scaling
    if ns.tp < 2:
        raise UsageError("--tp-scaling needs --tp N with N >= 2")
    degrees = [d for d in (1, 2, 4, 8, 16, 32, 64) if d <= ns.tp]
    _progress(f"tensor-parallel degrees {degrees} ...")
    model, args, kwargs = _workload(ns)(**parse_sets(ns.set))
    rows = tp_scaling(model, args, kwargs, chip=ns.chip, degrees=degrees, mode=ns.mode)
    return "Tensor parallelism: one rank at each degree\n" + format_tp_scaling(rows)


def cmd_compare(ns) -> int:
    report = _report(ns)
    return _emit(ns, report, tables.comparison(report))


def _regime_limits(pairs) -> dict:
    limits = {}
    for pair in pairs:
        regime, eq, value = pair.partition("=")
        if not eq or regime not in REGIMES or not isinstance(parse_value(value), (int, float)):
            raise UsageError(f"--max-regime-share expects REGIME=SHARE with REGIME one of "
                             f"{', '.join(REGIMES)}, got {pair!r}")
        limits[regime] = float(value)
    return limits


def cmd_check(ns) -> int:
    limits = _regime_limits(ns.max_regime_share)     # parse before the long capture
    report = _report(ns)
    result = report.check(max_time_ms=ns.max_time_ms, min_coverage=ns.min_coverage,
                          memory_fit=not ns.no_memory_fit, max_regime_share=limits, lint=ns.lint)
    _emit(ns, result, f"{tables.header(report)}\n\n{result}")
    return 0 if result.ok else 1


def cmd_sweep(ns) -> int:
    _progress(f"capturing {ns.hf or ns.spec} once, then each value of {ns.over} ..."
              if ns.tp == 1 else f"analyzing one rank of tp={ns.tp} at each value of {ns.over} ...")
    result = sweep(_workload(ns), ns.over, chip=ns.chip, mode=ns.mode,
                   options=parse_sets(ns.set), quantize=ns.quantize, tp=ns.tp)
    return _emit(ns, result)


def cmd_generate(ns) -> int:
    _progress("analyzing prefill and decode ...")
    result = llm.generation(_workload(ns), prompt=ns.prompt, new_tokens=ns.new_tokens,
                            batch=ns.batch, chip=ns.chip, mode=ns.mode,
                            options=parse_sets(ns.set), quantize=ns.quantize, tp=ns.tp)
    return _emit(ns, result)


def cmd_critical_batch(ns) -> int:
    _progress("searching batch sizes ...")
    result = llm.critical_batch(_workload(ns), chip=ns.chip, ctx=ns.ctx, mode=ns.mode,
                                options=parse_sets(ns.set), quantize=ns.quantize,
                                max_batch=ns.max_batch, tp=ns.tp)
    return _emit(ns, result)


def cmd_measure(ns) -> int:
    from .measure import measure      # runs models for real: only loaded when asked
    from .measure_compiled import measure_compiled
    model, args, kwargs = load(ns.spec, parse_sets(ns.set))
    how = measure if ns.mode == "eager" else measure_compiled
    _progress("capturing, calibrating" + (", compiling" if ns.mode == "compiled" else "")
              + " and timing ...")
    result = how(model, args, kwargs, chip=ns.chip, repeat=ns.repeat, threads=ns.threads)
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump(result.to_dict(), f, indent=1)
    print(result)
    return 0


def cmd_chips(ns) -> int:
    print(tables.chip_table(chips()))
    return 0


def _read_report(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is not JSON: {e}") from e
    if not isinstance(data, dict) or not str(data.get("schema", "")).startswith("fxroof.report/"):
        raise UsageError(f"{path} is not an fxroof report (no 'schema': 'fxroof.report/1')")
    return data


def cmd_diff(ns) -> int:
    print(tables.diff(_read_report(ns.a), _read_report(ns.b)))
    return 0


COMMANDS = {"analyze": cmd_analyze, "compare": cmd_compare, "check": cmd_check,
            "sweep": cmd_sweep, "generate": cmd_generate, "critical-batch": cmd_critical_batch,
            "measure": cmd_measure, "calibrate": cmd_calibrate, "chips": cmd_chips,
            "diff": cmd_diff}


def main(argv=None) -> int:
    parser = _parser()
    try:
        ns = parser.parse_args(argv)
    except SystemExit as e:          # argparse already printed its one-line usage error
        return 0 if e.code == 0 else 2
    try:
        return COMMANDS[ns.command](ns)
    except BrokenPipeError:          # `fxroof analyze | head`: the reader left; not an error
        sys.stderr.close()           # (an OSError: it must come before USAGE_ERRORS)
        return 0
    except USAGE_ERRORS as e:
        if ns.debug:
            raise
        print(f"fxroof: {_one_line(e)}", file=sys.stderr)
        return 2


def _one_line(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, OSError) and e.filename:
        text = f"{e.strerror}: {e.filename}"
    return text


if __name__ == "__main__":
    sys.exit(main())
