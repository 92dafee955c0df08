"""How analyze's cost grows with depth, next to torch.export alone, on a Hugging Face Llama
(4096 wide, 32 heads, SwiGLU 11008, fp32, built from a LlamaConfig on the meta device).

For each depth, two fresh processes (so each timing and peak RSS is its own): torch.export alone,
and fxroof.analyze timed as capture + the passes after it (annotate, fuse, time model, report).
Goal: analyze <= 1.3x export at 128 layers, passes after capture no dearer per layer as depth
grows, peak RSS <= 1 GB.

    python bench/bench_analyze.py [--layers 8 16 32 64 128] [--seq 2048] [--repeat 1]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from _child import run_child

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time
sys.path.insert(0, {root!r})
import torch
from fxroof.cli.hf import from_config
config = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=4096,
              intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
              num_hidden_layers={layers}, vocab_size=32000)
model, args, kwargs = from_config(config, seq={seq})
start = time.perf_counter()
if {what!r} == "export":
    from fxroof.graph.capture import TensorOutputs
    torch.export.export(TensorOutputs(model), args, kwargs, strict=False)
    captured = time.perf_counter()
else:
    from fxroof.graph.capture import capture
    from fxroof.pipeline import report_of, target_of
    graph = capture(model, args, kwargs)
    captured = time.perf_counter()
    report_of(graph, target_of(None, chip="h100-sxm"))
end = time.perf_counter()
print(json.dumps(dict(capture_s=captured - start, passes_s=end - captured, seconds=end - start,
                      rss_mb=peak_rss_bytes() / 1e6)))
"""


def run(what: str, layers: int, seq: int) -> dict:
    return run_child(CHILD.format(root=str(ROOT), layers=layers, seq=seq, what=what))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--repeat", type=int, default=1)
    ns = p.parse_args()
    print(f"HF Llama, 4096 wide, {ns.seq} tokens, fp32, meta device; best of {ns.repeat}")
    print(f"{'layers':>6}{'export s':>10}{'capture s':>11}{'passes s':>10}{'analyze/export':>16}"
          f"{'passes ms/layer':>17}{'peak MB':>9}")
    for layers in ns.layers:
        export, analyze = (min((run(what, layers, ns.seq) for _ in range(ns.repeat)),
                               key=lambda r: r["seconds"]) for what in ("export", "analyze"))
        print(f"{layers:>6}{export['seconds']:>10.2f}{analyze['capture_s']:>11.2f}"
              f"{analyze['passes_s']:>10.2f}{analyze['seconds'] / export['seconds']:>15.2f}x"
              f"{analyze['passes_s'] / layers * 1e3:>17.1f}{analyze['rss_mb']:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
