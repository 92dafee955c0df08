"""The host issuing kernels ahead of the chip (report/streams.py) and the three ways it issues
them: eager dispatch, a compiled program's launches, a CUDA graph's replay."""
from collections import namedtuple
from types import SimpleNamespace

import pytest
import torch

import fxroof
from fxroof.chips import chip
from fxroof.report.streams import attribute, schedule

K = namedtuple("K", "nodes category waits expected")


def kernel(name, host, device, regime="memory", category="pointwise"):
    """What the schedule reads of a kernel row: its expected time's host and chip parts."""
    return K((name,), category, (), SimpleNamespace(
        overhead_s=host, device_s=device, device_regime=regime, serial_overhead=False))


def test_the_host_runs_ahead_of_a_long_kernel():
    # a 100 us GEMV, then ten 2 us kernels, each launched in 7 us: the host has issued all ten
    # by 77 us, while the GEMV runs to 100; they then run back to back, 100..120. Kernel by
    # kernel, max(launch, time) would say 100 + 10 x 7 = 170 us.
    ks = [kernel("gemv", 7, 100)] + [kernel(f"k{i}", 7, 2) for i in range(10)]
    s = schedule(ks)
    assert s.end_s == pytest.approx(120) and s.host_s == pytest.approx(77)
    assert s.starts[1:] == pytest.approx([100 + 2 * i for i in range(10)])
    assert s.host_wait_s == 0


def test_tiny_kernels_wait_for_the_host():
    # 2 us kernels launched in 7 us each: each starts as the one before finishes launching
    # (a launch overlaps the kernel before it), the step ends when the last launch does
    ks = [kernel(f"k{i}", 7, 2) for i in range(4)]
    s = schedule(ks)
    assert s.starts == pytest.approx((0, 7, 14, 21)) and s.end_s == pytest.approx(28)
    # the host is the bottleneck: the step is its issuing, all of it overhead
    pieces = attribute(ks, s)
    assert sum(t for _, r, t in pieces if r == "overhead") == pytest.approx(28)
    assert sum(t for _, r, t in pieces if r == "memory") == pytest.approx(0)


def test_where_the_chip_bounds_the_step_only_its_idle_time_is_overhead():
    # 7 us launches, kernels of 10, 1, 1 and 30 us; each starts at the later of the chip's free
    # time and the end of the launches before it (0, 7, 14, 21)
    ks = [kernel("a", 7, 10, "compute"), kernel("b", 7, 1), kernel("c", 7, 1),
          kernel("d", 7, 30, "compute")]
    s = schedule(ks)
    # a 0..10; b max(10, 7) = 10..11; c max(11, 14) = 14..15; d max(15, 21) = 21..51
    assert s.starts == pytest.approx((0, 10, 14, 21)) and s.end_s == pytest.approx(51)
    assert s.host_wait_s == pytest.approx(3 + 6)
    # the chip is busy 42 us, the host 28: the chip bounds the step, idle 9 us of it
    pieces = attribute(ks, s)
    share = {r: sum(t for _, g, t in pieces if g == r) for r in ("compute", "memory", "overhead")}
    assert share == pytest.approx({"compute": 40, "memory": 2, "overhead": 9})


def mlp():
    return torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(),
                               torch.nn.Linear(1024, 256))


def test_compiled_and_cudagraphs_launch_at_their_own_cost():
    a100 = chip("a100-80gb")
    x = (torch.randn(8, 256),)
    launched = fxroof.analyze(mlp(), x, chip="a100-80gb")
    graphed = fxroof.analyze(mlp(), x, chip="a100-80gb", mode="cudagraphs")
    assert graphed.mode == "cudagraphs" and len(graphed.kernels) == len(launched.kernels) == 3
    # the first kernel enters the program (35 us) in both; then Inductor's launch from Python
    # (7 us) against the graph's pace (gpu-benches, A100 80GB: 1.34 us)
    assert [k.expected.overhead_s for k in launched.kernels] == pytest.approx(
        [35e-6 + 7e-6, 7e-6, 7e-6])
    assert [k.expected.overhead_s for k in graphed.kernels] == pytest.approx(
        [35e-6 + 1.34e-6, 1.34e-6, 1.34e-6])
    assert a100.graph_launch_s < a100.launch_s
    # the kernels are the same; so are their times on the chip
    assert [k.expected.device_s for k in graphed.kernels] == pytest.approx(
        [k.expected.device_s for k in launched.kernels])
    # three tiny kernels launched from Python: the step is the host's issuing
    assert launched.time_s == pytest.approx(35e-6 + 3 * 7e-6)
    # replayed: the second kernel waits for the first's entry and pace, then the chip runs on
    first, gelu, second = (k.expected for k in graphed.kernels)
    assert graphed.time_s == pytest.approx(35e-6 + 1.34e-6 + gelu.device_s + second.device_s)


def test_cudagraphs_needs_a_gpu():
    with pytest.raises(ValueError, match="cudagraphs.*cpu is a cpu"):
        fxroof.analyze(mlp(), (torch.randn(8, 256),), chip="cpu", mode="cudagraphs")


def test_an_eager_decode_on_a_gpu_is_bound_by_its_dispatch():
    # Llama-2-7B's shapes, two layers, one token: ~100 eager ops at 10 us of dispatch each
    # against the kernels on an A100: the host bounds the step, the chip waits, as PyTorch's eager
    # baseline of this model was "heavily CPU overhead bound" (pytorch.org, "Accelerating
    # Generative AI with PyTorch II: GPT, Fast")
    from fxroof.studies.workload import load
    model, args, kwargs = load("models/llama.py", dict(phase="decode", ctx=16, layers=2))
    eager = fxroof.analyze(model, args, kwargs, chip="a100-80gb", mode="eager")
    host = sum(k.expected.overhead_s for k in eager.kernels)
    chip_busy = sum(k.expected.device_s for k in eager.kernels)
    assert host > chip_busy
    # the chip waits for the dispatches: the step is theirs and the kernels the host did not
    # hide (the 32,000-word head at the end), far below the two in turn
    assert host < eager.time_s < host + 0.25 * chip_busy
    assert eager.regime == "overhead" and eager.regime_share["overhead"] > 0.8
    assert eager.to_dict()["host"]["issue_s"] == pytest.approx(host)
    # replayed as a graph the same step is bound by its weights' bytes
    graphed = fxroof.analyze(model, args, kwargs, chip="a100-80gb", mode="cudagraphs")
    assert graphed.regime == "memory"


def test_overhead_advice_follows_the_mode():
    from fxroof.report.tables import advice
    x = (torch.randn(8, 256),)
    told = {m: advice(fxroof.analyze(mlp(), x, chip="a100-80gb", mode=m))
            for m in ("eager", "compiled", "cudagraphs")}
    assert "torch.compile" in told["eager"]          # each mode is overhead-bound here
    assert "cudagraphs" in told["compiled"] and "torch.compile" not in told["compiled"]
    assert "larger batches" in told["cudagraphs"] and "CUDA graphs (" not in told["cudagraphs"]


def test_a_generation_bound_by_launches_points_to_cuda_graphs():
    from fxroof.studies.llm import generation
    kw = dict(prompt=16, new_tokens=2, options={"preset": "tiny"}, chip="h100-sxm")
    launched = generation("models/llama.py", **kw)
    assert launched.first.regime == "overhead"
    assert any("CUDA graph" in n for n in launched.notes)
    replayed = generation("models/llama.py", mode="cudagraphs", **kw)
    assert not any("CUDA graph" in n for n in replayed.notes)
    assert replayed.total_s < launched.total_s
