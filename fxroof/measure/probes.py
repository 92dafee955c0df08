"""What `fxroof calibrate` runs: single ops at two sizes, and small modules written as models are.

OP_PROBES    one aten op each, called as model code calls it, on a tiny input (its fixed cost:
             dispatch, allocation, the library's set-up) and, unless it is a matrix op or has no
             FLOPs, on a cache-resident mid-sized one (its work rate). The op name each is filed
             under is the one fxroof's capture gives it, read off the probe's own graph, so it
             matches the names in a user's report.
VIEW_PROBES  view ops as model code calls them: a dispatch each, no kernel.
BLOCK_PROBES small modules of the usual kinds; what their eager run costs beyond their ops' own
             costs is the per-op glue of model code (module calls, views, Python arithmetic).
MatrixProbe  layer-shaped convolutions, linears and attention: the matrix rate layers attain.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fxroof.measure.machine import last_level_cache

TINY, MID = "tiny", "mid"


@dataclass(frozen=True)
class OpProbe:
    label: str                                   # what the probe calls, for sources and errors
    fn: Callable
    inputs: Callable[[str, torch.device], tuple]  # size (TINY or MID), device -> arguments
    own_rate: str = ""   # a matrix op filed under this name takes its rate from its MID call,
                         # not from the layer probe (no layer-shaped product runs it)


def _rows(size: str, dev: torch.device) -> int:
    # tiny: 4 x 16 elements, all fixed cost; mid: 256 Ki fp32 elements = 1 MiB a thread, the size
    # of a CPU-sized model's activations, past a core's L2 but inside the last-level cache. Some
    # kernels change pace with size, so the rate is taken where models run. A thread's share
    # stays 1 MiB at any thread count (ATen splits the op over its threads): at two, a 1 MiB
    # tensor is two halves that each fit their core's L2, and the rate came out 4x one thread's.
    return 4 if size == TINY else 4096 * _threads(dev)


def _threads(dev: torch.device) -> int:
    """The threads an elementwise op is split over: torch's CPU threads, 1 on an accelerator;
    no more than keep a probe's tensors (1 MiB a thread each) to an eighth of the last-level
    cache, so that a many-core CPU's probe stays inside it."""
    if torch.device(dev).type != "cpu":
        return 1
    cache = last_level_cache()
    fits = cache // (8 << 20) if cache else torch.get_num_threads()
    return max(1, min(torch.get_num_threads(), fits))


def _x(size, dev, positive=False):
    x = torch.randn(_rows(size, dev), 64 if size == MID else 16, device=dev)
    return x.abs() + 0.5 if positive else x


def _vectors(count: int, positive: bool = False):
    return lambda size, dev: tuple(_x(size, dev, positive) for _ in range(count))


_one, _two, _positive = _vectors(1), _vectors(2), _vectors(1, positive=True)


def _image(size, dev):
    # (threads, 16, 128, 128): 256 Ki elements a thread; tiny (1, 4, 4, 4)
    shape = (1, 4, 4, 4) if size == TINY else (_threads(dev), 16, 128, 128)
    return (torch.randn(shape, device=dev),)


def _norm_args(size, dev):
    x = _x(size, dev)
    return x, torch.ones(x.shape[-1], device=dev), torch.zeros(x.shape[-1], device=dev)


def _batch_norm_args(size, dev):
    (img,) = _image(size, dev)
    zeros, ones = torch.zeros(img.shape[1], device=dev), torch.ones(img.shape[1], device=dev)
    return img, zeros, ones, ones, zeros          # mean, var, weight, bias


def _embedding_args(size, dev):
    return torch.randint(0, 512, (_rows(size, dev),), device=dev), torch.randn(512, 64, device=dev)


def _depthwise(size, dev):
    # tiny (1, 4, 4, 4); mid (threads, 64, 64, 64), 256 Ki elements a thread, the channels of a
    # layer (oneDNN's depthwise kernel took 3x as long per byte on 16 channels of 128 x 128)
    shape = (1, 4, 4, 4) if size == TINY else (_threads(dev), 64, 64, 64)
    return torch.randn(shape, device=dev), torch.randn(shape[1], 1, 3, 3, device=dev)


def _fixed(*shapes):
    """Inputs of these shapes at either size: a matrix op's probe measures its fixed cost only."""
    return lambda _size, dev: tuple(torch.randn(shape, device=dev) for shape in shapes)


def _conv(c_in, c_out, k, image=8, batch=1):
    return _fixed((batch, c_in, image, image), (c_out, c_in, k, k))


_LINEAR, _BATCHED = _fixed((4, 16), (16, 16), (16,)), _fixed((2, 4, 16), (2, 16, 4))


OP_PROBES = (
    # pointwise
    *(OpProbe(fn.__name__, fn, _two) for fn in (torch.add, torch.sub, torch.mul, torch.div)),
    *(OpProbe(fn.__name__, fn, _one) for fn in (F.relu, F.gelu, F.silu, torch.sigmoid, torch.tanh,
                                                torch.exp, torch.neg)),
    OpProbe("F.gelu(approximate='tanh')", lambda x: F.gelu(x, approximate="tanh"), _one),
    OpProbe("torch.rsqrt", torch.rsqrt, _positive), OpProbe("x.pow(2)", lambda x: x.pow(2), _one),
    # norms and softmax
    OpProbe("F.softmax", lambda x: F.softmax(x, dim=-1), _one),
    OpProbe("F.layer_norm", lambda x, w, b: F.layer_norm(x, x.shape[-1:], w, b), _norm_args),
    OpProbe("F.rms_norm", lambda x, w, _b: F.rms_norm(x, x.shape[-1:], w), _norm_args),
    OpProbe("F.batch_norm (eval)", lambda x, m, v, w, b: F.batch_norm(x, m, v, w, b),
            _batch_norm_args),
    # reductions and pooling
    OpProbe("x.mean(-1)", lambda x: x.mean(-1, keepdim=True), _one),
    OpProbe("x.sum(-1)", lambda x: x.sum(-1), _one),
    OpProbe("F.max_pool2d", lambda x: F.max_pool2d(x, 2), _image),
    OpProbe("F.avg_pool2d", lambda x: F.avg_pool2d(x, 2), _image),
    OpProbe("F.adaptive_avg_pool2d", lambda x: F.adaptive_avg_pool2d(x, 1), _image),
    # copies and gathers (no FLOPs: their work is memory traffic)
    OpProbe("torch.cat", lambda x, y: torch.cat([x, y], dim=-1), _two),
    OpProbe("x.t().contiguous()", lambda x: x.t().contiguous(), _one),
    OpProbe("F.pad", lambda x: F.pad(x, (1, 1, 1, 1)), _image),    # "pad(fill)": two kernels
    OpProbe("F.embedding", lambda i, w: F.embedding(i, w), _embedding_args),
    # matrix ops: fixed cost only; their rate is the layer rate (MatrixProbe)
    OpProbe("F.linear", F.linear, _LINEAR),
    OpProbe("torch.addmm", lambda x, w, b: torch.addmm(b, x, w), _LINEAR),
    OpProbe("torch.mm", lambda x, w, _b: torch.mm(x, w), _LINEAR),
    OpProbe("torch.matmul", torch.matmul, _BATCHED),
    OpProbe("torch.bmm", torch.bmm, _BATCHED),
    # A CPU build runs a convolution through oneDNN or its own im2col code, by a rule on the
    # call's shapes (fxroof.cost.formulas.conv.cpu_library), and entering oneDNN costs more. Each
    # is filed apart ("conv2d(onednn)", "conv2d(native)"), as the median over the layer kinds
    # that take it in models: 3x3, 1x1 and 2x2/2 in a small network's body (native); a 7x7/2
    # stem, an 8x8/8 patch embedding and a 3x3 on a batch of two (oneDNN).
    OpProbe("F.conv2d 3x3", lambda x, w: F.conv2d(x, w, padding=1), _conv(8, 8, 3)),
    OpProbe("F.conv2d 1x1", F.conv2d, _conv(16, 32, 1)),
    OpProbe("F.conv2d 2x2/2", lambda x, w: F.conv2d(x, w, stride=2), _conv(16, 16, 2)),
    OpProbe("F.conv2d 7x7/2 stem", lambda x, w: F.conv2d(x, w, stride=2, padding=3),
            _conv(3, 16, 7, image=16)),
    OpProbe("F.conv2d 8x8/8 patches", lambda x, w: F.conv2d(x, w, stride=8),
            _conv(3, 64, 8, image=32)),
    OpProbe("F.conv2d 3x3, batch of 2", lambda x, w: F.conv2d(x, w, padding=1),
            _conv(8, 8, 3, batch=2)),
    # a depthwise convolution (MobileNet, EfficientNet, ConvNeXt): on a CPU oneDNN's kernel for
    # it, between two reorders of the activations, filed apart with a rate of its own
    OpProbe("F.conv2d 3x3 depthwise", lambda x, w: F.conv2d(x, w, padding=1, groups=x.shape[1]),
            _depthwise, own_rate="conv2d(onednn-depthwise)"),
    OpProbe("F.scaled_dot_product_attention (causal)",
            lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
            _fixed(*[(1, 2, 8, 16)] * 3)),
)


# View ops: no kernel, but each is a call from Python in eager model code.
VIEW_PROBES = (
    ("x.view", lambda x: x.view(-1)), ("x.reshape", lambda x: x.reshape(2, -1)),
    ("x.transpose", lambda x: x.transpose(0, 1)), ("x.permute", lambda x: x.permute(1, 0)),
    ("x.unsqueeze", lambda x: x.unsqueeze(0)), ("x[:, :8]", lambda x: x[:, :8]),
    ("x.expand", lambda x: x[:1].expand(4, -1)), ("x.split", lambda x: x.split(8, dim=-1)),
    ("x.flatten", lambda x: x.flatten()), ("x.to(same dtype)", lambda x: x.to(x.dtype)),
)


# -- small modules written as model code usually is -----------------------------------------

class TransformerBlock(nn.Module):
    """Pre-norm attention + GELU MLP."""

    def __init__(self, dim: int = 64, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.up, self.down = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):                                        # (B, T, C)
        B, T, C = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(C, dim=-1)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)   # (B, nh, T, hs)
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, C))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class GatedMLP(nn.Module):
    """RMS norm spelt out in pointwise ops, then a SiLU-gated MLP, as Llama-style code has it."""

    def __init__(self, dim: int = 64, hidden: int = 172):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.w1, self.w3 = nn.Linear(dim, hidden, bias=False), nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):                                        # (B, T, C)
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


class ConvBlock(nn.Module):
    def __init__(self, ch: int = 16):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch)
        self.conv2, self.bn2 = nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch)

    def forward(self, x):                                        # (B, C, H, W)
        y = F.relu(self.bn1(self.conv1(x)))
        return F.max_pool2d(F.relu(self.bn2(self.conv2(y)) + x), 2)


BLOCK_PROBES = ((TransformerBlock, (1, 64, 64)), (GatedMLP, (1, 64, 64)),
                (ConvBlock, (1, 16, 16, 16)))


class MatrixProbe(nn.Module):
    """Layer-shaped convolutions, linears and causal attention, about a third of the FLOPs each;
    every product has 1,024 rows (tokens or pixels: chip.PROBE_ROWS)."""
    INPUT = (1, 64, 32, 32)

    def __init__(self):
        super().__init__()
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.conv1 = nn.Conv2d(64, 256, 1, bias=False)
        self.up, self.down = nn.Linear(64, 256), nn.Linear(256, 256)

    def forward(self, x):                                        # (1, 64, 32, 32)
        y = self.conv1(self.conv3(x))                            # (1, 256, 32, 32)
        # tokens contiguous, as a model's linears get them (a norm's output): ATen's fallback
        # for a dtype without a fast path runs a transposed input another, slower way
        h = self.down(self.up(x.flatten(2).transpose(1, 2).contiguous()))   # (1, 1024, 256)
        # heads of 64, as most models' are (BERT, GPT-2, ViT, Whisper; Llama's 128): a CPU's
        # attention kernel runs heads of 16 at two thirds of 64's pace (one thread, a Zen 4 VM:
        # 52 against 81 GFLOP/s at 512 tokens; 128 at 65)
        q, k, v, _ = (t.reshape(2, 512, 1, 64).transpose(1, 2) for t in h.split(64, dim=-1))
        return y, F.scaled_dot_product_attention(q, k, v, is_causal=True)   # (2, 1, 512, 64)


class SkinnyProbe(nn.Module):
    """Products of fewer rows than MatrixProbe's, as a small batch or a small image's last
    stages have: a linear of 4 tokens and a 1x1 convolution on 2 x 2 and on 7 x 7 pixels (256
    -> 1,024 each; the convolutions' inputs small enough for PyTorch's native code)."""
    INPUT = (1, 256, 7, 7)

    def __init__(self):
        super().__init__()
        self.conv, self.small_conv = (nn.Conv2d(256, 1024, 1, bias=False) for _ in range(2))
        self.linear = nn.Linear(256, 1024, bias=False)

    def forward(self, x):                                        # (1, 256, 7, 7)
        corner = x[..., :2, :2].contiguous()                     # (1, 256, 2, 2)
        tokens = corner.flatten(2).transpose(1, 2).contiguous()  # (1, 4, 256)
        return self.conv(x), self.small_conv(corner), self.linear(tokens)
