"""Quantization what-ifs: bytes and peaks rewritten on the captured graph, the model untouched.
Every expectation is worked out by hand beside it."""
import pytest
import torch

import fxroof
from fxroof.cost.whatif import Quantization, parse
from fxroof.studies.workload import load

K = N = 4096
W = K * N                    # 16,777,216 weights in one 4096 x 4096 linear


def linear(batch: int = 1, bias: bool = False):
    with torch.device("meta"):
        model = torch.nn.Linear(K, N, bias=bias).to(torch.bfloat16)
    return model, (torch.empty(batch, K, dtype=torch.bfloat16, device="meta"),)


def matmul_row(report):
    (row,) = [n for n in report.nodes if n.category == "matmul"]
    return row


def matmul_compute_s(report) -> float:
    """The matmul kernel's compute time on the roofline: its FLOPs at the peak it runs at."""
    (kernel,) = [k for k in report.kernels if k.category == "matmul"]
    return kernel.timing.compute_s


def test_int4_group128_weight_bytes_for_one_linear():
    model, args = linear()
    r = fxroof.analyze(model, args, quantize="w4")
    # int4: W/2 = 8,388,608 bytes; one fp16 scale per 128 weights: W/128*2 = 262,144 bytes;
    # 8,650,752 in all
    weights = W // 2 + W // 128 * 2
    row = matmul_row(r)
    assert row.bytes_read == weights + 1 * K * 2         # + the bf16 input, 8,192 bytes
    assert row.bytes_written == 1 * N * 2                # the bf16 output is unchanged
    assert row.dtype == "bf16"                           # weight-only: dequantized in the kernel
    assert r.memory.weights == weights                   # the footprint shrinks with it
    assert fxroof.analyze(model, args).memory.weights == W * 2          # 33,554,432 bytes


def test_int8_per_row_and_custom_group():
    model, args = linear()
    r8 = fxroof.analyze(model, args, quantize="w8")
    # int8: W bytes, one fp16 scale per output channel (row of the (N, K) weight): N*2
    assert matmul_row(r8).bytes_read == W + N * 2 + K * 2 == 16_793_600
    r4 = fxroof.analyze(model, args, quantize=Quantization(weights="int4", group=64))
    # group 64: W/2 + W/64*2 = 8,388,608 + 524,288
    assert r4.memory.weights == 8_912_896


def test_fp8_matmul_runs_at_the_fp8_peak_with_8_bit_operands():
    model, args = linear(batch=8192)
    r = fxroof.analyze(model, args, chip="h100-sxm", quantize="fp8")
    row = matmul_row(r)
    assert row.dtype == "fp8"
    # operands at 1 byte: x 8192*4096 + w 4096*4096; the bf16 output keeps 2 bytes
    assert row.bytes_read == 8192 * K + W
    assert row.bytes_written == 8192 * N * 2
    # 2*8192*4096*4096 = 2.749e11 FLOP at H100 SXM's dense fp8 peak, 1978.9 TFLOP/s: 0.139 ms
    flops = 2 * 8192 * K * N
    assert r.regime == "compute"
    assert matmul_compute_s(r) == pytest.approx(flops / 1978.9e12, rel=1e-6)
    assert matmul_compute_s(fxroof.analyze(model, args, chip="h100-sxm")) == pytest.approx(
        flops / 989.4e12, rel=1e-6)                      # bf16: twice as long
    # An A100 has no fp8 tensor cores: the GEMM runs at its bf16 peak, 312 TFLOP/s
    a100 = fxroof.analyze(model, args, chip="a100-80gb", quantize="fp8")
    assert matmul_compute_s(a100) == pytest.approx(flops / 312e12, rel=1e-6)
    # scales fixed ahead of time: no kernel of their own, and the note says how to count them
    assert row.quantize == ()
    assert any("scales found at each call run kernels of their own" in n for n in r.notes)


def conv(batch: int = 8):
    with torch.device("meta"):
        model = torch.nn.Conv2d(64, 128, 3, padding=1, bias=False).to(torch.float16)
    return model, (torch.empty(batch, 64, 56, 56, dtype=torch.float16, device="meta"),)


def conv_row(report):
    (row,) = [n for n in report.nodes if n.category == "conv"]
    return row


def test_8_bit_operands_run_a_convolution_at_the_int8_peak():
    # TensorRT's int8 CNN engines: a convolution reads its input and weights in 8 bits
    model, args = conv()
    r = fxroof.analyze(model, args, chip="h100-sxm", quantize="w8a8")
    row = conv_row(r)
    assert row.dtype == "int8"
    # input 8*64*56*56 = 1,605,632 and weights 128*64*3*3 = 73,728 at 1 byte (3,358,720 bytes
    # in fp16); the fp16 output keeps 2 bytes: 8*128*56*56*2 = 6,422,528
    assert row.bytes_read == 1_605_632 + 73_728
    assert row.bytes_written == 6_422_528
    assert r.memory.weights == 73_728
    # 2*8*128*56*56*64*9 = 3,699,376,128 FLOP at H100 SXM's dense int8 peak, 1978.9 TOPS
    (kernel,) = [k for k in r.kernels if k.category == "conv"]
    assert kernel.timing.compute_s == pytest.approx(3_699_376_128 / 1978.9e12, rel=1e-6)
    assert any(n.startswith("int8 matmuls and convolutions read their operands in 8 bits")
               for n in r.notes)


def test_weight_only_schemes_leave_convolutions_16_bit_and_say_so():
    model, args = conv()
    r = fxroof.analyze(model, args, chip="h100-sxm", quantize="w4")
    row = conv_row(r)
    assert (row.dtype, row.bytes_read) == ("fp16", 3_358_720)     # as captured
    assert r.memory.weights == 73_728 * 2
    assert ("what-if int4 weights (g128): no matmul reads a weight, so its weights part "
            "changed nothing") in r.notes
    assert any(n.startswith("1 convolution keeps its 16-bit weights") for n in r.notes)


def test_a_what_if_part_that_finds_nothing_says_so():
    model, args = linear()                    # a linear layer: no cache written in place
    r = fxroof.analyze(model, args, quantize="w8+kv8")
    assert matmul_row(r).bytes_read == W + N * 2 + K * 2         # the weights part applied
    assert r.notes == ("what-if int8 weights (per row) + int8 KV cache: no input is written in "
                       "place (a KV cache the step updates), so its kv cache part changed "
                       "nothing",)
    with torch.device("meta"):
        norm = torch.nn.LayerNorm(K).to(torch.bfloat16)
    r = fxroof.analyze(norm, args, quantize="fp8")
    assert r.notes == ("what-if fp8 matmuls: the graph has no matmul or convolution, so its "
                       "matmul part changed nothing",)


def test_activations_scaled_at_each_call_run_kernels_of_their_own():
    from fxroof.chips import chip
    from fxroof.chips.expected import copy_kernel_time
    model, args = linear(batch=8192)
    h100 = chip("h100-sxm")
    static = fxroof.analyze(model, args, chip=h100, quantize="fp8")
    per_row = fxroof.analyze(model, args, chip=h100, quantize="fp8+dq")
    per_tensor = fxroof.analyze(model, args, chip=h100, quantize="fp8+dq-tensor")
    x = 8192 * K                             # the activation: 33,554,432 bf16 elements
    # a scale a row: one kernel reads x (2 bytes), writes it in 1 byte and 8,192 fp32 scales
    assert matmul_row(per_row).quantize == (x * 2 + x + 8192 * 4,)          # 100,696,064
    # one scale: a reduction reads x and writes the scale, then the cast reads x, writes 1 byte
    assert matmul_row(per_tensor).quantize == (x * 2 + 4, x * 2 + x)
    # the matmul itself reads and writes what it did
    assert matmul_row(per_row).bytes_read == matmul_row(static).bytes_read
    (k,) = [k for k in per_row.kernels if k.category == "matmul"]
    (k0,) = [k for k in static.kernels if k.category == "matmul"]
    # each kernel at a copy's pace: 100.7 MB at 3.35 TB/s x 0.897, its latency and fixed time
    assert dict(k.expected.gap)["quantize"] == pytest.approx(
        copy_kernel_time(h100, x * 3 + 8192 * 4))
    assert k.expected.device_s - k0.expected.device_s == pytest.approx(
        copy_kernel_time(h100, x * 3 + 8192 * 4), rel=1e-9)
    assert per_tensor.time_s > per_row.time_s > static.time_s
    assert "scaled per row" in per_row.whatif
    assert any("quantized at each call" in n for n in per_row.notes)


class NormThenLinears(torch.nn.Module):
    """A layer norm, a linear reading it, a second linear reading the first's output."""

    def __init__(self):
        super().__init__()
        self.norm = torch.nn.LayerNorm(K)
        self.up = torch.nn.Linear(K, N, bias=False)
        self.down = torch.nn.Linear(N, K, bias=False)

    def forward(self, x):
        return self.down(self.up(self.norm(x)))


def test_a_compiler_folds_a_rows_scale_into_the_kernel_making_the_row():
    with torch.device("meta"):
        model = NormThenLinears().to(torch.bfloat16)
    args = (torch.empty(64, K, dtype=torch.bfloat16, device="meta"),)

    def quantize_s(report, layer):
        (k,) = [k for k in report.kernels if k.category == "matmul" and layer in k.module]
        return k.expected.quantize_s

    rows = {n.module: n for n in fxroof.analyze(model, args, chip="h100-sxm",
                                                 quantize="fp8+dq").nodes if n.quantize}
    # up's input is the norm's output: Inductor writes that kernel, and finds each row's scale
    # in it; down's is a library GEMM's output, quantized by a kernel of its own
    assert rows["up"].quantize_folds == (True,) and rows["down"].quantize_folds == (False,)
    for mode, folded in (("compiled", True), ("cudagraphs", True), ("eager", False)):
        r = fxroof.analyze(model, args, chip="h100-sxm", quantize="fp8+dq", mode=mode)
        assert (quantize_s(r, "up") == 0) == folded
        assert quantize_s(r, "down") > 0
    # one scale for the whole tensor waits for all of it: never folded
    r = fxroof.analyze(model, args, chip="h100-sxm", quantize="fp8+dq-tensor", mode="compiled")
    assert quantize_s(r, "up") > 0 and quantize_s(r, "down") > 0


def test_an_8_bit_product_of_one_row_stays_the_librarys_under_coordinate_descent():
    # Inductor decomposes a 16-bit product of one row into a Triton reduction, but an 8-bit
    # one is torch._scaled_mm (or _int_mm): a library call whatever its rows
    import torch._inductor.config as inductor_config
    model, args = linear(batch=1)
    with inductor_config.patch(coordinate_descent_tuning=True):
        bf16 = fxroof.analyze(model, args, chip="h100-sxm")
        fp8 = fxroof.analyze(model, args, chip="h100-sxm", quantize="fp8")
    assert [k.category for k in bf16.kernels] == ["reduction"]
    assert [k.category for k in fp8.kernels] == ["matmul"]


def test_fp8_training_with_dynamic_scales_quantizes_both_operands_of_every_product():
    model = torch.nn.Linear(K, N, bias=False)
    x = torch.randn(64, K)
    r = fxroof.analyze(model, (x,), chip="h100-sxm", train=True, quantize="fp8+dq",
                       mode="eager")
    # forward x @ w^T; backward grad_w = g^T @ x (the input needs no gradient): two products,
    # each of two fp32 operands cast to 8 bits, a kernel each, reading 4 bytes an element
    products = [n for n in r.nodes if n.quantize]
    assert len(products) == 2 and all(len(n.quantize) == 2 for n in products)
    forward = next(n for n in products if n.phase == "forward")
    # x (64 x K) and w (N x K): read at 4 bytes, written at 1, a 4-byte scale a row
    assert sorted(forward.quantize) == sorted((64 * K * 5 + 64 * 4, N * K * 5 + N * 4))
    assert any("found at each call by kernels of their own" in n for n in r.notes)


def test_dynamic_scales_need_8_bit_matmuls():
    assert parse("fp8+dq") == Quantization(matmul="fp8", activations="row")
    assert parse("w8a8+dq-tensor") == Quantization(matmul="int8", activations="tensor")
    with pytest.raises(ValueError, match="add fp8 or w8a8"):
        parse("dq")
    with pytest.raises(ValueError, match="add fp8 or w8a8"):
        parse("w4+dq")


def tiny_decode(**options):
    return load("models/llama.py", dict(preset="tiny", phase="decode", batch=2, ctx=63, **options))


def test_kv_cache_dtype_halves_cache_bytes():
    model, args, kwargs = tiny_decode()
    base = fxroof.analyze(model, args, kwargs)
    # tiny: 2 layers x (k, v), each (B=2, kv heads=2, ctx+1=64, head dim=32) bf16 = 16 kB
    cache = 2 * 2 * (2 * 2 * 64 * 32 * 2)
    assert base.memory.kv_cache == cache                                # 65,536 bytes
    fp8 = fxroof.analyze(model, args, kwargs, quantize="kv-fp8")
    assert fp8.memory.kv_cache == cache // 2
    # int8 adds one fp16 scale per 128 values: each 8,192-value tensor gets 64 scales, 128 bytes
    int8 = fxroof.analyze(model, args, kwargs, quantize="kv8")
    assert int8.memory.kv_cache == cache // 2 + 4 * 128
    assert fp8.memory.weights == base.memory.weights      # weights untouched by a KV what-if
    # Attention reads the whole cache (ctx+1 = 64 keys): k and v at 1 byte instead of 2
    att = [n for n in base.nodes if n.category == "attention"]
    att8 = [n for n in fp8.nodes if n.category == "attention"]
    for a, b in zip(att, att8):
        assert a.bytes_read - b.bytes_read == 2 * (2 * 2 * 64 * 32)


def test_weight_quantization_speeds_up_a_memory_bound_decode():
    model, args, kwargs = load("models/llama.py", dict(phase="decode", ctx=512, layers=1))
    # replayed as a CUDA graph, as decode is served: no launch from Python above a GEMV
    times = {q: fxroof.analyze(model, args, kwargs, chip="a100-80gb", quantize=q,
                               mode="cudagraphs") for q in (None, "w8", "w4")}
    # on the roofline every matmul of the decode is memory-bound, quantized or not
    assert all(k.timing.regime == "memory" for r in times.values() for k in r.kernels
               if k.category == "matmul")
    assert times["w4"].time_s < times["w8"].time_s < times[None].time_s
    # matmuls move ~1 byte (w8) and ~0.52 bytes (w4) per weight instead of 2
    mm = lambda r: sum(k.bytes for k in r.kernels if k.category == "matmul")  # noqa: E731
    assert mm(times["w8"]) / mm(times[None]) == pytest.approx(0.5, abs=0.01)
    assert mm(times["w4"]) / mm(times[None]) == pytest.approx(0.5156 / 2, abs=0.01)


def test_the_model_is_not_changed():
    model, args, kwargs = load("models/llama.py", dict(preset="tiny", phase="decode", batch=1,
                                                       ctx=7, device="cpu"))
    before = {k: (v.dtype, v.clone()) for k, v in model.state_dict().items()}
    cache = [t.clone() for pair in kwargs["cache"] for t in pair]
    fxroof.analyze(model, args, kwargs, quantize="w4+kv8")
    fxroof.analyze(model, args, kwargs, quantize="fp8")
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k, (dtype, value) in before.items():
        assert after[k].dtype == dtype and torch.equal(after[k], value)
    assert all(torch.equal(a, b) for a, b in zip(cache, [t for p in kwargs["cache"] for t in p]))


def test_specs():
    assert parse("w4") == Quantization(weights="int4", group=128)
    assert parse("w8") == Quantization(weights="int8", group=0)
    assert parse("w4g64+kv-fp8") == Quantization(weights="int4", group=64, kv_cache="fp8")
    assert parse("fp8").matmul == "fp8" and parse("w8a8").matmul == "int8"
    assert parse(None) is None
    assert parse("w4+kv8").label == "int4 weights (g128) + int8 KV cache"
    with pytest.raises(ValueError, match="unknown quantization"):
        parse("w3")
    with pytest.raises(ValueError, match="already store weights"):
        parse("w4+fp8")


def test_misspelt_what_if_fails_before_capture_and_epilogues_are_refused():
    model, args = linear()
    with pytest.raises(ValueError, match="unknown quantization"):
        fxroof.analyze(model, args, quantize="int3")
    with pytest.raises(ValueError, match="matmul_epilogues"):
        fxroof.analyze(model, args, quantize="w4", matmul_epilogues=True)


def test_a_dequantizing_matmul_streams_its_weights_at_its_measured_share():
    # gpt-fast's README, Llama-2-7B at batch 1 on an A100: 1,397.31 GB/s in bf16, 1,069.20 with
    # int8 weights, 862.69 with int4: a dequantizing kernel streams at 0.765 and 0.617 of a
    # 16-bit matmul's rate. One 4096 x 4096 linear at batch 1 on an A100, as bf16 and as int8:
    # its streaming part (memory floor / bw_efficiency) is 1/0.765 longer in int8.
    model, args = linear()

    def streamed(quantize):
        r = fxroof.analyze(model, args, chip="a100-80gb", quantize=quantize)
        (k,) = [k for k in r.kernels if k.category == "matmul"]
        return k, k.expected.streamed_s * 0.894 / k.timing.memory_s
    plain, share = streamed(None)
    assert share == pytest.approx(1.0)
    int8, share = streamed("w8")
    assert share == pytest.approx(1397.31 / 1069.20)
    assert matmul_row(fxroof.analyze(model, args, quantize="w8")).variant == "int8 weights"
    _, share = streamed("w4")
    assert share == pytest.approx(1397.31 / 862.69)
    # fp8 weights beside bf16 activations are converted in the kernel too: int8's share
    _, share = streamed("wfp8")
    assert share == pytest.approx(1397.31 / 1069.20)
    assert matmul_row(fxroof.analyze(model, args, quantize="wfp8")).variant == "fp8 weights"
    # 8-bit matmuls (fp8, w8a8) run the library's GEMM on 8-bit operands: no dequantizing
    _, share = streamed("fp8")
    assert share == pytest.approx(1.0)


def test_weights_gathered_into_a_product_are_its_weights():
    # gpt-fast's experts: the chosen experts' weights gathered (self.w1[expert_indices]), then
    # an einsum. A weight-only what-if stores them in int8: each gather reads the chosen
    # experts' rows at one byte a weight (plus a bf16 scale a row) and dequantizes them as it
    # picks them; under coordinate descent tuning the product's reduction reads them in place.
    import torch._inductor.config as inductor_config
    from test_fuse import GatheredExperts

    dim, hidden, chosen = 64, 128, 2
    idx = torch.zeros(1, chosen, dtype=torch.long, device="meta")
    args = (torch.empty(1, dim, dtype=torch.bfloat16, device="meta"), idx)
    model = GatheredExperts(dim=dim, hidden=hidden)
    report = fxroof.analyze(model, args, chip="a100-80gb", mode="eager", quantize="w8")
    gathers = [n for n in report.nodes if n.op == "index"]
    rows = chosen * hidden          # rows of each gathered projection (hidden x dim for w1, w3)
    assert gathers[0].bytes_read == rows * dim + rows * 2 + 8 * chosen   # int8, scales, indices
    assert gathers[0].variant == "int8 weights"
    with inductor_config.patch(coordinate_descent_tuning=True):
        report = fxroof.analyze(model, args, chip="a100-80gb", mode="cudagraphs", quantize="w8")
    up, down = report.kernels
    assert up.category == down.category == "reduction"
    # every weight byte at the dequantizing kernels' share (chips/expected.DEQUANT_STREAM_SHARE)
    assert up.expected.streamed_s / up.expected.bandwidth_s == pytest.approx(1397.31 / 1069.20)
    assert up.bytes_read == 2 * (rows * dim + rows * 2) + 2 * dim + 8 * chosen
    # the report says so, counting the three einsums
    assert any(n.startswith("torch._inductor.config.coordinate_descent_tuning is on")
               and "(3 here)" in n for n in report.notes)
