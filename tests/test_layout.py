"""Channels-first convolutions on a GPU: the transposes cuDNN runs for them (hand arithmetic), and
when torch.compile runs them channels-last instead (against Inductor's own decision)."""
import math

import pytest
import torch
import torch.nn as nn

import fxroof
from fxroof.chips import Chip
from fxroof.chips.expected import expected
from fxroof.chips.timing import Timing
from fxroof.cost.annotate import annotate
from fxroof.fuse.layout import channels_last_convs
from fxroof.graph.capture import capture
from fxroof.report.units import seconds
from helpers import cost_of


def half(*shape, channels_last=False):
    x = torch.empty(*shape, dtype=torch.float16, device="meta")
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def conv(*args, **kwargs):
    with torch.device("meta"):
        return nn.Conv2d(*args, bias=False, **kwargs).half()


def test_a_channels_first_conv_transposes_its_input_and_weight_by_hand():
    c = cost_of(conv(64, 128, 3, padding=1), "conv2d", half(8, 64, 32, 32))
    # input 8 x 64 x 32 x 32 and weight 128 x 64 x 3 x 3, two bytes each; the output is
    # written channels-first by the kernel itself
    assert c.relayout == (8 * 64 * 32 * 32 * 2, 128 * 64 * 3 * 3 * 2)
    # the graph's own bytes are untouched: input, weight and output once
    assert c.bytes == (8 * 64 * 32 * 32 + 128 * 64 * 9 + 8 * 128 * 32 * 32) * 2


def test_no_transposes_where_channels_last_or_depthwise():
    m = conv(64, 128, 3, padding=1).to(memory_format=torch.channels_last)
    assert cost_of(m, "conv2d", half(8, 64, 32, 32, channels_last=True)).relayout == ()
    depthwise = conv(64, 64, 3, padding=1, groups=64)
    assert cost_of(depthwise, "conv2d", half(8, 64, 32, 32)).relayout == ()


def test_a_transpose_is_a_copy_with_its_round_trip_and_fixed_time_by_hand():
    g = Chip("g", "Test GPU", "gpu", {"fp32": 1e12, "fp16": 1e12}, vector_flops=1e12, mem_bw=1e9,
             mem_bytes=1e10, link_bw=1e9, link_latency_s=5e-6, launch_s=2e-6, dispatch_s=10e-6,
             bw_efficiency=0.8, memory_latency_s=1e-6, kernel_floor_s=3e-6, sm_count=10)
    floor = Timing(1e-3, 0.5e-3, 0, 2e-6)
    plain = expected(g, floor, "conv")
    e = expected(g, floor, "conv", relayout=(1e6, 2e5))
    # each tensor read and written at 0.8 GB/s, after 1 us of latency and 3 us of fixed time:
    # 2.5 ms + 4 us and 0.5 ms + 4 us, after the convolution itself
    layout = 2e6 / 0.8e9 + 4e-6 + 4e5 / 0.8e9 + 4e-6
    assert e.time_s == pytest.approx(plain.time_s + layout)
    assert dict(e.gap)["layout"] == pytest.approx(layout)
    assert sum(dict(e.gap).values()) == pytest.approx(e.time_s - floor.time_s)
    assert e.regime == "memory"            # 3 ms of transposes outweigh 1 ms of compute
    cpu = Chip("c", "Test CPU", "cpu", {"fp32": 1e12, "fp16": 1e12}, vector_flops=1e12, mem_bw=1e9,
               mem_bytes=1e10, link_bw=1e9, link_latency_s=5e-6, launch_s=2e-6,
               dispatch_s=10e-6)
    assert expected(cpu, floor, "conv", relayout=(1e6,)).time_s == floor.time_s


def _fp32_net_report(chip):
    with torch.device("meta"):
        m = nn.Sequential(nn.Conv2d(64, 128, 3, padding=1, bias=False), nn.Flatten(),
                          nn.Linear(128 * 56 * 56, 10, bias=False))
    return fxroof.analyze(m, (torch.empty(64, 64, 56, 56, device="meta"),), chip=chip,
                          mode="eager")


def test_fp32_convolutions_run_in_tf32_as_pytorch_lets_cudnn_by_default():
    assert torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    r = _fp32_net_report("a100-80gb")
    conv_row, linear = [k for k in r.kernels if k.category in ("conv", "matmul")]
    # the convolution at the A100's TF32 peak (156 TFLOP/s), the linear at its fp32 one (19.5)
    assert (conv_row.dtype, linear.dtype) == ("tf32", "fp32")
    assert any("TF32" in note and "allow_tf32" in note for note in r.notes)    # and says so
    flops = 2 * 64 * 128 * 64 * 9 * 56 * 56
    assert conv_row.timing.compute_s == pytest.approx(flops / r.chip.peak_flops["tf32"])
    # on tensor cores it pays the transposes of its input and weight
    assert dict(conv_row.expected.gap)["layout"] > 0
    try:
        torch.backends.cudnn.allow_tf32 = False
        off = _fp32_net_report("a100-80gb")
    finally:
        torch.backends.cudnn.allow_tf32 = True
    conv_off = next(k for k in off.kernels if k.category == "conv")
    assert conv_off.dtype == "fp32" and dict(conv_off.expected.gap)["layout"] == 0
    assert conv_off.timing.compute_s == pytest.approx(flops / r.chip.peak_flops["fp32"])
    # a V100 has no TF32: fp32, no transposes
    v100 = next(k for k in _fp32_net_report("v100").kernels if k.category == "conv")
    assert v100.dtype == "fp32" and dict(v100.expected.gap)["layout"] == 0


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = conv(64, 128, 3, padding=1), conv(128, 256, 1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def _layout_s(report, mode):
    return getattr(report, mode).gap["layout"]


def test_eager_pays_transposes_channels_last_and_compiled_do_not():
    nchw = fxroof.analyze(Net(), (half(32, 64, 56, 56),), chip="rtx-4090", mode="eager")
    nhwc = fxroof.analyze(Net().to(memory_format=torch.channels_last),
                          (half(32, 64, 56, 56, channels_last=True),), chip="rtx-4090",
                          mode="eager")
    assert nchw.summary.floor_s == pytest.approx(nhwc.summary.floor_s)   # the floor unchanged
    assert _layout_s(nhwc, "eager") == 0
    assert nchw.time_s > nhwc.time_s
    # two inputs and two weights transposed, the 4090's copy share of its bandwidth
    chip = nchw.chip
    nbytes = (32 * 64 * 56 * 56 + 128 * 64 * 9 + 32 * 128 * 56 * 56 + 256 * 128) * 2
    fixed = 4 * (chip.memory_latency_s + chip.kernel_floor_s)
    assert _layout_s(nchw, "eager") == pytest.approx(
        2 * nbytes / (chip.mem_bw * chip.bw_efficiency) + fixed)
    # torch.compile makes this graph channels-last (Inductor's layout optimization)
    assert _layout_s(nchw, "compiled") == 0
    # and `fxroof compare` says that part of what compiling saves
    from fxroof.report.tables import comparison
    assert "of which layout: eager pays" in comparison(nchw)
    assert "of which layout" not in comparison(nhwc)
    # a CPU runs no transposes
    assert _layout_s(fxroof.analyze(Net(), (half(2, 64, 8, 8),), chip="cpu",
                                    mode="eager"), "eager") == 0


def _nets():
    """Convolution graphs that take each of Inductor's branches."""
    yield "plain", nn.Sequential(nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(128, 256, 1)), (8, 64, 32, 32)
    yield "grouped", nn.Sequential(nn.Conv2d(64, 128, 3, padding=1),
                                   nn.Conv2d(128, 128, 3, groups=32, padding=1),
                                   nn.Conv2d(128, 256, 1)), (8, 64, 32, 32)
    yield "mostly grouped", nn.Sequential(nn.Conv2d(64, 128, 1),
                                          nn.Conv2d(128, 1024, 3, groups=8, padding=1)), \
        (8, 64, 32, 32)
    yield "fewer out than in", nn.Sequential(nn.Conv2d(256, 128, 3, padding=1),
                                             nn.Conv2d(128, 128, 3, padding=1)), (8, 256, 16, 16)
    yield "small", nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 32, 3)), (8, 3, 32, 32)
    yield "depthwise", nn.Sequential(nn.Conv2d(64, 128, 1),
                                     nn.Conv2d(128, 128, 3, groups=128, padding=1)), (8, 64, 32, 32)
    yield "no convolution", nn.Sequential(nn.Linear(32, 32)), (8, 32)


@pytest.mark.parametrize("name,model,shape", list(_nets()), ids=[n for n, *_ in _nets()])
def test_the_layout_decision_is_inductors(name, model, shape):
    graph_lowering = pytest.importorskip("torch._inductor.graph").GraphLowering
    model, x = model.half(), torch.randn(*shape).half()
    inductors = torch.export.export(model, (x,)).run_decompositions().graph_module
    ours = annotate(capture(model, (x,)).gm)
    for training in (False, True):
        # a CPU build would take its oneDNN branch (always channels-last); a GPU's is asked
        with torch.backends.mkldnn.flags(enabled=False):
            theirs = graph_lowering.decide_layout_opt(inductors, is_inference=not training)
        assert channels_last_convs(ours, training=training) == theirs, (name, training)


def test_an_amd_gpu_gets_neither_cudnns_transposes_nor_tf32():
    r = _fp32_net_report("mi300x")
    conv_row = next(k for k in r.kernels if k.category == "conv")
    assert conv_row.dtype == "fp32" and dict(conv_row.expected.gap)["layout"] == 0
    half_conv = fxroof.analyze(Net(), (half(32, 64, 56, 56),), chip="mi300x", mode="eager")
    assert half_conv.eager.gap["layout"] == 0


def test_a_gpu_without_tensor_cores_for_the_dtype_transposes_nothing():
    # cuDNN's channels-last preference is its tensor-core kernels': the P100 has none (its fp16
    # runs in fp32 on the CUDA cores), and a V100 has none for bf16 (emulated there); a V100's
    # fp16 convolution still pays its transposes
    def layout(chip, dtype):
        x = torch.empty(32, 64, 56, 56, dtype=dtype, device="meta")
        with torch.device("meta"):
            net = Net().to(dtype)
        return fxroof.analyze(net, (x,), chip=chip, mode="eager").eager.gap["layout"]
    assert layout("p100", torch.float16) == 0
    x = torch.empty(64, 256, dtype=torch.float16, device="meta")
    notes = fxroof.analyze(torch.nn.Linear(256, 256, device="meta", dtype=torch.float16), (x,),
                           chip="p100").notes
    assert ("p100 has no tensor cores: fp16 matmuls are computed in fp32 on its CUDA cores, at "
            "9.3 TFLOP/s") in notes
    assert layout("v100", torch.bfloat16) == 0
    assert layout("v100", torch.float16) > 0


def test_a_backward_transposes_what_its_gradients_read_by_hand():
    model = conv(64, 128, 3, padding=1)
    x = half(8, 64, 32, 32)
    r = fxroof.analyze(model, (x,), chip="rtx-4090", mode="eager", train=True,
                       optimizer="sgd")
    (backward,) = [n for n in r.nodes if n.op == "convolution_backward"]
    # the input needs no gradient: only the filter's is computed, from the output's gradient
    # (8 x 128 x 32 x 32) and the input (8 x 64 x 32 x 32); the filter itself is not read
    assert backward.relayout == (8 * 128 * 32 * 32 * 2, 8 * 64 * 32 * 32 * 2)


def test_both_gradients_transpose_the_outputs_gradient_each_by_hand():
    # the second convolution's input needs a gradient: ATen's cudnn_convolution_backward makes
    # two cuDNN calls, the input's (output's gradient, filter) and the filter's (output's
    # gradient, input), and each transposes its own channels-first operands
    model = nn.Sequential(conv(64, 64, 3, padding=1), conv(64, 128, 3, padding=1))
    r = fxroof.analyze(model, (half(8, 64, 32, 32),), chip="rtx-4090", mode="eager",
                       train=True, optimizer="sgd")
    backwards = [n for n in r.nodes if n.op == "convolution_backward"]
    second = max(backwards, key=lambda n: n.relayout)
    grad_out, weight, x = 8 * 128 * 32 * 32 * 2, 128 * 64 * 3 * 3 * 2, 8 * 64 * 32 * 32 * 2
    assert second.relayout == (grad_out, weight, grad_out, x)
    # the first one's input needs none: the filter's call alone
    first = min(backwards, key=lambda n: n.relayout)
    assert first.relayout == (8 * 64 * 32 * 32 * 2, 8 * 64 * 32 * 32 * 2)


def test_1d_and_3d_convolutions_keep_their_transposes_where_inductor_converts_2d_ones():
    class Mixed(nn.Module):
        """A 2-d, a 3-d and a 1-d convolution: Inductor's layout optimization converts only the
        2-d one (torch/_inductor/kernel/conv.py, "layout_opt and ndim == 2")."""

        def __init__(self):
            super().__init__()
            with torch.device("meta"):
                self.c2 = nn.Conv2d(64, 128, 3, padding=1, bias=False).half()
                self.c3 = nn.Conv3d(64, 128, 3, padding=1, bias=False).half()
                self.c1 = nn.Conv1d(64, 128, 3, padding=1, bias=False).half()

        def forward(self, x2, x3, x1):
            return self.c2(x2).sum() + self.c3(x3).sum() + self.c1(x1).sum()

    x1 = half(32, 64, 4096)
    r = fxroof.analyze(Mixed(), (half(32, 64, 56, 56), half(4, 64, 8, 28, 28), x1),
                       chip="rtx-4090", mode="compiled")
    layout = {k.op: dict(k.expected.gap)["layout"] for k in r.kernels if k.category == "conv"}
    assert layout["conv2d"] == 0 and layout["conv3d"] > 0 and layout["conv1d"] > 0
    # a 1-d convolution's input and filter, 2 bytes each, as cuDNN's 2-d call of height 1
    (c1,) = [n for n in r.nodes if n.op == "conv1d"]
    assert c1.relayout == (32 * 64 * 4096 * 2, 128 * 64 * 3 * 2)


def test_channels_first_training_batch_norms_wait_a_load_a_step_a_block_a_channel():
    """PyTorch's channels-first training batch norm gives each channel one block of 512 threads,
    each walking the channel's elements one load a step; its gradient walks them twice (sums,
    then dx). 64 channels of 32 x 56 x 56 on an A100: one wave (108 SMs x 4 blocks), 196 steps
    of the memory latency (390 ns) plus the wave's 245 ns; the gradient 392 steps. The waits
    and the streaming add as a 2-norm. Not channels-last (its kernels span the batch), not in
    inference, not compiled (Inductor's own), not on a CPU or an AMD GPU (ROCm's blocks and
    MIOpen's kernels)."""
    class Step(nn.Module):
        def __init__(self, last=False):
            super().__init__()
            with torch.device("meta"):
                self.net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64),
                                         nn.ReLU()).half()
            if last:
                self.net = self.net.to(memory_format=torch.channels_last)

        def forward(self, x):
            return self.net(x).float().mean()

    def analyzed(last=False, chip="a100-80gb", mode="eager", train=True):
        x = half(32, 3, 56, 56, channels_last=last)
        step = Step(last)
        return fxroof.analyze(step if train else step.eval(), (x,), chip=chip, mode=mode,
                              train=train, **({"optimizer": "sgd"} if train else {}))

    def norms(*args, **kwargs):
        return {k.op: k for k in analyzed(*args, **kwargs).kernels if "batch_norm" in k.op}

    def waited(steps):          # one wave: its steps of the latency and the wave's own cost
        return steps * 390e-9 + 245e-9

    def memory(k, steps):       # the 2-norm of the waits and the streaming, after the first loads
        streamed = k.expected.streamed_s
        return max(streamed + 390e-9, math.hypot(waited(steps), streamed))

    found = norms()
    forward = next(k for op, k in found.items() if "backward" not in op)
    backward = next(k for op, k in found.items() if "backward" in op)
    assert forward.expected.memory_s == pytest.approx(memory(forward, 196), rel=1e-9)
    assert backward.expected.memory_s == pytest.approx(memory(backward, 392), rel=1e-9)
    assert forward.expected.memory_s > 5 * forward.expected.streamed_s   # the waits bound it
    # the same norms channels-last, in inference, compiled, on a CPU and on an MI300X stream
    for other in (norms(last=True), norms(train=False), norms(mode="compiled"),
                  norms(chip="cpu"), norms(chip="mi300x")):
        assert other and all(k.expected.memory_s < 2 * k.expected.streamed_s + 2e-6
                   for k in other.values())
    # the report says how long they wait, and the layout that does not
    r = analyzed()
    waits = sum(dict(k.expected.gap)["occupancy"] for k in (forward, backward))
    (note,) = [n for n in r.notes if "block of 512 threads" in n]
    assert note.startswith(f"2 training batch-norm kernels over channels-first tensors wait on "
                           f"memory for {seconds(waits)} ({waits / r.time_s:.0%} of the step)")
    assert not [n for n in analyzed(last=True).notes if "block of 512 threads" in n]
