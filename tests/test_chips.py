"""The chip table and chip files: figures checked against datasheet arithmetic, errors that name the cause."""
import dataclasses
import json
import math
import pickle
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fxroof.chips import DTYPES, Chip, ChipError, chip, chips, load_chip_file, table_chip

REQUIRED = ["v100", "v100s", "p100", "p100-sxm2", "t4", "a10", "a10g", "a40", "l4", "l40", "l20",
            "l40s", "rtx-a6000", "rtx-a4000", "rtx-a5000", "rtx-6000-ada", "rtx-4000-ada",
            "rtx-2080-ti", "rtx-2080", "rtx-3090", "rtx-3060", "rtx-3060-ti", "rtx-3070",
            "rtx-3080", "rtx-3080-ti", "rtx-4060", "rtx-4060-ti", "rtx-4070", "rtx-4070-super",
            "rtx-4070-ti", "rtx-4070-ti-super", "rtx-4090", "rtx-4090-d", "rtx-4080",
            "rtx-4080-super", "rtx-5060", "rtx-5060-ti", "rtx-5070", "rtx-5070-ti", "rtx-5080",
            "rtx-5090", "pro6000-maxq", "rtx-pro-6000", "a100-40gb", "a100-80gb", "a100-80gb-pcie",
            "a100-40gb-pcie", "a800", "a30", "h100-pcie", "h100-sxm", "h100-nvl", "h20", "h200",
            "h800", "h800-pcie", "gh200", "b200", "mi300x", "mi325x", "tpu-v5e", "cpu"]
# GeForce cards print FP16/BF16 tensor rates with FP16 accumulate and half of it with FP32
# accumulate, the path PyTorch takes; int8 (int32 accumulate) keeps the full rate. AWS's A10G
# takes the GeForce GA102's tensor path (its entry's peak_flops source).
FP32_ACCUMULATE_AT_HALF_RATE = {"a10g", "rtx-2080", "rtx-2080-ti", "rtx-3060", "rtx-3060-ti",
                                "rtx-3070", "rtx-3080", "rtx-3080-ti", "rtx-3090", "rtx-4060",
                                "rtx-4060-ti", "rtx-4070", "rtx-4070-super", "rtx-4070-ti",
                                "rtx-4070-ti-super", "rtx-4080", "rtx-4080-super", "rtx-4090",
                                "rtx-4090-d", "rtx-5060", "rtx-5060-ti", "rtx-5070", "rtx-5070-ti",
                                "rtx-5080", "rtx-5090"}
EXPECTED_FIGURES = ["sm_count", "matmul_efficiency", "fp32_matmul_efficiency", "bw_efficiency",
                    "collective_efficiency", "kernel_floor_s", "clock_hz", "l2_bytes"]
FIGURES = ["peak_flops", "vector_flops", "mem_bw", "mem_bytes", "link_bw", "link_latency_s",
           "launch_s", "dispatch_s"]


def good_entry(**changes):
    """A valid chip object in the file schema (natural units), with `changes` applied."""
    entry = {
        "name": "my-chip", "title": "My Chip", "kind": "accelerator",
        "peak_TFLOPS": {"fp32": 10, "bf16": 100},
        "vector_TFLOPS": 10, "mem_bw_GBps": 500, "mem_GB": 32, "link_bw_GBps": 25,
        "link_latency_us": 8, "launch_us": 3, "dispatch_us": 12,
        "sources": {"mem_bw": "vendor sheet"},
    }
    entry.update(changes)
    return entry


def write(tmp_path, obj, name="chip.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj, indent=2))
    return path


# --- ridge points: the blog post's half-precision ridges, from datasheet arithmetic ---

@pytest.mark.parametrize("name, ridge", [
    ("a10", 125e12 / 600e9),          # 125 TFLOP/s / 600 GB/s = 208.3
    ("a100-80gb", 312e12 / 2039e9),   # 312 TFLOP/s / 2039 GB/s = 153.0
    ("h100-sxm", 989.4e12 / 3.35e12), # 989.4 TFLOP/s / 3.35 TB/s = 295.3
    ("h100-pcie", 756e12 / 2.0e12),   # 756 TFLOP/s / 2.0 TB/s = 378.0
])
def test_ridge_points(name, ridge):
    assert chip(name).ridge("bf16") == pytest.approx(ridge, rel=1e-3)
    assert chip(name).ridge() == pytest.approx(ridge, rel=1e-3)   # bf16 is the default


def test_ridge_points_round_to_the_published_integers():
    assert [round(chip(n).ridge()) for n in ("a10", "a100-80gb", "h100-sxm", "h100-pcie")] == \
        [208, 153, 295, 378]


def test_ridge_of_fp8_on_h100_is_twice_bf16():
    # 1978.9 / 3.35 = 590.7 = 2 * 295.3 (fp8 tensor cores run at twice the half rate)
    assert chip("h100-sxm").ridge("fp8") == pytest.approx(1978.9e12 / 3.35e12, rel=1e-3)


# --- the table: complete, positive, sourced ---

def test_table_has_the_required_chips_in_order():
    names = [c.name for c in chips()]
    assert names == REQUIRED
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("c", chips(), ids=lambda c: c.name)
def test_every_figure_is_positive_and_sourced(c):
    assert c.kind in ("gpu", "tpu", "cpu", "accelerator")
    assert c.title and c.name == c.name.lower()
    assert "fp32" in c.peak_flops and ("bf16" in c.peak_flops or "fp16" in c.peak_flops)
    for dtype, flops in c.peak_flops.items():
        assert dtype in DTYPES and math.isfinite(flops) and flops > 0
    for f in FIGURES[1:]:
        value = getattr(c, f)
        assert isinstance(value, float) and math.isfinite(value) and value > 0, f
    for f in FIGURES:
        src = c.sources[f]
        assert src.strip() and src != "unsourced" and not src.startswith("chip file"), f
        # A source is either a cited document (a URL) or an estimate that says so.
        assert "http" in src or src.startswith("estimate"), (f, src)


@pytest.mark.parametrize("c", chips(), ids=lambda c: c.name)
def test_figures_are_in_plausible_si_ranges(c):
    # Catches unit slips (TFLOP/s stored as FLOP/s, GiB vs GB by 1e3, us stored as s).
    assert 1e12 <= c.peak_flops["fp32"] <= 1e15
    assert 1e11 <= c.mem_bw <= 1e14
    assert 1e9 <= c.mem_bytes <= 1e13
    assert 1e9 <= c.link_bw <= 1e13
    assert 1e-7 <= c.link_latency_s <= 1e-3
    assert 1e-7 <= c.launch_s <= c.dispatch_s <= 1e-4
    assert c.vector_flops <= max(c.peak_flops.values())


@pytest.mark.parametrize("c", [c for c in chips() if c.kind == "gpu"], ids=lambda c: c.name)
def test_tensor_rates_scale_by_two_per_halving_of_width(c):
    # Matrix units double their rate each time the operand width halves: tf32 -> 16 bit -> 8 bit.
    # A figure copied with sparsity (2x) into a dense column breaks this (2% slack: NVIDIA rounds).
    p = c.peak_flops
    half = p.get("bf16", p.get("fp16"))
    if "bf16" in p and "fp16" in p:
        assert p["bf16"] == p["fp16"]
    if "tf32" in p:
        assert p["tf32"] == pytest.approx(half / 2, rel=0.02)
    for d in ("fp8", "int8"):
        if d in p:
            full_rate = d == "int8" and c.name in FP32_ACCUMULATE_AT_HALF_RATE
            assert p[d] == pytest.approx((4 if full_rate else 2) * half, rel=0.02)


# --- dense, not sparse: datasheet sparse figures halved, by hand ---

@pytest.mark.parametrize("name, dtype, dense", [
    ("h100-sxm", "bf16", 1978.9e12 / 2),   # Hopper whitepaper: 1978.9 with sparsity -> 989.4
    ("h100-sxm", "fp8", 3957.8e12 / 2),    # 3957.8 with sparsity -> 1978.9
    ("h100-pcie", "bf16", 1513e12 / 2),    # datasheet 1,513* -> 756.5
    ("h200", "bf16", 1979e12 / 2),         # same GH100 as H100 SXM
    ("l4", "bf16", 242e12 / 2),            # datasheet 242* -> 121
    ("l40s", "fp8", 1466e12 / 2),          # datasheet 733 | 1,466* -> 733
    ("l40", "bf16", 362.1e12 / 2),         # datasheet 181.05 | 362.1* -> 181.05
    ("b200", "bf16", 36e15 / 8 / 2),       # HGX B200: 36 PFLOPS sparse for 8 GPUs -> 2.25 PFLOPS
    ("mi300x", "bf16", 2614.9e12 / 2),     # AMD: 2,614.9 with sparsity -> 1,307.4
    ("a100-80gb", "bf16", 624e12 / 2),     # datasheet 312 | 624* -> 312
    ("rtx-3090", "fp16", 142e12 / 2),      # GA102: 142 dense with FP16 accumulate; FP32: 71
    ("rtx-3090", "int8", 568e12 / 2),      # 284 | 568*
    ("rtx-5090", "bf16", 419e12 / 2),      # GB202: 209.5 | 419* with FP32 accumulate
    ("rtx-5090", "fp8", 838e12 / 2),       # 419 | 838* with FP32 accumulate
    ("a40", "bf16", 299.4e12 / 2),         # datasheet 149.7 | 299.4*
    ("rtx-4090", "bf16", 330.4e12 / 2),    # AD102: 165.2 | 330.4* with FP32 accumulate
    ("rtx-4090", "int8", 1321.2e12 / 2),   # 660.6 | 1321.2*
    ("rtx-a6000", "bf16", 309.7e12 / 2),   # datasheet tensor 309.7 with sparsity
    ("rtx-a5000", "bf16", 222.2e12 / 2),   # datasheet tensor 222.2 with sparsity
    ("rtx-6000-ada", "fp8", 1457.0e12 / 2),  # datasheet tensor 1,457.0 (FP8, sparse)
    ("h100-nvl", "bf16", 1671e12 / 2),     # datasheet, H100 NVL: 1,671*
    ("gh200", "bf16", 1979e12 / 2),        # the H100 SXM's GH100: 1,979*
    ("mi325x", "bf16", 2614.9e12 / 2),     # AMD: 2,614.9 with sparsity, as the MI300X
    ("rtx-3080", "fp16", 119e12 / 2),      # GA102: 119 dense with FP16 accumulate; FP32: 59.5
])
def test_peaks_are_dense(name, dtype, dense):
    assert chip(name).peak_flops[dtype] == pytest.approx(dense, rel=2e-3)


def test_geforce_fp32_is_its_cuda_cores_times_two_flops_per_clock():
    assert chip("rtx-3090").peak_flops["fp32"] == pytest.approx(10496 * 2 * 1.695e9, rel=1e-3)
    assert chip("rtx-5090").peak_flops["fp32"] == pytest.approx(21760 * 2 * 2.407e9, rel=1e-3)
    assert chip("rtx-3080").peak_flops["fp32"] == pytest.approx(8704 * 2 * 1.71e9, rel=2e-3)
    assert chip("rtx-4080").peak_flops["fp32"] == pytest.approx(9728 * 2 * 2.505e9, rel=1e-3)
    assert chip("rtx-4090").peak_flops["fp32"] == pytest.approx(16384 * 2 * 2.52e9, rel=1e-3)
    assert (chip("rtx-3090").sm_count, chip("rtx-5090").sm_count) == (82, 170)  # 128 cores per SM
    assert chip("rtx-4090").sm_count == 128


def test_a_workstation_blackwell_runs_fp32_accumulate_at_the_full_rate_of_its_sms():
    # the RTX 5090's SM: 419 TFLOPS (FP16 accumulate) / (170 SMs x 2.407 GHz) = 1,024 FLOP/clk;
    # 188 of them at the Max-Q's 2.288 GHz boost, not halved, within the 0.4% between that
    # clock and the 2.28 GHz of the whitepaper's 438.9 TFLOPS
    per_sm = 419e12 / (170 * 2.407e9)
    assert chip("pro6000-maxq").peak_flops["bf16"] == pytest.approx(188 * per_sm * 2.288e9,
                                                                          rel=5e-3)
    assert chip("pro6000-maxq").peak_flops["fp32"] == pytest.approx(24064 * 2 * 2.288e9,
                                                                          rel=1e-3)


@pytest.mark.parametrize("c", [c for c in chips() if c.clock_hz], ids=lambda c: c.name)
def test_a_clock_rates_its_chips_peak(c):
    # the dense 16-bit peak is SMs x the SM's tensor FLOPs a clock x the clock: 512 (GeForce and
    # L40, FP32 accumulate at half rate), 1,024 (Volta, Turing, data-centre and workstation
    # GA102/AD10x), 2,048 (A100), 4,096 (Hopper), whitepaper figures; a clock off by a digit
    # misses every one of them
    half = c.peak_flops.get("bf16") or c.peak_flops["fp16"]
    if half == c.peak_flops["fp32"]:
        # no tensor cores (Pascal's P100: fp16 products computed in fp32): 64 FMA lanes an SM
        assert half / (c.sm_count * c.clock_hz) == pytest.approx(128, rel=5e-3)
        return
    per_clock = half / (c.sm_count * c.clock_hz)
    if "capped" in c.sources["peak_flops"]:
        # the H20's tensor rate is cut a clock for export (148 TFLOPS from 78 Hopper SMs at
        # 1,980 MHz: 958 a clock); its clock still paces its CUDA cores, so it stays the SMs'
        assert per_clock < 4096 and c.name == "h20"
    else:
        assert any(per_clock == pytest.approx(r, rel=5e-3) for r in (512, 1024, 2048, 4096))
    assert c.nvidia


# --- the expected-time model's figures: shares of a peak, each sourced ---

@pytest.mark.parametrize("c", chips(), ids=lambda c: c.name)
def test_expected_model_figures_are_shares_and_sourced(c):
    for f in EXPECTED_FIGURES:
        value = getattr(c, f)
        if not value:
            continue                  # not modelled: no gap of that kind
        src = c.sources[f]
        assert "http" in src or src.startswith("estimate"), (f, src)
        if f.endswith("efficiency"):
            assert 0.3 < value <= 1, f
    if c.kernel_floor_s:
        assert 1e-7 <= c.kernel_floor_s <= 1e-4
    assert c.kind == "gpu" or not any(getattr(c, f) for f in EXPECTED_FIGURES)   # CPU, TPU: none


def test_expected_model_figures_come_from_their_measurements():
    # maximum achievable matmul FLOPS / dense peak: A100 SXM 271.2 / 312, H100 SXM 794.5 / 989
    assert chip("a100-80gb").matmul_efficiency == pytest.approx(271.2 / 312, abs=1e-3)
    assert chip("h100-sxm").matmul_efficiency == pytest.approx(794.5 / 989, abs=1e-3)
    # fp32 GEMMs on the CUDA cores, chsasank/device-benchmarks' best fp32 torch.matmul: RTX 4090
    # 58 of 82.6, H100 PCIe 38 of 51 (and the other GH100 parts), A100 80GB 19 of 19.5; the
    # other 128-lane SMs the median of eight such cards, 0.70
    assert chip("rtx-4090").fp32_matmul_efficiency == pytest.approx(58 / 82.6, abs=5e-3)
    assert chip("h100-pcie").fp32_matmul_efficiency == chip("h200").fp32_matmul_efficiency \
        == pytest.approx(38 / 51, abs=5e-3)
    assert chip("a100-40gb").fp32_matmul_efficiency == pytest.approx(19 / 19.5, abs=5e-3)
    assert chip("rtx-5090").fp32_matmul_efficiency == chip("l40s").fp32_matmul_efficiency == 0.70
    # mag-/gpu_benchmark: V100 SXM2 32GB 94.0 of 125, L40 170.3 of 181.05; the A40 takes the
    # RTX A6000's 131.2 of 154.8 (the same GA102 at 84 SMs and 300 W), an estimate
    assert chip("v100").matmul_efficiency == pytest.approx(94.0 / 125, abs=1e-3)
    assert chip("l40").matmul_efficiency == pytest.approx(170.3 / 181.05, abs=1e-3)
    assert chip("a40").matmul_efficiency == pytest.approx(131.2 / 154.8, abs=1e-3)
    assert chip("a40").sources["matmul_efficiency"].startswith("estimate")
    # a community torch.mm run of the RTX PRO 6000 Workstation Edition: 390.9 of 503.8 at
    # n = 4,096; the 300 W Max-Q takes it, an estimate
    assert chip("rtx-pro-6000").matmul_efficiency == pytest.approx(390.92 / 503.8, abs=1e-3)
    # the H20 (tensor rate capped for export): cuDNN's fused attention at 129.1 of its 148
    assert chip("h20").matmul_efficiency == pytest.approx(129.1 / 148, abs=1e-3)
    assert chip("pro6000-maxq").matmul_efficiency == chip("rtx-pro-6000").matmul_efficiency
    assert chip("pro6000-maxq").sources["matmul_efficiency"].startswith("estimate")
    # the same script's T4 run: 42.71 of its 65 (a 70 W card)
    assert chip("t4").matmul_efficiency == pytest.approx(42.71 / 65, abs=1e-3)
    # and the A100 PCIe 256.4 of 312; its attention share scales the SXM's 0.73 by 0.822 / 0.869
    assert chip("a100-80gb-pcie").matmul_efficiency == pytest.approx(256.4 / 312, abs=1e-3)
    assert chip("a100-80gb-pcie").attention_efficiency == pytest.approx(0.73 * 0.822 / 0.869,
                                                                         abs=2e-3)
    # gpu-benches' copy on an A100 80GB: 2 x 1 GiB in 607 waves at 1,732 GB/s, 1.2399 ms; its
    # waits (607 x (390 + 245) ns = 385.4 us) taken out as a 2-norm leave 1.1785 ms of bytes:
    # 1,822 of 2,039 GB/s. nccl-tests ring on 8 H200: 365.6 of 450 GB/s
    copy_bytes = 2 * (128 * 1024 * 1024 + 2) * 8
    streamed = ((copy_bytes / 1732e9) ** 2 - (607 * 635e-9) ** 2) ** 0.5
    assert chip("a100-80gb").bw_efficiency == pytest.approx(copy_bytes / streamed / 2039e9,
                                                            abs=1e-3)
    assert chip("a100-80gb").bw_efficiency == pytest.approx(0.894)
    assert chip("h200").collective_efficiency == pytest.approx(365.6 / 450, abs=5e-3)
    assert (chip("a100-80gb").sm_count, chip("h100-sxm").sm_count) == (108, 132)


def test_an_efficiency_above_one_is_refused(tmp_path):
    with pytest.raises(ChipError, match="bw_efficiency is a share, at most 1"):
        chip(str(write(tmp_path, good_entry(bw_efficiency=1.2))))


def test_peer_links_count_whole_links_and_split_the_link(tmp_path):
    with pytest.raises(ChipError, match="peer_links counts links, a whole number"):
        chip(str(write(tmp_path, good_entry(peer_links=2.5))))
    mi = chip("mi300x")                        # 7 links of 64 GB/s each way
    assert [mi.group_link_bw(n) / 1e9 for n in (2, 4, 8, 16)] == pytest.approx([64, 192, 448, 448])
    assert chip("h100-sxm").group_link_bw(2) == 450e9    # every GPU's links go to the switch


def test_fp32_is_the_cuda_core_figure_not_tf32():
    assert chip("h100-sxm").peak_flops["fp32"] == pytest.approx(67e12, rel=0.01)   # not 494.7e12
    assert chip("a100-80gb").peak_flops["fp32"] == 19.5e12                          # not 156e12


def test_memory_in_decimal_gigabytes():
    assert chip("h100-sxm").mem_bytes == 80e9
    assert chip("h200").mem_bytes == 141e9
    assert chip("mi300x").mem_bytes == 192e9
    assert chip("a100-40gb").mem_bw == 1555e9


@pytest.mark.parametrize("name, one_way", [
    ("h100-sxm", 900e9 / 2),    # NVLink 4: 900 GB/s bidirectional
    ("a100-80gb", 600e9 / 2),   # NVLink 3: 600 GB/s bidirectional
    ("b200", 1.8e12 / 2),       # NVLink 5: 1.8 TB/s bidirectional
    ("h100-pcie", 128e9 / 2),   # PCIe Gen5 x16: 128 GB/s bidirectional
    ("a10", 64e9 / 2),          # PCIe Gen4 x16: 64 GB/s bidirectional
    ("tpu-v5e", 400e9 / 2),     # ICI: 400 GB/s bidirectional per chip
])
def test_link_bandwidth_is_one_direction(name, one_way):
    assert chip(name).link_bw == pytest.approx(one_way)


def test_overheads_have_the_expected_order():
    h100 = chip("h100")
    # a CUDA graph's pace per kernel (gpu-benches: H200 1.26 us), below Inductor's launch from
    # Python (tritonbench #1017: 6.8-9.1 us), below an eager op's dispatch
    assert (h100.graph_launch_s, h100.launch_s, h100.dispatch_s) == pytest.approx(
        (1.26e-6, 7e-6, 1e-5))
    assert h100.program_call_s == pytest.approx(35e-6)     # entering the compiled program
    assert chip("cpu").launch_s == chip("cpu").dispatch_s      # no device launch on a CPU
    assert chip("h100-sxm").link_latency_s < chip("h100-pcie").link_latency_s  # NVLink < PCIe


# --- lookup ---

def test_names_are_case_insensitive_and_aliases_resolve():
    assert chip("H100-SXM") is chip("h100-sxm")
    assert chip("h100_sxm") is chip("h100-sxm")
    assert chip("h100") is chip("h100-sxm")
    assert chip("a100") is chip("a100-80gb")
    assert chip(" MI300X ") is chip("mi300x")


def test_separators_do_not_count_but_the_whole_name_must_match():
    # result files spell GPUs without separators: timm's "rtx6000ada", "a100_80gb"
    assert chip("h100sxm") is chip("h100-sxm")
    assert chip("RTX6000ADA") is chip("rtx-6000-ada")
    assert chip("a100_80gb") is chip("a100-80gb")
    assert table_chip("l40-s") is chip("l40s")
    # a part of a name is not the name: the 4080 SUPER is not a 4080
    assert table_chip("rtx4080super") is chip("rtx-4080-super")
    assert table_chip("rtx40") is None and table_chip("h100sx") is None


def test_chip_object_is_returned_as_is():
    c = chip("l4")
    assert chip(c) is c
    custom = dataclasses.replace(c, name="l4-custom", mem_bw=1e12)
    assert chip(custom) is custom


def test_misspelt_name_suggests_the_right_one():
    with pytest.raises(ChipError, match=r"unknown chip 'h100-sxn'; did you mean: h100-sxm"):
        chip("h100-sxn")
    with pytest.raises(ChipError, match=r"did you mean: .*l40s"):
        chip("l40-z")


def test_name_with_nothing_close_lists_all_names():
    with pytest.raises(ChipError) as e:
        chip("quantum-abacus")
    for name in REQUIRED:
        assert name in str(e.value)


def test_spec_of_wrong_type():
    with pytest.raises(ChipError, match="not int"):
        chip(42)


# --- matrix_flops fallbacks ---

def test_matrix_flops_direct():
    assert chip("h100-sxm").matrix_flops("fp8") == pytest.approx(1978.9e12)
    assert chip("h100-sxm").matrix_flops(torch.bfloat16) == pytest.approx(989.4e12)
    assert chip("h100-sxm").matrix_flops("bfloat16") == pytest.approx(989.4e12)
    assert chip("h100-sxm").matrix_flops(torch.float8_e4m3fn) == pytest.approx(1978.9e12)
    assert chip("h100-sxm").matrix_flops(torch.float32) == pytest.approx(67e12)


@pytest.mark.parametrize("name, dtype, used", [
    ("a100-80gb", "fp8", "bf16"),     # no fp8 tensor cores: upcast to a bf16 GEMM, 312e12
    ("t4", "bf16", "fp32"),           # Turing has no bf16 tensor cores
    ("t4", "fp8", "fp16"),            # ... but fp8 can be upcast to fp16
    ("t4", "tf32", "fp32"),           # no TF32 unit before Ampere
    ("tpu-v5e", "fp16", "fp32"),      # the MXU has no fp16 path
    ("cpu", "int8", "bf16"),          # no int8 figure kept: upcast to bf16
    ("h100-sxm", "fp64", "fp32"),     # no fp64 figure kept: fp32 bounds the time from below
    ("h100-sxm", "c64", "fp32"),
    ("h100-sxm", torch.complex64, "fp32"),
    ("h100-sxm", torch.int64, "fp32"),
    ("h100-sxm", "no-such-dtype", "fp32"),
])
def test_matrix_flops_fallbacks(name, dtype, used):
    c = chip(name)
    assert c.matrix_dtype(dtype) == used
    assert c.matrix_flops(dtype) == c.peak_flops[used]


def test_fallback_values():
    assert chip("a100-80gb").matrix_flops("fp8") == 312e12
    assert chip("t4").matrix_flops("bf16") == 8.1e12
    assert chip("t4").ridge("fp16") == pytest.approx(65e12 / 300e9)   # 216.7


# --- the record ---

def test_chip_is_frozen_hashable_and_picklable():
    c = chip("h100-sxm")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.mem_bw = 1.0
    with pytest.raises(TypeError):
        c.peak_flops["bf16"] = 1.0
    with pytest.raises(TypeError):
        c.sources["mem_bw"] = "mine"
    assert hash(c) == hash(pickle.loads(pickle.dumps(c)))
    assert pickle.loads(pickle.dumps(c)) == c
    assert {c: 1}[chip("h100")] == 1


def test_to_dict_is_plain_json_in_si_units():
    d = chip("h100-sxm").to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["name"] == "h100-sxm"
    assert d["peak_flops"]["bf16"] == pytest.approx(989.4e12)
    assert d["mem_bw"] == pytest.approx(3.35e12)
    assert d["link_bw"] == pytest.approx(450e9)
    assert d["dispatch_s"] == pytest.approx(1e-5)
    assert type(d["peak_flops"]) is dict and type(d["sources"]) is dict
    assert set(d["sources"]) >= set(FIGURES)


def test_chip_made_in_code_is_validated():
    base = chip("l4")
    with pytest.raises(ChipError, match="mem_bw"):
        dataclasses.replace(base, mem_bw=-1.0)
    with pytest.raises(ChipError, match="fp32"):
        dataclasses.replace(base, peak_flops={"bf16": 1e12})
    with pytest.raises(ChipError, match="fp64"):
        dataclasses.replace(base, peak_flops={"fp32": 1e12, "fp64": 1e12})
    with pytest.raises(ChipError, match="kind"):
        dataclasses.replace(base, kind="fpga")
    bare = Chip("x", "X", "gpu", {"fp32": 1e12}, 1e12, 1e11, 1e9, 1e9, 1e-5, 1e-6, 1e-5)
    assert bare.sources["mem_bw"] == "unsourced"      # said, not left as a hole


# --- user chip files ---

def test_user_chip_file_round_trip(tmp_path):
    path = write(tmp_path, good_entry())
    c = chip(str(path))
    assert chip(path) == c and load_chip_file(path) == c
    assert c.name == "my-chip" and c.kind == "accelerator"
    assert c.peak_flops == {"fp32": 10e12, "bf16": 100e12}   # TFLOP/s -> FLOP/s
    assert c.vector_flops == 10e12
    assert c.mem_bw == 500e9 and c.mem_bytes == 32e9 and c.link_bw == 25e9
    assert c.link_latency_s == pytest.approx(8e-6)
    assert c.launch_s == pytest.approx(3e-6) and c.dispatch_s == pytest.approx(12e-6)
    assert c.ridge() == pytest.approx(100e12 / 500e9)         # 200
    assert c.sources["mem_bw"] == "vendor sheet"
    assert str(path) in c.sources["link_bw"]                   # unsourced figures cite the file


def table_entry_as_file(c: Chip) -> dict:
    """A shipped chip written back in the file schema (SI -> natural units)."""
    return {"name": c.name, "title": c.title, "kind": c.kind,
            "peak_TFLOPS": {d: v / 1e12 for d, v in c.peak_flops.items()},
            "vector_TFLOPS": c.vector_flops / 1e12, "mem_bw_GBps": c.mem_bw / 1e9,
            "mem_GB": c.mem_bytes / 1e9, "link_bw_GBps": c.link_bw / 1e9,
            "link_latency_us": c.link_latency_s * 1e6, "launch_us": c.launch_s * 1e6,
            "dispatch_us": c.dispatch_s * 1e6, "sources": dict(c.sources)}


@pytest.mark.parametrize("c", chips(), ids=lambda c: c.name)
def test_table_chip_written_as_a_file_loads_back_equal(tmp_path, c):
    loaded = chip(write(tmp_path, table_entry_as_file(c)))
    for f in FIGURES[1:]:
        assert getattr(loaded, f) == pytest.approx(getattr(c, f), rel=1e-12)
    assert loaded.peak_flops.keys() == c.peak_flops.keys()
    assert loaded.ridge() == pytest.approx(c.ridge(), rel=1e-12)


@settings(max_examples=50, deadline=None)
@given(bw=st.floats(1e-3, 1e6), flops=st.floats(1e-3, 1e6), lat=st.floats(1e-3, 1e3))
def test_units_convert_for_any_positive_figure(tmp_path_factory, bw, flops, lat):
    path = write(tmp_path_factory.mktemp("h"), good_entry(
        mem_bw_GBps=bw, peak_TFLOPS={"fp32": flops}, link_latency_us=lat))
    c = load_chip_file(path)
    assert c.mem_bw == pytest.approx(bw * 1e9)
    assert c.ridge("fp32") == pytest.approx(flops * 1e12 / (bw * 1e9))
    assert c.link_latency_s == pytest.approx(lat * 1e-6)


# --- bad chip files: one ChipError, naming the file and the field ---

def test_missing_file(tmp_path):
    with pytest.raises(ChipError, match=r"chip file .*nope\.json.* not found"):
        chip(str(tmp_path / "nope.json"))


def test_invalid_json_names_file_and_line(tmp_path):
    path = write(tmp_path, '{\n  "name": "x",\n  "title": oops\n}')
    with pytest.raises(ChipError) as e:
        chip(path)
    assert str(path) in str(e.value) and "line 3" in str(e.value)


@pytest.mark.parametrize("drop", ["mem_bw_GBps", "title", "peak_TFLOPS", "dispatch_us"])
def test_missing_required_figure(tmp_path, drop):
    entry = good_entry()
    del entry[drop]
    path = write(tmp_path, entry)
    with pytest.raises(ChipError, match=f"missing required figure.*{drop}") as e:
        chip(path)
    assert str(path) in str(e.value)


def test_missing_fp32_peak(tmp_path):
    with pytest.raises(ChipError, match=r"peak_TFLOPS\.fp32"):
        chip(write(tmp_path, good_entry(peak_TFLOPS={"bf16": 100})))


@pytest.mark.parametrize("key, value", [
    ("mem_bw_GBps", -500), ("mem_bw_GBps", 0), ("mem_GB", "lots"), ("launch_us", None),
    ("link_bw_GBps", True), ("vector_TFLOPS", float("nan")), ("dispatch_us", [1]),
])
def test_bad_number_names_field_and_file(tmp_path, key, value):
    path = write(tmp_path, good_entry(**{key: value}))
    with pytest.raises(ChipError, match=f"{key} must be a positive number") as e:
        chip(path)
    assert str(path) in str(e.value)


def test_bad_peak_names_dtype(tmp_path):
    with pytest.raises(ChipError, match=r"peak_TFLOPS\.bf16 must be a positive number"):
        chip(write(tmp_path, good_entry(peak_TFLOPS={"fp32": 10, "bf16": -1})))
    with pytest.raises(ChipError, match="unknown dtype.*bfloat"):
        chip(write(tmp_path, good_entry(peak_TFLOPS={"fp32": 10, "bfloat": 100})))


def test_unknown_keys_are_named(tmp_path):
    path = write(tmp_path, good_entry(mem_bw_GBs=500, lanch_us=2))
    with pytest.raises(ChipError, match=r"unknown key\(s\) lanch_us, mem_bw_GBs") as e:
        chip(path)
    assert str(path) in str(e.value)


def test_unknown_source_key_is_named(tmp_path):
    with pytest.raises(ChipError, match="mem_bandwidth"):
        chip(write(tmp_path, good_entry(sources={"mem_bandwidth": "sheet"})))


def test_bad_kind_and_shape(tmp_path):
    with pytest.raises(ChipError, match="kind must be one of"):
        chip(write(tmp_path, good_entry(kind="fpga")))
    with pytest.raises(ChipError, match="must be a JSON object"):
        chip(write(tmp_path, [good_entry()]))
    with pytest.raises(ChipError, match="one chip object"):
        chip(write(tmp_path, {"chips": [good_entry()]}))


# --- optional figures of a measured chip (fxroof calibrate writes them) ---

def measured_entry(**changes):
    return good_entry(kind="cpu", cache_MB=32, cache_bw_GBps=100, view_dispatch_us=1.5,
                      program_call_us=18,
                      op_dispatch_us={"gelu": 9, "add": 4}, op_TFLOPS={"max_pool2d": 0.0002},
                      matrix_bw_fraction={"fp32": 0.7, "bf16": 0.4},
                      **changes)


def test_optional_figures_load_in_si_units(tmp_path):
    c = chip(str(write(tmp_path, measured_entry())))
    assert c.cache_bytes == 32e6 and c.cache_bw == 100e9          # MB, GB/s -> B, B/s
    assert c.view_dispatch_s == pytest.approx(1.5e-6)
    assert c.program_call_s == pytest.approx(18e-6)
    assert c.op_dispatch_s == {"gelu": pytest.approx(9e-6), "add": pytest.approx(4e-6)}
    assert c.op_flops == {"max_pool2d": pytest.approx(2e8)}       # 0.0002 TFLOP/s = 0.2 GFLOP/s
    assert c.eager_dispatch("gelu") == pytest.approx(9e-6)
    assert c.eager_dispatch("conv2d") == c.dispatch_s == pytest.approx(12e-6)   # not listed
    assert c.eager_vector_flops("max_pool2d") == pytest.approx(2e8)
    assert c.eager_vector_flops("relu") == c.vector_flops
    assert c.bandwidth(32e6) == 100e9 and c.bandwidth(32e6 + 1) == c.mem_bw    # fits, or not
    assert c.matrix_bandwidth_share("fp32") == 0.7 and c.matrix_bandwidth_share("fp8") == 0.4
    assert chip("h100-sxm").matrix_bandwidth_share("bf16") == 1.0               # not measured
    assert c.matrix_bandwidth_share("fp32", width=256) == 0.7       # no narrow rows measured
    assert c.to_dict()["op_dispatch_s"]["gelu"] == pytest.approx(9e-6)
    assert str(tmp_path) in c.sources["op_flops"]                 # unsourced: cites the file


def test_a_chip_without_optional_figures_is_unchanged():
    h100 = chip("h100-sxm")
    assert (h100.cache_bytes, dict(h100.op_dispatch_s)) == (0, {})
    # the host's figures a shipped chip carries are estimates, each with its reason
    assert (h100.view_dispatch_s, h100.glue_s) == (pytest.approx(1.6e-6), pytest.approx(4.3e-6))
    assert all(h100.sources[f].startswith("estimate") for f in ("view_dispatch_s", "glue_s"))
    assert h100.bandwidth(1) == h100.mem_bw and h100.eager_dispatch("gelu") == h100.dispatch_s
    assert "op_dispatch_s" not in h100.to_dict() and "cache_bytes" not in h100.to_dict()
    assert (chip("cpu").sm_count, chip("cpu").kernel_floor_s) == (0, 0)   # no expected-time gap


def test_matrix_op_rate_scales_with_the_dtype(tmp_path):
    # linear's entry is its fp32 rate, 0.8 of the fp32 peak; bf16 runs at 0.8 of the bf16 peak
    c = chip(str(write(tmp_path, good_entry(op_TFLOPS={"linear": 8}))))
    assert c.eager_matrix_flops("linear", "fp32") == pytest.approx(8e12)
    assert c.eager_matrix_flops("linear", "bf16") == pytest.approx(100e12 * 8 / 10)
    assert c.eager_matrix_flops("conv2d", "bf16") == pytest.approx(100e12)   # not listed


def test_a_product_of_few_rows_runs_on_a_line_through_its_measured_times(tmp_path):
    # linear at 90 TFLOP/s on 1,024 rows (the layer probe), 20 on 4; time per unit of work
    # rows / rate: 4 / 20 = 0.2 and 1024 / 90 = 11.378; on 64 rows a line between them
    # gives 0.2 + 11.178 * 60 / 1020 = 0.8575, a rate of 64 / 0.8575 = 74.64
    c = chip(str(write(tmp_path, good_entry(op_TFLOPS={
        "linear": 90, "linear#4": 20, "conv2d": 80, "conv2d(native)#4": 6,
        "conv2d(native)#49": 64}))))
    assert c.eager_matrix_flops("linear", "fp32", rows=4) == pytest.approx(20e12)
    assert c.eager_matrix_flops("linear", "fp32", rows=2) == pytest.approx(20e12)   # the fewest
    assert c.eager_matrix_flops("linear", "fp32", rows=1024) == pytest.approx(90e12)
    assert c.eager_matrix_flops("linear", "fp32", rows=64) == pytest.approx(74.64e12, rel=1e-3)
    assert c.eager_matrix_flops("linear", "fp32") == pytest.approx(90e12)   # rows not known
    # the native convolution through three: 9 pixels between 4 and 49, 4 / 6 = 0.6667 and
    # 49 / 64 = 0.7656: 0.6667 + 0.0990 * 5 / 45 = 0.6777, 9 / 0.6777 = 13.28
    assert c.eager_matrix_flops("conv2d(native)", "fp32", rows=9) == pytest.approx(13.28e12,
                                                                                rel=1e-3)
    assert c.eager_matrix_flops("conv2d(onednn)", "fp32", rows=9) == pytest.approx(80e12)
    # bf16 scales as before: the fp32 peak's ratio, 64 rows' rate
    assert c.eager_matrix_flops("linear", "bf16", rows=64) == pytest.approx(
        100e12 * 74.64 / 10, rel=1e-3)


def test_a_matrix_op_may_state_its_rate_in_another_dtype(tmp_path):
    # a CPU without a bf16 matrix path: linear's dot-product fallback 0.5 TFLOP/s, conv's 0.1,
    # neither the fp32 ratio (8 of 10) times the bf16 peak (100)
    c = chip(str(write(tmp_path, good_entry(op_TFLOPS={"linear": 8, "linear:bf16": 0.5,
                                                       "conv2d:bf16": 0.1},
                                            peak_TFLOPS={"fp32": 10, "bf16": 100, "fp16": 100}))))
    assert c.eager_matrix_flops("linear", "bf16") == pytest.approx(0.5e12)
    assert c.eager_matrix_flops("linear", "fp32") == pytest.approx(8e12)
    assert c.eager_matrix_flops("conv2d(onednn)", "bf16") == pytest.approx(0.1e12)  # its op's
    assert c.eager_matrix_flops("linear", "fp16") == pytest.approx(100e12 * 8 / 10)  # fp16's


def test_cache_needs_both_figures(tmp_path):
    with pytest.raises(ChipError, match="cache_bytes and cache_bw go together"):
        chip(str(write(tmp_path, good_entry(cache_MB=32))))


@pytest.mark.parametrize("key, value, named", [
    ("op_dispatch_us", {"gelu": "fast"}, "op_dispatch_us.gelu"),
    ("op_dispatch_us", [1, 2], "op_dispatch_us must be an object"),
    ("op_TFLOPS", {"relu": -1}, "op_TFLOPS.relu"),
    ("view_dispatch_us", 0, "view_dispatch_us"),
    ("matrix_bw_fraction", {"fp32": 1.6}, "at most 1.5"),
    ("matrix_bw_fraction", {"float": 0.5}, "per dtype"),
    ("matrix_bw_fraction", {"fp32": 0.5, "fp32#0": 0.3}, "fp32#256"),
    ("matrix_bw_fraction", {"fp32": 0.5, "fp32#wide": 0.3}, "fp32#256"),
])
def test_bad_optional_figure_is_named(tmp_path, key, value, named):
    with pytest.raises(ChipError, match=re.escape(named)):
        chip(str(write(tmp_path, good_entry(**{key: value}))))


def test_shipped_table_would_need_sources_for_optional_figures():
    from fxroof.chips.chip import chip_from_json
    entry = measured_entry(sources={f: "x" for f in (
        "peak_flops", "vector_flops", "mem_bw", "mem_bytes", "link_bw", "link_latency_s",
        "launch_s", "dispatch_s")})
    with pytest.raises(ChipError, match="no source for cache_bytes, cache_bw, view_dispatch_s, "
                                        "program_call_s, op_dispatch_s, op_flops, "
                                        "matrix_bw_fraction"):
        chip_from_json(entry, "table", require_sources=True)


def test_the_half_precision_dtype_is_the_faster_one_bf16_on_a_tie():
    assert chip("h100-sxm").half_dtype() == "bf16"      # 989.4 TFLOP/s each: the tie goes to bf16
    assert chip("t4").half_dtype() == "fp16"            # fp16 tensor cores only


def test_l2_figures_are_the_whitepapers():
    # GA102 in the RTX 3090 6,144 KB; A100 40 MB; H100 SXM5 50 MB; RTX 4090 72 MB (binary units)
    assert chip("rtx-3090").l2_bytes == 6144 * 1024
    assert chip("a100-80gb").l2_bytes == 40 * 2 ** 20
    assert chip("h100-sxm").l2_bytes == chip("h200").l2_bytes == 50 * 2 ** 20
    assert chip("rtx-4090").l2_bytes == 72 * 2 ** 20
    assert not chip("cpu").l2_bytes          # a CPU has no expected-time parts: its floor


def test_a_chip_file_on_a_base_states_only_what_differs(tmp_path):
    # a cluster of A100s whose servers have four 200 Gb/s NICs, not a DGX's eight
    path = tmp_path / "our-a100.json"
    path.write_text(json.dumps({"base": "a100-40gb", "network_GBps": 100, "sources": {
        "network_bw": "our cluster: 4 x 200 Gb/s HDR a server"}}))
    ours, base = load_chip_file(path), chip("a100-40gb")
    assert ours.network_bw == 100e9 and base.network_bw == 200e9
    assert ours.name == "our-a100" and ours.title.startswith(base.title)
    assert ours.sources["network_bw"] == "our cluster: 4 x 200 Gb/s HDR a server"
    # everything else is the base's, sources with it
    assert (ours.mem_bw, ours.matmul_efficiency, ours.node_gpus) == \
        (base.mem_bw, base.matmul_efficiency, base.node_gpus)
    assert ours.sources["mem_bw"] == base.sources["mem_bw"]
    # a figure changed without a source of its own does not keep the base's: it cites the file
    path.write_text(json.dumps({"base": "A100-40GB", "mem_bw_GBps": 1400,
                                "peak_TFLOPS": {"bf16": 280}}))
    ours = chip(str(path))
    assert ours.mem_bw == 1400e9 and ours.sources["mem_bw"] != base.sources["mem_bw"]
    assert str(path) in ours.sources["mem_bw"] and str(path) in ours.sources["peak_flops"]
    assert ours.peak_flops["bf16"] == 280e12 and ours.peak_flops["fp32"] == 19.5e12
    path.write_text(json.dumps({"base": "a100-41gb"}))
    with pytest.raises(ChipError, match="base 'a100-41gb' is not a shipped chip"):
        load_chip_file(path)


def test_a_one_row_products_share_follows_its_weight_rows_width(tmp_path):
    # measured: 0.5 of mem_bw on rows of 256 elements, 1.0 on the probe's 2,048. A row costs
    # width / share in time units: 512 at 256, 2,048 at 2,048; a line between them puts 1,024
    # at 512 + 1,536 x 768 / 1,792 = 1,170.3, a share of 1,024 / 1,170.3 = 0.875
    c = chip(str(write(tmp_path, good_entry(kind="cpu", matrix_bw_fraction={"fp32": 1.0,
                                                                         "fp32#256": 0.5}))))
    assert c.matrix_bandwidth_share("fp32", width=256) == pytest.approx(0.5)
    assert c.matrix_bandwidth_share("fp32", width=1024) == pytest.approx(0.875, abs=5e-4)
    assert c.matrix_bandwidth_share("fp32", width=2048) == pytest.approx(1.0)
    assert c.matrix_bandwidth_share("fp32", width=64) == pytest.approx(0.5)      # the narrowest
    assert c.matrix_bandwidth_share("fp32", width=8192) == pytest.approx(1.0)    # the widest
    assert c.matrix_bandwidth_share("fp32") == 1.0                   # no width: the probe's
    assert c.matrix_bandwidth_share("bf16", width=256) == 1.0        # bf16 not measured


def test_a_depthwise_conv1d_pays_the_depthwise_convolutions_measured_entry(tmp_path):
    # PyTorch runs conv1d as a 2-d convolution of height 1: a depthwise one (Mamba's causal
    # convolution) enters oneDNN's depthwise kernel, which a CPU's table files as conv2d's
    import fxroof
    entry = measured_entry()
    entry["op_dispatch_us"] = {"conv2d(onednn-depthwise)": 60, "add": 4}
    c = chip(str(write(tmp_path, entry)))
    conv = torch.nn.Conv1d(64, 64, 4, groups=64, padding=3)
    r = fxroof.analyze(conv, (torch.randn(2, 64, 16),), chip=c, mode="eager")
    (row,) = [n for n in r.nodes if n.category == "conv"]
    assert (row.op, row.variant, row.cost_key) == ("conv1d", "onednn-depthwise",
                                                    "conv2d(onednn-depthwise)")
    assert c.eager_dispatch(row.cost_key) == pytest.approx(60e-6)      # not the 12 us default
    (kernel,) = [k for k in r.kernels if k.category == "conv"]
    assert kernel.time_s >= 60e-6
