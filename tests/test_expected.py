"""The expected-time model beside the roofline floor: each part of the gap by hand arithmetic."""
import pytest
import torch
from helpers import fn_module

import fxroof
from fxroof.chips import Chip, chip
from fxroof.chips.expected import Tiling, causal_share, cpu_causal_share, expected, tiling
from fxroof.chips.timing import Timing, comm_time, matmul_tf32, nvls_chunk, nvls_fill

H100 = chip("h100-sxm")     # 132 SMs, 989.4 TFLOP/s bf16, 3.35 TB/s


def meta(*shape, dtype=torch.bfloat16):
    return torch.empty(*shape, dtype=dtype, device="meta")


def gpu(**figures) -> Chip:
    """A GPU made in code: 1 TFLOP/s matrix and vector, 1 GB/s, with the given figures."""
    return Chip("g", "Test GPU", "gpu", {"fp32": 1e12, "bf16": 1e12}, vector_flops=1e12,
                mem_bw=1e9, mem_bytes=1e10, link_bw=1e9, link_latency_s=5e-6, launch_s=2e-6,
                dispatch_s=10e-6, **figures)


# --- tile and wave quantization: whole tiles by whole k-blocks, in whole waves over the SMs ---

def test_waves_of_a_square_gemm_by_hand():
    # 1024 x 1024 x K=64 (one k-block) on 108 SMs. 128x128 tiles: 64 tiles, one wave of 108:
    # 108 / 64 = 1.6875. 64x64 tiles: 256 tiles, ceil(256 / 108) = 3 waves: 3 * 108 / 256
    # = 1.2656, the least of the library's tiles.
    assert tiling((1, 1024, 1024, 64), 108, "matmul").factor == pytest.approx(3 * 108 / 256)
    # K = 1024 (16 k-blocks): 256 tiles of 64x64 fill the SMs, so K is not split: the same 3
    # waves, 1.2656. 256x128 tiles: 32 tiles, 108 // 32 = 3 splits of ceil(16 / 3) = 6 k-blocks,
    # 96 units in one wave: 108 * 256 * 128 * 6 * 64 / 1024**3 = 1.2656 as well
    assert tiling((1, 1024, 1024, 1024), 108, "matmul").factor == pytest.approx(3 * 108 / 256)
    # 2048 x 2048 x 2048: 256 tiles of 128x128, 3 waves; 128x256: 128 tiles, 2 waves (0.84 of
    # the second idle): 2 * 108 / 128 = 1.6875; 64x64: 1024 tiles, ceil(9.48) = 10 waves,
    # 10 * 108 / 1024 = 1.0547, the least; nothing split (stream-K would make it 1.0)
    assert tiling((1, 2048, 2048, 2048), 108, "matmul").factor == pytest.approx(10 * 108 / 1024)


def test_a_small_output_with_a_long_reduction_splits_it():
    # 64 x 256 x K=1024 on 108 SMs: 4 tiles of 64x64 alone would fill 4 SMs (27x the work);
    # 108 // 4 = 27 parts wanted, but each keeps 3 of the 16 k-blocks: 5 parts of 4 k-blocks,
    # 20 units in one wave: 108 x 64 x 64 x 4 x 64 / (64 x 256 x 1024) = 6.75
    t = tiling((1, 64, 256, 1024), 108, "matmul")
    assert (t.factor, t.splits) == (pytest.approx(6.75), 5)
    # K = 128 (2 k-blocks) is too short to split at all: 4 tiles in one wave, 27x
    assert tiling((1, 64, 256, 128), 108, "matmul") == Tiling(pytest.approx(27.0), 1, 1)


def test_a_matrix_vector_product_is_padded_to_8_rows_not_64():
    # M = 1, N = K = 4096 on 108 SMs: 8-row tiles; 8x256: 16 tiles, 108 // 16 = 6 splits of
    # ceil(64 / 6) = 11 k-blocks, one wave: 108 * 8 * 256 * 11 * 64 / 4096**2 = 9.28 (a 64-row
    # tile: 64x more)
    assert tiling((1, 1, 4096, 4096), 108, "matmul").factor == pytest.approx(
        108 * 8 * 256 * 11 * 64 / 4096**2)


def test_attention_tiles_query_rows_over_whole_heads():
    # 192 (batch x heads) x 197 queries x head size 64, K = 2 x 197 keys = 394 (7 k-blocks), on
    # 132 SMs. 128-row blocks: 192 x 2 = 384 blocks fill the SMs (no split), ceil(2.9) = 3
    # waves of 7 k-blocks: 3 * 132 * 128 * 64 * 7 * 64 / (192 * 197 * 64 * 394) = 1.5238
    # (64-row blocks: 768, 6 waves, the same)
    assert tiling((192, 197, 64, 394), 132, "attention").factor == pytest.approx(
        3 * 132 * 128 * 64 * 7 * 64 / (192 * 197 * 64 * 394))


def test_fused_attention_runs_at_its_own_share_of_the_peak():
    # FlashAttention-2, the kernel PyTorch runs for SDPA, reaches 35% of the H100's dense peak
    # (the FlashAttention-3 paper), not the 80% of a library GEMM. (1, 24 heads, 4608, 128):
    # 4 x 4608^2 x 24 x 128 = 260.9 GFLOP; 24 x 36 = 864 blocks of 128 rows fill the 132 SMs
    # (no split of the keys), ceil(6.55) = 7 waves: 7 x 132 / 864 = 1.0694; 260.9e9 / 989.4e12
    # x 1.0694 / 0.35 = 806 us, the compute of the kernel (pytorch/pytorch#142132 measured 792 us)
    # (that run's PyTorch, 2.6, ran FlashAttention-2 first: cuDNN's kernel off, as before 2.11)
    q = meta(1, 24, 4608, 128)
    was = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        r = fxroof.analyze(fn_module(torch.nn.functional.scaled_dot_product_attention),
                           (q, q, q), chip="h100-sxm")
    finally:
        torch.backends.cuda.enable_cudnn_sdp(was)
    (k,) = r.kernels
    flops = 4 * 4608**2 * 24 * 128
    assert k.flops == flops
    assert k.expected.compute_s == pytest.approx(flops / 989.4e12 * 7 * 132 / 864 / 0.35)
    assert any("FlashAttention-2, at 35% of h100-sxm" in n for n in r.notes)   # the report says
    fp32 = meta(1, 24, 4608, 128, dtype=torch.float32)     # not the flash backend: priced as a GEMM
    r32 = fxroof.analyze(fn_module(torch.nn.functional.scaled_dot_product_attention),
                         (fp32, fp32, fp32), chip="h100-sxm")
    assert not any("FlashAttention" in n for n in r32.notes)
    (k32,) = r32.kernels
    e32 = k32.expected
    # ... the memory-efficient kernel, whose fp32 products are three TF32 ones each (CUTLASS's
    # 3xTF32): 494.7 / 3 = 164.9 TFLOPS, the floor's rate too; plus its exponentials, one per
    # score, 16 a clock per SM: 164.9 TFLOPS / (4 x 128 FLOPs a score x 16 x 132 SMs x 1.83 GHz)
    # = 0.0834 of the products' time at that rate
    assert r32.summary.floor_s == pytest.approx(flops / (494.7e12 / 3))
    assert e32.compute_s == pytest.approx(e32.tiled_s * (1 / 0.803 + 494.7e12 / 3 / (
        512 * 16 * 132 * 1.83e9)))
    # a V100 has no TF32 units: its fp32 attention runs on the CUDA cores, at their share
    v = fxroof.analyze(fn_module(torch.nn.functional.scaled_dot_product_attention),
                       (fp32, fp32, fp32), chip="v100")
    assert v.summary.floor_s == pytest.approx(flops / 15.7e12)
    assert v.kernels[0].expected.products_s == pytest.approx(
        v.kernels[0].expected.tiled_s / 0.83)
    mm = fxroof.analyze(fn_module(torch.mm), (meta(4096, 4096), meta(4096, 4096)), chip="h100-sxm")
    assert mm.kernels[0].expected.compute_s == pytest.approx(
        mm.kernels[0].expected.tiled_s / 0.803)         # GEMMs keep matmul_efficiency


def test_a_smaller_head_reaches_less_of_the_peak_its_exponentials_take_longer():
    # A fused attention kernel computes one exponential per score beside 4 x head size FLOPs of
    # products; an A100 computes 16 a clock on each of its 108 SMs at 1.41 GHz: 2.436e12 a
    # second beside 312e12 FLOP/s, so per second of products at the peak the exponentials take
    # 312 / (4 x 64 x 2.436) = 0.5002 s at head size 64, 0.2501 s at 128. FlashAttention-2's
    # 73% on an A100 is at head size 128: its products run at 1 / (1 / 0.73 - 0.2501) = 0.893
    # of the peak (the A100's GEMMs reach 0.869), and at head size 64 the kernel reaches
    # 1 / (1.1197 + 0.5002) = 0.617 of it.
    rate = 16 * 108 * 1.41e9
    at64, at128 = 312e12 / (256 * rate), 312e12 / (512 * rate)
    for d, share in ((128, 0.73), (64, 1 / (1 / 0.73 - at128 + at64))):
        q = meta(1, 32, 4096, d)
        (k,) = fxroof.analyze(fn_module(torch.nn.functional.scaled_dot_product_attention),
                              (q, q, q), chip="a100-80gb").kernels
        e = k.expected
        assert e.compute_s == pytest.approx(e.tiled_s / share)
        assert dict(e.gap)["softmax"] == pytest.approx(e.tiled_s * (at64 if d == 64 else at128))
    assert 1 / (1 / 0.73 - at128 + at64) == pytest.approx(0.617, abs=1e-3)
    # PyTorch's own timing of the flash backend on an A100 (pytorch/pytorch#126122): 183 TFLOP/s
    # at head size 128, 172 at 64 (0.94 of it; the model's 0.617 / 0.73 = 0.85 makes the small
    # head's exponentials overlap nothing)
    q = meta(1, 32, 4096, 64)
    b200 = fxroof.analyze(fn_module(torch.nn.functional.scaled_dot_product_attention), (q, q, q),
                          chip="b200").kernels[0].expected      # no clock figure: no such part
    assert dict(b200.gap)["softmax"] == 0 and b200.compute_s == pytest.approx(b200.tiled_s / 0.776)


def unmasked_and_causal(q, chip: str) -> tuple:
    """The kernel of scaled_dot_product_attention(q, q, q) on `chip`, without a mask and with
    is_causal."""
    sdpa = torch.nn.functional.scaled_dot_product_attention
    return tuple(fxroof.analyze(fn_module(f), (q, q, q), chip=chip).kernels[0]
                 for f in (sdpa, lambda q, k, v: sdpa(q, k, v, is_causal=True)))


def test_a_causal_flash_kernel_computes_the_blocks_on_and_below_the_diagonal():
    # 2,048 queries in blocks of 128: block i reads keys up to 128 (i + 1), in blocks of 64
    # keys: 128, 256, ..., 2,048 of 2,048, a share of (1 + ... + 16) / (16 x 16) = 136 / 256
    # = 0.531 of the products and exponentials (the FLOPs stay the dense count)
    assert causal_share((32, 2048, 128, 4096)) == pytest.approx(136 / 256)
    assert causal_share((32, 100, 128, 200)) == 1.0       # one block of queries reads them all
    assert causal_share(()) == 1.0
    q = meta(1, 32, 2048, 128)
    full, causal = unmasked_and_causal(q, "h100-sxm")
    assert causal.flops == full.flops
    assert causal.expected.tiled_s == pytest.approx(full.expected.tiled_s * 136 / 256)
    assert causal.expected.compute_s == pytest.approx(full.expected.compute_s * 136 / 256)
    # measured on an H200 (bench/measured/h200-2026-12-04.json, torch 2.11): 83.2 us causal,
    # 107.7 us without a mask: the causal kernel took 0.77 of the time, not all of it


def test_a_causal_kernel_in_one_wave_takes_as_long_as_its_longest_block():
    # 512 queries of 32 heads: 4 blocks of 128 a head, 128 blocks on an H200's 132 SMs, one
    # wave. The last block of each head reads all 512 keys, however few the first reads: the
    # kernel takes as long as without the mask (a share of 1, not the 0.625 of its k-blocks)
    full, causal = unmasked_and_causal(meta(1, 32, 512, 128), "h200")
    assert causal_share((32, 512, 128, 1024)) == pytest.approx((2 + 4 + 6 + 8) / 32)
    assert tiling((32, 512, 128, 1024), 132, "attention").waves == 1
    assert causal.expected.tiled_s == pytest.approx(full.expected.tiled_s)
    # 2,048 queries: 512 blocks, 4 waves; its share 0.531 stands above the longest block's
    # 1 / 4 (the test above). On an H200 (h200-2026-12-04.json) the 512 tokens took 14.7 us:
    # predicted 7.9, 5.7 before this rule
    assert tiling((32, 2048, 128, 4096), 132, "attention").waves == 4


def test_a_cpu_causal_attention_skips_whole_key_blocks_past_its_query_blocks():
    # PyTorch's CPU flash kernel: 1,024 queries in blocks of 256, keys in blocks of 512. The
    # blocks end at query 256, 512, 768 and 1,024 and read 512, 512, 1,024 and 1,024 keys: a
    # share of 3,072 / 4,096 = 0.75 (timed on a Zen 4 core: 0.76 of the unmasked call)
    assert cpu_causal_share((8, 1024, 64, 2048)) == pytest.approx(0.75)
    # 640 queries in blocks of 64 (from 192), the first eight blocks one key block of 512, the
    # last two 512 + 128: (8 x 512 + 2 x 640) x 64 / (640 x 640) = 0.84 (timed: 0.84)
    assert cpu_causal_share((8, 640, 64, 1280)) == pytest.approx(0.84)
    assert cpu_causal_share((8, 512, 64, 1024)) == 1.0      # one key block: nothing skipped
    assert cpu_causal_share(()) == 1.0
    q = meta(1, 8, 1024, 64)
    full, causal = unmasked_and_causal(q, "cpu")
    assert causal.flops == full.flops
    assert causal.expected.compute_s == pytest.approx(full.expected.compute_s * 0.75)


def test_no_sms_or_no_grid_no_quantization():
    assert tiling((1, 100, 100, 100), 0, "matmul").factor == 1.0
    assert tiling((), 108, "matmul").factor == 1.0


# --- each part of the gap ---

def test_matmul_efficiency_and_tiles_on_a_compute_bound_kernel_by_hand():
    c = gpu(sm_count=108, matmul_efficiency=0.8)
    floor = Timing(compute_s=1e-3, memory_s=1e-4, comm_s=0, overhead_s=2e-6)
    e = expected(c, floor, "matmul", grid=(1, 1024, 1024, 64))
    q = 3 * 108 / 256                                    # 1.2656, as above
    assert e.compute_s == pytest.approx(1e-3 * q / 0.8)  # 1.582 ms
    gap = dict(e.gap)
    assert gap["tiles"] == pytest.approx(1e-3 * (q - 1))            # 0.2656 ms
    assert gap["matmul"] == pytest.approx(1e-3 * q * (1 / 0.8 - 1))  # 0.3164 ms
    # overlap: 1.582 + 0.1 - 0.95 * 0.1 = 1.587 ms; no kernel floor figure: nothing more
    assert e.time_s == pytest.approx(1e-3 * q / 0.8 + 1e-4 * 0.05)
    assert e.regime == "compute"


def test_overlap_near_the_ridge_by_hand():
    # compute and memory 10 us each: XLA's 0.95 overlap gives 10 + 10 - 9.5 = 10.5 us
    e = expected(gpu(), Timing(10e-6, 10e-6, 0, 0), "pointwise")
    assert e.time_s == pytest.approx(10.5e-6)
    assert dict(e.gap)["overlap"] == pytest.approx(0.5e-6)


def test_bandwidth_efficiency_by_hand():
    # 1 MB at 1 GB/s = 1 ms floor; at 0.8 of the bandwidth 1.25 ms
    e = expected(gpu(bw_efficiency=0.8), Timing(0, 1e-3, 0, 2e-6), "pointwise")
    assert e.time_s == pytest.approx(1.25e-3)
    assert e.regime == "memory"


def test_a_norms_second_pass_reads_from_memory_what_the_l2_does_not_hold():
    # a 3 MB tensor read again on a chip with a 1 MiB L2 at 0.8 of 1 GB/s: 3e6 - 1,048,576 =
    # 1,951,424 B again from memory, 2.439 ms beside the 1 ms floor
    chip = gpu(bw_efficiency=0.8, l2_bytes=2.0 ** 20)
    e = expected(chip, Timing(0, 1e-3, 0, 2e-6), "norm", reread=(3e6,))
    assert e.reread_s == pytest.approx((3e6 - 2 ** 20) / 0.8e9) == pytest.approx(2.439e-3,
                                                                                  rel=1e-3)
    assert e.time_s == pytest.approx(1.25e-3 + e.reread_s)
    assert dict(e.gap)["reread"] == pytest.approx(e.reread_s)
    assert e.regime == "memory"
    # one that fits stays in the cache; a chip without an L2 figure reads all of it again
    assert expected(chip, Timing(0, 1e-3, 0, 2e-6), "norm", reread=(1e6,)).reread_s == 0
    bare = expected(gpu(bw_efficiency=0.8), Timing(0, 1e-3, 0, 2e-6), "norm", reread=(3e6,))
    assert bare.reread_s == pytest.approx(3e6 / 0.8e9)


def test_a_training_batch_norm_on_an_rtx_3090_reads_its_input_again_by_hand():
    # BatchNorm2d over 64 x 64 x 56 x 56 fp32 (ResNet-50's first stage at batch 64): 51.38 MB, a
    # 6 MiB L2 (6,291,456 B): 45,088,768 B again at 0.897 of 936 GB/s, 53.70 us forward; the
    # gradient reads dy and x again, twice that. The floor is the op's, unchanged
    model = torch.nn.Sequential(torch.nn.Conv2d(64, 64, 1), torch.nn.BatchNorm2d(64))
    x = meta(64, 64, 56, 56, dtype=torch.float32)
    r = fxroof.analyze(model, (x,), chip="rtx-3090", mode="eager", train=True, optimizer="none")
    again = (64 * 64 * 56 * 56 * 4 - 6 * 2 ** 20) / (936e9 * 0.897)
    assert again == pytest.approx(53.70e-6, rel=1e-3)
    rows = {k.op: k for k in r.kernels if k.category == "norm"}
    assert rows["native_batch_norm"].expected.reread_s == pytest.approx(again)
    assert rows["native_batch_norm_backward"].expected.reread_s == pytest.approx(2 * again)
    # the floor's bytes are the op's: x read and y written once (and the small vectors)
    bn = rows["native_batch_norm"]
    assert 2 * 51_380_224 <= bn.bytes < 2 * 51_380_224 + 4096
    assert bn.timing.memory_s == pytest.approx(bn.bytes / 936e9)
    # compiled, the norm fused with its neighbours loops over its input again all the same
    c = fxroof.analyze(model, (x,), chip="rtx-3090", mode="compiled", train=True,
                       optimizer="none")
    fused = [k for k in c.kernels if any(n.startswith("native_batch_norm") for n in k.nodes)]
    assert sorted(k.expected.reread_s for k in fused) == pytest.approx([again, 2 * again])


def test_a_biased_convolution_on_cuda_runs_its_bias_add_as_a_kernel_of_its_own_eager():
    # (64, 64, 56, 56) fp16 out of a 3x3 convolution on an H100: cuDNN adds the bias after it,
    # reading and writing the 25.7 MB output at the copy share of 3.35 TB/s (0.897), after a
    # 354 ns round trip and a 1 us kernel floor: 17.10 + 0.354 + 1 = 18.45 us
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(torch.float16)
    x = meta(64, 64, 56, 56, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    conv = conv.to(memory_format=torch.channels_last)
    eager = fxroof.analyze(conv, (x,), chip="h100-sxm", mode="eager")
    bias = 2 * 64 * 64 * 56 * 56 * 2 / (3.35e12 * 0.897) + 354e-9 + 1e-6
    (k,) = eager.kernels
    assert k.expected.bias_s == pytest.approx(bias) == pytest.approx(18.45e-6, rel=1e-3)
    assert dict(k.expected.gap)["bias"] == pytest.approx(bias)
    # compiled, the add joins the next fused kernel; and a CPU's library adds it in place
    compiled = fxroof.analyze(conv, (x,), chip="h100-sxm", mode="compiled")
    assert all(k.expected.bias_s == 0 for k in compiled.kernels)
    cpu = fxroof.analyze(conv.float(), (x.float(),), chip="cpu", mode="eager")
    assert all(k.expected.bias_s == 0 for k in cpu.kernels)
    # and `fxroof compare` says that part of what compiling saves
    from fxroof.report.tables import comparison
    assert "of which bias: eager pays 18.5 µs" in comparison(eager)   # 18.45, rounded


def test_a_channels_first_depthwise_convolution_on_cuda_is_bound_by_its_instructions():
    # bf16 3x3 depthwise over (64, 96, 56, 56): PyTorch runs its own kernel, one thread an
    # output issuing 119.4 + 11.6 x 9 = 223.8 instructions (its loop's SASS, sm_90), so
    # 64 x 96 x 56 x 56 = 19,267,584 outputs x 223.8 = 4.312e9 thread instructions; an H200
    # issues 128 a clock on each of 132 SMs at 1.83 GHz: 4.312e9 / 3.092e13 = 139.5 us
    dwconv = fn_module(lambda x, w: torch.nn.functional.conv2d(x, w, padding=1, groups=96))
    x, w = meta(64, 96, 56, 56, dtype=torch.bfloat16), meta(96, 1, 3, 3, dtype=torch.bfloat16)
    (k,) = fxroof.analyze(dwconv, (x, w), chip="h200", mode="eager").kernels
    issue = 19_267_584 * 223.8 / (128 * 132 * 1.83e9)
    assert k.expected.issue_s == pytest.approx(issue, rel=1e-6) == pytest.approx(139.5e-6, rel=1e-3)
    assert dict(k.expected.gap)["issue"] > 0.8 * issue          # the gap names it
    # measured on an H200 (bench/measured/h200-2026-12-04.json): 182.4 us; a stream of its
    # 77 MB, what it was priced at before, 21.6 us
    assert 0.7 < k.expected.device_s / 182.4e-6 < 1.0
    # cuDNN's instead: channels-last, or fp16 with 32+ channels and a 3x3 filter; fp16 with 16
    # channels stays PyTorch's (16 x 56 x 56 x 64 outputs at the same 223.8 instructions)
    def issue(x, w):
        conv = fn_module(lambda x, w: torch.nn.functional.conv2d(x, w, padding=1,
                                                                 groups=x.shape[1]))
        (k,) = fxroof.analyze(conv, (x, w), chip="h200", mode="eager").kernels
        return k.expected.issue_s
    assert issue(x.contiguous(memory_format=torch.channels_last), w) == 0
    assert issue(x.half(), w.half()) == 0
    few = meta(64, 16, 56, 56, dtype=torch.float16), meta(16, 1, 3, 3, dtype=torch.float16)
    assert issue(*few) == pytest.approx(64 * 16 * 56 * 56 * 223.8 / (128 * 132 * 1.83e9))
    # at stride 2, PyTorch keeps cuDNN for the shapes its benchmarks favoured
    # (check_cudnn_depthwise_workload_with_filter): a batch of 64 over 96 channels of 56 x 56
    # runs its own kernel (under 256 channels), over 512 channels cuDNN; one image, cuDNN
    def strided(n, c, hw):
        conv = fn_module(lambda x, w: torch.nn.functional.conv2d(x, w, stride=2, padding=1,
                                                                 groups=c))
        x, w = meta(n, c, hw, hw, dtype=torch.float16), meta(c, 1, 3, 3, dtype=torch.float16)
        (k,) = fxroof.analyze(conv, (x, w), chip="h200", mode="eager").kernels
        return k.expected.issue_s
    assert strided(64, 96, 56) == pytest.approx(64 * 96 * 28 * 28 * 223.8 / (128 * 132 * 1.83e9))
    assert strided(64, 512, 14) == 0 and strided(1, 96, 56) == 0
    assert strided(64, 256, 28) == 0 and strided(64, 256, 14) > 0     # 256 only from 28 wide
    # its backward, PyTorch's two kernels: the input's gradient at the forward's 223.8 per input
    # element (19,267,584 x 223.8 = 4.312e9), the filter's 137 / 4 = 34.25 a step per tap and
    # output position, a warp's 32 lanes at a time: 96 x 9 taps x 64 images x 3,136 positions
    # (98 steps of 32) x 34.25 = 5.939e9; 1.0251e10 / 3.092e13 = 331.5 us
    def backward(grad, x, w):
        return torch.ops.aten.convolution_backward.default(
            grad, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 96, [True, True, False])[:2]
    (k,) = fxroof.analyze(fn_module(backward), (x, x, w), chip="h200", mode="eager").kernels
    both = 19_267_584 * 223.8 + 96 * 9 * 64 * 3136 * 137 / 4
    assert k.expected.issue_s == pytest.approx(both / (128 * 132 * 1.83e9), rel=1e-6)
    assert k.expected.issue_s == pytest.approx(331.5e-6, rel=1e-3)
    # a training step's first layer asks for the filter's gradient only (its input is data)
    layer = torch.nn.Conv2d(96, 96, 3, padding=1, groups=96, bias=False).to("meta", torch.bfloat16)
    step = fxroof.analyze(layer, (x,), chip="h200", mode="eager", train=True, optimizer="sgd")
    (k,) = [k for k in step.kernels if k.nodes[0].startswith("convolution_backward")]
    assert k.expected.issue_s == pytest.approx(96 * 9 * 64 * 3136 * 34.25 / 3.092e13, rel=1e-3)
    # compiled, a convolution graph Inductor turns channels-last hands the convolutions to cuDNN
    # (fuse/layout.py): a stack of depthwise and 1x1 convolutions, as MobileNet's
    net = torch.nn.Sequential(torch.nn.Conv2d(96, 96, 3, padding=1, groups=96),
                              torch.nn.Conv2d(96, 96, 1)).to("meta", torch.bfloat16)
    from fxroof.fuse.layout import channels_last_convs
    from fxroof.graph.capture import capture
    assert channels_last_convs(capture(net, (x,)).gm, training=False)
    compiled = fxroof.analyze(net, (x,), chip="h200", mode="compiled")
    assert all(k.expected.issue_s == 0 for k in compiled.kernels)
    assert any(k.expected.issue_s > 0 for k in fxroof.analyze(net, (x,), chip="h200",
                                                              mode="eager").kernels)
    # a CPU runs oneDNN's: no issue part
    (k,) = fxroof.analyze(dwconv, (x.float(), w.float()), chip="cpu", mode="eager").kernels
    assert k.expected.issue_s == 0


def _only_kernel(fn, args, chip_name="h200", mode="eager"):
    (k,) = [k for k in fxroof.analyze(fn_module(fn), args, chip=chip_name, mode=mode).kernels
            if k.category != "view"]
    return k


H200_ISSUE = 128 * 132 * 1.83e9      # thread instructions a second: 4 schedulers x 32, 132 SMs


def test_softmax_on_cuda_issues_its_instructions_per_element_and_per_thread():
    # bf16 softmax over rows of 1,024: PyTorch's persistent kernel, a warp a row, each thread
    # 41 instructions of its own plus 38 an element of the row padded to a power of two (SASS,
    # sm_90): 16,384 x 32 threads x 41 + 16,384 x 1,024 x 38 = 659,030,016
    k = _only_kernel(lambda x: torch.softmax(x, -1), (meta(16384, 1024),))
    assert k.expected.issue_s == pytest.approx(659_030_016 / H200_ISSUE, rel=1e-6)
    assert k.expected.issue_s == pytest.approx(21.3e-6, rel=2e-3)
    # its bytes stream in 8 us; measured on an H200 (bench/measured/h200-2026-12-04.json):
    # 31.5 us, where the bytes and waits alone gave 19.1 (0.61x)
    assert 0.7 < k.expected.device_s / 31.5e-6 < 1.0
    assert dict(k.expected.gap)["issue"] > 0
    # rows of 32,000: a block of 1,024 threads a row, 170 each besides 38 an element:
    # 1,024 x (1,024 x 170 + 32,000 x 38) = 1,423,441,920; measured 81.0 us (0.45x before)
    k = _only_kernel(lambda x: torch.softmax(x, -1), (meta(1024, 32000),))
    assert k.expected.issue_s == pytest.approx(1_423_441_920 / H200_ISSUE, rel=1e-6)
    assert 0.55 < k.expected.device_s / 81.0e-6 < 1.0
    # log_softmax has no exponential in its write pass: 19 an element in fp32; rows of 2,048
    # fp32 (8 KiB) take the block kernel, 1,024 threads: 64 x (1,024 x 170 + 2,048 x 19)
    k = _only_kernel(lambda x: torch.log_softmax(x, -1), (meta(64, 2048, dtype=torch.float32),))
    assert k.expected.issue_s == pytest.approx(64 * (1024 * 170 + 2048 * 19) / H200_ISSUE,
                                               rel=1e-6)
    # a row of 100 pads to 128: two rows a warp of 32 threads, 50,000 warps for 100,000 rows
    k = _only_kernel(lambda x: torch.softmax(x, -1), (meta(100_000, 100),))
    assert k.expected.issue_s == pytest.approx(
        (50_000 * 32 * 41 + 100_000 * 128 * 38) / H200_ISSUE, rel=1e-6)
    # PyTorch's spatial kernel (a softmax over another dimension) and fp64 are not counted
    assert _only_kernel(lambda x: torch.softmax(x, 0), (meta(1024, 4096),)).expected.issue_s == 0
    assert _only_kernel(lambda x: torch.softmax(x, -1),
                        (meta(1024, 4096, dtype=torch.float64),)).expected.issue_s == 0
    # compiled, the softmax is Inductor's own kernel: not PyTorch's instructions
    assert _only_kernel(lambda x: torch.softmax(x, -1), (meta(1024, 32000),),
                        mode="compiled").expected.issue_s == 0
    # on a CPU, or an AMD GPU, nothing is issued this way
    assert _only_kernel(lambda x: torch.softmax(x, -1), (meta(1024, 32000),),
                        chip_name="cpu").expected.issue_s == 0
    assert _only_kernel(lambda x: torch.softmax(x, -1), (meta(1024, 32000),),
                        chip_name="mi300x").expected.issue_s == 0


def test_layer_norm_on_cuda_issues_its_instructions_and_short_rows_pay_per_thread():
    # bf16 layer norm with weight and bias over rows of 4,096: a block of 128 threads a row,
    # each 250 instructions of its own, and 29.5 an element (Welford's pass 17.75, the
    # normalising pass 11.75): 8,192 x (128 x 250 + 4,096 x 29.5) = 1,251,999,744
    ln = torch.nn.LayerNorm(4096).to("meta", torch.bfloat16)
    (k,) = fxroof.analyze(ln, (meta(8192, 4096),), chip="h200", mode="eager").kernels
    assert k.expected.issue_s == pytest.approx(1_251_999_744 / H200_ISSUE, rel=1e-6)
    # measured on an H200: 55.4 us (0.72x before: its bytes and waits alone)
    assert 0.9 < k.expected.device_s / 55.4e-6 < 1.1
    # a row of 96 channels (ConvNeXt's first stage) is mostly the threads' own instructions:
    # 128 x 250 = 32,000 a row against 96 x 29.5 = 2,832
    short = torch.nn.LayerNorm(96).to("meta", torch.bfloat16)
    (k,) = fxroof.analyze(short, (meta(1000, 96),), chip="h200", mode="eager").kernels
    assert k.expected.issue_s == pytest.approx(1000 * (32000 + 2832) / H200_ISSUE, rel=1e-6)
    # an RTX 3090 streams 936 GB/s for 17.8 T instructions a second: the bytes still bound it
    (k,) = fxroof.analyze(ln, (meta(8192, 4096),), chip="rtx-3090", mode="eager").kernels
    assert 0 < k.expected.issue_s < k.expected.memory_s and k.regime == "memory"
    # a row no multiple of 4 runs PyTorch's other kernels, not counted
    odd = torch.nn.LayerNorm(4095).to("meta", torch.bfloat16)
    (k,) = fxroof.analyze(odd, (meta(64, 4095),), chip="h200", mode="eager").kernels
    assert k.expected.issue_s == 0


def test_an_activation_on_cuda_issues_its_functors_instructions_and_adds_them_to_its_bytes():
    # bf16 GELU (erf) over 2^26 elements: PyTorch's vectorized kernel issues 30.6 instructions
    # an element (its functor's SASS, sm_90, with its share of the 16-byte vector's loads and
    # stores): 67,108,864 x 30.6 = 2.0535e9, 66.4 us on an H200
    n = 2 ** 26
    k = _only_kernel(torch.nn.functional.gelu, (meta(n),))
    assert k.expected.issue_s == pytest.approx(n * 30.6 / H200_ISSUE, rel=1e-6)
    assert k.expected.issue_s == pytest.approx(66.4e-6, rel=2e-3)
    # its 268 MB stream at 0.918 of 4.8 TB/s: 60.9 us, with its loads' waits 63.9 us
    stream = 2 * n * 2 / (0.918 * 4.8e12)
    assert stream < k.expected.memory_s < 1.06 * stream
    # issue and memory share the schedulers' slots: they add as a 2-norm, 92.1 us, plus the
    # kernel's fixed 1 us; measured on an H200 (bench/measured/h200-2026-12-04.json) 87.2 us,
    # where the bytes alone gave 64.9 (0.74x)
    work = (k.expected.issue_s ** 2 + k.expected.memory_s ** 2) ** 0.5
    assert k.expected.device_s == pytest.approx(work + 1e-6, rel=1e-6)
    assert 0.95 < k.expected.device_s / 87.2e-6 < 1.15
    assert dict(k.expected.gap)["overlap"] > 0.25 * stream       # the gap names the overlap
    # fp32 SiLU over 2^24: 25 an element; measured 33.8 us (0.94x by its bytes)
    k = _only_kernel(torch.nn.functional.silu, (meta(2 ** 24, dtype=torch.float32),))
    assert k.expected.issue_s == pytest.approx(2 ** 24 * 25.0 / H200_ISSUE, rel=1e-6)
    assert 0.9 < k.expected.device_s / 33.8e-6 < 1.15
    # the tanh form of GELU, and the in-place forms, take their functors' counts
    k = _only_kernel(lambda x: torch.nn.functional.gelu(x, approximate="tanh"), (meta(n),))
    assert k.expected.issue_s == pytest.approx(n * 27.0 / H200_ISSUE, rel=1e-6)
    # the product's kernel, then the in-place sigmoid's
    report = fxroof.analyze(fn_module(lambda x: torch.sigmoid_(x * 2)), (meta(n),),
                            chip="h200", mode="eager")
    assert sorted(round(k.expected.issue_s * H200_ISSUE) for k in report.kernels) == \
        [0, round(n * 24.8)]
    # a training step's GELU gradient: dy * (cdf + x * pdf), an erf and an exponential, 44.9
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(),
                              torch.nn.Linear(256, 64)).to("meta", torch.bfloat16)
    step = fxroof.analyze(mlp, (meta(8192, 64),), chip="h200", mode="eager", train=True,
                          optimizer="sgd")
    (grad,) = [k for k in step.kernels if k.nodes[0].startswith("gelu_backward")]
    assert grad.expected.issue_s == pytest.approx(8192 * 256 * 44.9 / H200_ISSUE, rel=1e-6)
    # a training dropout draws 4 numbers a loop step with Philox's 10 rounds: 33 an element
    drop = _only_kernel(lambda x: torch.nn.functional.dropout(x, 0.1, training=True),
                        (meta(4096, 1024),))
    assert drop.expected.issue_s == pytest.approx(4096 * 1024 * 33.0 / H200_ISSUE, rel=1e-6)
    # compiled, Inductor's kernel computes the same erf: the GELU's count in the fused kernel
    k = _only_kernel(lambda x: torch.nn.functional.gelu(x) * 2, (meta(n),), mode="compiled")
    assert k.expected.issue_s == pytest.approx(n * 30.6 / H200_ISSUE, rel=1e-6)
    # fp64 and integer functors are left to their bytes; an RTX 3090 streams 936 GB/s for
    # 17.8 T instructions a second: bytes bound it
    assert _only_kernel(torch.nn.functional.gelu,
                        (meta(4096, dtype=torch.float64),)).expected.issue_s == 0
    k = _only_kernel(torch.nn.functional.gelu, (meta(n),), chip_name="rtx-3090")
    assert 0 < k.expected.issue_s < 0.5 * k.expected.memory_s and k.regime == "memory"


def test_a_kernel_issues_its_instructions_on_the_sms_its_blocks_occupy():
    # 1.28e6 thread instructions on a GPU of 100 SMs at 1 GHz, 128 a clock each: 0.1 us over
    # the whole chip; a grid of 10 blocks (one a token, as sarathi-serve's kernels launch)
    # issues on 10 SMs, 1 us; a grid of 1,000 blocks on all 100
    from fxroof.chips.launch import Launch
    chip = gpu(sm_count=100, clock_hz=1e9, sm_threads=2048, memory_latency_s=500e-9)
    floor = Timing(0, 1e-9, 0, 0)
    assert expected(chip, floor, "pointwise", issued=1.28e6).issue_s == pytest.approx(0.1e-6)
    few = expected(chip, floor, "pointwise", issued=1.28e6, launch=Launch(10, 1024))
    assert few.issue_s == pytest.approx(1e-6)
    many = expected(chip, floor, "pointwise", issued=1.28e6, launch=Launch(1000, 128))
    assert many.issue_s == pytest.approx(0.1e-6)


def test_the_latency_floor_adds_to_the_work_and_reads_as_overhead():
    # a 0.2 us copy on a chip whose kernels take 3 us more: 3.2 us, above the 2 us launch
    e = expected(gpu(kernel_floor_s=3e-6), Timing(0, 0.2e-6, 0, 2e-6), "copy")
    assert e.time_s == pytest.approx(3.2e-6)
    assert e.regime == "overhead"                  # its fixed time, not its bytes, dominates
    # behind a 10 us eager dispatch the device's 3.2 us are hidden
    hidden = expected(gpu(kernel_floor_s=3e-6), Timing(0, 0.2e-6, 0, 10e-6), "copy")
    assert hidden.time_s == pytest.approx(10e-6)


def test_a_small_all_reduce_pays_nccls_base_latency():
    # 16 KiB over 8 ranks on an H100: 28,672 B sent, 14 steps. LL protocol: 6.6 us base
    # + 14 x 0.9 us + 28,672 B / (450e9 x 0.81 x 0.5) = 6.6 + 12.6 + 0.157 = 19.36 us
    sent, steps = 28_672, 14
    floor = Timing(0, 0, comm_time(H100, sent, steps), 0)
    e = expected(H100, floor, "collective", comm_bytes=sent, comm_steps=steps)
    assert e.comm_s == pytest.approx(6.6e-6 + 14 * 0.9e-6 + sent / (450e9 * 0.81 * 0.5))
    assert e.latency_s == 0                       # NCCL's base latency is the kernel's fixed time
    assert comm_time(H100, sent, steps) == pytest.approx(14 * 0.9e-6 + sent / 225e9)  # the floor


def test_a_large_all_reduce_over_eight_h200s_reduces_in_the_switch():
    # 8 GiB over 8 ranks. Ring: 14/8 x 8 GiB = 15.03 GB sent at 0.81 of 450 GB/s = 41.2 ms (+ 14
    # steps of 5 us + 8.4 us). NVLS: 9/8 x 8 GiB = 9.66 GB at 0.85 of that = 31.2 ms + 25 us,
    # the faster: 0.99x of the 31.77 ms nccl-tests measured on such a node (Bekman, Machine
    # Learning Engineering: 473.1 GB/s bus bandwidth)
    h200, size = chip("h200"), 8 * 2**30
    ring, nvls = 14 * size // 8, 9 * size // 8
    floor = comm_time(h200, ring, 14, nvls_bytes=nvls)
    assert floor == pytest.approx(25e-6 + nvls / 450e9)      # the floor takes NVLS too
    e = expected(h200, Timing(0, 0, floor, 0), "collective", comm_bytes=ring, comm_steps=14,
                 nvls_bytes=nvls)
    assert e.comm_s == pytest.approx(25e-6 + nvls / (450e9 * 0.81 * 0.85))
    assert e.algorithm == "NVLS"                             # what a report names it
    # without a switch that reduces (an A100's NVSwitch), the ring
    a100 = chip("a100-80gb")
    assert a100.nvls_efficiency == 0
    assert comm_time(a100, ring, 14, nvls_bytes=nvls) == pytest.approx(14 * 5e-6 + ring / 300e9)
    # a small all-reduce stays on the LL ring, whose latency NVLS's 25 us cannot beat
    small = comm_time(h200, 28_672, 14, nvls_bytes=18_432)
    assert small == pytest.approx(14 * 0.9e-6 + 28_672 / 225e9)
    assert expected(h200, Timing(0, 0, small, 0), "collective", comm_bytes=28_672, comm_steps=14,
                    nvls_bytes=18_432).algorithm == "ring LL"


def test_a_mid_size_nvls_all_reduce_pays_its_pipeline_fill():
    # NCCL's chunk rule (src/enqueue.cc) for 8 ranks x 16 channels = 128 operations: 8 MiB is
    # under 64 x 128 x 128 KiB and under 8 x 128 x 64 KiB, not under 2 x 128 x 32 KiB: 32 KiB
    # chunks, 8 MiB / (128 x 32 KiB) = 2 rounds through a pipeline of 3 stages: (2 + 2) / 2 = 2x
    # the bytes' time. 1 GiB: 128 KiB chunks, 64 rounds: 66/64.
    assert nvls_chunk(8 * 2**20, 128) == 32 * 1024 and nvls_fill(8 * 2**20, 8, 16) == 2.0
    assert nvls_chunk(2**30, 128) == 128 * 1024 and nvls_fill(2**30, 8, 16) == 66 / 64
    assert nvls_fill(8 * 2**20, 8, 0) == 1.0                 # no channel figure: no fill
    # on an H200 node: 9/8 x 8 MiB = 9.44 MB at 0.81 x 0.85 of 450 GB/s = 30.5 us, twice, + 25 us
    # = 85.9 us, 1.07x of the 80.6 us nccl-tests measured (Bekman, Machine Learning Engineering:
    # 182.0 GB/s bus bandwidth at 8 MiB); without the fill 55.5 us, 0.69x
    h200, size = chip("h200"), 8 * 2**20
    ring, nvls = 14 * size // 8, 9 * size // 8
    e = expected(h200, Timing(0, 0, comm_time(h200, ring, 14, nvls_bytes=nvls, ranks=8), 0),
                 "collective", comm_bytes=ring, comm_steps=14, nvls_bytes=nvls, comm_ranks=8)
    assert e.algorithm == "NVLS"
    assert e.comm_s == pytest.approx(25e-6 + 2 * nvls / (450e9 * 0.81 * 0.85))
    assert e.comm_s / (size * 14 / 8 / 182.03e9) == pytest.approx(1.07, abs=0.01)


def test_an_all_reduce_past_one_server_is_paced_by_its_network():
    # 1 GB over 16 A100s, two DGX A100s: 2 x 15/16 GB = 1.875 GB sent, 30 steps, 2 of them
    # between the servers. Within a server the ring would reach 0.81 of 300 GB/s (243 GB/s);
    # the servers' eight 200 Gb/s NICs carry 200 GB/s at 0.96: 192 GB/s, the slower.
    # Ring: 8.4 us + 28 x 5 us + 2 x 14 us + 1.875e9 / 192e9 = 9.942 ms. Tree: 8.4 us + 2 x (7 x
    # 5 us + 1 x 14 us) + 2e9 / (0.92 x 192e9) = 11.43 ms: the ring
    a100, sent, steps = chip("a100-80gb"), 1_875_000_000, 30
    assert (a100.node_gpus, a100.network_bw, a100.nodes(16), a100.nodes(8)) == (8, 200e9, 2, 1)
    floor = comm_time(a100, sent, steps, ranks=16)
    assert floor == pytest.approx(30 * 5e-6 + sent / 300e9)      # the floor: the links alone
    e = expected(a100, Timing(0, 0, floor, 0), "collective", comm_bytes=sent, comm_steps=steps,
                 comm_ranks=16)
    assert e.algorithm == "ring Simple"
    assert e.comm_s == pytest.approx(8.4e-6 + 28 * 5e-6 + 2 * 14e-6 + sent / 192e9)
    # the same bytes within one server: NVLink's 243 GB/s, no network step
    within = expected(a100, Timing(0, 0, comm_time(a100, sent, 14, ranks=8), 0), "collective",
                      comm_bytes=sent, comm_steps=14, comm_ranks=8)
    assert within.comm_s == pytest.approx(8.4e-6 + 14 * 5e-6 + sent / 243e9)
    # 16 MB over 1,024 ranks (128 servers): the ring's 2,046 steps (254 of them between
    # servers) cost 11.5 ms of latency, the tree's 2 x (7 x 5 + 7 x 14) us 0.27 ms:
    # 8.4 us + 266 us + 2 x 16e6 / (0.92 x 192e9) = 0.455 ms
    size, n = 16_000_000, 1024
    sent = 2 * (n - 1) * size // n
    e = expected(a100, Timing(0, 0, comm_time(a100, sent, 2 * (n - 1), ranks=n), 0),
                 "collective", comm_bytes=sent, comm_steps=2 * (n - 1), comm_ranks=n)
    assert e.algorithm == "tree"
    assert e.comm_s == pytest.approx(8.4e-6 + 2 * (7 * 5e-6 + 7 * 14e-6)
                                     + 2 * size / (0.92 * 192e9))
    # a chip with no server figures prices any group over its links, as before
    assert chip("l40s").nodes(64) == 1


def test_a_data_parallel_group_across_a_tensor_parallel_mesh_has_one_nic_a_rank():
    # tp=8 within each DGX A100, dp=2 across two: the data-parallel group's ranks are 8 apart,
    # one a server, and the eight such groups all-reduce at once, each over its own 200 Gb/s
    # NIC: 200 GB/s x 1/8 x 0.96 = 24 GB/s. 1 GB over 2 ranks: 1 GB sent, 2 steps, both
    # between the servers: 8.4 us + 2 x 14 us + 1e9 / 24e9 = 41.70 ms (NVLink's 243 GB/s would
    # make it 4.1 ms)
    a100, sent = chip("a100-80gb"), 1_000_000_000
    assert (a100.ranks_a_server(2, 8), a100.nodes(2, 8), a100.nodes(2, 1)) == (1, 2, 1)
    assert (a100.ranks_a_server(4, 2), a100.nodes(16, 2)) == (4, 4)   # tp=2: 4 a server
    e = expected(a100, Timing(0, 0, comm_time(a100, sent, 2, ranks=2), 0), "collective",
                 comm_bytes=sent, comm_steps=2, comm_ranks=2, comm_stride=8)
    assert e.algorithm == "ring Simple"
    assert e.comm_s == pytest.approx(8.4e-6 + 2 * 14e-6 + sent / 24e9)


def test_an_all_to_all_past_one_server_sends_most_of_its_bytes_through_the_nics():
    from fxroof.cost.formulas.registry import FORMULAS, OpCall
    op = torch.ops._c10d_functional.all_to_all_single.default
    buffer = torch.empty(16 * 1024, dtype=torch.float16, device="meta")
    cost = FORMULAS[op.overloadpacket].fn(OpCall(op, (buffer, [1024] * 16, [1024] * 16, "gone"),
                                                 {}, buffer))
    assert cost.comm_exchange and cost.comm_ranks == 16 and cost.comm_steps == 15
    # a 1 GB buffer over 16 A100s in two DGX A100s: each rank sends 1/16 of it to each other
    # rank, 7/16 to its own server's over NVLink (0.4375 GB at 243 GB/s: 1.80 ms) and 8/16
    # through the NICs, each GPU's 1/8 of 200 GB/s at 0.96 (0.5 GB at 24 GB/s: 20.83 ms), the
    # two at once; 15 steps, 8 of them between servers: 8.4 us + 7 x 5 us + 8 x 14 us + 20.83 ms
    a100, sent = chip("a100-80gb"), 15 * 1_000_000_000 / 16
    e = expected(a100, Timing(0, 0, comm_time(a100, sent, 15, ranks=16), 0), "collective",
                 comm_bytes=sent, comm_steps=15, comm_ranks=16, comm_exchange=True)
    assert e.algorithm == "all-to-all"
    assert e.comm_s == pytest.approx(8.4e-6 + 7 * 5e-6 + 8 * 14e-6 + 0.5e9 / 24e9)
    # priced as a ring it came out 4.9 ms: the slower of link and network, 192 GB/s
    ring = expected(a100, Timing(0, 0, comm_time(a100, sent, 15, ranks=16), 0), "collective",
                    comm_bytes=sent, comm_steps=15, comm_ranks=16)
    assert ring.comm_s == pytest.approx(8.4e-6 + 14 * 5e-6 + 1 * 14e-6 + sent / 192e9)


def test_between_interpolates_the_parts_of_a_kernel_affine_in_a_size():
    # a memory-bound kernel whose bytes grow: halfway between, the expected time is that of
    # the kernel with the halfway bytes
    c = chip("a100-80gb")
    a, b = (expected(c, Timing(1e-6, m, 0, 2e-6), "pointwise") for m in (10e-6, 30e-6))
    mid = expected(c, Timing(1e-6, 20e-6, 0, 2e-6), "pointwise")
    assert a.between(b, 0.5).time_s == pytest.approx(mid.time_s)


# --- on real chips, through analyze ---

def test_a_big_bf16_matmul_on_h100_by_hand():
    n = 8192
    r = fxroof.analyze(fn_module(torch.mm), (meta(n, n), meta(n, n)), chip="h100-sxm")
    assert len(r.kernels) == 1
    c, m = 2 * n**3 / 989.4e12, 3 * n * n * 2 / 3.35e12    # 1.1113 ms, 0.1202 ms: the floor
    assert r.summary.floor_s == pytest.approx(c)
    # 64x64 tiles: 16,384 tiles fill the SMs (no split), ceil(124.1) = 125 waves of 132
    # (1.0071; 128x128: 4,096 tiles, 32 waves, 1.0313); 0.803 of the peak; memory as a copy of
    # the 403 MB streams: 134.0 us at 0.897 of 3.35 TB/s and the waits of 94 waves of 132 x 16
    # blocks moving 16 bytes a thread (354 + 245 ns a wave, 56.3 us), as a 2-norm: 145.4 us;
    # overlapped at 0.95; the 1 us kernel floor:
    # 1.3937 + 0.0073 + 0.001 = 1.4020 ms
    q = 125 * 132 / 16_384
    c_e, m_e = c * q / 0.803, ((m / 0.897) ** 2 + (94 * 599e-9) ** 2) ** 0.5
    assert m_e == pytest.approx(145.4e-6, rel=1e-3)
    assert r.time_s == pytest.approx(c_e + m_e - 0.95 * m_e + 1e-6)
    assert r.summary.roofline_fraction == pytest.approx(c / r.time_s)   # 0.80 of the roofline
    d = r.to_dict()
    assert d["floor_s"] == pytest.approx(c) and d["time_s"] == pytest.approx(r.time_s)
    assert d["gap"]["matmul"] == pytest.approx(c * q * (1 / 0.803 - 1))
    kd = d["kernels"][0]
    assert kd["floor"]["compute_s"] == pytest.approx(c) and kd["compute_s"] == pytest.approx(c_e)
    assert kd["regime"] == kd["floor"]["regime"] == "compute"


def test_an_fp32_gemm_runs_on_the_cuda_cores_at_their_own_share():
    # PyTorch's matmul default keeps TF32 off: an fp32 product runs on the CUDA cores, whose
    # SGEMMs reach 0.70 of an RTX 4090's 82.6 TFLOP/s fp32 peak (58 measured), not the 0.99 its
    # tensor cores' GEMMs reach of theirs. 8,192^3 x 2 = 1.0995 TFLOP: 13.31 ms at the peak
    n = 8192
    a = meta(n, n, dtype=torch.float32)
    with matmul_tf32(False):
        (k,) = fxroof.analyze(fn_module(torch.mm), (a, a), chip="rtx-4090").kernels
    # with TF32 on, the same product runs on the tensor cores at their share of TF32's peak
    with matmul_tf32(True):
        (tf,) = fxroof.analyze(fn_module(torch.mm), (a, a), chip="rtx-4090").kernels
    assert k.expected.tiled_s == pytest.approx(2 * n**3 / 82.6e12, rel=0.02)  # whole waves
    assert k.expected.compute_s == pytest.approx(k.expected.tiled_s / 0.70)
    assert tf.expected.compute_s == pytest.approx(tf.expected.tiled_s / 0.99)
    # a bf16 product on a GPU without bf16 units (a V100) keeps the tensor share, emulated
    v = fxroof.analyze(fn_module(torch.mm), (meta(n, n),) * 2, chip="v100").kernels[0].expected
    assert v.compute_s == pytest.approx(v.tiled_s / 0.752)


def test_the_report_says_when_tf32_would_run_fp32_products_faster():
    # TF32 off (PyTorch's matmul default): the 4090's CUDA cores reach 0.70 x 82.6 = 57.8
    # TFLOP/s, its TF32 tensor cores 0.99 x 82.6 = 81.8 (the GeForce TF32 peak is the fp32
    # one, its share higher). Said where compute-bound fp32 products hold 2% of the time or
    # more: a 2,048 x 4,096 x 4,096 product (~500 FLOP/B) is all of it, a 4 x 8 one (bound by
    # its launch) none; a V100 has no TF32 units, so nothing to say
    big = (meta(2048, 4096, dtype=torch.float32), meta(4096, 4096, dtype=torch.float32))
    tiny = (meta(4, 8, dtype=torch.float32), meta(8, 8, dtype=torch.float32))
    with matmul_tf32(False):
        notes = fxroof.analyze(fn_module(torch.mm), big, chip="rtx-4090").notes
        small = fxroof.analyze(fn_module(torch.mm), tiny, chip="rtx-4090").notes
        v100 = fxroof.analyze(fn_module(torch.mm), big, chip="v100").notes
    with matmul_tf32(True):
        on = fxroof.analyze(fn_module(torch.mm), big, chip="rtx-4090").notes
    (note,) = [n for n in notes if n.startswith("fp32 matrix products")]
    assert note.startswith("fp32 matrix products (100% of the predicted kernel time) run on "
                           "rtx-4090's CUDA cores, whose GEMMs reach 57.8 TFLOP/s")
    assert note.endswith("TF32 tensor cores, 81.8 TFLOP/s") and "allow_tf32 = True" in note
    for other in (small, v100, on):
        assert not any(n.startswith("fp32 matrix products") for n in other)


def test_a_small_fp16_gemm_on_a100_streams_from_every_sm_by_hand():
    # Llama-2-7B's QKV projection at tp8 on 128 tokens: (128 x 4096) @ (4096 x 1536), fp16
    with torch.device("meta"):
        qkv = torch.nn.Linear(4096, 1536, bias=False).half()
    r = fxroof.analyze(qkv, (meta(128, 4096, dtype=torch.float16),), chip="a100-80gb")
    (k,) = r.kernels
    c = 2 * 128 * 1536 * 4096 / 312e12                                # 5.162 us
    m = 2 * (128 * 4096 + 4096 * 1536 + 128 * 1536) / 2039e9          # 14.0 MB: 6.878 us
    assert k.timing.device_s == pytest.approx(m)
    # 64x64 tiles: 2 x 24 = 48 tiles, fewer than the 108 SMs: K splits in 108 // 48 = 2 parts
    # of 32 k-blocks, 96 units in one wave (1.125; 128x128: 12 tiles in 9 parts of 8, 108 units,
    # 1.125 too): the weights stream from every SM
    q = 108 * 64 * 64 * 32 * 64 / (128 * 1536 * 4096)                # 1.125
    assert tiling((1, 128, 1536, 4096), 108, "matmul").factor == pytest.approx(q)
    # memory as a copy of the 14.0 MB streams: 7.694 us at 0.894 of the bandwidth, and 876,544
    # threads of 16 bytes in 6,848 blocks, 4 waves of 108 x 16, 390 + 245 ns each (2.54 us), as
    # a 2-norm: 8.102 us (above one round trip and the bytes, 8.084); compute at 0.869
    # overlapped at 0.95, the 1 us floor: 8.102 + 0.05 x 6.68 + 1 = 9.44 us. Then the kernel
    # summing the 2 parts (64x64 ties 128x128's 9 parts; the fewer win): it reads 2 fp32
    # partials of the 128 x 1536 output and writes it in fp16, 1.97 MB: 1.079 us at the copy
    # share, a 390 ns round trip and its 1 us floor, 2.469 us. 11.90 us on the chip
    assert tiling((1, 128, 1536, 4096), 108, "matmul").splits == 2
    c_e, m_e = c * q / 0.869, ((m / 0.894) ** 2 + (4 * 635e-9) ** 2) ** 0.5
    assert m_e == pytest.approx(8.102e-6, rel=1e-3)
    reduction = 128 * 1536 * (4 * 2 + 2) / (2039e9 * 0.894) + 390e-9 + 1e-6
    assert k.expected.reduction_s == pytest.approx(reduction) == pytest.approx(2.469e-6, rel=1e-3)
    assert k.expected.device_s == pytest.approx(m_e + 0.05 * c_e + 1e-6 + reduction)
    assert dict(k.expected.gap)["reduction"] == pytest.approx(reduction)


def test_cpu_chips_keep_expected_equal_to_the_floor():
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
    for mode in ("eager", "compiled"):
        r = fxroof.analyze(mlp, (torch.randn(8, 64),), chip="cpu", mode=mode)
        for k in r.kernels:
            assert k.time_s == k.floor_s and k.regime == k.timing.regime
            assert all(s == 0 for _, s in k.expected.gap)
        assert r.summary.roofline_fraction == 1.0


def test_the_floor_is_the_roofline_unchanged():
    # a large bf16 add on H100: 2 reads + 1 write of 2^28 bf16 at 3.35 TB/s = 480.8 us floor;
    # expected: 536.0 us of bytes at 0.897 of the bandwidth, and 524,288 blocks of 128 in 249
    # waves of 132 x 16, each a 354 ns round trip and 245 ns: 149.2 us waited; as a 2-norm
    # 556.4 us, plus 1 us
    n = 1 << 28
    r = fxroof.analyze(fn_module(torch.add), (meta(n), meta(n)), chip="h100-sxm")
    (k,) = r.kernels
    assert k.floor_s == pytest.approx(3 * n * 2 / 3.35e12)
    assert k.timing.memory_s == pytest.approx(3 * n * 2 / 3.35e12)
    compute = n / 67e12                          # 2^28 adds on the fp32 CUDA cores
    memory = ((3 * n * 2 / 3.35e12 / 0.897) ** 2 + (249 * (354e-9 + 245e-9)) ** 2) ** 0.5
    assert memory == pytest.approx(556.4e-6, rel=1e-3)
    assert r.time_s == pytest.approx(memory + 0.05 * compute + 1e-6)
    assert r.regime == "memory"


def test_grids_of_matrix_ops_in_the_node_rows():
    x = meta(4, 16, 64)
    r = fxroof.analyze(torch.nn.Sequential(torch.nn.Linear(64, 48)), (x,), chip="h100-sxm")
    assert [n.grid for n in r.nodes if n.category == "matmul"] == [(1, 64, 48, 64)]  # 4*16 rows
    conv = torch.nn.Conv2d(3, 32, 3, padding=1).to(torch.bfloat16)
    r = fxroof.analyze(conv, (meta(2, 3, 8, 8),), chip="h100-sxm")
    # implicit GEMM: 2 images x 64 pixels by 32 channels, K = 3 channels x 3 x 3 = 27
    assert [n.grid for n in r.nodes if n.category == "conv"] == [(1, 2 * 8 * 8, 32, 27)]
    depthwise = torch.nn.Conv2d(8, 8, 3, groups=8).to(torch.bfloat16)
    r = fxroof.analyze(depthwise, (meta(2, 8, 8, 8),), chip="h100-sxm")
    assert [n.grid for n in r.nodes if n.category == "conv"] == [()]   # not one GEMM
    assert "grid" not in r.to_dict()["nodes"][0]


def test_sdpa_runs_cudnns_attention_on_hopper_from_pytorch_2_11(monkeypatch):
    import torch

    from fxroof.chips.expected import attention_share, runs_cudnn_attention
    h100, a100 = chip("h100-sxm"), chip("a100-80gb")
    # sdp_utils.cpp puts cuDNN first on sm90 once cuDNN > 9.15.0: 2.11's bundled one is; a
    # build without cuDNN (CPU) is read by its release
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: False)
    monkeypatch.setattr(torch, "__version__", "2.11.0+cpu")
    assert runs_cudnn_attention(h100) and attention_share(h100) == h100.cudnn_attention_efficiency
    assert not runs_cudnn_attention(a100)                   # no cuDNN figure: FlashAttention-2
    assert attention_share(a100) == a100.attention_efficiency
    monkeypatch.setattr(torch, "__version__", "2.10.1")
    assert attention_share(h100) == h100.attention_efficiency
    # a build with cuDNN: its version decides, 9.15.0 no, 9.15.1 yes
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91500)
    assert not runs_cudnn_attention(h100)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91501)
    assert runs_cudnn_attention(h100)
    # the process turning the backend off prices FlashAttention-2
    was = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(False)
        assert attention_share(h100) == h100.attention_efficiency == 0.35
    finally:
        torch.backends.cuda.enable_cudnn_sdp(was)


def test_a_flash_kernels_products_follow_the_share_of_the_kernel_that_runs(monkeypatch):
    import torch

    # head size 128, long sequence: the products, apart from the exponentials, run at
    # 1 / (1 / share - reference) of the peak, reference the exponentials' time over the
    # products' at the peak (4 x 128 products a score against one exponential)
    from fxroof.chips.expected import ATTENTION_HEAD, exp_rate
    from fxroof.chips.timing import kernel_timing
    h100 = chip("h100-sxm")
    reference = h100.matrix_flops("bf16") / (4 * ATTENTION_HEAD * exp_rate(h100))
    grid, flops = (24, 4608, 128, 2 * 4608), 4 * 24 * 4608 * 4608 * 128   # (b x h, q, d, 2 keys)
    times = {}
    for on in (True, False):
        was = torch.backends.cuda.cudnn_sdp_enabled()
        monkeypatch.setattr(torch, "__version__", "2.13.0")
        try:
            torch.backends.cuda.enable_cudnn_sdp(on)
            floor = kernel_timing(h100, flops=flops, bytes_moved=4 * 24 * 4608 * 128 * 2,
                                  category="attention", dtype="bf16", overhead_s=0.0)
            times[on] = expected(h100, floor, "attention", grid, dtype="bf16",
                                 exponentials=24 * 4608 * 4608).products_s
        finally:
            torch.backends.cuda.enable_cudnn_sdp(was)
    # the same tiles and waves either way: the times stand as the two kernels' (1 / share - ref)
    assert times[False] / times[True] == pytest.approx((1 / 0.35 - reference)
                                                       / (1 / 0.638 - reference))
    assert times[False] / times[True] > 1.9           # cuDNN's about twice FlashAttention-2's
