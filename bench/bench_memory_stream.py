"""How fxroof's memory-latency model meets streaming kernels at every occupancy, and where two of
its figures come from.

te42kyfo/gpu-benches (Dominik Ernst, FAU) publishes, for several GPUs, the bandwidth of streaming
kernels (`gpu-stream`: read, scale = copy, triad) with one 8-byte element a thread and two blocks
a SM, the block size scanned from 32 to 1,024 threads (3% to 100% occupancy), and a DRAM pointer
chase (`gpu-latency`). It is a microbenchmark, not a model run, so fxroof takes two figures from
it and checks the rest of its memory model against it:

- the wave overhead (launch.WAVE_OVERHEAD_S): at 3% occupancy a wave of the read kernel takes
  longer than the GPU's pointer-chase latency; the difference, median over the GPUs with both;
- the copy share of the bandwidth (a chip's bw_efficiency): what the scale kernel at full
  occupancy streams once its waits are taken out as fxroof adds them (expected.WAIT_NORM).

Then every kernel at every occupancy is predicted with fxroof's expected time (its chip figures
as chips.json has them) and with the larger-of-two rule the model had before. Pass the folder
of a checkout (commit 1c36d50 was used):

    python bench/bench_memory_stream.py path/to/gpu-benches
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fxroof.chips.expected as expected_model  # noqa: E402
from fxroof.chips import chip  # noqa: E402
from fxroof.chips.launch import WAVE_OVERHEAD_S, Launch  # noqa: E402
from fxroof.chips.timing import Timing  # noqa: E402

# gpu-benches' result files -> the fxroof chip with the same SMs and memory (the V100 measured
# is the PCIe card: 900 GB/s and 80 SMs, as the SXM2 fxroof lists).
CHIPS = {"a100_80": "a100-80gb", "a100_40": "a100-40gb", "a40": "a40", "h100_pcie": "h100-pcie",
         "h200": "h200", "l40": "l40", "v100": "v100"}
ELEMENTS = 128 * 1024 * 1024 + 2        # gpu-stream's max_buffer_size, doubles
KERNELS = (("read", 1), ("scale", 2), ("triad", 3))     # name, arrays of 8-byte elements moved


def stream_rows(path: Path) -> list[tuple[int, dict]]:
    """(block size, {kernel: GB/s}) per line of a gpu-stream result file."""
    rows = []
    header = None
    for line in path.read_text().splitlines():
        words = line.split()
        if words and words[0] == "blockSize":
            header = words[words.index("|") + 1:]
        elif words and words[0].isdigit() and "GB/s:" in words:
            values = words[words.index("GB/s:") + 1:]
            rows.append((int(words[0]), dict(zip(header, map(float, values)))))
    return rows


def dram_latency_s(path: Path) -> float | None:
    """The pointer chase's last (largest) buffer: its cycles at its clock."""
    if not path.exists():
        return None
    last = [line.split() for line in path.read_text().splitlines() if line.strip()
            and line.split()[0].isdigit()][-1]
    return float(last[-1]) / (float(last[1]) * 1e6)


def waves(block: int, sms: int) -> int:
    return math.ceil((ELEMENTS // block + 1) / (2 * sms))


def predict(c, block: int, arrays: int) -> float:
    """fxroof's expected memory time of one gpu-stream kernel: its bytes at the chip's bandwidth,
    its blocks two to an SM (a shared-memory spoiler holds the occupancy there), one round."""
    blocks = ELEMENTS // block + 1
    launch = Launch(blocks, int(c.sm_threads) // 2, 1)
    floor = Timing(0.0, arrays * ELEMENTS * 8 / c.mem_bw, 0.0, 0.0)
    return expected_model.expected(c, floor, "pointwise", launch=launch).memory_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", type=Path, help="a te42kyfo/gpu-benches checkout")
    args = parser.parse_args()
    files = {name: args.checkout / "gpu-stream" / f"{name}.txt" for name in CHIPS}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        sys.exit(f"bench_memory_stream: no gpu-stream result at {', '.join(missing)}")
    data = {name: stream_rows(p) for name, p in files.items()}

    print("The wave overhead: a read wave at 3% occupancy against the DRAM pointer chase")
    rows, overheads = [], []
    for name, table in data.items():
        c = chip(CHIPS[name])
        block, rates = table[0]
        wave = ELEMENTS * 8 / (rates["read"] * 1e9) / waves(block, c.sm_count)
        latency = dram_latency_s(args.checkout / "gpu-latency" / f"{name}.txt")
        if latency:
            overheads.append(wave - latency)
        rows.append((name, f"{wave * 1e9:.0f}", f"{latency * 1e9:.0f}" if latency else "-",
                     f"{(wave - latency) * 1e9:.0f}" if latency else "-"))
    print(tabulate(rows, ("GPU", "wave ns", "pointer chase ns", "overhead ns")))
    print(f"median overhead {statistics.median(overheads) * 1e9:.0f} ns over {len(overheads)} "
          f"GPUs; fxroof takes {WAVE_OVERHEAD_S * 1e9:.0f} ns\n")

    def share(name: str, norm: float) -> float:
        """The scale kernel's bandwidth at full occupancy with its waits taken out, over the
        datasheet's."""
        c = chip(CHIPS[name])
        block, rates = data[name][-1]
        measured = 2 * ELEMENTS * 8 / (rates["scale"] * 1e9)
        waited = waves(block, c.sm_count) * (c.memory_latency_s + WAVE_OVERHEAD_S)
        streamed = (measured ** norm - waited ** norm) ** (1 / norm)
        return 2 * ELEMENTS * 8 / streamed / c.mem_bw

    print("The copy share: the scale kernel at full occupancy, its waits taken out")
    rows = [(name, CHIPS[name], f"{table[-1][1]['scale']:.0f}",
             f"{chip(CHIPS[name]).mem_bw / 1e9:.0f}",
             f"{share(name, expected_model.WAIT_NORM):.3f}",
             f"{chip(CHIPS[name]).bw_efficiency:.3f}") for name, table in data.items()]
    print(tabulate(rows, ("GPU", "fxroof chip", "copy GB/s", "datasheet GB/s", "share",
                          "chips.json")))
    print()

    def errors(norm: float, own_share: bool) -> dict:
        """Predicted / measured per GPU; own_share: each GPU's copy share derived at this norm
        (else chips.json's)."""
        saved = expected_model.WAIT_NORM
        expected_model.WAIT_NORM = norm
        try:
            out = {}
            for name, table in data.items():
                c = chip(CHIPS[name])
                if own_share:
                    c = dataclasses.replace(c, bw_efficiency=share(name, min(norm, 64)))
                for block, rates in table:
                    for kernel, arrays in KERNELS:
                        measured = arrays * ELEMENTS * 8 / (rates[kernel] * 1e9)
                        out.setdefault(name, []).append(predict(c, block, arrays) / measured)
            return out
        finally:
            expected_model.WAIT_NORM = saved

    print("Predicted / measured, every kernel at every occupancy, each norm with the copy shares "
          "it derives")
    rows = []
    for label, norm in (("larger of the two", 1e9), ("norm 1.5", 1.5),
                        (f"norm {expected_model.WAIT_NORM} (fxroof)", expected_model.WAIT_NORM),
                        ("norm 3", 3), ("norm 4", 4)):
        ratios = [r for rs in errors(norm, True).values() for r in rs]
        logs = [math.log(r) for r in ratios]
        rows.append((label, len(ratios), f"{statistics.mean(abs(x) for x in logs):.3f}",
                     f"{math.exp(statistics.mean(logs)):.2f}", f"{min(ratios):.2f}",
                     f"{max(ratios):.2f}"))
    print(tabulate(rows, ("waits and streaming", "cases", "mean |log|", "geomean", "min",
                          "max")))
    print()
    print("fxroof as it stands (chips.json's figures), per GPU")
    rows = []
    for name, ratios in errors(expected_model.WAIT_NORM, False).items():
        rows.append((name, len(ratios), f"{math.exp(statistics.mean(map(math.log, ratios))):.2f}",
                     f"{min(ratios):.2f}", f"{max(ratios):.2f}"))
    print(tabulate(rows, ("GPU (fxroof)", "cases", "geomean", "min", "max")))


if __name__ == "__main__":
    main()
