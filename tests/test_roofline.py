"""The time model's arithmetic, by hand, on real chip figures."""
import dataclasses
import re

import pytest

from fxroof.chips import chip
from fxroof.chips.timing import Timing, attainable_flops, comm_time, intensity, kernel_timing

H100 = chip("h100-sxm")     # 989.4e12 bf16 FLOP/s, 67e12 fp32 vector FLOP/s, 3.35e12 B/s


def test_big_matmul_is_compute_bound_by_hand():
    n = 8192
    flops, moved = 2 * n**3, 3 * n * n * 2          # read A and B, write C, bf16
    t = kernel_timing(H100, flops=flops, bytes_moved=moved, category="matmul", dtype="bf16",
                      overhead_s=H100.launch_s)
    assert t.compute_s == pytest.approx(flops / 989.4e12)     # 1.1e12 / 989.4e12 = 1.11 ms
    assert t.memory_s == pytest.approx(moved / 3.35e12)       # 403 MB / 3.35 TB/s = 0.12 ms
    assert t.regime == "compute" and t.time_s == t.compute_s


def test_elementwise_runs_on_vector_units():
    t = kernel_timing(H100, flops=1e9, bytes_moved=0, category="pointwise", dtype="bf16",
                      overhead_s=0)
    assert t.compute_s == pytest.approx(1e9 / 67e12)          # fp32 CUDA-core rate, not tensor cores


def test_tiny_kernel_is_overhead_bound_and_overlaps_on_gpu():
    t = kernel_timing(H100, flops=1000, bytes_moved=4000, category="pointwise", dtype="fp32",
                      overhead_s=10e-6)
    assert t.regime == "overhead" and t.time_s == 10e-6       # host dispatch hides the work


def test_cpu_overhead_adds_to_the_work():
    cpu = chip("cpu")
    t = kernel_timing(cpu, flops=0, bytes_moved=cpu.mem_bw * 1e-3, category="copy", dtype="fp32",
                      overhead_s=5e-6)
    assert t.time_s == pytest.approx(1e-3 + 5e-6)             # no separate host: dispatch is serial


def test_ring_all_reduce_time():
    # large message: NCCL's Simple protocol, the link's full 450 GB/s and 5 us per step
    n, buffer = 8, 4096 * 8192 * 2
    expected = 2 * (n - 1) * H100.link_latency_s + 2 * (n - 1) / n * buffer / 450e9
    assert comm_time(H100, 2 * (n - 1) / n * buffer, 2 * (n - 1)) == pytest.approx(expected)


def test_small_all_reduce_takes_the_low_latency_protocol():
    # decode's all-reduce of one token's hidden state, 8192 bf16 = 16 KiB, over 8 ranks:
    # Simple: 14 steps x 5 us + 28,672 B / 450 GB/s = 70.06 us
    # LL:     14 steps x 0.9 us + 28,672 B / 225 GB/s = 12.73 us  (NCCL's own model: ~15 us)
    sent = 2 * 7 / 8 * 8192 * 2                     # = 28,672 bytes
    assert comm_time(H100, sent, 14) == pytest.approx(14 * 0.9e-6 + 28_672 / 225e9)
    assert comm_time(chip("cpu"), sent, 14) == pytest.approx(14 * 20e-6 + 28_672 / 12.5e9)  # gloo


def test_intensity_and_roofline():
    assert intensity(100, 50) == 2.0
    assert intensity(0, 0) == 0.0 and intensity(5, 0) == float("inf")
    ridge = H100.ridge("bf16")                                  # 989.4 / 3.35 = 295.3 FLOP/B
    assert attainable_flops(H100, "matmul", "bf16", ridge / 2) == pytest.approx(989.4e12 / 2)
    assert attainable_flops(H100, "matmul", "bf16", ridge * 2) == pytest.approx(989.4e12)


def test_regime_is_the_largest_part():
    assert Timing(1, 2, 3, 0.5).regime == "communication"
    assert Timing(1, 2, 0, 0.5).regime == "memory"


def test_a_measured_chip_costs_each_eager_op_by_hand():
    import torch
    import torch.nn.functional as F

    import fxroof
    from fxroof.chips import Chip
    from fxroof.graph.capture import FunctionModule
    measured = Chip("m", "Measured", "cpu", {"fp32": 1e11}, vector_flops=4e9, mem_bw=1e10,
                    mem_bytes=1e10, link_bw=1e9, link_latency_s=1e-5, launch_s=5e-6,
                    dispatch_s=5e-6, cache_bytes=1e6, cache_bw=1e11, view_dispatch_s=1e-6,
                    op_dispatch_s={"gelu": 9e-6}, op_flops={"gelu": 1e9}, program_call_s=20e-6)
    model = FunctionModule(lambda x: F.gelu(x.view(-1)) + 1)
    x = torch.randn(256, 4)                                   # 1024 fp32 elements, 4 KiB
    eager = fxroof.analyze(model, (x,), chip=measured, mode="eager")
    gelu, add = eager.kernels
    assert (gelu.op, add.op) == ("gelu", "add")
    # gelu: its own 9 us + the view before it 1 us, serial with its work on a CPU;
    # 1024 FLOPs at its own 1 GFLOP/s = 1.024 us; 8 KiB moved fit in the cache: 8192 / 1e11 s
    assert gelu.timing.overhead_s == pytest.approx(10e-6)
    assert gelu.timing.compute_s == pytest.approx(1.024e-6)
    assert gelu.timing.memory_s == pytest.approx(8192 / 1e11)
    assert gelu.time_s == pytest.approx(11.024e-6)
    # add: not measured one by one: dispatch_s 5 us + 1024 FLOPs at vector_flops 4e9 = 0.256 us
    assert add.time_s == pytest.approx(5.256e-6)
    # compiled: entering the program 20 us, then one fused kernel, a launch + 2048 FLOPs at the
    # vector rate; no per-op figures
    compiled = fxroof.analyze(model, (x,), chip=measured, mode="compiled")
    (fused,) = compiled.kernels
    assert fused.time_s == pytest.approx(20e-6 + 5e-6 + 2048 / 4e9)
    # with 3 us of model code around each op: every eager op pays it, the compiled program not
    glued = dataclasses.replace(measured, glue_s=3e-6)
    gelu, add = fxroof.analyze(model, (x,), chip=glued, mode="eager").kernels
    assert (gelu.timing.overhead_s, add.time_s) == (pytest.approx(13e-6), pytest.approx(8.256e-6))
    (fused,) = fxroof.analyze(model, (x,), chip=glued, mode="compiled").kernels
    assert fused.time_s == pytest.approx(20e-6 + 5e-6 + 2048 / 4e9)


def test_an_eager_gpu_op_pays_its_call_the_glue_and_its_views_on_the_host():
    """A GPU's eager op: the host's dispatch of it, the model code's glue around it and the view
    calls before it, which the host issues while the chip runs the kernels before (h100-sxm:
    10 + 4.3 + 1.6 us for a view and a tiny gelu, far longer than the gelu itself)."""
    import torch
    import torch.nn.functional as F

    import fxroof
    from fxroof.graph.capture import FunctionModule
    h100 = chip("h100-sxm")
    model = FunctionModule(lambda x: F.gelu(x.view(-1)))
    (gelu,) = fxroof.analyze(model, (torch.randn(8, 4),), chip=h100, mode="eager").kernels
    assert gelu.timing.overhead_s == pytest.approx(10e-6 + 4.3e-6 + 1.6e-6)
    assert gelu.time_s == pytest.approx(15.9e-6)
    bare = dataclasses.replace(h100, glue_s=0.0, view_dispatch_s=0.0)
    for mode in ("compiled", "cudagraphs"):      # a program's launches: no Python around them
        (k,) = fxroof.analyze(model, (torch.randn(8, 4),), chip=h100, mode=mode).kernels
        (no_host_figures,) = fxroof.analyze(model, (torch.randn(8, 4),), chip=bare,
                                            mode=mode).kernels
        assert k.timing.overhead_s == no_host_figures.timing.overhead_s
        assert k.timing.overhead_s < 10e-6 + h100.program_call_s


def test_a_measured_chip_costs_each_convolution_library_apart():
    import torch
    from torch import nn

    import fxroof
    from fxroof.chips import Chip
    measured = Chip("m", "Measured", "cpu", {"fp32": 1e11}, vector_flops=4e9, mem_bw=1e10,
                    mem_bytes=1e10, link_bw=1e9, link_latency_s=1e-5, launch_s=5e-6,
                    dispatch_s=5e-6, op_dispatch_s={"conv2d(onednn)": 50e-6,
                                                    "conv2d(native)": 8e-6},
                    op_flops={"conv2d": 5e10})
    model = nn.Sequential(nn.Conv2d(3, 64, 8, stride=8, bias=False),   # 8x8 kernel: oneDNN
                          nn.Conv2d(64, 64, 1, bias=False))            # small 1x1: native
    patches, pointwise = fxroof.analyze(model, (torch.randn(1, 3, 32, 32),), chip=measured,
                                        mode="eager").kernels
    # patches: 50 us to enter oneDNN + 2 * 64*3*8*8 * 4*4 = 393216 FLOPs at 50 GFLOP/s
    assert patches.timing.overhead_s == pytest.approx(50e-6)
    assert patches.time_s == pytest.approx(50e-6 + 393216 / 5e10)
    # 1x1: 8 us for the native code + 2 * 64*64 * 16 = 131072 FLOPs at the same rate
    assert pointwise.time_s == pytest.approx(8e-6 + 131072 / 5e10)
    # compiled, a CPU program calls the same two library convolutions at the same costs
    compiled = fxroof.analyze(model, (torch.randn(1, 3, 32, 32),), chip=measured,
                              mode="compiled").kernels
    assert [k.timing.overhead_s for k in compiled] == pytest.approx([50e-6, 8e-6])
    # a chip without per-library figures costs both as the plain op
    plain = Chip("p", "Plain", "cpu", {"fp32": 1e11}, vector_flops=4e9, mem_bw=1e10,
                 mem_bytes=1e10, link_bw=1e9, link_latency_s=1e-5, launch_s=5e-6,
                 dispatch_s=5e-6, op_dispatch_s={"conv2d": 20e-6})
    assert plain.eager_dispatch("conv2d(onednn)") == plain.eager_dispatch("conv2d") == 20e-6
    assert plain.eager_dispatch("linear") == 5e-6


def test_a_depthwise_convolution_and_a_growing_pad_take_their_own_measured_figures():
    import torch
    import torch.nn.functional as F
    from torch import nn

    import fxroof
    from fxroof.chips import Chip

    class PaddedDepthwise(nn.Module):      # a TF-style explicit pad, then a depthwise 3x3
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(32, 32, 3, groups=32, bias=False)

        def forward(self, x):
            return self.conv(F.pad(x, (1, 1, 1, 1)))

    figures = dict(vector_flops=4e9, mem_bw=1e10, mem_bytes=1e10, link_bw=1e9,
                   link_latency_s=1e-5, launch_s=5e-6, dispatch_s=5e-6)
    measured = Chip("m", "Measured", "cpu", {"fp32": 1e11}, **figures,
                    op_dispatch_s={"conv2d(onednn)": 50e-6, "conv2d(onednn-depthwise)": 90e-6,
                                   "pad(fill)": 30e-6},
                    op_flops={"conv2d": 5e10, "conv2d(onednn-depthwise)": 1e10})
    x = torch.randn(1, 32, 16, 16)
    pad, conv = fxroof.analyze(PaddedDepthwise(), (x,), chip=measured, mode="eager").kernels
    # pad: 30 us, then reads 32*16*16*4 = 32768 bytes and writes 32*18*18*4 = 41472 at 10 GB/s
    assert pad.time_s == pytest.approx(30e-6 + (32768 + 41472) / 1e10)
    # depthwise: 90 us, then 2 * 32 * 3*3 * 16*16 = 147456 FLOPs at its own 10 GFLOP/s (14.7
    # us), longer than its 41472 + 1152 + 32768 bytes at 10 GB/s (7.5 us)
    assert conv.time_s == pytest.approx(90e-6 + 147456 / 1e10)
    # a chip calibrated before either was measured apart: oneDNN's figures and conv2d's rate,
    # the pad the plain dispatch; 147456 FLOPs at 50 GFLOP/s (2.9 us) under the bytes (7.5 us)
    older = Chip("o", "Older", "cpu", {"fp32": 1e11}, **figures,
                 op_dispatch_s={"conv2d(onednn)": 50e-6}, op_flops={"conv2d": 5e10})
    pad, conv = fxroof.analyze(PaddedDepthwise(), (x,), chip=older, mode="eager").kernels
    assert pad.time_s == pytest.approx(5e-6 + (32768 + 41472) / 1e10)
    assert conv.time_s == pytest.approx(50e-6 + (41472 + 1152 + 32768) / 1e10)


def test_a_compiled_cpu_program_calls_a_kernel_for_its_launch_and_a_library_op_for_more():
    import dataclasses

    import torch
    from torch import nn

    import fxroof
    from fxroof.chips import Chip
    # calibrated: an eager op 5 us, entering oneDNN 50, the native convolution 8; a compiled
    # program's call of a kernel 2 us (calibrate's compiled_launch)
    measured = Chip("m", "Measured", "cpu", {"fp32": 1e11}, vector_flops=4e9, mem_bw=1e10,
                    mem_bytes=1e10, link_bw=1e9, link_latency_s=1e-5, launch_s=2e-6,
                    dispatch_s=5e-6, op_dispatch_s={"conv2d(onednn)": 50e-6,
                                                    "conv2d(native)": 8e-6},
                    program_call_s=30e-6)
    model = nn.Sequential(nn.Conv2d(3, 64, 8, stride=8, bias=False),   # 8x8 kernel: oneDNN
                          nn.Conv2d(64, 64, 1, bias=False), nn.ReLU())  # small 1x1: native
    kernels = fxroof.analyze(model, (torch.randn(1, 3, 32, 32),), chip=measured,
                             mode="compiled").kernels
    # oneDNN: 2 + (50 - 5) = 47 us, and entering the program, 30; native 2 + (8 - 5) = 5 us;
    # the generated ReLU a launch alone
    assert [k.category for k in kernels] == ["conv", "conv", "pointwise"]
    assert [k.timing.overhead_s for k in kernels] == pytest.approx([77e-6, 5e-6, 2e-6])
    # a chip whose launch is its dispatch (before calibration measured it) costs each library
    # op its eager call, as then
    same = dataclasses.replace(measured, launch_s=5e-6)
    kernels = fxroof.analyze(model, (torch.randn(1, 3, 32, 32),), chip=same,
                             mode="compiled").kernels
    assert [k.timing.overhead_s for k in kernels] == pytest.approx([80e-6, 8e-6, 5e-6])


def test_weights_come_from_memory_once_the_model_outgrows_the_cache():
    import torch
    from torch import nn

    import fxroof
    from fxroof.chips import Chip
    cached = Chip("c", "Cache", "cpu", {"fp32": 1e11}, vector_flops=1e10, mem_bw=1e10,
                  mem_bytes=1e10, link_bw=1e9, link_latency_s=1e-5, launch_s=1e-6,
                  dispatch_s=1e-6, cache_bytes=4e6, cache_bw=1e11)
    x = torch.randn(1, 256)
    w, act = 256 * 256 * 4, 256 * 4            # 262,144 B of weight; 1 KiB in, 1 KiB out
    # one layer, 264 KiB in all: it stays in the cache between passes, every byte at 100 GB/s
    small = fxroof.analyze(nn.Linear(256, 256, bias=False), (x,), chip=cached, mode="eager")
    (k,) = small.kernels
    assert k.timing.memory_s == pytest.approx((w + 2 * act) / 1e11)
    # twenty layers, 5.2 MB of weights > 4 MB of cache: each pass streams every weight from
    # memory at 10 GB/s, while the activations a layer reads and writes stay in the cache
    big = fxroof.analyze(nn.Sequential(*[nn.Linear(256, 256, bias=False) for _ in range(20)]),
                         (x,), chip=cached, mode="eager")
    assert big.memory.weights == 20 * w
    for k in big.kernels:
        assert k.timing.memory_s == pytest.approx(w / 1e10 + 2 * act / 1e11)
    # a chip without a cache figure charges every byte at mem_bw, as before
    plain = fxroof.analyze(nn.Linear(256, 256, bias=False), (x,), chip="cpu", mode="eager")
    assert plain.kernels[0].timing.memory_s == pytest.approx((w + 2 * act) / chip("cpu").mem_bw)


def test_a_model_between_a_quarter_of_the_cache_and_all_of_it_streams_part_of_its_weights():
    """A cache is no cliff (chip.memory_share): a footprint between a quarter of the cache and
    all of it finds part of its weights gone each pass, on a line in the logarithm."""
    import math

    import torch
    from torch import nn

    import fxroof
    from fxroof.chips import Chip
    from fxroof.chips.chip import memory_share
    cached = Chip("c", "Cache", "cpu", {"fp32": 1e11}, vector_flops=1e10, mem_bw=1e10,
                  mem_bytes=1e10, link_bw=1e9, link_latency_s=1e-5, launch_s=1e-6,
                  dispatch_s=1e-6, cache_bytes=4e6, cache_bw=1e11)
    # the line's ends and middle: a quarter of the cache, all of it, half of it
    assert memory_share(1e6, 4e6) == 0 and memory_share(4e6, 4e6) == 1
    assert memory_share(2e6, 4e6) == pytest.approx(0.5) and memory_share(8e6, 4e6) == 1
    assert memory_share(3e6, 0) == 0                       # no cache figure: nothing modelled
    w, act = 256 * 256 * 4, 256 * 4
    # ten layers: 2,621,440 B of weights and a few KiB of activations, 0.66 of the cache
    r = fxroof.analyze(nn.Sequential(*[nn.Linear(256, 256, bias=False) for _ in range(10)]),
                       (torch.randn(1, 256),), chip=cached, mode="eager")
    assert 10 * w < r.memory.total < 10 * w + 8 * act
    share = 1 + math.log2(r.memory.total / 4e6) / 2        # about 0.70 of them from memory
    assert 0.69 < share < 0.70
    for k in r.kernels:   # that share at 10 GB/s, the rest and the activations at 100 GB/s
        assert k.timing.memory_s == pytest.approx(share * w / 1e10
                                                  + ((1 - share) * w + 2 * act) / 1e11)


def test_a_library_matrix_product_streams_at_its_measured_share_of_bandwidth():
    import torch
    from torch import nn

    import fxroof
    from fxroof.chips import Chip
    slow_gemv = Chip("g", "GEMV", "cpu", {"fp32": 1e11}, vector_flops=1e10, mem_bw=1e10,
                     mem_bytes=1e10, link_bw=1e9, link_latency_s=1e-5, launch_s=1e-6,
                     dispatch_s=1e-6, matrix_bw_fraction={"fp32": 0.5})
    model = nn.Sequential(nn.Linear(1024, 1024, bias=False), nn.ReLU())
    x = torch.randn(1, 1024)
    moved = 1024 * 1024 * 4 + 2 * 1024 * 4            # the weight, one row in, one row out
    for mode in ("eager", "compiled"):                # compiled code calls the library too
        r = fxroof.analyze(model, (x,), chip=slow_gemv, mode=mode)
        linear = next(k for k in r.kernels if k.category == "matmul")
        assert linear.timing.memory_s == pytest.approx(moved / (1e10 * 0.5))
        assert linear.regime == "memory"
    relu = fxroof.analyze(model, (x,), chip=slow_gemv, mode="eager").kernels[1]
    assert relu.timing.memory_s == pytest.approx(2 * 1024 * 4 / 1e10)   # not a matrix product


def test_a_one_row_product_over_narrow_weight_rows_streams_at_their_share():
    import torch
    from torch import nn

    import fxroof
    from fxroof.chips import Chip
    # one-row F.linear measured streaming 0.5 x 10 GB/s over 256-wide weight rows and 1.0 x
    # over 2,048-wide ones: a 1,024 -> 256 linear (rows of 256) streams at 0.5, a 256 -> 1,024
    # one (rows of 1,024, hand arithmetic in test_chips) at 0.875; two rows keep the probe's
    cpu = Chip("g", "GEMV", "cpu", {"fp32": 1e11}, vector_flops=1e10, mem_bw=1e10,
               mem_bytes=1e10, link_bw=1e9, link_latency_s=1e-5, launch_s=1e-6,
               dispatch_s=1e-6, matrix_bw_fraction={"fp32": 1.0, "fp32#256": 0.5})
    for (k_in, n_out), share in (((256, 1024), 0.5), ((1024, 256), 0.875)):
        model = nn.Linear(k_in, n_out, bias=False)
        moved = k_in * n_out * 4 + (k_in + n_out) * 4       # the weight, one row in, one out
        one = fxroof.analyze(model, (torch.randn(1, k_in),), chip=cpu, mode="eager").kernels[0]
        assert one.timing.memory_s == pytest.approx(moved / (1e10 * share), rel=1e-3)
        two = fxroof.analyze(model, (torch.randn(2, k_in),), chip=cpu, mode="eager").kernels[0]
        assert two.timing.memory_s == pytest.approx((moved + (k_in + n_out) * 4) / 1e10)


def test_a_linear_of_few_tokens_runs_at_its_rows_rate():
    import torch
    from torch import nn

    import fxroof
    from fxroof.chips import Chip
    from fxroof.chips.chip import rows_rate
    cpu = Chip("c", "MKL", "cpu", {"fp32": 1e11}, vector_flops=1e10, mem_bw=1e11,
               mem_bytes=1e10, link_bw=1e9, link_latency_s=1e-5, launch_s=1e-6,
               dispatch_s=1e-6, op_flops={"linear": 9e10, "linear#4": 2e10})
    model = nn.Linear(256, 1024, bias=False)
    for rows in (4, 64, 1024):
        k = fxroof.analyze(model, (torch.randn(1, rows, 256),), chip=cpu, mode="eager").kernels[0]
        flops = 2 * rows * 256 * 1024
        assert k.timing.compute_s == pytest.approx(flops / rows_rate({4: 2e10, 1024: 9e10}, rows))
    # 4 rows at the 4-row rate, 1,024 at the probe's: by hand
    four = fxroof.analyze(model, (torch.randn(1, 4, 256),), chip=cpu, mode="eager").kernels[0]
    assert four.timing.compute_s == pytest.approx(2 * 4 * 256 * 1024 / 2e10)
    # one row is ATen's matrix-vector kernel, not a short GEMM: the probe's rate
    one = fxroof.analyze(model, (torch.randn(1, 1, 256),), chip=cpu, mode="eager").kernels[0]
    assert one.timing.compute_s == pytest.approx(2 * 256 * 1024 / 9e10)


def test_a_one_row_product_computes_at_least_as_fast_as_its_kernel_streamed():
    import torch
    from torch import nn

    import fxroof
    from fxroof.chips import Chip
    # a CPU without a bf16 matrix path: linear's many-row fallback runs at 1 GFLOP/s; its
    # one-row kernel was measured streaming 2048 x 2048 bf16 weights at 0.4 x 10 GB/s, compute
    # included: a one-row bf16 linear of 1024 x 1024 weights computes in at most the time that
    # stream takes for its bytes, where the many-row rate alone says 2 x 1024^2 / 1e9 = 2.1 ms
    cpu = Chip("c", "no bf16 path", "cpu", {"fp32": 1e11, "bf16": 2e9}, vector_flops=1e10,
               mem_bw=1e10, mem_bytes=1e10, link_bw=1e9, link_latency_s=1e-5, launch_s=1e-6,
               dispatch_s=1e-6, matrix_bw_fraction={"fp32": 0.5, "bf16": 0.4},
               op_flops={"linear": 1e11, "linear:bf16": 1e9})
    model = nn.Linear(1024, 1024, bias=False).to(torch.bfloat16)
    one = fxroof.analyze(model, (torch.randn(1, 1024, dtype=torch.bfloat16),), chip=cpu,
                         mode="eager").kernels[0].timing
    moved = 1024 * 1024 * 2 + 2 * 1024 * 2                # the weight, one row in, one row out
    assert one.compute_s == pytest.approx(moved / (1e10 * 0.4)) == one.memory_s   # 0.52 ms
    # eight rows run the many-row fallback: its own rate, 8x the FLOPs at 1 GFLOP/s
    eight = fxroof.analyze(model, (torch.randn(8, 1024, dtype=torch.bfloat16),), chip=cpu,
                           mode="eager").kernels[0].timing
    assert eight.compute_s == pytest.approx(8 * 2 * 1024 * 1024 / 1e9)
    # a chip that measured no bf16 stream keeps the layer rate for one row too
    plain = fxroof.analyze(model, (torch.randn(1, 1024, dtype=torch.bfloat16),),
                           chip=Chip("d", "d", "cpu", {"fp32": 1e11, "bf16": 2e9},
                                     vector_flops=1e10, mem_bw=1e10, mem_bytes=1e10, link_bw=1e9,
                                     link_latency_s=1e-5, launch_s=1e-6, dispatch_s=1e-6,
                                     op_flops={"linear:bf16": 1e9}),
                           mode="eager").kernels[0].timing
    assert plain.compute_s == pytest.approx(2 * 1024 * 1024 / 1e9)



def test_an_eager_elementwise_op_too_small_to_split_runs_on_one_thread():
    import dataclasses
    cpu = chip("cpu")
    two = dataclasses.replace(cpu, threads=2)

    def add(c, n, rate_op="add", category="pointwise"):
        # an fp32 add of n elements: n FLOPs, 12n bytes
        return kernel_timing(c, flops=n, bytes_moved=12 * n, category=category, dtype="fp32",
                             overhead_s=0.0, rate_op=rate_op, elements=n)

    # ATen splits a loop in chunks of at least 32,768 elements, one per thread: 16,384 and
    # 32,768 elements run on one of the two threads the rates were measured with (twice the
    # work time), 32,769 on both (the chip's rates as they are)
    for n, slower in ((16384, 2), (32768, 2), (32769, 1), (1 << 20, 1)):
        got, base = add(two, n), add(cpu, n)
        assert (got.compute_s, got.memory_s) == pytest.approx(
            (base.compute_s * slower, base.memory_s * slower))
    # a chip measured on one thread: the rates as they are, n FLOPs and 12n bytes by hand
    one = add(cpu, 16384)
    assert (one.compute_s, one.memory_s) == pytest.approx(
        (16384 / cpu.vector_flops, 12 * 16384 / cpu.bandwidth(12 * 16384)))
    assert add(two, 16384, rate_op="") == add(cpu, 16384, rate_op="")   # compiled code: as is
    assert add(two, 16384, category="matmul") == add(cpu, 16384, category="matmul")


def test_an_eager_op_that_aten_splits_opens_a_parallel_region():
    import dataclasses
    cpu = chip("cpu")
    two = dataclasses.replace(cpu, threads=2, region_s=1.5e-6)

    def op(c, n, rows=0, category="pointwise", rate_op="add"):
        return kernel_timing(c, flops=n, bytes_moved=12 * n, category=category, dtype="fp32",
                             overhead_s=1e-6, rate_op=rate_op, elements=n, rows=rows)

    # 32,768 elements are one chunk, run inline: the 1 us dispatch only; 32,769 are two
    # chunks, so the region's 1.5 us on top
    assert op(two, 32768).overhead_s == pytest.approx(1e-6)
    assert op(two, 32769).overhead_s == pytest.approx(2.5e-6)
    # a layer norm splits its rows: one row runs inline, two open the region
    assert op(two, 64, rows=1, category="norm").overhead_s == pytest.approx(1e-6)
    assert op(two, 128, rows=2, category="norm").overhead_s == pytest.approx(2.5e-6)
    # one thread, compiled code, matrix ops: no region charged
    assert op(dataclasses.replace(two, threads=1), 1 << 20).overhead_s == pytest.approx(1e-6)
    assert op(two, 1 << 20, rate_op="").overhead_s == pytest.approx(1e-6)
    assert op(two, 1 << 20, category="matmul").overhead_s == pytest.approx(1e-6)


def test_an_eager_layer_norm_reports_its_rows_to_the_region_rule():
    import dataclasses

    import torch
    from torch import nn

    import fxroof
    two = dataclasses.replace(chip("cpu"), threads=2, region_s=1.5e-6)
    one_row = fxroof.analyze(nn.LayerNorm(64), (torch.randn(1, 64),), chip=two, mode="eager")
    rows = fxroof.analyze(nn.LayerNorm(64), (torch.randn(8, 64),), chip=two, mode="eager")
    (a,), (b,) = one_row.kernels, rows.kernels
    assert b.timing.overhead_s - a.timing.overhead_s == pytest.approx(1.5e-6)


def test_a_host_bound_eager_gpu_step_says_its_host_figures_are_estimates():
    """An eager GPU step the host bounds rests on the table's estimates of the host's CPU: the
    report says so once; not compiled, not a step the chip bounds, not a measured host."""
    import torch
    from torch import nn

    import fxroof
    small, x = nn.Sequential(nn.Linear(64, 64), nn.ReLU()), torch.randn(8, 64)

    def host_notes(r):
        return [n for n in r.notes if "host issuing its ops" in n]
    eager = fxroof.analyze(small, (x,), chip="h100-sxm", mode="eager")
    assert eager.regime == "overhead"
    (note,) = host_notes(eager)
    assert "10 µs an op's dispatch, 4.3 µs of model code" in note and "calibrate" in note
    assert not host_notes(fxroof.analyze(small, (x,), chip="h100-sxm", mode="compiled"))
    with torch.device("meta"):
        big = nn.Linear(8192, 8192)
    assert not host_notes(fxroof.analyze(big, (torch.empty(8192, 8192, device="meta"),),
                                         chip="h100-sxm", mode="eager"))       # compute-bound
    measured = dataclasses.replace(chip("h100-sxm"), sources={
        **chip("h100-sxm").sources, "dispatch_s": "measured by fxroof calibrate on this host"})
    assert not host_notes(fxroof.analyze(small, (x,), chip=measured, mode="eager"))


def test_a_gpu_product_off_the_16_byte_boundary_is_named_where_it_counts():
    """GPT-2's head (768 -> 50,257 in bf16: 50,257 is no multiple of 8) holds about a fifth of
    the step; the same model padded to nanoGPT's 50,304, or run on a CPU, gets no note; a
    misaligned product too small to matter gets none either."""
    import torch
    from torch import nn

    import fxroof

    def notes(model, x, chip="h200"):
        with torch.device("meta"):
            model = model.to(torch.bfloat16)
        r = fxroof.analyze(model, (x.to(torch.bfloat16),), chip=chip, mode="compiled")
        return [n for n in r.notes if "16-byte boundary" in n]

    def head(vocab):    # a GPT-2-sized stack of 12 MLPs, then the head
        return nn.Sequential(*[nn.Sequential(nn.Linear(768, 3072), nn.GELU(),
                                             nn.Linear(3072, 768)) for _ in range(12)],
                             nn.Linear(768, vocab, bias=False))
    x = torch.empty(8, 1024, 768, device="meta")
    (note,) = notes(head(50257), x)
    assert "50,257, not a multiple of 8" in note and "50,304" in note
    # 2 * 8192 * 768 * 50257 FLOPs of 12 * 2 * (2 * 8192 * 768 * 3072) + that: 11% of the work
    share = re.search(r"\((\d+)% of the predicted", note)
    assert share and 5 <= int(share.group(1)) <= 40
    assert not notes(head(50304), x)
    assert not notes(head(50257), x, chip="cpu")
    assert not notes(head(10), x)     # a 10-class head: 0.1% of the work, no note


def test_an_eager_cpu_op_pays_its_cold_call_in_the_share_the_traffic_since_its_last_call_earns():
    """cold_shares by hand: none up to half the core's L2, all from twice it, log-linear between;
    a forward runs again and again, so an op's first call follows its last one of the pass
    before."""
    import dataclasses
    import math

    from fxroof.chips import Chip
    from fxroof.chips.timing import cold_shares
    mib = 2 ** 20
    c = Chip("m", "Measured", "cpu", {"fp32": 1e11}, vector_flops=4e9, mem_bw=1e10,
             mem_bytes=1e10, link_bw=1e9, link_latency_s=1e-5, launch_s=5e-6, dispatch_s=5e-6,
             l2_bytes=2 * mib, op_dispatch_s={"add": 2e-6, "mean": 5e-6},
             op_dispatch_cold_s={"add": 10e-6, "mean": 17e-6})
    # add (1 MiB), mean (2 MiB), add (1 MiB), mean (0.5 MiB), again and again:
    # add#0: since add#2 of the pass before, mean#3 moved 0.5 MiB: none
    # mean#1: since mean#3, add#0 moved 1 MiB (half of L2): none
    # add#2: mean#1 moved 2 MiB, the L2's worth: log2(2) / 2 = 0.5
    # mean#3: add#2 moved 1 MiB: none
    ops, moved = ["add", "mean", "add", "mean"], [1 * mib, 2 * mib, 1 * mib, mib // 2]
    assert cold_shares(c, ops, moved) == pytest.approx([0.0, 0.0, 0.5, 0.0])
    # add, conv (1.5 MiB), mean (1 MiB): add after conv and mean, 2.5 MiB: log2(2.5) / 2
    shares = cold_shares(c, ["add", "conv", "mean"], [mib, 3 * mib // 2, mib])
    assert shares == pytest.approx([math.log2(2.5) / 2, 0.5, math.log2(2.5) / 2])
    # an op called twice in a row finds itself as it left itself
    assert cold_shares(c, ["add", "add", "mean"], [mib, mib, 4 * mib])[1] == 0.0
    # the charge: the hot call and that share of the difference to the cold one
    assert c.eager_dispatch("add", 0.5) == pytest.approx(2e-6 + 0.5 * 8e-6)
    assert c.eager_dispatch("add", 3.0) == pytest.approx(10e-6)         # at most the cold call
    assert c.eager_dispatch("linear", 1.0) == 5e-6       # no figure of its own: dispatch_s
    # no cold calls measured, or no L2 figure: nothing
    assert cold_shares(dataclasses.replace(c, op_dispatch_cold_s={}), ops, moved) == [0.0] * 4
    assert cold_shares(dataclasses.replace(c, l2_bytes=0.0), ops, moved) == [0.0] * 4


def test_a_model_that_streams_through_the_cache_pays_cold_calls_eager_only():
    import dataclasses

    import torch
    from torch import nn

    import fxroof
    from fxroof.chips import Chip
    hot = Chip("h", "Hot", "cpu", {"fp32": 1e11}, vector_flops=4e9, mem_bw=1e10, mem_bytes=1e10,
               link_bw=1e9, link_latency_s=1e-5, launch_s=5e-6, dispatch_s=5e-6,
               l2_bytes=2 ** 20, op_dispatch_s={"relu": 2e-6, "gelu": 3e-6})
    cold = dataclasses.replace(hot, op_dispatch_cold_s={"relu": 12e-6, "gelu": 13e-6})
    model = nn.Sequential(nn.ReLU(), nn.GELU())
    # 1 Mi fp32 a tensor: each op moves 8 MiB, past twice the L2 (2 MiB): every call cold
    big = torch.empty(1, 2 ** 20, device="meta")
    a, b = (fxroof.analyze(model, (big,), chip=c, mode="eager").kernels for c in (hot, cold))
    assert [k.timing.overhead_s for k in b] == pytest.approx(
        [k.timing.overhead_s + 10e-6 for k in a])
    # 16 fp32: 128 bytes an op, nothing pushed out
    small = torch.empty(1, 16, device="meta")
    a, b = (fxroof.analyze(model, (small,), chip=c, mode="eager").kernels for c in (hot, cold))
    assert [k.timing.overhead_s for k in b] == [k.timing.overhead_s for k in a]
    # a compiled program calls its kernels with no eager dispatch: no cold calls either
    a, b = (fxroof.analyze(model, (big,), chip=c, mode="compiled").kernels for c in (hot, cold))
    assert [k.timing.overhead_s for k in b] == [k.timing.overhead_s for k in a]


def test_a_cpu_product_packs_the_weights_memory_streams_to_it_before_its_arithmetic():
    """A model larger than the CPU's cache streams its weights from memory every pass; a library
    product reads them (packing) before computing on them, so the stream adds to its arithmetic
    rather than hiding under it. One row (decode) keeps its measured stream instead."""
    import dataclasses

    import torch
    from torch import nn

    import fxroof
    from fxroof.chips import Chip
    c = Chip("m", "Measured", "cpu", {"fp32": 1e11}, vector_flops=4e9, mem_bw=1e10,
             mem_bytes=1e10, link_bw=1e9, link_latency_s=1e-5, launch_s=5e-6, dispatch_s=5e-6,
             cache_bytes=2 ** 20, cache_bw=4e10, op_dispatch_s={"linear": 5e-6},
             op_flops={"linear": 1e11})
    with torch.device("meta"):
        layer = nn.Linear(1024, 1024, bias=False)          # 4 MiB of weights: past the cache
    x = torch.empty(64, 1024, device="meta")
    (k,) = fxroof.analyze(layer, (x,), chip=c, mode="eager").kernels
    # 2 * 64 * 1024 * 1024 FLOPs at 100 GFLOP/s, then 4 MiB of weights at 10 GB/s
    assert k.time_s == pytest.approx(5e-6 + 2 * 64 * 1024 ** 2 / 1e11 + 4 * 2 ** 20 / 1e10)
    # a cache that holds the model: nothing streamed, the arithmetic alone
    big = dataclasses.replace(c, cache_bytes=2 ** 30)
    (k,) = fxroof.analyze(layer, (x,), chip=big, mode="eager").kernels
    assert k.time_s == pytest.approx(5e-6 + 2 * 64 * 1024 ** 2 / 1e11)
    # a rate measured on few rows (SkinnyProbe's weights came from the cache) already paid the
    # pass from the cache: what is left is memory's time over the cache's, 4 MiB / 10 GB/s -
    # 4 MiB / 40 GB/s
    few = dataclasses.replace(c, op_flops={"linear": 1e11, "linear#4": 2e10})
    (k,) = fxroof.analyze(layer, (x,), chip=few, mode="eager").kernels
    rate = few.eager_matrix_flops("linear", "fp32", rows=64)
    assert rate < 1e11
    assert k.time_s == pytest.approx(5e-6 + 2 * 64 * 1024 ** 2 / rate
                                     + 4 * 2 ** 20 / 1e10 - 4 * 2 ** 20 / 4e10)


def test_a_cpu_linear_packs_weights_from_memory_at_its_one_row_streaming_rate():
    """The pass over weights no cache holds walks them row by row, as the one-row product the
    chip measured (matrix_bw_fraction, by row width) does, not at the copy's pace."""
    import dataclasses

    import torch
    from torch import nn

    import fxroof
    from fxroof.chips import Chip
    c = Chip("m", "Measured", "cpu", {"fp32": 1e11}, vector_flops=4e9, mem_bw=1e10,
             mem_bytes=1e10, link_bw=1e9, link_latency_s=1e-5, launch_s=5e-6, dispatch_s=5e-6,
             cache_bytes=2 ** 20, cache_bw=4e10, op_dispatch_s={"linear": 5e-6},
             op_flops={"linear": 1e11}, matrix_bw_fraction={"fp32": 0.5, "fp32#256": 0.25})
    with torch.device("meta"):
        narrow = nn.Linear(256, 4096, bias=False)     # 4 MiB in rows of 256: past the cache
        wide = nn.Linear(1024, 1024, bias=False)      # 4 MiB in rows of 1,024
    (k,) = fxroof.analyze(narrow, (torch.empty(64, 256, device="meta"),), chip=c,
                          mode="eager").kernels
    # 2 * 64 * 256 * 4096 FLOPs at 100 GFLOP/s, then 4 MiB at a quarter of 10 GB/s
    assert k.time_s == pytest.approx(5e-6 + 2 * 64 * 256 * 4096 / 1e11 + 4 * 2 ** 20 / 2.5e9)
    (k,) = fxroof.analyze(wide, (torch.empty(64, 1024, device="meta"),), chip=c,
                          mode="eager").kernels
    # rows of 1,024 on the line between 256 (1,024 units of time a row) and 2,048 (4,096):
    # 1,024 + 3,072 x 768 / 1,792 = 2,340.6, a share of 1,024 / 2,340.6 = 0.4375
    assert k.time_s == pytest.approx(5e-6 + 2 * 64 * 1024 ** 2 / 1e11
                                     + 4 * 2 ** 20 / (0.4375 * 1e10))
    # without the one-row figures, the copy's pace, as before
    bare = dataclasses.replace(c, matrix_bw_fraction={})
    (k,) = fxroof.analyze(wide, (torch.empty(64, 1024, device="meta"),), chip=bare,
                          mode="eager").kernels
    assert k.time_s == pytest.approx(5e-6 + 2 * 64 * 1024 ** 2 / 1e11 + 4 * 2 ** 20 / 1e10)


def test_a_cpu_product_packs_cached_weights_once_the_pass_has_pushed_them_out_of_l2():
    """A model the last-level cache holds keeps its weights there between passes, not in the
    core's L2: a library product still packs them first, from the cache, in the share the rest
    of the pass's traffic (or their own size) pushes out of L2 (chip.l2_share)."""
    import dataclasses
    import math

    import torch
    from torch import nn

    import fxroof
    from fxroof.chips import Chip
    from fxroof.chips.chip import FEW_ROWS_PROBE_BETWEEN
    l2 = 2 * 2 ** 20
    c = Chip("m", "Measured", "cpu", {"fp32": 1e11}, vector_flops=4e9, mem_bw=1e10,
             mem_bytes=1e10, link_bw=1e9, link_latency_s=1e-5, launch_s=5e-6, dispatch_s=5e-6,
             cache_bytes=2 ** 30, cache_bw=4e10, l2_bytes=l2, op_dispatch_s={"linear": 5e-6},
             op_flops={"linear": 1e11})
    with torch.device("meta"):
        big = nn.Linear(1024, 1024, bias=False)            # 4 MiB: twice the L2, never kept
        four = nn.Sequential(*(nn.Linear(512, 512, bias=False) for _ in range(4)))  # 1 MiB each
    (k,) = fxroof.analyze(big, (torch.empty(64, 1024, device="meta"),), chip=c,
                          mode="eager").kernels
    # 2 * 64 * 1024^2 FLOPs at 100 GFLOP/s, then all 4 MiB from the cache at 40 GB/s
    assert k.time_s == pytest.approx(5e-6 + 2 * 64 * 1024 ** 2 / 1e11 + 4 * 2 ** 20 / 4e10)

    x = torch.empty(4, 512, device="meta")
    kernels = fxroof.analyze(four, (x,), chip=c, mode="eager").kernels
    # each layer moves 1 MiB of weights and 8 KiB in and out; the other three move 3 of those
    # between its reads: log2(2 * 3,194,880 / 2 MiB) / 2 = 0.804 of its weights from the cache
    share = math.log2(2 * 3 * (2 ** 20 + 2 * 4 * 512 * 4) / l2) / 2
    assert 0.80 < share < 0.81
    arithmetic = 2 * 4 * 512 * 512 / 1e11
    assert [k.time_s for k in kernels] == pytest.approx(
        [5e-6 + arithmetic + share * 2 ** 20 / 4e10] * 4)
    # one such layer alone stays in L2 (its 1 MiB is half of it): no pass, its bytes at the
    # cache's rate (1,064,960 / 40 GB/s = 26.6 us) outlast its arithmetic (21.0 us)
    (k,) = fxroof.analyze(four[0], (x,), chip=c, mode="eager").kernels
    assert k.time_s == pytest.approx(5e-6 + max(arithmetic, (2 ** 20 + 2 * 4 * 512 * 4) / 4e10))

    # a rate measured on few rows paid its probe's share of the pass already: SkinnyProbe's
    # other two products move 2 x 1 MiB + (256 + 1,024) x (49 + 4) x 4 bytes between each's calls
    assert FEW_ROWS_PROBE_BETWEEN == 2 * 2 ** 20 + 1280 * 53 * 4 == 2368512
    paid = math.log2(2 * 2368512 / l2) / 2                  # 0.588
    few = dataclasses.replace(c, op_flops={"linear": 1e11, "linear#4": 2e10})
    rate = few.eager_matrix_flops("linear", "fp32", rows=4)
    kernels = fxroof.analyze(four, (x,), chip=few, mode="eager").kernels
    assert [k.time_s for k in kernels] == pytest.approx(
        [5e-6 + 2 * 4 * 512 * 512 / rate + (share - paid) * 2 ** 20 / 4e10] * 4)
