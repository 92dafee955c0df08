"""Single kernels on a real GPU beside fxroof's expected time: the first checks to run on a GPU.

Each case is one eager PyTorch op whose launch fxroof models (docs/time-model.md): elementwise
adds from 1 Ki to 64 Mi elements (one memory round trip, then the bandwidth), layer norms of 1 to
8,192 rows (a block per row, twice over), embeddings of 1 to 8,192 tokens (index_select's two
waits a step), fp16/bf16 GEMMs from 1 to 4,096 rows (the tiles and waves) and fused attention
over 512 to 8,192 tokens (the flash backend's share of the peak). Each is captured
20 times into a CUDA graph and replayed, so the time per kernel has no host dispatch in it (the
graph's own gap between kernels, about a microsecond, is in it). Beside it: fxroof's expected
time of the kernel on the chip (`device_s`: host dispatch left out), its floor, and the part of
the gap that dominates. Prints one table and the geometric mean ratio per kind.

    python bench/bench_kernels_gpu.py                    # on cuda:0, chip from its name
    python bench/bench_kernels_gpu.py --chip h200        # predict for a named chip
    python bench/bench_kernels_gpu.py --dry-run          # predictions only (no GPU needed)
    python bench/bench_kernels_gpu.py --json out.json    # also every row as JSON
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from tabulate import tabulate

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fxroof import analyze  # noqa: E402
from fxroof.graph.capture import FunctionModule  # noqa: E402

IN_GRAPH, REPLAYS = 20, 10
# GPU names as the driver reports them -> chip names in the table
CHIPS = (("H200", "h200"), ("H100 PCIe", "h100-pcie"), ("H100", "h100-sxm"),
         ("A100-SXM4-40GB", "a100-40gb"), ("A100 80GB PCIe", "a100-80gb-pcie"),
         ("A100", "a100-80gb"), ("V100", "v100"), ("RTX PRO 6000 Blackwell Max-Q", "pro6000-maxq"),
         ("RTX 5090", "rtx-5090"), ("RTX 4090", "rtx-4090"), ("RTX 3090", "rtx-3090"),
         ("L40S", "l40s"), ("L40", "l40"), ("L4", "l4"), ("A40", "a40"), ("T4", "t4"))


def cases(dtype=torch.float16):
    """(kind, label, function, inputs): each one eager kernel."""
    for p in (10, 14, 18, 22, 26):
        n = 1 << p
        yield "add", f"add 2^{p}", torch.add, (torch.empty(n, dtype=dtype),) * 2
    for rows in (1, 16, 128, 1024, 8192):
        x, w = torch.empty(rows, 4096, dtype=dtype), torch.empty(4096, dtype=dtype)
        yield "layer_norm", f"layer_norm {rows} x 4096", \
            (lambda x, w: F.layer_norm(x, (4096,), w, w)), (x, w)
    table = torch.empty(32000, 4096, dtype=dtype)
    for t in (1, 16, 128, 1024, 8192):
        yield "embedding", f"embedding {t} of 32000 x 4096", F.embedding, \
            (torch.randint(0, 32000, (t,)), table)
    for m in (1, 16, 128, 512, 4096):
        a, b = torch.empty(m, 4096, dtype=dtype), torch.empty(4096, 4096, dtype=dtype)
        yield "matmul", f"matmul {m} x 4096 x 4096", torch.mm, (a, b)
    for s in (512, 2048, 8192):      # the flash backend: the chip's attention_efficiency
        q = torch.empty(1, 32, s, 128, dtype=dtype)
        yield "attention", f"sdpa 1 x 32 heads x {s} x 128", F.scaled_dot_product_attention, \
            (q, q, q)


def timed(fn, inputs) -> float:
    """Seconds per kernel: IN_GRAPH calls captured in a CUDA graph, replayed REPLAYS times."""
    for _ in range(3):
        fn(*inputs)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(IN_GRAPH):
            fn(*inputs)
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(REPLAYS):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / (REPLAYS * IN_GRAPH)


def predicted(fn, inputs, chip: str):
    """fxroof's eager kernel for the call on the meta device: (expected device s, floor s,
    the largest part of its gap)."""
    r = analyze(FunctionModule(fn), tuple(x.to("meta") for x in inputs), chip=chip, mode="eager")
    kernels = [k for k in r.kernels if k.category != "view"]
    device = sum(k.expected.device_s for k in kernels)
    floor = sum(max(k.timing.compute_s, k.timing.memory_s) for k in kernels)
    parts: dict = defaultdict(float)      # where the time on the chip goes
    for k in kernels:
        e = k.expected
        parts["compute"] += e.compute_s
        waits = e.memory_s - e.streamed_s > e.streamed_s    # latency waited outweighs bytes
        parts["memory latency" if waits else "memory"] += e.memory_s
        parts["kernel floor"] += e.latency_s
    return device, floor, max(parts, key=parts.get, default="")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chip", help="chip to predict for (default: from the GPU's name)")
    ap.add_argument("--dry-run", action="store_true", help="predictions only, nothing timed")
    ap.add_argument("--json", metavar="PATH", help="also write every row as JSON")
    args = ap.parse_args(argv)
    gpu = not args.dry_run
    if gpu and not torch.cuda.is_available():
        print("bench_kernels_gpu: no CUDA device (use --dry-run for predictions only)")
        return 2
    name = torch.cuda.get_device_name() if gpu else ""
    chip = args.chip or next((c for key, c in CHIPS if key in name), "h100-sxm")
    rows, ratios = [], defaultdict(list)
    for kind, label, fn, inputs in cases():
        device_s, floor_s, part = predicted(fn, inputs, chip)
        measured = timed(fn, tuple(x.to("cuda") for x in inputs)) if gpu else float("nan")
        if gpu:
            ratios[kind].append(device_s / measured)
        rows.append({"kind": kind, "case": label, "measured_us": measured * 1e6,
                     "expected_us": device_s * 1e6, "floor_us": floor_s * 1e6,
                     "ratio": device_s / measured if gpu else None, "largest_part": part})
    print(f"{name or 'no GPU (dry run)'} · predicted for {chip} · eager kernels, CUDA graph "
          f"replay ({IN_GRAPH} a graph)")
    print(tabulate([[r["case"], f"{r['measured_us']:.1f}", f"{r['expected_us']:.1f}",
                     f"{r['floor_us']:.1f}", f"{r['ratio']:.2f}x" if r["ratio"] else "-",
                     r["largest_part"]] for r in rows],
                   headers=["kernel", "measured us", "expected us", "floor us", "ratio",
                            "largest part"]))
    for kind, rs in ratios.items():
        print(f"{kind}: geometric mean ratio {math.exp(sum(map(math.log, rs)) / len(rs)):.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"gpu": name, "chip": chip, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
