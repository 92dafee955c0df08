"""Kernels and whole models timed on a real GPU, then set beside fxroof's expected times.

Two steps, because a GPU is lent for minutes and a prediction needs none:

    python bench/gpu_measure.py measure --out measured.json    # on the GPU: times every case
    python bench/gpu_measure.py compare bench/measured/h200.json   # anywhere: the table

`measure` writes the file after every case, so a run cut short (--budget-s) keeps what it
timed. `compare` rebuilds each case on the meta device, predicts it on the chip the file names
(--chip: another name or a chip file) and prints each row, then per group: cases, median
|error|, share within +-25%, geometric-mean ratio (predicted / measured), worst. A case whose
measurement set one of the chip's figures (CALIBRATES) is shown but not counted. With --traces,
`measure` also profiles each model's eager forward once, and each training step once
(torch.profiler, into one zip), and `compare` sets each trace beside the model's eager
prediction, or the step's, op by op (fxroof.compare_trace): which kernels a whole model's miss
comes from.

How each mode is timed, and what it is set beside:
    kernel      one eager op, captured many times into a CUDA graph over enough copies of its
                inputs that none stays in L2, replayed (CUDA events, median of replays): the
                expected time on the chip of its kernels, each at least the graph's launch pace
    dispatch    one eager op on tiny tensors called 2,000 times back to back, wall time per call:
                the host's dispatch, beside the eager prediction of that op without the glue
                of model code around it (a loop has none)
    eager       a model's forward, synchronized, wall time (median): the eager prediction
    graph       the same forward captured into one CUDA graph and replayed: its kernels' time on
                the chip alone, as `kernel`
    compiled    torch.compile(model), wall time after compiling: the compiled prediction
    cudagraphs  torch.compile(model, mode="reduce-overhead"): the cudagraphs prediction
    train       one eager training step (zero_grad, the loss under float16 autocast, backward,
                the optimizer's step), synchronized, wall time (median): the eager prediction
                of the step (train=True, the same optimizer); cuDNN autotuned, as training
                scripts set it
    chase       one thread of a Triton kernel walking a random cycle of 128-byte lines over 256
                MiB, each load's address the last load's value: seconds a step (20,000 more
                steps' time over 20,000), beside the chip table's memory_latency_ns, which the
                waits of row-walking kernels (layer, batch and group norms, gathers) are priced by
    cudagraphs-cdt  the same under torch._inductor.config.coordinate_descent_tuning, as gpt-fast's
                and torchao's generate.py compile decode: one-row products as Triton reductions
                (docs/fusion.md), beside the cudagraphs prediction under the same setting
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import statistics
import sys
import tempfile
import time
import zipfile
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fxroof.measure.machine import Clock, elapsed, host_time, marker, span, sync  # noqa: E402

CUDA = torch.device("cuda")

BF16 = torch.bfloat16
# Cases whose measurement set a figure of the chip (its source in chips.json names the case):
# shown, never counted in the summary that checks the model.
CALIBRATES = {("h200", "add bf16 2^28"): "bw_efficiency",
              ("h200", "sdpa 1 x 32 x 2048 x 128"): "cudnn_attention_efficiency"}
# The same for a chip `fxroof calibrate --device cuda` wrote: the cases that are its own probes
# (fxroof/measure/gpu_shares.py), whatever GPU it measured.
CALIBRATION_PROBES = {"add bf16 2^28": "bw_efficiency"}
L2_MARGIN = 4              # inputs rotated over at least this many times the L2's bytes
DISPATCH_CALLS = 2000


# -- the cases: (group, name, modes, build) where build(device) -> (callable, args, kwargs) -----

def tensor(shape, device, dtype=BF16, high=None):
    """A tensor of `shape`: on meta, shapes only; else random values (never zeros, which run
    faster than real data), or indices below `high`."""
    if device == "meta":
        return torch.empty(shape, dtype=torch.long if high else dtype, device="meta")
    if high:
        return torch.randint(0, high, shape, device=device)
    if dtype.itemsize == 1:     # fp8: values drawn in fp32, cast (randn has no 8-bit kernel)
        return torch.randn(shape, device=device).to(dtype)
    return torch.randn(shape, dtype=dtype, device=device)


def op(fn, *shapes, dtype=BF16, high=None, **kwargs):
    """A case of one op over tensors of these shapes (an int: that many indices below `high`)."""
    def build(device):
        args = tuple(tensor((s,) if isinstance(s, int) else s, device,
                            dtype, high if isinstance(s, int) else None) for s in shapes)
        return fn, args, kwargs
    return build


def linear(x, w):
    return F.linear(x, w)


def scaled_mm(x, w, x_scale, w_scale):
    """An fp8 product as torchao's float8 and vLLM's fp8 linears run it: x (m, k) @ w (n, k)^T,
    fp32 scales a row of each (rowwise) or one each (a tensor's), bf16 out."""
    return torch._scaled_mm(x, w.t(), x_scale, w_scale, out_dtype=BF16)


def layer_norm(x, w):
    return F.layer_norm(x, (x.shape[-1],), w, w)


def batch_norm(x, mean, var):
    return F.batch_norm(x, mean, var, training=False)


def batch_norm_case(shape):
    """An eval-mode batch norm over `shape`, its running variance positive."""
    def build(device):
        x, mean, var = (tensor(s, device) for s in (shape, shape[1:2], shape[1:2]))
        return batch_norm, (x, mean, var if device == "meta" else var.abs() + 1), {}
    return build


def batch_norm_train(x, w):
    """A training-mode batch norm: the batch's statistics, then the normalisation."""
    return F.batch_norm(x, None, None, w, w, training=True)


def batch_norm_train_step(x, w, grad):
    """The same and its backward, as autograd runs them (a kernel case is timed without
    gradients: they are asked for here)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        return torch.autograd.grad(batch_norm_train(x, w), (x,), grad)


def batch_norm_train_case(shape, dtype, backward: bool = False):
    """A training batch norm over `shape` in `dtype`, its weight fp32 as under autocast: cuDNN's
    kernels for float16 (PyTorch's _select_batch_norm_backend), PyTorch's own for bfloat16,
    which give a channels-first input one block a channel (Normalization.cuh,
    batch_norm_stats_cuda_template and batch_norm_backward_kernel)."""
    def build(device):
        x, w = tensor(shape, device, dtype), tensor(shape[1:2], device, torch.float32)
        if backward:
            return batch_norm_train_step, (x, w, tensor(shape, device, dtype)), {}
        return batch_norm_train, (x, w), {}
    return build


def group_norm(x, w):
    """32 groups, as diffusion models and timm's GroupNorm nets use."""
    return F.group_norm(x, 32, w, w)


def group_norm_step(x, w, grad):
    """The same and its backward (x's gradient)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        return torch.autograd.grad(group_norm(x, w), (x,), grad)


def softmax(x):
    return torch.softmax(x, -1)


def sdpa_causal(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def conv(x, w, stride=1, padding=0, groups=1):
    return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def conv_backward(grad, x, w, padding=0, groups=1):
    """Both gradients of a convolution (its input's and its filter's), as autograd asks for them."""
    return torch.ops.aten.convolution_backward.default(
        grad, x, w, None, [1, 1], [padding, padding], [1, 1], False, [0, 0], groups,
        [True, True, False])[:2]


def autotuned(build):
    """The same case with cuDNN choosing each convolution's algorithm by timing them
    (torch.backends.cudnn.benchmark = True, as timm's benchmark.py sets) instead of PyTorch's
    default heuristics; on meta (predictions) the case as it is, the flag being the host's."""
    def tuned(device):
        fn, args, kwargs = build(device)
        if device == "meta":
            return fn, args, kwargs

        def run(*a, **k):
            with torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False):
                return fn(*a, **k)
        return run, args, kwargs
    return tuned


def channels_last(build):
    """The same case with its 4-d tensors (and a model's weights) channels-last, as timm's
    --channels-last runs."""
    def build_cl(device):
        fn, args, kwargs = build(device)
        if isinstance(fn, torch.nn.Module):
            fn = fn.to(memory_format=torch.channels_last)
        return fn, tuple(a.contiguous(memory_format=torch.channels_last)
                         if isinstance(a, torch.Tensor) and a.dim() == 4 else a
                         for a in args), kwargs
    return build_cl


CONVS = (("conv 3x3 64 -> 64 at 56 px, batch 64", ((64, 64, 56, 56), (64, 64, 3, 3)),
          dict(padding=1)),
         ("conv 1x1 256 -> 64 at 56 px, batch 64", ((64, 256, 56, 56), (64, 256, 1, 1)), {}),
         ("conv 7x7/2 3 -> 64 at 224 px, batch 64", ((64, 3, 224, 224), (64, 3, 7, 7)),
          dict(stride=2, padding=3)),
         ("conv 3x3 512 -> 512 at 7 px, batch 64", ((64, 512, 7, 7), (512, 512, 3, 3)),
          dict(padding=1)),
         ("conv depthwise 3x3 x 96 at 56 px, batch 64", ((64, 96, 56, 56), (96, 1, 3, 3)),
          dict(padding=1, groups=96)))


def kernel_cases():
    for p in (12, 16, 20, 22, 24, 26, 28):
        yield "kernel", f"add bf16 2^{p}", op(torch.add, (1 << p,), (1 << p,))
    yield "kernel", "add fp32 2^26", op(torch.add, (1 << 26,), (1 << 26,), dtype=torch.float32)
    yield "kernel", "gelu bf16 2^26", op(F.gelu, (1 << 26,))
    yield "kernel", "silu fp32 2^24", op(F.silu, (1 << 24,), dtype=torch.float32)
    # the functors whose instructions are counted (cost/formulas/pointwise_instructions.py),
    # each beside the bf16 add of the same size above
    for name, fn, inputs in (
            ("silu", F.silu, 1), ("sigmoid", torch.sigmoid, 1), ("tanh", torch.tanh, 1),
            ("exp", torch.exp, 1), ("gelu tanh", partial(F.gelu, approximate="tanh"), 1),
            ("dropout training", partial(F.dropout, p=0.1, training=True), 1),
            ("gelu backward", torch.ops.aten.gelu_backward.default, 2),
            ("silu backward", torch.ops.aten.silu_backward.default, 2)):
        yield "kernel", f"{name} bf16 2^26", op(fn, *[(1 << 26,)] * inputs)
    for rows in (1, 16, 128, 1024, 8192, 32768):
        yield "kernel", f"layer_norm {rows} x 4096", op(layer_norm, (rows, 4096), (4096,))
    yield "kernel", "softmax 1024 x 32000", op(softmax, (1024, 32000))
    yield "kernel", "softmax 16384 x 1024", op(softmax, (16384, 1024))
    yield "kernel", "sum 8192 x 4096 over rows", op(lambda x: x.sum(-1), (8192, 4096))
    for t in (1, 16, 128, 1024, 8192):
        yield "kernel", f"embedding {t} of 32000 x 4096", op(F.embedding, t, (32000, 4096),
                                                             high=32000)
    for k, n in ((4096, 4096), (4096, 14336), (14336, 4096), (4096, 128256)):
        for m in (1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192):
            yield "kernel", f"linear bf16 {m} x {k} -> {n}", op(linear, (m, k), (n, k))
    yield "kernel", "linear fp16 4096 x 4096 -> 4096", op(linear, (4096, 4096), (4096, 4096),
                                                          dtype=torch.float16)
    yield "kernel", "linear fp32 4096 x 4096 -> 4096", op(linear, (4096, 4096), (4096, 4096),
                                                          dtype=torch.float32)
    yield "kernel", "bmm bf16 32 x 2048 x 128 x 2048", op(torch.bmm, (32, 2048, 128),
                                                          (32, 128, 2048))
    yield "kernel", "bmm bf16 256 x 1 x 128 x 2048", op(torch.bmm, (256, 1, 128), (256, 128, 2048))
    for b, h, s, d in ((1, 32, 512, 128), (1, 32, 2048, 128), (1, 32, 8192, 128),
                       (8, 32, 1024, 128), (1, 32, 4096, 64)):
        yield "kernel", f"sdpa causal {b} x {h} x {s} x {d}", op(sdpa_causal, *[(b, h, s, d)] * 3)
    yield "kernel", "sdpa 1 x 32 x 2048 x 128", op(sdpa, *[(1, 32, 2048, 128)] * 3)
    for b, s in ((1, 4096), (8, 4096), (64, 1024)):
        yield "kernel", f"sdpa decode {b} x 32 x 1 over {s} x 128", \
            op(sdpa, (b, 32, 1, 128), (b, 32, s, 128), (b, 32, s, 128))
    for name, shapes, options in CONVS:
        yield "kernel", name, op(conv, *shapes, **options)
    # PyTorch's own depthwise kernel, priced by the instructions it issues (docs/time-model.md):
    # its slope a tap (7x7, the generic kernel) and in fp32, beside the bf16 3x3 above
    yield "kernel", "conv depthwise 7x7 x 96 at 56 px, batch 64", \
        op(conv, (64, 96, 56, 56), (96, 1, 7, 7), padding=3, groups=96)
    yield "kernel", "conv depthwise 3x3 x 96 at 56 px, batch 64, fp32", \
        op(conv, (64, 96, 56, 56), (96, 1, 3, 3), dtype=torch.float32, padding=1, groups=96)
    # and its backward's two kernels, priced the same way: the input's gradient a thread an
    # input element, the filter's a block a (channel, tap) walking every image
    for k in (3, 7):
        yield "kernel", f"conv depthwise {k}x{k} x 96 at 56 px, batch 64, backward", \
            op(conv_backward, (64, 96, 56, 56), (64, 96, 56, 56), (96, 1, k, k),
               padding=k // 2, groups=96)
    # what settles the channels-first misses of 2026-12-04 (bench/README.md): the same
    # convolutions with cuDNN's algorithms timed, and channels-last as well
    for name, shapes, options in CONVS:
        yield "kernel", f"{name}, autotuned", autotuned(op(conv, *shapes, **options))
        yield "kernel", f"{name}, channels-last, autotuned", \
            autotuned(channels_last(op(conv, *shapes, **options)))
    # training batch norms at ResNet-50's first stage and at 256 channels, forward alone and
    # with its backward: every held-out CNN training step is predicted fast, most on the A100
    # and H100 (docs/time-model.md, "Held out: Lambda's training throughputs"), whose bandwidth a
    # kernel of one block a channel cannot fill
    for dtype, label in ((torch.float16, "fp16"), (BF16, "bf16")):
        for shape in ((64, 64, 56, 56), (64, 256, 56, 56)):
            for backward in (False, True):
                case = batch_norm_train_case(shape, dtype, backward)
                yield "kernel", (f"batch_norm train {label} {shape}"
                                 + (", forward and backward" if backward else "")), case
        yield "kernel", f"batch_norm train {label} (64, 64, 56, 56), channels-last", \
            channels_last(batch_norm_train_case((64, 64, 56, 56), dtype))
    # timm's AMP training of depthwise networks is the heldout training miss furthest out
    # (MobileNetV2, EfficientNet: 0.62x-0.78x in both layouts, bench/README.md): float16
    # depthwise convolutions, which PyTorch sends to cuDNN at stride 1 (conv.py,
    # cudnn_depthwise_workload), forward and with both gradients, in each layout
    for backward in (False, True):
        kind = "backward" if backward else "forward"
        case = op(conv_backward, (64, 144, 56, 56), (64, 144, 56, 56), (144, 1, 3, 3),
                  dtype=torch.float16, padding=1, groups=144) if backward else \
            op(conv, (64, 144, 56, 56), (144, 1, 3, 3), dtype=torch.float16, padding=1,
               groups=144)
        yield "kernel", f"conv depthwise 3x3 x 144 at 56 px, batch 64, fp16, {kind}", \
            autotuned(case)
        yield "kernel", (f"conv depthwise 3x3 x 144 at 56 px, batch 64, fp16, {kind}, "
                         f"channels-last"), autotuned(channels_last(case))
    # group norms, whose moments and gradient sums walk a row a block one load a step
    # (group_norm_kernel.cu; priced so, docs/time-model.md "Loads in flight"): Stable
    # Diffusion's 320 channels at a 64 x 64 latent, batch 2, where 64 blocks wait on memory,
    # and batch 64, where the blocks fill the GPU and the bytes bound it
    for batch in (2, 64):
        shape = (batch, 320, 64, 64)
        yield "kernel", f"group_norm fp16 {shape}", op(group_norm, shape, (320,),
                                                       dtype=torch.float16)
        yield "kernel", f"group_norm fp16 {shape}, forward and backward", \
            op(group_norm_step, shape, (320,), shape, dtype=torch.float16)
    # GPT-2's head: 50,257 columns (rows of an odd number of 2-byte elements) against the
    # 50,304 nanoGPT pads them to
    for n in (50257, 50304):
        yield "kernel", f"linear bf16 8192 x 768 -> {n}", op(linear, (8192, 768), (n, 768))
    # fp8 products at few rows (docs/time-model.md, torchao's float8dq rows: what its
    # _scaled_mm of one row costs is not modelled): a scale a row, and one a tensor
    for m in (1, 16, 128, 1024, 8192):
        yield "kernel", f"scaled_mm fp8 rowwise {m} x 4096 -> 4096", \
            scaled_mm_case(m, rowwise=True)
    for m in (1, 128, 8192):
        yield "kernel", f"scaled_mm fp8 per tensor {m} x 4096 -> 4096", \
            scaled_mm_case(m, rowwise=False)
    yield "kernel", "softmax 1024 x 4096", op(softmax, (1024, 4096))
    yield "kernel", "softmax fp32 1024 x 32000", op(softmax, (1024, 32000), dtype=torch.float32)


def scaled_mm_case(m: int, rowwise: bool, k: int = 4096, n: int = 4096):
    """_scaled_mm's operands: fp8 x (m, k) and w (n, k), fp32 scales (m, 1) and (1, n), or
    scalars."""
    def build(device):
        fp8 = torch.float8_e4m3fn
        shapes = ((m, 1), (1, n)) if rowwise else ((), ())
        scales = tuple(torch.ones(s, dtype=torch.float32, device=device) if device != "meta"
                       else torch.empty(s, dtype=torch.float32, device="meta") for s in shapes)
        return scaled_mm, (tensor((m, k), device, fp8), tensor((n, k), device, fp8), *scales), {}
    return build


def dispatch_cases():
    """Tiny ops, whose kernels take less than their dispatch: the host's pace."""
    yield "dispatch", "add", op(torch.add, (64,), (64,))
    yield "dispatch", "gelu", op(F.gelu, (64,))
    yield "dispatch", "layer_norm", op(layer_norm, (8, 64), (64,))
    yield "dispatch", "linear", op(linear, (8, 64), (64, 64))
    yield "dispatch", "softmax", op(softmax, (8, 64))
    yield "dispatch", "embedding", op(F.embedding, 8, (128, 64), high=128)
    yield "dispatch", "sdpa", op(sdpa_causal, *[(1, 2, 16, 64)] * 3)
    # a convolution net's ops (ResNet-50 at batch 1 took 22.5 us an op eager on the H200's host)
    yield "dispatch", "conv2d", op(conv, (1, 8, 8, 8), (8, 8, 3, 3), padding=1)
    yield "dispatch", "batch_norm", batch_norm_case((1, 8, 8, 8))


def workload(file, **options):
    def build(device):
        from fxroof.studies.workload import load
        return load(str(ROOT / "models" / file), {**options, "device": device})
    return build


def hf(config, **options):
    def build(device):
        from fxroof.cli.hf import from_config
        return from_config(config, device=device, **options)
    return build


def int8_linear(k, n):
    """gpt-fast's WeightOnlyInt8Linear on one token: F.linear(x, w.to(x.dtype)) * scales."""
    class Int8Linear(torch.nn.Module):
        def __init__(self, device):
            super().__init__()
            self.register_buffer("weight", torch.empty(n, k, dtype=torch.int8, device=device)
                                 if device == "meta" else   # not zeros: real data runs slower
                                 torch.randint(-128, 128, (n, k), dtype=torch.int8,
                                               device=device))
            self.register_buffer("scales", torch.ones(n, dtype=BF16, device=device))

        def forward(self, x):
            return F.linear(x, self.weight.to(x.dtype)) * self.scales

    def build(device):
        return Int8Linear(device), (tensor((1, 1, k), device),), {}
    return build


def chain(blocks):
    """`blocks` tiny matmuls, each followed by a ReLU: under torch.compile one library matmul
    and one generated kernel each, all far shorter than their launches."""
    def fn(x, w):
        for _ in range(blocks):
            x = torch.relu(x @ w)
        return x
    return op(fn, (16, 16), (16, 16), dtype=torch.float32)


QWEN2_05B = dict(model_type="qwen2", hidden_size=896, intermediate_size=4864,
                 num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 vocab_size=151936, max_position_embeddings=32768, tie_word_embeddings=True,
                 rope_theta=1e6, rms_norm_eps=1e-6)      # Qwen2.5-0.5B's config.json
BERT_BASE = dict(model_type="bert")                       # bert-base-uncased's defaults
CONVNEXT_T = dict(model_type="convnext", depths=[3, 3, 9, 3],
                  hidden_sizes=[96, 192, 384, 768])       # facebook/convnext-tiny-224
MOBILENET = dict(model_type="mobilenet_v2")               # google/mobilenet_v2_1.0_224
AS_RUN, COMPILED = ("eager", "graph"), ("compiled", "cudagraphs")
TUNED = "cudagraphs-cdt"      # reduce-overhead under coordinate descent tuning (gpt-fast's)


class TrainStep(torch.nn.Module):
    """A training step's forward: the model's loss under CUDA's float16 autocast over fp32
    weights (torch.cuda.amp, as timm's and DeepLearningExamples' --amp run it): an image
    model's cross-entropy against `target`, a Hugging Face model's own `.loss`. `optimizer`
    names the update the timing runs and the prediction prices."""

    def __init__(self, model, optimizer: str):
        super().__init__()
        self.model, self.optimizer = model.train(), optimizer

    def forward(self, *args, target=None, **kwargs):
        with torch.autocast("cuda", dtype=torch.float16):
            out = self.model(*args, **kwargs)
            return F.cross_entropy(out, target) if target is not None else out.loss


def resnet_train(batch: int, layout_last: bool):
    """ResNet-50's SGD step under AMP, channels-first or channels-last (Lambda's and
    DeepLearningExamples' runs: docs/time-model.md, "Held out: Lambda's training throughputs")."""
    def build(device):
        from fxroof.studies.workload import load
        model, *_ = load(str(ROOT / "models" / "resnet.py"), {"batch": 1, "device": device})
        x = torch.randn(batch, 3, 224, 224, device=device)
        if layout_last:
            model, x = model.to(memory_format=torch.channels_last), \
                x.contiguous(memory_format=torch.channels_last)
        target = torch.zeros(batch, dtype=torch.long, device=device)
        return TrainStep(model, "sgd"), (x,), {"target": target}
    return build


def hf_train(kind: str, batch: int, seq: int):
    """A transformers model's AdamW step under AMP, dropout on: BERT-base SQuAD fine-tuning
    (its eager attention, as DeepLearningExamples writes it) or GPT-2 124M (SDPA with dropout,
    which CUDA's fused kernels draw inside)."""
    def build(device):
        import transformers as tf
        ids = torch.zeros(batch, seq, dtype=torch.long, device=device)
        with torch.device(device):
            if kind == "bert":
                model = tf.BertForQuestionAnswering(tf.BertConfig(attn_implementation="eager"))
                pos = torch.zeros(batch, dtype=torch.long, device=device)
                return TrainStep(model, "adamw"), (), {"input_ids": ids, "start_positions": pos,
                                                       "end_positions": pos}
            model = tf.GPT2LMHeadModel(tf.GPT2Config(attn_implementation="sdpa"))
        return TrainStep(model, "adamw"), (), {"input_ids": ids, "labels": ids}
    return build


def hf_vision_train(config: dict, batch: int, layout_last: bool):
    """A transformers image classifier's SGD step under AMP at 224 px, its own cross-entropy
    (labels): MobileNetV2, the depthwise network of timm's training runs."""
    def build(device):
        import transformers as tf
        cfg = tf.AutoConfig.for_model(**config)
        with torch.device(device):
            model = tf.AutoModelForImageClassification.from_config(cfg)
        x = torch.randn(batch, 3, 224, 224, device=device)
        if layout_last:
            model, x = model.to(memory_format=torch.channels_last), \
                x.contiguous(memory_format=torch.channels_last)
        labels = torch.zeros(batch, dtype=torch.long, device=device)
        return TrainStep(model, "sgd"), (), {"pixel_values": x, "labels": labels}
    return build


def model_cases():
    """(group, name, modes, build): GPU-sized models, in the order they are worth measuring."""
    yield "model", "llama2-7b decode B=1 ctx=2048", AS_RUN, \
        workload("llama.py", preset="llama2-7b", phase="decode", ctx=2048)
    yield "model", "llama2-7b prefill B=1 T=2048", AS_RUN, \
        workload("llama.py", preset="llama2-7b", seq=2048)
    yield "model", "llama2-7b decode B=16 ctx=2048", AS_RUN, \
        workload("llama.py", preset="llama2-7b", phase="decode", ctx=2048, batch=16)
    yield "model", "resnet50 B=64 bf16", AS_RUN, workload("resnet.py", batch=64, dtype="bf16")
    yield "model", "resnet50 B=1 bf16", AS_RUN, workload("resnet.py", batch=1, dtype="bf16")
    yield "model", "vit-base B=64 bf16", AS_RUN, workload("vit.py", batch=64, dtype="bf16")
    yield "model", "vit-base B=1 bf16", AS_RUN, workload("vit.py", batch=1, dtype="bf16")
    yield "model", "gpt2 B=8 T=1024 bf16", AS_RUN, workload("gpt2.py", batch=8, dtype="bf16")
    # transformers' decoders ask for .item() when not tracing, which no graph capture allows
    yield "model", "hf qwen2.5-0.5b T=1024 bf16", ("eager",), hf(QWEN2_05B, seq=1024, dtype="bf16")
    yield "model", "hf qwen2.5-0.5b decode B=8 ctx=1024 bf16", ("eager",), \
        hf(QWEN2_05B, phase="decode", batch=8, ctx=1024, dtype="bf16")
    yield "model", "hf bert-base B=8 T=512 bf16", AS_RUN, hf(BERT_BASE, batch=8, seq=512,
                                                           dtype="bf16")
    yield "model", "hf convnext-tiny B=64 bf16", AS_RUN, hf(CONVNEXT_T, batch=64, dtype="bf16")
    yield "model", "hf mobilenet-v2 B=64 bf16", AS_RUN, hf(MOBILENET, batch=64, dtype="bf16")
    # the convolution networks again with cuDNN's algorithms timed, then channels-last too
    resnet = workload("resnet.py", batch=64, dtype="bf16")
    yield "model", "resnet50 B=64 bf16, autotuned", AS_RUN, autotuned(resnet)
    yield "model", "resnet50 B=64 bf16, channels-last, autotuned", AS_RUN, \
        autotuned(channels_last(resnet))
    yield "model", "hf mobilenet-v2 B=64 bf16, autotuned", AS_RUN, \
        autotuned(hf(MOBILENET, batch=64, dtype="bf16"))
    yield "model", "hf convnext-tiny B=64 bf16, channels-last, autotuned", AS_RUN, \
        autotuned(channels_last(hf(CONVNEXT_T, batch=64, dtype="bf16")))
    # training steps, every held-out source of which fxroof predicts fast (docs/time-model.md)
    yield "model", "resnet50 train B=64 amp", ("train",), resnet_train(64, False)
    yield "model", "resnet50 train B=64 amp, channels-last", ("train",), resnet_train(64, True)
    yield "model", "hf mobilenet-v2 train B=128 amp", ("train",), \
        hf_vision_train(MOBILENET, 128, False)
    yield "model", "hf mobilenet-v2 train B=128 amp, channels-last", ("train",), \
        hf_vision_train(MOBILENET, 128, True)
    yield "model", "hf bert-base squad train B=8 T=384 amp", ("train",), hf_train("bert", 8, 384)
    yield "model", "hf gpt2 train B=4 T=1024 amp", ("train",), hf_train("gpt2", 4, 1024)
    # under torch.compile last: compiling takes the longest
    yield "model", "chain of 1 tiny matmul", ("eager", *COMPILED), chain(1)
    yield "model", "chain of 16 tiny matmuls", ("eager", *COMPILED), chain(16)
    yield "model", "llama2-7b 2 layers decode B=1 ctx=2048", ("eager", *COMPILED, TUNED), \
        workload("llama.py", preset="llama2-7b", phase="decode", ctx=2048, layers=2)
    # gpt-fast's settings: decode under coordinate descent tuning, int8 weights cast in the
    # call (its WeightOnlyInt8Linear), its Mixtral experts gathered (models/moe.py)
    yield "model", "int8 linear 4096 -> 14336, one token", (TUNED,), int8_linear(4096, 14336)
    yield "model", "mixtral-8x7b 2 layers decode B=1 ctx=2048, gathered experts", (TUNED,), \
        workload("moe.py:decoder", preset="mixtral-8x7b", phase="decode", ctx=2048, layers=2,
                 experts="gathered")
    yield "model", "llama2-7b decode B=1 ctx=2048, gpt-fast's compile", (TUNED,), \
        workload("llama.py", preset="llama2-7b", phase="decode", ctx=2048)
    yield "model", "llama2-7b 2 layers prefill T=2048", ("eager", "compiled"), \
        workload("llama.py", preset="llama2-7b", seq=2048, layers=2)
    yield "model", "resnet50 B=64 bf16 compiled", ("compiled",), \
        workload("resnet.py", batch=64, dtype="bf16")
    yield "model", "vit-base B=64 bf16 compiled", ("compiled",), \
        workload("vit.py", batch=64, dtype="bf16")


# -- the memory latency, which the row-walking kernels' waits are priced by ------------------

CHASE_BYTES = 256 << 20     # five times an H100's L2, so each load goes to DRAM
CHASE_LINE = 16             # int64s a 128-byte line: one pointer a line, every line a miss


def chase_case(device):
    """A pointer chase over CHASE_BYTES in one random cycle, a line a step, to be run by one
    thread (time_chase): each load's address is the last load's value, so the loads wait one
    after another, as gpu-benches' gpu-latency and markdewing/AI_kernels time them (the chip
    table's memory_latency_ns)."""
    if device == "meta":            # compare reads the table's figure: nothing to build
        return None, (), {}
    lines = CHASE_BYTES // (8 * CHASE_LINE)
    order = torch.randperm(lines, device=device) * CHASE_LINE
    table = torch.zeros(lines * CHASE_LINE, dtype=torch.int64, device=device)
    table[order] = torch.roll(order, -1)
    return None, (table, int(order[0])), {}


def chase_kernel():
    """The chase as a Triton kernel: `steps` loads, each at the index the last one read."""
    import triton
    import triton.language as tl
    globals().update(tl=tl)     # a jitted kernel looks its names up in the module's globals

    @triton.jit
    def chase(ptr, out, start, steps):
        p = start.to(tl.int64)      # the loop carries the loaded int64s
        for _ in range(steps):
            p = tl.load(ptr + p)
        tl.store(out, p)
    return chase


def time_chase(table, start) -> dict:
    """Seconds a step of the chase: one Triton thread walking 20,000 and 40,000 steps, each
    timed between CUDA events (best of 5), the difference over the 20,000 steps between (the
    launch and the first loads cancel)."""
    chase = chase_kernel()
    out = torch.zeros(1, dtype=torch.int64, device=CUDA)

    def seconds(steps):
        chase[(1,)](table, out, start, steps, num_warps=1)      # compiles, warms
        times = []
        for _ in range(5):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            chase[(1,)](table, out, start, steps, num_warps=1)
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        return min(times)
    return {"measured_s": (seconds(40000) - seconds(20000)) / 20000, "bytes": CHASE_BYTES}


def all_cases():
    yield "latency", "pointer chase over 256 MiB, one thread", ("chase",), chase_case
    for group, name, build in dispatch_cases():
        yield group, name, ("dispatch",), build
    for group, name, build in kernel_cases():
        yield group, name, ("kernel",), build
    yield from model_cases()


# -- timing on the GPU -----------------------------------------------------------------------

def event_median(replay, runs: int) -> float:
    """Median seconds of `replay()` over `runs`, each between two CUDA events."""
    mark, times = marker(CUDA), []
    for _ in range(runs):
        start = mark()
        replay()
        times.append(span(start, mark()))
    return statistics.median(times)


def warm(fn, times: int = 3):
    """Run `fn` on a side stream, as CUDA graph capture asks (libraries set up their
    workspaces outside the capture)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(times):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    sync(CUDA)


def captured(fn):
    """A CUDA graph of `fn()`, returned as its replay."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    sync(CUDA)
    return graph.replay


def time_kernel(fn, args, kwargs, l2_bytes: float) -> dict:
    """Seconds per call of one op: enough copies of its inputs that each call reads them cold,
    calls captured into one graph, replayed."""
    nbytes = sum(a.numel() * a.element_size() for a in args) or 1
    copies = max(1, min(64, math.ceil(L2_MARGIN * l2_bytes / nbytes)))
    sets = [args] + [tuple(a.clone() for a in args) for _ in range(copies - 1)]
    with torch.no_grad():
        warm(lambda: [fn(*a, **kwargs) for a in sets], 1)
        once = event_median(lambda: fn(*args, **kwargs), 3)
        # enough calls that a replay takes about 5 ms, at least one over every copy
        per_graph = max(copies, min(400, math.ceil(5e-3 / max(once, 1e-6))))
        replay = captured(lambda: [fn(*sets[i % copies], **kwargs) for i in range(per_graph)])
        seconds = event_median(replay, 7) / per_graph
    return {"measured_s": seconds, "calls_in_graph": per_graph, "input_copies": copies}


def time_dispatch(fn, args, kwargs) -> dict:
    """Wall seconds per call of `fn` called back to back: the host's pace (best of 3 loops)."""
    with torch.no_grad():
        for _ in range(200):
            fn(*args, **kwargs)
        seconds = host_time(Clock(CUDA, quick=False), lambda: fn(*args, **kwargs),
                            n=DISPATCH_CALLS, loops=3)
    return {"measured_s": seconds, "calls": DISPATCH_CALLS}


def time_wall(call, repeat: int) -> dict:
    """Wall seconds of `call()`, synchronized each time: median and fastest."""
    walls = [elapsed(call, CUDA) for _ in range(repeat)]
    return {"measured_s": statistics.median(walls), "best_s": min(walls), "repeat": repeat}


def train_step(step, args, kwargs):
    """One eager training step of a TrainStep as a call: zero_grad, forward, backward, the
    optimizer's step."""
    make = {"sgd": lambda ps: torch.optim.SGD(ps, lr=1e-4),
            "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-4)}[step.optimizer]
    opt = make(step.parameters())

    def one():
        opt.zero_grad(set_to_none=True)
        step(*args, **kwargs).backward()
        opt.step()
    return one


def autotuned_cudnn():
    """cuDNN timing its algorithms for each shape, as training scripts set it."""
    return torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False)


def time_train(step, args, kwargs) -> dict:
    """Wall seconds of one eager training step of a TrainStep, cuDNN autotuned."""
    one = train_step(step, args, kwargs)
    with autotuned_cudnn():
        warm(one)
        once = time_wall(one, 3)["measured_s"]
        return time_wall(one, max(5, min(20, math.ceil(1.0 / once))))


def time_model(mode: str, model, args, kwargs) -> dict:
    if mode == "train":
        return time_train(model, args, kwargs)
    if mode == TUNED:
        import torch._inductor.config as inductor_config
        torch._dynamo.reset()
        with inductor_config.patch(coordinate_descent_tuning=True):
            return time_model("cudagraphs", model, args, kwargs)
    forward = (lambda: model(*args, **kwargs))
    with torch.no_grad():
        if mode in ("compiled", "cudagraphs"):
            compiled = torch.compile(model, mode="reduce-overhead" if mode == "cudagraphs"
                                     else None)
            compile_s = elapsed(lambda: compiled(*args, **kwargs), CUDA)
            for _ in range(3):
                compiled(*args, **kwargs)
            return time_wall(lambda: compiled(*args, **kwargs), 20) | {"compile_s": compile_s}
        warm(forward)
        once = time_wall(forward, 3)["measured_s"]
        repeat = max(5, min(30, math.ceil(0.5 / once)))
        if mode == "eager":
            return time_wall(forward, repeat)
        replay = captured(forward)                         # mode == "graph"
        return {"measured_s": event_median(replay, repeat), "repeat": repeat}


def record_trace(fn, args, kwargs, device: torch.device, grad: bool = False) -> bytes:
    """The Chrome trace of one forward after a warm one (grad: of one call with autograd on, a
    training step): aten ops and, on a GPU, the kernels each launched, for
    `fxroof.compare_trace`."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    with torch.set_grad_enabled(grad):
        fn(*args, **kwargs)
        sync(device)
        with profile(activities=activities) as prof:
            fn(*args, **kwargs)
            sync(device)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        return path.read_bytes()


def graph_slower(rows: list, name: str) -> bool:
    """Whether `name` ran slower as one CUDA graph than eager (BERT-base on the H200, 9.5 ms
    against 4.3, 2026-12-04): a graph replays the eager kernels, so it should not."""
    times = {r["mode"]: r["measured_s"] for r in rows
             if r.get("name") == name and "measured_s" in r}
    return "graph" in times and "eager" in times and times["graph"] > 1.2 * times["eager"]


def graph_trace(fn, args, kwargs) -> bytes:
    """The Chrome trace of one replay of the model's eager forward captured as a CUDA graph (the
    kernels the graph runs), kept as "NAME [graph]", which `compare --traces` leaves aside."""
    with torch.no_grad():
        fn(*args, **kwargs)
        sync(CUDA)
        replay = captured(lambda: fn(*args, **kwargs))
    return record_trace(lambda: replay(), (), {}, CUDA)


def add_trace(archive: Path, name: str, trace: bytes) -> None:
    """One archive for every trace (a lent GPU hands back few files), written as each is taken."""
    with zipfile.ZipFile(archive, "a", zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{name}.json", trace)


def measure(ns) -> int:
    if not torch.cuda.is_available():
        print("gpu_measure: no CUDA device here; run `measure` on a GPU, `compare` anywhere")
        return 2
    t_start = time.perf_counter()
    # the table's entry for the GPU at hand (a lent GPU may be an H100 or an H200: the
    # recorded chip must be the one that ran), as calibrate finds it
    from fxroof.measure.calibrate import table_entry
    found = table_entry(torch.device("cuda", 0), None)
    chip_name = ns.chip or (found.name if found is not None else None)
    if chip_name is None:
        print(f"gpu_measure: the chip table has no entry named {torch.cuda.get_device_name(0)!r}; "
              f"give the nearest with --chip (`fxroof chips` lists them)")
        return 2
    props = torch.cuda.get_device_properties(0)
    l2 = float(getattr(props, "L2_cache_size", 50 << 20))
    out = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "cuda": torch.version.cuda, "date": str(datetime.date.today()),
           "chip": chip_name, "sm_count": props.multi_processor_count, "l2_bytes": l2,
           "memory_bytes": props.total_memory, "rows": []}
    path = Path(ns.out)
    if ns.traces:
        Path(ns.traces).unlink(missing_ok=True)
    for group, name, modes, build in all_cases():
        if ns.only and not any(o in name for o in ns.only):
            continue
        if time.perf_counter() - t_start > ns.budget_s:
            out["rows"].append({"group": group, "name": name, "skipped": "over the budget"})
            continue
        try:
            fn, args, kwargs = build("cuda")
        except Exception as e:                       # noqa: BLE001 - recorded, the run goes on
            out["rows"].append({"group": group, "name": name, "error": f"build: {e!r}"[:300]})
            print(f"{name}: build failed: {e!r}"[:200], flush=True)
            continue
        for mode in modes:
            row = {"group": group, "name": name, "mode": mode}
            try:
                if mode == "kernel":
                    row |= time_kernel(fn, args, kwargs, l2)
                elif mode == "chase":
                    row |= time_chase(*args)
                elif mode == "dispatch":
                    row |= time_dispatch(fn, args, kwargs)
                else:
                    row |= time_model(mode, fn, args, kwargs)
                print(f"{name} [{mode}]: {row['measured_s'] * 1e6:.1f} us", flush=True)
            except Exception as e:                   # noqa: BLE001 - recorded, the run goes on
                row["error"] = repr(e)[:300]
                print(f"{name} [{mode}]: failed: {e!r}"[:200], flush=True)
            out["rows"].append(row)
            path.write_text(json.dumps(out, indent=1))
        if ns.traces and "train" in modes:
            try:        # a step's kernels, forward, backward and update: where a step's miss is
                with autotuned_cudnn():
                    add_trace(Path(ns.traces), name, record_trace(
                        train_step(fn, args, kwargs), (), {}, CUDA, grad=True))
            except Exception as e:                   # noqa: BLE001 - the timings stand
                print(f"{name}: trace failed: {e!r}"[:200], flush=True)
        if ns.traces and "eager" in modes:
            try:        # the kernels behind a model's time, to find where a miss comes from
                add_trace(Path(ns.traces), name, record_trace(fn, args, kwargs, CUDA))
                if graph_slower(out["rows"], name):
                    add_trace(Path(ns.traces), f"{name} [graph]", graph_trace(fn, args, kwargs))
            except Exception as e:                   # noqa: BLE001 - the timings stand
                print(f"{name}: trace failed: {e!r}"[:200], flush=True)
        del fn, args, kwargs
        torch.cuda.empty_cache()
    out["seconds"] = time.perf_counter() - t_start
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}: {sum('measured_s' in r for r in out['rows'])} timings in "
          f"{out['seconds']:.0f} s")
    return 0


# -- predictions beside the measurements -------------------------------------------------------

def predicted(mode: str, fn, args, kwargs, chip) -> float:
    from fxroof import analyze
    if mode == "chase":         # a load's round trip to memory: the chip's figure
        return chip.memory_latency_s
    from fxroof.graph.capture import FunctionModule
    model = fn if isinstance(fn, torch.nn.Module) else FunctionModule(fn)
    if mode in ("kernel", "graph"):
        r = analyze(model, args, kwargs, chip=chip, mode="eager")
        # each kernel of a replayed graph takes at least the graph's launch pace
        return sum(max(k.expected.device_s, chip.graph_launch_s)
                   for k in r.kernels if k.category != "view")
    if mode == TUNED:
        import torch._inductor.config as inductor_config
        with inductor_config.patch(coordinate_descent_tuning=True):
            return analyze(model, args, kwargs, chip=chip, mode="cudagraphs").time_s
    if mode == "train":
        return analyze(model, args, kwargs, chip=chip, mode="eager", train=True,
                       optimizer=model.optimizer).time_s
    if mode == "dispatch":      # a loop of one op: no model code around its calls, no glue
        return analyze(model, args, kwargs, chip=dataclasses.replace(chip, glue_s=0.0),
                       mode="eager").time_s
    return analyze(model, args, kwargs, chip=chip, mode=mode).time_s


def compare(ns) -> int:
    from tabulate import tabulate
    from fxroof.chips import chip as find_chip
    data = json.loads(Path(ns.file).read_text())
    chip = find_chip(ns.chip or data["chip"])
    builds = {name: build for _group, name, _modes, build in all_cases()}
    rows, ratios = [], {}
    for r in data["rows"]:
        if "measured_s" not in r or (ns.only and not any(o in r["name"] for o in ns.only)):
            continue
        fn, args, kwargs = builds[r["name"]]("meta")
        p = predicted(r["mode"], fn, args, kwargs, chip)
        ratio = p / r["measured_s"]
        sets = (CALIBRATION_PROBES.get(r["name"], "") if chip.name.startswith("calibrated-")
                else CALIBRATES.get((chip.name, r["name"]), ""))
        if not sets:
            ratios.setdefault(r["group"] if r["group"] != "model" else r["mode"], []).append(
                (ratio, r["name"]))
        rows.append([r["name"], r["mode"], f"{r['measured_s'] * 1e6:,.1f}", f"{p * 1e6:,.1f}",
                     f"{ratio:.2f}", f"sets {sets}" if sets else ""])
    print(f"{data['gpu']} (torch {data['torch']}, {data['date']}) beside {chip.title}")
    print(tabulate(rows, headers=["case", "mode", "measured us", "predicted us", "ratio", ""],
                   colalign=("left", "left", "right", "right", "right", "left"),
                   disable_numparse=True))
    summary = []
    for group, rs in ratios.items():
        errors = sorted(abs(x - 1) for x, _ in rs)
        worst = max(rs, key=lambda x: abs(math.log(x[0])))
        summary.append([group, len(rs), f"{100 * statistics.median(errors):.0f}%",
                        f"{100 * sum(e <= 0.25 for e in errors) / len(rs):.0f}%",
                        f"{math.exp(statistics.fmean(math.log(x) for x, _ in rs)):.2f}",
                        f"{worst[0]:.2f} {worst[1]}"])
    print()
    print(tabulate(summary, headers=["group", "cases", "median |error|", "within 25%",
                                     "geo-mean ratio", "worst"], disable_numparse=True))
    if ns.traces:
        compare_traces(Path(ns.traces), chip, ns.only)
    return 0


def trace_misses(comparison) -> list:
    """Per op family: kernels, predicted and measured device seconds, largest miss first."""
    from fxroof.measure.profile_trace import family
    by = {}
    for row in comparison.rows:
        key = family(row.op.split(" ")[0])          # "layer_norm +1": the op a kernel is named by
        n, p, m = by.get(key, (0, 0.0, 0.0))
        by[key] = (n + 1, p + row.predicted_s, m + row.measured_s)
    return sorted(([f, *v] for f, v in by.items()), key=lambda r: -abs(r[3] - r[2]))


def _us_row(label, kernels, predicted: float, measured: float) -> list:
    return [label, kernels, f"{predicted * 1e6:,.0f}", f"{measured * 1e6:,.0f}",
            f"{predicted / measured:.2f}" if measured else "-"]


def compare_traces(archive: Path, chip, only) -> None:
    """Each model's profiled eager forward beside its eager prediction, kernel by kernel
    (fxroof.compare_trace): which ops a whole model's miss comes from."""
    from tabulate import tabulate
    from fxroof import analyze, compare_trace
    from fxroof.graph.capture import FunctionModule
    builds = {name: build for _group, name, _modes, build in all_cases()}
    with zipfile.ZipFile(archive) as z, tempfile.TemporaryDirectory() as tmp:
        for entry in z.namelist():
            name = entry.removesuffix(".json")
            if name not in builds or (only and not any(o in name for o in only)):
                continue
            fn, args, kwargs = builds[name]("meta")
            model = fn if isinstance(fn, torch.nn.Module) else FunctionModule(fn)
            step = {"train": True, "optimizer": model.optimizer} \
                if isinstance(model, TrainStep) else {}
            report = analyze(model, args, kwargs, chip=chip, mode="eager", **step)
            path = Path(tmp) / "trace.json"
            path.write_bytes(z.read(entry))
            c = compare_trace(report, path)
            matched = sum(r.measured_s for r in c.rows)
            lost = sum(c.unmatched_ops.values())
            # the step's span against the kernels' sum: where they part, the host held it back
            print(f"\n{name}: step predicted {c.predicted_s * 1e6:,.0f} us, its kernels "
                  f"{c.measured_s * 1e6:,.0f} us from first to last; kernels predicted "
                  f"{sum(r.predicted_s for r in c.rows) * 1e6:,.0f} us on the chip, measured "
                  f"{matched * 1e6:,.0f} us; {len(c.rows)} of "
                  f"{len(c.rows) + len(c.unmatched_kernels)} predicted kernels matched; "
                  f"{lost * 1e6:,.0f} us of the trace matched nothing")
            rows = [_us_row(f, n, p, m) for f, n, p, m in trace_misses(c)[:8]]
            worst = sorted(c.rows, key=lambda r: -abs(r.measured_s - r.predicted_s))[:3]
            rows += [_us_row(f"(kernel) {r.op} {r.module}", 1, r.predicted_s, r.measured_s)
                     for r in worst]
            rows += [[f"(unmatched) {op}", "", "", f"{t * 1e6:,.0f}", ""] for op, t in
                     sorted(c.unmatched_ops.items(), key=lambda kv: -kv[1])[:3]]
            print(tabulate(rows, headers=["op", "kernels", "predicted us", "measured us",
                                          "ratio"], disable_numparse=True,
                           colalign=("left", "right", "right", "right", "right")))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="step", required=True)
    m = sub.add_parser("measure", help="time every case on this machine's GPU")
    m.add_argument("--out", default="gpu-measured.json")
    m.add_argument("--chip", help="the table's chip for this GPU (recorded; default: the entry "
                                  "whose alias is the name the driver reports)")
    m.add_argument("--budget-s", type=float, default=330, help="skip the cases left after this")
    m.add_argument("--only", nargs="*", default=[])
    m.add_argument("--traces", help="also profile each model's eager forward and each "
                                    "training step into this zip")
    c = sub.add_parser("compare", help="predict every measured case and print the table")
    c.add_argument("file")
    c.add_argument("--chip", help="predict on this chip (name or file) instead of the file's")
    c.add_argument("--only", nargs="*", default=[])
    c.add_argument("--traces", help="the zip `measure --traces` wrote: each model kernel by "
                   "kernel")
    ns = ap.parse_args(argv)
    return measure(ns) if ns.step == "measure" else compare(ns)


if __name__ == "__main__":
    sys.exit(main())
