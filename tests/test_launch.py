"""The memory latency a kernel's launch waits (Little's law), by hand arithmetic from the launch
rules PyTorch's and sarathi-serve's sources state (fxroof/chips/launch.py)."""
import pytest
import torch
from helpers import fn_module

import fxroof
from fxroof.chips import Chip, chip
from fxroof.chips.expected import expected
from fxroof.chips.launch import (TORCH_RELEASE, WAVE_OVERHEAD_S, Launch, eager_per_thread,
                                 elementwise, gather, latency_time, priced_as, row_per_block)
from fxroof.chips.timing import Timing
from fxroof.report.units import seconds

A100 = chip("a100-80gb")    # 108 SMs of 2,048 threads; 550 cycles at 1.41 GHz = 390 ns


def gpu(**figures) -> Chip:
    return Chip("g", "Test GPU", "gpu", {"fp32": 1e12}, vector_flops=1e12, mem_bw=1e9,
                mem_bytes=1e10, link_bw=1e9, link_latency_s=5e-6, launch_s=2e-6,
                dispatch_s=10e-6, **figures)


def meta(*shape, dtype=torch.float16):
    return torch.empty(*shape, dtype=dtype, device="meta")


def test_waves_of_blocks_times_rounds_by_hand():
    g = gpu(sm_count=4, sm_threads=1024, memory_latency_s=1e-6)
    # 512-thread blocks: 2 per SM, 8 at once; 10 blocks are 2 waves, each 3 rounds of 1 us and
    # the wave's own 245 ns
    assert WAVE_OVERHEAD_S == 245e-9
    assert latency_time(g, Launch(10, 512, 3)) == pytest.approx(2 * 3.245e-6)
    assert latency_time(g, Launch(8, 512, 3)) == pytest.approx(3.245e-6)
    # a chip without the figures waits nothing
    assert latency_time(gpu(sm_count=4), Launch(10, 512, 3)) == 0


def test_waits_and_streaming_add_as_a_two_norm():
    g = gpu(sm_count=4, sm_threads=1024, memory_latency_s=1e-6, bw_efficiency=0.5)
    # 1 us of bytes at half the bandwidth: 2 us streamed; 6.49 us waited (above): memory takes
    # sqrt(6.49^2 + 2^2) = 6.791 us, above the 3 us of one round trip and the bytes
    e = expected(g, Timing(0, 1e-6, 0, 0), "pointwise", launch=Launch(10, 512, 3))
    assert e.memory_s == pytest.approx(6.7912e-6, rel=1e-4)
    assert e.streamed_s == pytest.approx(2e-6)
    gap = dict(e.gap)
    assert gap["bandwidth"] == pytest.approx(1e-6)
    assert gap["occupancy"] == pytest.approx(6.7912e-6 - 2e-6, rel=1e-4)
    assert sum(s for _, s in e.gap) == pytest.approx(e.time_s - 1e-6)
    # 10 us of bytes and 6.49 us waited: sqrt(6.49^2 + 10^2) = 11.92 us, above the 11 us of the
    # round trip and the bytes
    e = expected(g, Timing(0, 5e-6, 0, 0), "pointwise", launch=Launch(10, 512, 3))
    assert e.memory_s == pytest.approx(11.922e-6, rel=1e-4)
    # one block, one round: 1.245 us waited against 1 us of round trip + 0.2 us of bytes: the
    # norm, 1.597 us
    e = expected(g, Timing(0, 0.1e-6, 0, 0), "pointwise", launch=Launch(1, 512, 1))
    assert e.memory_s == pytest.approx((1.245 ** 2 + 0.2 ** 2) ** 0.5 * 1e-6, rel=1e-4)
    # a chip without a latency figure: the bytes alone
    e = expected(gpu(bw_efficiency=0.5), Timing(0, 5e-6, 0, 0), "pointwise",
                 launch=Launch(10, 512, 3))
    assert e.memory_s == pytest.approx(10e-6) and dict(e.gap)["occupancy"] == 0


def test_launch_rules_by_hand():
    # PyTorch elementwise: 512 elements a block of 128 threads
    assert elementwise(4096) == Launch(8, 128, 1)
    # from PyTorch 2.7 its vectorized kernel gives a thread 8 (the wheels' CUDALoops.cuh: 2.6's
    # gives 8 only to ops of under 4 bytes in and out, 2.7's to every one): 1,024 a block
    assert [eager_per_thread(r) for r in ((2, 5), (2, 6), (2, 7), (2, 13))] == [4, 4, 8, 8]
    assert elementwise(4096, eager_per_thread((2, 7))) == Launch(4, 128, 1)
    with priced_as((2, 6)):
        assert eager_per_thread() == 4
        with priced_as((2, 8)):
            assert eager_per_thread() == 8
        assert eager_per_thread() == 4
    # sarathi's SiLU-and-multiply at 1 token, d = 28,672: 1 block of 1,024, 28 steps
    assert row_per_block(1, 28_672, 1024) == Launch(1, 1024, 28)
    # its RMSNorm over 4,096: two passes of 4 steps
    assert row_per_block(5, 4096, 1024, passes=2) == Launch(5, 1024, 8)
    # index_select, 16 indices of 4,096: 32 blocks of 128 = 4,096 threads cover a row in one
    # step; each index is a wait for the index, then one for its row: 32 rounds
    assert gather(A100, 16, 4096) == Launch(32, 128, 32)
    # 8,192 indices, as PyTorch 2.7 ran them: 8 blocks per SM (864), 110,592 threads over 33.5M
    # elements: 304 steps of 2
    assert gather(A100, 8192, 4096, 2, release=(2, 7)) == Launch(864, 128, 608)
    # from 2.8 a gather: a row of 8 KiB is 512 loads of 16 bytes, 2 blocks of 256 each; a thread
    # waits for its index, then its 16 bytes
    assert gather(A100, 8192, 4096, 2, release=(2, 8)) == Launch(16_384, 256, 2)
    # a 1 KiB row: 64 loads, one block rounded up to two warps
    assert gather(A100, 8192, 512, 2, release=(2, 8)) == Launch(8192, 64, 2)
    # a row of 100 fp16 (200 bytes, not a multiple of 16): the scatter-gather kernel, PyTorch's
    # elementwise launch (2.8's: 8 a thread), 819,200 elements in blocks of 1,024, index then
    # element
    assert gather(A100, 8192, 100, 2, release=(2, 8)) == Launch(800, 128, 2)
    # up to 16 indices the same kernel in both
    assert gather(A100, 16, 4096, 2, release=(2, 8)) == gather(A100, 16, 4096, 2, release=(2, 7))


def test_a_small_add_waits_one_latency_a_large_one_streams():
    # 4,096 fp16: 8 blocks, one wave, one round: 390 ns (550 cycles at 1.41 GHz) and the wave's
    # 245 ns; the 24.6 KB stream in 13.5 ns at 0.894 of 2,039 GB/s hardly adds
    wave = 390e-9 + 245e-9
    r = fxroof.analyze(fn_module(torch.add), (meta(4096), meta(4096)), chip="a100-80gb")
    (k,) = r.kernels
    streamed = 3 * 4096 * 2 / (2039e9 * 0.894)
    assert k.expected.streamed_s == pytest.approx(streamed)
    assert k.expected.memory_s == pytest.approx((wave ** 2 + streamed ** 2) ** 0.5)
    # 2^26 fp16 as PyTorch 2.6 launched it (eager), and as a compiled program's pointwise
    # kernel: 131,072 blocks in waves of 108 x 16 = 1,728: 76 waves = 48.3 us, against the
    # 220.9 us the bytes take: sqrt(48.3^2 + 220.9^2) = 226.1 us, 2.4% over the bytes
    n = 1 << 26
    streamed = 3 * n * 2 / (2039e9 * 0.894)

    def add_memory(release, mode="eager"):
        with priced_as(release):
            (k,) = fxroof.analyze(fn_module(torch.add), (meta(n), meta(n)), chip="a100-80gb",
                                  mode=mode).kernels
        return k.expected.memory_s
    assert add_memory((2, 6)) == pytest.approx(((76 * wave) ** 2 + streamed ** 2) ** 0.5)
    assert add_memory((2, 6)) == pytest.approx(226.1e-6, rel=1e-3)
    # from 2.7, eager, 8 a thread: 65,536 blocks, 38 waves = 24.1 us: sqrt(24.1^2 + 220.9^2)
    # = 222.2 us
    assert add_memory((2, 7)) == pytest.approx(((38 * wave) ** 2 + streamed ** 2) ** 0.5)
    assert add_memory((2, 7)) == pytest.approx(222.2e-6, rel=1e-3)
    # compiled, Inductor's pointwise kernel keeps the plain launch, whatever the release
    assert add_memory((2, 7), "compiled") == pytest.approx(226.1e-6, rel=1e-3)


def test_an_eager_embedding_waits_on_index_then_row():
    table = torch.nn.Embedding(32000, 4096).half().to("meta")
    r = fxroof.analyze(table, (torch.empty(16, dtype=torch.int64, device="meta"),),
                       chip="a100-80gb", mode="eager")
    (k,) = r.kernels
    assert [n.grid for n in r.nodes] == [(16, 4096, 2)]
    # one wave of 32 rounds and the wave's 245 ns: 12.7 us; the 131 KB hardly add
    assert k.expected.memory_s == pytest.approx(32 * 390e-9 + 245e-9, rel=1e-3)
    # compiled: Inductor's gather spreads its elements over the chip like a pointwise kernel:
    # one wave of one round, and the 131 KB at the bandwidth
    r = fxroof.analyze(table, (torch.empty(16, dtype=torch.int64, device="meta"),),
                       chip="a100-80gb", mode="compiled")
    (k,) = r.kernels
    assert k.expected.memory_s == pytest.approx(((390e-9 + 245e-9) ** 2
                                                 + k.expected.streamed_s ** 2) ** 0.5)


def test_a_long_eager_embedding_runs_as_the_installed_pytorch_runs_it():
    # 8,192 tokens of a 4,096-wide fp16 table on an A100 (67 MB moved, 36.8 us at 0.894 of
    # 2,039 GB/s). PyTorch 2.8's gather: 16,384 blocks of 256, 8 an SM, 19 waves of two waits:
    # 19 x (2 x 390 + 245) ns = 19.5 us, as a 2-norm with the bytes 41.6 us. Before 2.8,
    # index_select's loop: one wave of 608 waits, 237 us, 240 us with the bytes.
    table = torch.nn.Embedding(32000, 4096).half().to("meta")
    r = fxroof.analyze(table, (torch.empty(8192, dtype=torch.int64, device="meta"),),
                       chip="a100-80gb", mode="eager")
    (k,) = r.kernels
    streamed = 2 * 8192 * 4096 * 2 / (2039e9 * 0.894)
    assert k.expected.streamed_s == pytest.approx(streamed, rel=1e-2)
    waits = 19 * (2 * 390e-9 + 245e-9) if TORCH_RELEASE >= (2, 8) else 608 * 390e-9 + 245e-9
    assert k.expected.memory_s == pytest.approx((waits ** 2 + streamed ** 2) ** 0.5, rel=1e-2)


def test_an_eager_layer_norm_walks_its_row_twice():
    # 1 row of 2,560: one block of 128 threads, 4 elements a step: 5 steps, two passes, one wave
    ln = torch.nn.LayerNorm(2560).half().to("meta")
    r = fxroof.analyze(ln, (meta(1, 2560),), chip="a100-80gb", mode="eager")
    (k,) = [k for k in r.kernels if "layer_norm" in k.op]
    assert k.expected.memory_s == pytest.approx(10 * 390e-9 + 245e-9, rel=1e-3)    # 4.1 us


def test_an_eager_group_norm_walks_a_row_a_block():
    """A group norm's moments: a block of 512 threads a (sample, group), each thread walking the
    group's elements one load a step; its gradient's sums a block a (sample, channel); a warp a
    block where the row is under 512. By hand on an A100 (390 ns a step, 245 ns a wave, 4
    blocks of 512 an SM: 432 at once; 64 of 32)."""
    def kernels(channels, size, train=False):
        net = torch.nn.Sequential(torch.nn.Conv2d(4, channels, 3, padding=1),
                                  torch.nn.GroupNorm(32, channels)).half().to("meta")
        r = fxroof.analyze(net, (meta(2, 4, size, size),), chip="a100-80gb", mode="eager",
                           train=train, **({"optimizer": "sgd"} if train else {}))
        return {k.op: k for k in r.kernels if "group_norm" in k.op}

    def memory(k, waited):     # the waits and the streaming as a 2-norm, after the first loads
        streamed = k.expected.streamed_s
        return max(streamed + 390e-9, (waited ** 2 + streamed ** 2) ** 0.5)

    # Stable Diffusion's 320 channels at a 64 x 64 latent, batch 2: 64 rows of 10 x 4,096, one
    # wave of 80 steps (31.4 us, beside 5.8 us of bytes)
    (fwd,) = kernels(320, 64).values()
    assert fwd.expected.memory_s == pytest.approx(memory(fwd, 80 * 390e-9 + 245e-9), rel=1e-9)
    # its gradient's sums: 640 rows of 4,096, two waves of 8 steps
    grads = kernels(320, 64, train=True)
    bwd = next(k for op, k in grads.items() if "backward" in op)
    assert bwd.expected.memory_s == pytest.approx(memory(bwd, 2 * (8 * 390e-9 + 245e-9)),
                                                  rel=1e-9)
    # 64 channels at 8 x 8: rows of 2 x 64 = 128 elements, a warp each: 4 steps, one wave
    (short,) = kernels(64, 8).values()
    assert short.expected.memory_s == pytest.approx(memory(short, 4 * 390e-9 + 245e-9),
                                                    rel=1e-9)


def test_an_instance_norm_runs_as_a_batch_norm_over_samples_times_channels():
    """ATen runs an instance norm as a training batch norm over (1, samples x channels, H, W): a
    block of 512 threads a (sample, channel). 4 x 64 at 256 x 256 on an A100: 256 blocks, one
    wave of 65,536 / 512 = 128 steps."""
    net = torch.nn.InstanceNorm2d(64, affine=True).half().to("meta")
    r = fxroof.analyze(net, (meta(4, 64, 256, 256),), chip="a100-80gb", mode="eager")
    (k,) = [k for k in r.kernels if k.op == "instance_norm"]
    waited, streamed = 128 * 390e-9 + 245e-9, k.expected.streamed_s
    assert k.expected.memory_s == pytest.approx(max(streamed + 390e-9,
                                                    (waited ** 2 + streamed ** 2) ** 0.5))
    # with running statistics in inference it normalises in one elementwise pass
    tracked = torch.nn.InstanceNorm2d(64, track_running_stats=True).half().to("meta").eval()
    r = fxroof.analyze(tracked, (meta(4, 64, 256, 256),), chip="a100-80gb", mode="eager")
    assert all(dict(k.expected.gap)["occupancy"] < 2e-6 for k in r.kernels)


def test_a_report_names_group_norms_that_wait_and_the_fix():
    """Where eager group norms' waits hold a noticeable share, the report says how long and
    names torch.compile; compiled, Inductor's reductions split the rows and nothing waits."""
    net = torch.nn.Sequential(*[torch.nn.Sequential(
        torch.nn.GroupNorm(32, 320), torch.nn.SiLU(), torch.nn.Conv2d(320, 320, 3, padding=1))
        for _ in range(2)]).half().to("meta")

    def notes(mode):
        r = fxroof.analyze(net, (meta(2, 320, 64, 64),), chip="a100-80gb", mode=mode)
        waits = sum(dict(k.expected.gap)["occupancy"] for k in r.kernels
                    if "group_norm" in k.op)
        return r, waits, [n for n in r.notes if "group-norm kernels wait" in n]

    r, waits, (note,) = notes("eager")
    assert note.startswith(f"2 group-norm kernels wait on memory for {seconds(waits)} "
                           f"({waits / r.time_s:.0%} of the time)")
    assert "64 blocks here" in note and "torch.compile" in note
    assert not notes("compiled")[2]


def test_cpus_and_chips_without_figures_wait_nothing():
    r = fxroof.analyze(fn_module(torch.add), (meta(4096), meta(4096)), chip="t4")
    assert dict(r.kernels[0].expected.gap)["occupancy"] == 0
    r = fxroof.analyze(fn_module(torch.add), (torch.randn(4096), torch.randn(4096)), chip="cpu")
    assert r.kernels[0].expected.memory_s == r.kernels[0].timing.memory_s


def test_a_write_into_a_cache_loops_over_what_it_writes_not_the_cache():
    # one new token's keys into a 64 x 32 x 4,096 x 128 bf16 cache (2.1 GB): 262,144 elements
    # written, 512 blocks, one wave on an A100: one 390 ns round trip, not the 4,971 waves of
    # the whole cache
    def write(cache, new, pos):
        return cache.index_copy_(2, pos, new)
    bf16 = torch.bfloat16
    args = (meta(64, 32, 4096, 128, dtype=bf16), meta(64, 32, 1, 128, dtype=bf16),
            torch.empty(1, dtype=torch.int64, device="meta"))
    for mode in ("eager", "compiled"):
        r = fxroof.analyze(fn_module(write), args, chip="a100-80gb", mode=mode)
        k = max(r.kernels, key=lambda k: k.bytes_written)
        assert k.bytes_written == 64 * 32 * 128 * 2
        assert dict(k.expected.gap)["occupancy"] < 1e-6
