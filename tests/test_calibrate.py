"""Calibration: a quick run on this machine's CPU gives a chip that a chip file round-trips.

Figures are checked for presence, op names and provenance, and against what the system reports;
never against the speed of the machine the tests run on.
"""
import dataclasses
import json
import os
import statistics
import types

import pytest
import torch
import torch.nn.functional as F

from fxroof.chips import Chip, load_chip_file, table_chip
from fxroof.chips import chip as find_chip
from fxroof.chips.chip import FILE_KEYS
from fxroof.chips.timing import matmul_tf32
from fxroof.cli.main import main
from fxroof.measure.calibrate import calibrate, chip_json, summary, write_chip
from fxroof.measure.gpu_shares import (Probe, gpu_probes, on_table, predicted_s, probes,
                                       solve, solve_shares, time_probes)
from fxroof.measure.machine import Clock, cpu_threads, last_level_cache, private_cache
from fxroof.measure.probes import TransformerBlock
from fxroof.pipeline import analyze


@pytest.fixture(scope="module")
def quick_chip():
    # One thread: steady on a small machine shared with other work.
    return calibrate("cpu", quick=True, threads=1)


def test_quick_calibration_names_this_machine(quick_chip):
    c = quick_chip
    assert c.kind == "cpu" and c.name == "calibrated-cpu"
    assert c.title.endswith(", 1 thread (calibrated)")      # calibrated on the thread count asked
    assert {"fp32", "bf16"} <= set(c.peak_flops)


@pytest.mark.skipif(not os.path.exists("/proc/meminfo"), reason="needs /proc/meminfo")
def test_memory_is_what_the_system_reports(quick_chip):
    with open("/proc/meminfo") as f:
        total_kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    assert quick_chip.mem_bytes == pytest.approx(total_kib * 1024, rel=0.01)


def test_sources_say_how_where_and_when(quick_chip):
    src = quick_chip.sources
    for figure in ("peak_flops", "vector_flops", "mem_bw", "mem_bytes", "dispatch_s", "launch_s"):
        assert src[figure].startswith("measured by fxroof calibrate on "), figure
    for figure in ("link_bw", "link_latency_s"):
        assert src[figure].startswith("estimate, not measured"), figure
    # a compiled program's call of a kernel: timed on compiled stacks of two depths, not taken
    # to be an eager op's dispatch
    assert "torch.compile'd stack of 4 pre-norm transformer blocks" in src["launch_s"]


def test_chip_file_round_trips(quick_chip, tmp_path):
    path = write_chip(quick_chip, tmp_path / "here.json")
    entry = json.loads(path.read_text())
    assert set(entry) <= FILE_KEYS
    for loaded in (load_chip_file(path), find_chip(str(path))):
        assert loaded.name == quick_chip.name and loaded.kind == "cpu"
        assert set(loaded.peak_flops) == set(quick_chip.peak_flops)
        for dtype, rate in quick_chip.peak_flops.items():
            assert loaded.peak_flops[dtype] == pytest.approx(rate, rel=1e-3)   # 4 figures kept
        for figure in ("vector_flops", "mem_bw", "mem_bytes", "dispatch_s", "launch_s",
                       "glue_s"):
            assert getattr(loaded, figure) == pytest.approx(getattr(quick_chip, figure), rel=1e-3)
        assert loaded.sources["mem_bw"] == quick_chip.sources["mem_bw"]
        for table in ("op_dispatch_s", "op_flops", "matrix_bw_fraction", "op_dispatch_cold_s"):
            mine, theirs = getattr(quick_chip, table), getattr(loaded, table)
            assert set(theirs) == set(mine)
            assert all(theirs[op] == pytest.approx(mine[op], rel=1e-3) for op in mine)
        assert loaded.view_dispatch_s == pytest.approx(quick_chip.view_dispatch_s, rel=1e-3)
        assert loaded.cache_bytes == pytest.approx(quick_chip.cache_bytes, rel=1e-3)


def test_ops_are_measured_one_by_one_under_the_names_reports_use(quick_chip):
    c = quick_chip
    ops = set(c.op_dispatch_s)
    assert {"add", "mul", "gelu", "gelu(tanh)", "silu", "layer_norm", "softmax", "batch_norm",
            "mean", "max_pool2d", "cat", "embedding", "linear", "matmul", "conv2d(native)",
            "conv2d(onednn)", "conv2d(onednn-depthwise)", "pad(fill)",
            "scaled_dot_product_attention"} <= ops
    # a transformer block's and a conv stem's eager ops are all in the table under the names
    # reports give them: the probes' names are capture's
    block = analyze(TransformerBlock(), (torch.randn(1, 8, 64),), chip=c, mode="eager")
    stem = analyze(torch.nn.Conv2d(3, 8, 7, stride=2), (torch.randn(1, 3, 16, 16),), chip=c,
                   mode="eager")
    assert {n.cost_key for n in block.nodes + stem.nodes} <= ops
    # work rates: every non-matrix probe with FLOPs, and the layer-shaped matrix ops
    assert {"relu", "gelu", "max_pool2d", "layer_norm", "linear", "conv2d"} <= set(c.op_flops)
    # a depthwise convolution is no layer-shaped product: it has a rate of its own, and it is
    # not one of the pointwise ops' rates that set vector_flops
    assert "conv2d(onednn-depthwise)" in c.op_flops
    # each op also called cold, after a copy of the core's L2, where the system reports one
    if private_cache():
        assert c.l2_bytes == private_cache() and set(c.op_dispatch_cold_s) == ops
        assert all(c.sources[f].startswith("measured by fxroof calibrate on ")
                   for f in ("op_dispatch_cold_s", "l2_bytes"))
    # and the matrix ops in every other dtype this build runs, fast path or not: ATen's
    # fallback for a dtype without one differs by op, no one ratio to fp32 holds
    for dtype in set(c.peak_flops) - {"fp32"}:
        assert {f"linear:{dtype}", f"conv2d:{dtype}",
                f"scaled_dot_product_attention:{dtype}"} <= set(c.op_flops), dtype
        assert c.eager_matrix_flops("linear", dtype) == c.op_flops[f"linear:{dtype}"]
    assert set(c.peak_flops) <= set(c.matrix_bw_fraction)   # a one-row linear streaming weights
    # ... over rows of 256 elements too, each dtype's share at that width
    assert {f"{d}#256" for d in c.peak_flops} <= set(c.matrix_bw_fraction)
    # and products of few rows: a linear of 4 tokens, a native convolution on 4 and 49 pixels
    assert {"linear#4", "conv2d(native)#4", "conv2d(native)#49"} <= set(c.op_flops)
    for figure in ("op_dispatch_s", "op_flops", "view_dispatch_s", "program_call_s",
                   "matrix_bw_fraction", "glue_s"):
        assert c.sources[figure].startswith("measured by fxroof calibrate on "), figure
    # each op's figure is its own call, the median of them ops not timed one by one; the model
    # code around an op is the glue apart, which a loop of one op does not pay
    assert c.dispatch_s == pytest.approx(statistics.median(c.op_dispatch_s.values()))
    assert c.glue_s >= 0 and "module calls" in c.sources["glue_s"]


def test_cache_is_a_size_a_copy_runs_faster_at(quick_chip):
    size = last_level_cache()
    if not size or not quick_chip.cache_bytes:
        pytest.skip("this system reports no cache sizes, or no copy ran faster than memory")
    assert quick_chip.cache_bytes <= size


def test_cache_is_the_largest_copy_faster_than_memory(monkeypatch):
    """A machine reporting 480 MiB of cache whose copies run at 80 GB/s up to 4 MiB moved, 30 GB/s
    up to 16 MiB and at memory speed (12 GB/s) past it: the cache is 16 MiB at 30 GB/s."""
    from fxroof.measure import microbench

    def copy_time(_clock, nbytes, min_samples):
        moved = 2 * nbytes
        return moved / (80e9 if moved <= 4 << 20 else 30e9 if moved <= 16 << 20 else 12e9)
    monkeypatch.setattr(microbench, "_copy_time", copy_time)
    monkeypatch.setattr(microbench, "last_level_cache", lambda: 480 << 20)
    clock = types.SimpleNamespace(cuda=False)
    size, rate, source = microbench.cache_bandwidth(clock, mem_bw=12e9)
    assert (size, rate) == (16 << 20, pytest.approx(30e9))     # 30 >= 1.5 x 12; 12 is not
    assert "480 MiB" in source and "64 MiB 12 GB/s" in source   # the ladder stops past it
    # no copy 1.5x faster than memory: no cache modelled
    size, rate, _ = microbench.cache_bandwidth(clock, mem_bw=60e9)
    assert (size, rate) == (0.0, 0.0)


def test_chip_json_uses_the_file_units():
    c = Chip(name="x", title="X", kind="cpu", peak_flops={"fp32": 2e11, "bf16": 4e11},
             vector_flops=5e9, mem_bw=2.5e10, mem_bytes=3.2e10, link_bw=1.25e10,
             link_latency_s=2e-5, launch_s=7e-6, dispatch_s=7e-6)
    e = chip_json(c)
    # 2e11 FLOP/s = 0.2 TFLOP/s; 2.5e10 B/s = 25 GB/s; 7e-6 s = 7 us
    assert e["peak_TFLOPS"] == {"fp32": 0.2, "bf16": 0.4}
    assert (e["vector_TFLOPS"], e["mem_bw_GBps"], e["mem_GB"]) == (0.005, 25.0, 32.0)
    assert (e["dispatch_us"], e["launch_us"], e["link_latency_us"]) == (7.0, 7.0, 20.0)
    assert summary(c).splitlines()[0] == "X" and "25 GB/s" in summary(c)


def test_command_line_writes_a_loadable_chip_file(tmp_path, capsys):
    out = tmp_path / "chip.json"
    assert main(["calibrate", "--quick", "--threads", "1", "--out", str(out)]) == 0
    assert find_chip(str(out)).kind == "cpu"
    printed = capsys.readouterr().out
    assert "1 thread" in printed and str(out) in printed


def test_command_line_refuses_an_unknown_device(tmp_path, capsys):
    assert main(["calibrate", "--device", "tpu", "--out", str(tmp_path / "x.json")]) == 2
    assert "cpu" in capsys.readouterr().err


def test_cpu_threads_restores_the_thread_count():
    before = torch.get_num_threads()
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError):
        with cpu_threads(0):
            pass


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_calibration_names_the_gpu():
    c = calibrate("cuda", quick=True)
    name, entry = torch.cuda.get_device_name(), table_chip(torch.cuda.get_device_name())
    assert c.kind == "gpu" and "fp32" in c.peak_flops and not c.op_flops
    assert c.title == (f"{entry.title}, calibrated ({name})" if entry else f"{name} (calibrated)")
    assert "CUDA graph" in c.sources["graph_launch_s"] and not c.cache_bytes   # L2: l2_bytes
    props = torch.cuda.get_device_properties(0)
    assert c.sm_count == props.multi_processor_count        # an H100 SXM: 132
    assert c.sm_threads == props.max_threads_per_multi_processor
    assert c.l2_bytes == props.L2_cache_size                # an H100 SXM: 50 MiB
    if entry:    # the datasheet floor kept, the shares measured
        assert c.peak_flops == entry.peak_flops and c.mem_bw == entry.mem_bw
        assert c.sources["matmul_efficiency"].startswith("measured by fxroof calibrate")


def test_cuda_without_a_device_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(ValueError, match="CUDA"):
        calibrate("cuda", quick=True)


# -- a GPU calibrated on its table entry (gpu_shares.py); the timing itself needs a GPU --------

def test_a_gpu_finds_its_table_entry_by_the_name_its_driver_reports():
    assert table_chip("NVIDIA H200") is find_chip("h200")
    assert table_chip("NVIDIA H100 80GB HBM3").name == "h100-sxm"     # the SXM5 part
    assert table_chip("NVIDIA A100-SXM4-40GB").name == "a100-40gb"
    assert table_chip("NVIDIA A100 80GB PCIe").name == "a100-80gb-pcie"
    assert table_chip("Tesla T4").name == "t4"
    # as the community torch.mm runs print them (zzc0721/torch-performance-test-data #164, #180)
    assert table_chip("Tesla P100-PCIE-16GB").name == "p100"
    assert table_chip("Tesla P100-SXM2-16GB").name == "p100-sxm2"
    # nothing from a part of a name: a 4080 SUPER is its own entry, not the 4080; a 3070 Ti (no
    # entry) is not a 3070, a 96 GB GH200 not the 144 GB
    assert table_chip("NVIDIA GeForce RTX 4080 SUPER").name == "rtx-4080-super"
    assert table_chip("NVIDIA GeForce RTX 3070 Ti") is None
    assert table_chip("NVIDIA GH200 480GB") is None


def test_a_share_is_solved_so_that_its_probe_predicts_the_measured_time():
    h200 = find_chip("h200")
    mm = probes()[0]
    assert mm.figure == "matmul_efficiency" and mm.shapes == ((8192, 8192),) * 2
    # by hand, a GEMM of 8192^3 measured in 1,500 us on an H200: 2 x 8192^3 FLOPs at 989.4
    # TFLOPS, in 64x64 tiles (16,384 over 132 SMs: 125 waves, x 125 x 132 / 16,384); its 3 x
    # 8192^2 x 2 bytes at 4.8 TB/s x 0.918 after the 354 ns round trip, hidden but 5% of it;
    # the 1 us kernel floor
    products = 2 * 8192 ** 3 * (125 * 132 / 16384) / 989.4e12
    memory = 3 * 8192 ** 2 * 2 / (4.8e12 * 0.918) + 354e-9
    share, note = solve(h200, mm, 1500e-6)
    assert share == pytest.approx(products / (1500e-6 - 0.05 * memory - 1e-6), rel=1e-3)
    assert share == pytest.approx(0.749, abs=1e-3) and not note
    # the table's own figure back from the time it predicts
    assert solve(h200, mm, predicted_s(h200, mm))[0] == pytest.approx(0.803, abs=1e-4)
    # faster than the model can be at any share: said, and capped
    assert solve(h200, mm, 1000e-6) == (1.0, pytest.approx("capped at 1.0: the probe ran "
                                                           "faster than the model allows"))


def test_an_attention_share_is_the_least_that_explains_the_time():
    # FlashAttention's products reach the peak at a share of 1 / (1 + the exponentials' 0.5),
    # past which only the exponentials remain: a time at that point gives 2/3, not 1
    h200 = find_chip("h200")
    flash = next(p for p in probes() if p.figure == "attention_efficiency")
    fastest = predicted_s(dataclasses.replace(h200, attention_efficiency=1.0,
                                              cudnn_attention_efficiency=0.0), flash)
    assert solve(h200, flash, fastest)[0] == pytest.approx(2 / 3, abs=1e-3)
    # 0.35 (the table's FlashAttention-2 share) from the time it predicts
    at_035 = predicted_s(dataclasses.replace(h200, cudnn_attention_efficiency=0.0), flash)
    assert solve(h200, flash, at_035)[0] == pytest.approx(0.35, abs=1e-4)


def test_cudnn_attention_is_measured_only_where_sdpa_prefers_it():
    figures = {c: [p.figure for p in gpu_probes(find_chip(c))] for c in ("h200", "a100-80gb")}
    assert "cudnn_attention_efficiency" in figures["h200"]
    assert figures["a100-80gb"] == ["matmul_efficiency", "fp32_matmul_efficiency",
                                    "bw_efficiency", "attention_efficiency"]


def test_the_fp32_gemm_share_is_solved_on_the_cuda_cores_whatever_the_tf32_flag():
    # the fp32 probe runs and is predicted with TF32 off, PyTorch's matmul default: on an
    # H200, 8192^3 x 2 FLOPs at 67 TFLOPS of fp32 over 125 waves of 64x64 tiles (x 125 x 132 /
    # 16,384) is 16.51 ms, at the table's 0.75 22.0 ms; that time solves back to 0.75 with the
    # flag on or off (on, a product would run on the TF32 tensor cores at 0.803 of 494.7)
    h200 = find_chip("h200")
    fp32 = next(p for p in probes() if p.figure == "fp32_matmul_efficiency")
    assert fp32.dtype == torch.float32
    for flag in (False, True):
        with matmul_tf32(flag):
            t = predicted_s(h200, fp32)
            assert t == pytest.approx(2 * 8192 ** 3 * (125 * 132 / 16384) / 67e12 / 0.75,
                                      rel=0.01)
            assert solve(h200, fp32, t)[0] == pytest.approx(0.75, abs=1e-4)
            assert torch.backends.cuda.matmul.allow_tf32 == flag      # left as it was


def test_a_probe_that_cannot_run_here_is_left_out_with_why():
    clock = Clock(torch.device("cpu"), quick=True)
    cudnn = Probe("cudnn_attention_efficiency", F.scaled_dot_product_attention,
                  ((1, 2, 16, 8),) * 3, "cuDNN's attention", "CUDNN_ATTENTION")
    mm = Probe("matmul_efficiency", torch.mm, ((16, 16),) * 2, "a small product")
    times = time_probes(clock, (mm, cudnn))
    assert times["matmul_efficiency"][0] > 0
    assert times["cudnn_attention_efficiency"][0] == 0
    assert times["cudnn_attention_efficiency"][1].startswith("not measured: cuDNN's attention "
                                                             "does not run here (RuntimeError")
    solved = solve_shares(find_chip("h200"), (cudnn,), times)
    assert solved["cudnn_attention_efficiency"][0] == 0


def _as_measured(c: Chip, **figures) -> Chip:
    """A calibration's chip for the H200: the host and driver figures given, each stamped."""
    stamp = "measured by fxroof calibrate on NVIDIA H200, 2026-12-05"
    return dataclasses.replace(c, name="calibrated-cuda", title="NVIDIA H200 (calibrated)",
                               **figures, sources={f: f"{stamp}: how" for f in
                                                   ("dispatch_s", "glue_s", "graph_launch_s",
                                                    "sm_count", "mem_bytes")})


def test_a_calibrated_gpu_keeps_its_table_floor_and_takes_what_was_measured(tmp_path):
    h200 = find_chip("h200")
    measured = _as_measured(h200, dispatch_s=14e-6, glue_s=6e-6, graph_launch_s=2e-6)
    solved = {"matmul_efficiency": (0.75, "torch.mm ..."), "bw_efficiency": (0.93, "add ..."),
              "attention_efficiency": (0.0, "not measured: ...")}
    c = on_table(h200, measured, solved, "measured by fxroof calibrate on NVIDIA H200, today",
                 "NVIDIA H200")
    assert (c.name, c.title) == ("calibrated-h200", "NVIDIA H200 SXM 141GB, calibrated "
                                                    "(NVIDIA H200)")
    assert c.nvidia and c.peak_flops == h200.peak_flops and c.mem_bw == h200.mem_bw
    assert (c.matmul_efficiency, c.bw_efficiency) == (0.75, 0.93)
    assert c.attention_efficiency == h200.attention_efficiency       # unmeasured: the table's
    assert (c.dispatch_s, c.glue_s, c.graph_launch_s) == (14e-6, 6e-6, 2e-6)
    assert (c.clock_hz, c.memory_latency_s, c.kernel_floor_s) == (
        h200.clock_hz, h200.memory_latency_s, h200.kernel_floor_s)
    assert c.sources["matmul_efficiency"].startswith("measured by fxroof calibrate")
    assert c.sources["clock_hz"] == "as the table's h200: " + h200.sources["clock_hz"]
    assert load_chip_file(write_chip(c, tmp_path / "h200.json")) == c
    text = summary(c)
    assert "GEMM of the dense peak 0.75" in text and "kept from the chip table" in text


def test_a_gpu_calibrated_to_its_table_figures_predicts_as_its_table_entry():
    # nothing of the model is lost on the way: the same figures, the same times
    h200 = find_chip("h200")
    same = on_table(h200, _as_measured(h200), {f: (getattr(h200, f), "as measured") for f in
                                               ("matmul_efficiency", "bw_efficiency")},
                    "measured", "NVIDIA H200")
    model, args = TransformerBlock().to(torch.bfloat16), (torch.randn(2, 64, 64).bfloat16(),)
    for mode in ("eager", "compiled"):
        a, b = (analyze(model, args, chip=c, mode=mode) for c in (h200, same))
        assert b.time_s == a.time_s and b.summary.floor_s == a.summary.floor_s


def test_like_names_a_gpu_of_the_table(tmp_path, capsys):
    out = str(tmp_path / "x.json")
    assert main(["calibrate", "--like", "h200", "--out", out]) == 2     # a CPU has no entry
    assert "a CPU's figures are all measured" in capsys.readouterr().err


def test_a_gpu_without_a_table_entry_is_told_how_to_name_one():
    c = Chip(name="calibrated-cuda", title="NVIDIA GeForce RTX 3070 Ti (calibrated)",
             kind="gpu", peak_flops={"fp32": 5e13, "bf16": 2e14}, vector_flops=5e13,
             mem_bw=7e11, mem_bytes=1.6e10, link_bw=2.5e10, link_latency_s=1e-5,
             launch_s=7e-6, dispatch_s=1e-5)
    text = summary(c)
    assert "not in the chip table" in text and "--like CHIP" in text
    assert "  shares" not in text     # no shares row: the rates measured are its peaks


def test_tiny_calls_take_turns_in_a_new_order_each_round(monkeypatch):
    # In one fixed order the first probe always followed the last, an attention, and paid for
    # what it left behind (a tiny add at 4.7 us where sub took 2.7). Each round is shuffled:
    # every call is timed once a round, after a different call from round to round.
    from fxroof.measure import machine
    seen = []
    monkeypatch.setattr(machine, "_once", lambda call, before=None: seen.append(call()) or 1e-6)
    calls = [lambda i=i: i for i in range(5)]
    times = machine.tiny_call_times(machine.Clock(torch.device("cpu"), quick=True), calls)
    assert times == [1e-6] * 5
    rounds = [seen[i:i + 5] for i in range(0, len(seen), 5)]
    assert len(rounds) == 43 and all(sorted(r) == list(range(5)) for r in rounds)
    before_first = {r[r.index(0) - 1] for r in rounds if r.index(0) > 0}
    assert len(before_first) > 1          # the first call follows different calls
