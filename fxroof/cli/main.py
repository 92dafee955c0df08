"""The `fxroof` command: analyze, compare, check, sweep, generate, critical-batch, measure,
calibrate, diff and chips.

Exit codes: 0 success (all checks hold), 1 a check failed, 2 a usage, input or capture error.
Errors print one line on stderr; --debug shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fxroof.chips import chips
from fxroof.chips.timing import MODES, REGIMES
from fxroof.errors import one_line
from fxroof.graph.capture import CaptureError
from fxroof.measure import calibrate
from fxroof.pipeline import Target, analyze
from fxroof.report import tables
from fxroof.report.checks import LINT_LEVELS
from fxroof.studies.llm import critical_batch, generation
from fxroof.studies.sweep import sweep
from fxroof.studies.workload import DEFAULT_SPEC, load, parse_sets, parse_value

# ValueError covers the errors of workloads, chips, what-ifs and UsageError.
USAGE_ERRORS = (CaptureError, ValueError, TypeError, ImportError, OSError)


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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fxroof", description="Where a PyTorch model's time goes "
                                "on a given chip, and why.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    common = [_workload_args()]
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
    m = sub.add_parser("measure",
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
    m.add_argument("--json", metavar="PATH", help="write the measurement as JSON ('-': stdout)")
    k = sub.add_parser("calibrate", help="measure this machine and write a chip file")
    calibrate.configure_parser(k)
    sub.add_parser("chips", help="list the chip table")
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


def _workload(ns):
    """The workload as a function of its options: a spec file's, or a transformers config's."""
    if ns.hf and ns.spec != DEFAULT_SPEC:
        raise UsageError(f"give a workload file or --hf CONFIG, not both ({ns.spec}, {ns.hf})")
    if ns.hf:
        from fxroof.cli.hf import from_config
        return lambda **options: from_config(ns.hf, **options)
    return lambda **options: load(ns.spec, options)


def _emit(ns, result, text=None) -> None:
    """Write the JSON if asked ('-': stdout, and then nothing else); print the tables."""
    if ns.json:
        data = json.dumps(result.to_dict(), indent=1)
        if ns.json != "-":
            Path(ns.json).write_text(data + "\n")
    print(data if ns.json == "-" else result if text is None else text)


def _target(ns) -> Target:
    """What the command analyzes for: checked before the workload is built."""
    return Target(chip=ns.chip, mode=ns.mode, quantize=ns.quantize, tp=ns.tp)


def _report(ns):
    target = _target(ns)
    _progress(f"loading {ns.hf or ns.spec} ...")
    model, args, kwargs = _workload(ns)(**parse_sets(ns.set))
    _progress("capturing and analyzing (a 70B model takes about ten seconds) ...")
    return analyze(model, args, kwargs, target=target)


def cmd_analyze(ns) -> None:
    report = _report(ns)
    if ns.plot:
        report.plot_roofline(ns.plot)
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


def cmd_compare(ns) -> None:
    report = _report(ns)
    _emit(ns, report, tables.comparison(report))


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


# The studies of a workload as a function of its options: each one's own options, and what it
# says while it runs.
STUDIES = {"sweep": (sweep, ("over",), "analyzing {what} at each value of {ns.over} ..."),
           "generate": (generation, ("prompt", "new_tokens", "batch"),
                        "analyzing prefill and decode ..."),
           "critical-batch": (critical_batch, ("ctx", "max_batch"), "searching batch sizes ...")}


def cmd_study(ns) -> None:
    study, own, progress = STUDIES[ns.command]
    _progress(progress.format(ns=ns, what=ns.hf or ns.spec))
    _emit(ns, study(_workload(ns), options=parse_sets(ns.set), target=_target(ns),
                    **{k: getattr(ns, k) for k in own}))


def cmd_measure(ns) -> None:
    from fxroof.measure.runs import measure, measure_compiled   # loaded only when asked
    model, args, kwargs = load(ns.spec, parse_sets(ns.set))
    how = measure if ns.mode == "eager" else measure_compiled
    _progress("capturing, calibrating" + (", compiling" if ns.mode == "compiled" else "")
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


COMMANDS = {"analyze": cmd_analyze, "compare": cmd_compare, "check": cmd_check,
            **dict.fromkeys(STUDIES, cmd_study), "measure": cmd_measure,
            "calibrate": calibrate.cmd_calibrate,
            "chips": lambda ns: print(tables.chip_table(chips())),
            "diff": lambda ns: print(tables.diff(_read_report(ns.a), _read_report(ns.b)))}


def main(argv=None) -> int:
    try:
        ns = _parser().parse_args(argv)
    except SystemExit as e:          # argparse already printed its one-line usage error
        return 0 if e.code == 0 else 2
    try:
        return COMMANDS[ns.command](ns) or 0
    except BrokenPipeError:          # `fxroof analyze | head`: the reader left; not an error
        sys.stderr.close()           # (an OSError: it must come before USAGE_ERRORS)
        return 0
    except USAGE_ERRORS as e:
        if ns.debug:
            raise
        print(f"fxroof: {one_line(e)}", file=sys.stderr)
        return 2
