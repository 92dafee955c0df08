"""What an 11-point batch sweep costs against one analysis, on a Llama-2-7B-shaped decode step
(meta device, ctx 4096, batch 1 .. 1024). Goal: sweep <= 2x one analysis.

Each measurement runs in a fresh process (both pay torch's first-call costs once) after the
workload has been built once; the sweep's own 11 builds are counted in its time.

    python bench/bench_sweep.py [--layers 32] [--ctx 4096] [--repeat 2] [--check]

--check also compares two of the sweep's points with independent fxroof.analyze calls.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from _child import run_child

ROOT = Path(__file__).resolve().parent.parent
BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]

CHILD = r"""
import gc, importlib, json, sys, time
sys.path.insert(0, {root!r})
import fxroof
from fxroof.studies.workload import load
sw = importlib.import_module("fxroof.studies.sweep")
engine = importlib.import_module("fxroof.studies.evaluator")
options = dict(phase="decode", ctx={ctx}, layers={layers})
model, args, kwargs = load({spec!r}, dict(options, batch=8))
parts = {{}}
if {what!r} == "analyze":
    start = time.perf_counter()
    fxroof.analyze(model, args, kwargs, chip="a100-80gb")
    elapsed = time.perf_counter() - start
else:
    def timed(name, f):
        def g(*a, **k):
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                parts[name] = parts.get(name, 0.0) + time.perf_counter() - t
        return g
    engine.symbolic_capture = timed("capture once", engine.symbolic_capture)
    engine.report_of = timed("annotate+fuse+report, every value", engine.report_of)
    engine.Evaluator._substitute = timed("shapes by substitution", engine.Evaluator._substitute)
    engine.Evaluator._propagate = timed("shapes by FakeTensorProp", engine.Evaluator._propagate)
    start = time.perf_counter()
    s = sw.sweep({spec!r}, {{"batch": {batches}}}, options=options, chip="a100-80gb")
    t = time.perf_counter()
    gc.collect()    # the full collection the sweep put off, charged to it
    parts["the full collection put off"] = time.perf_counter() - t
    elapsed = parts["total"] = time.perf_counter() - start
    parts["method: " + s.method] = 0.0
    parts["values captured on their own"] = float(sum(bool(p.note) for p in s.points))
    if {check}:
        for p in (s.points[0], s.points[6]):
            m, a, k = load({spec!r}, dict(options, batch=p.value))
            r = fxroof.analyze(m, a, k, chip="a100-80gb")
            rel = abs(p.time_s - r.time_s) / r.time_s
            parts[f"batch {{p.value}}: relative difference to analyze"] = rel
            assert (p.report.flops, p.report.bytes, p.report.memory) == (r.flops, r.bytes, r.memory)
print(json.dumps(dict(seconds=elapsed, parts=parts)))
"""


def run(what: str, ns) -> dict:
    code = CHILD.format(root=str(ROOT), spec=str(ROOT / "models" / "llama.py"), ctx=ns.ctx,
                        layers=ns.layers, what=what, batches=BATCHES, check=ns.check)
    return run_child(code)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--ctx", type=int, default=4096)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--check", action="store_true")
    ns = p.parse_args()
    best = {}
    for what in ("analyze", "sweep"):
        runs = [run(what, ns) for _ in range(ns.repeat)]
        best[what] = min(runs, key=lambda r: r["seconds"])
    a, s = best["analyze"], best["sweep"]
    print(f"Llama-2-7B-shaped decode ({ns.layers} layers, ctx {ns.ctx}, bf16, meta device), "
          f"A100 80GB, best of {ns.repeat}")
    print(f"one analysis (batch 8):        {a['seconds']:7.2f} s")
    print(f"sweep, batch = {','.join(map(str, BATCHES))}:")
    for name, value in s["parts"].items():
        if name.startswith("method"):
            print(f"  {name}")
        elif "captured" in name:
            print(f"  {name}: {value:.0f}")
        elif "difference" in name:
            print(f"  {name}: {value:.1e}")
        else:
            print(f"  {name:34}{value:7.2f} s")
    print(f"sweep / one analysis: {s['seconds'] / a['seconds']:.2f}x  (goal <= 2x)")


if __name__ == "__main__":
    main()
