"""The `fxroof` command: analyze a workload on a chip and print or write the report."""
from __future__ import annotations

import argparse
import json
import sys

from .api import analyze
from .capture import CaptureError
from .chips import ChipError, chips
from .roofline import MODES
from .tables import chip_table
from .workload import DEFAULT_SPEC, WorkloadError, load, parse_sets

USAGE_ERRORS = (CaptureError, ChipError, WorkloadError, ValueError, TypeError, ImportError,
                FileNotFoundError)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fxroof", description="Where a PyTorch model's time goes on "
                                "a given chip, and why.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("analyze", help="analyze a workload on a chip")
    a.add_argument("spec", nargs="?", default=DEFAULT_SPEC,
                   help="path/to/file.py[:FUNC] returning (model, args[, kwargs]); "
                        "default: the bundled Llama-2-7B")
    a.add_argument("--hf", metavar="CONFIG", help="a transformers config.json to build the model "
                   "from (on the meta device, no weights); --set batch=, seq=, dtype= apply")
    a.add_argument("--chip", default="h100-sxm", help="chip name or chip JSON file")
    a.add_argument("--mode", default="compiled", choices=MODES)
    a.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument for the workload function (repeatable)")
    a.add_argument("--json", metavar="PATH", help="write the report as JSON ('-' for stdout)")
    a.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    c = sub.add_parser("chips", help="list the chip table")
    c.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return p


def _progress(message: str) -> None:
    if sys.stderr.isatty():
        print(message, file=sys.stderr, flush=True)


def _workload(ns):
    options = parse_sets(ns.set)
    if ns.hf:
        from .hf import from_config
        _progress(f"building {ns.hf} on the meta device ...")
        return from_config(ns.hf, **options)
    _progress(f"loading {ns.spec} ...")
    return load(ns.spec, options)


def cmd_analyze(ns) -> int:
    model, args, kwargs = _workload(ns)
    _progress("capturing and analyzing (large models take a few seconds) ...")
    report = analyze(model, args, kwargs, chip=ns.chip, mode=ns.mode)
    if ns.json == "-":
        json.dump(report.to_dict(), sys.stdout, indent=1)
        print()
        return 0
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump(report.to_dict(), f, indent=1)
    print(report)
    return 0


def cmd_chips(ns) -> int:
    print(chip_table(chips()))
    return 0


def main(argv=None) -> int:
    ns = _parser().parse_args(argv)
    try:
        return {"analyze": cmd_analyze, "chips": cmd_chips}[ns.command](ns)
    except USAGE_ERRORS as e:
        if ns.debug:
            raise
        print(f"fxroof: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:      # `fxroof analyze | head`: the reader left; not an error
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
