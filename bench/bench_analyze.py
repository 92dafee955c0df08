"""How much analyze costs on top of torch.export, on a Llama-3-70B-shaped model on the meta device.

Each measurement runs in a fresh process so peak RSS is its own. Goal: analyze <= 1.3x export time,
peak RSS <= 1 GB.

    python bench/bench_analyze.py [--layers 80] [--seq 128]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from _child import run_child

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
import torch
from fxroof.studies.workload import load
model, args, kwargs = load({spec!r}, dict(preset="llama3-70b", layers={layers}, seq={seq}))
start = time.perf_counter()
if {what!r} == "export":
    from fxroof.graph.capture import TensorOutputs
    torch.export.export(TensorOutputs(model), args, kwargs, strict=False)
else:
    import fxroof
    fxroof.analyze(model, args, kwargs, chip="h100-sxm")
elapsed = time.perf_counter() - start
print(json.dumps(dict(seconds=elapsed, rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)))
"""


def run(what: str, layers: int, seq: int) -> dict:
    code = CHILD.format(root=str(ROOT), spec=str(ROOT / "models" / "llama.py"), layers=layers,
                        seq=seq, what=what)
    return run_child(code)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=80)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeat", type=int, default=2)
    ns = p.parse_args()
    results = {}
    for what in ("export", "analyze"):
        runs = [run(what, ns.layers, ns.seq) for _ in range(ns.repeat)]
        results[what] = min(runs, key=lambda r: r["seconds"])
    e, a = results["export"], results["analyze"]
    print(f"Llama-3-70B-shaped ({ns.layers} layers, {ns.seq} tokens, bf16, meta device), "
          f"best of {ns.repeat}")
    print(f"{'':10}{'seconds':>10}{'peak RSS':>12}")
    for name, r in results.items():
        print(f"{name:10}{r['seconds']:>10.2f}{r['rss_gb']:>10.2f} GB")
    print(f"analyze / export: {a['seconds'] / e['seconds']:.2f}x  (goal <= 1.3x; "
          f"peak RSS goal <= 1 GB)")


if __name__ == "__main__":
    main()
