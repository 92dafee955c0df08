"""fxroof's fused bytes against torch.compile's Inductor on the same small models (CPU)."""
import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import needs_inductor_hook

from fxroof.measure.inductor import compare, inductor_kernels

pytestmark = needs_inductor_hook

MODELS = Path(__file__).resolve().parents[1] / "models"
TOLERANCE = 0.05   # fxroof's fused bytes within 5% of Inductor's (fxroof following its C++ backend)


def workload(name: str, **options):
    spec = importlib.util.spec_from_file_location(f"inductor_{name}", MODELS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model, args, *rest = module.workload(device="cpu", **options)
    return model, args, (rest[0] if rest else None)


class LayerNormResidual(nn.Module):
    def __init__(self, dim=64):
        super().__init__()
        self.ln, self.fc = nn.LayerNorm(dim), nn.Linear(dim, dim)

    def forward(self, x, r):
        h = x + r
        return h + self.fc(self.ln(h))


class Block(nn.Module):
    """A GPT-2 block written out by hand: attention as two matmuls around a masked softmax."""

    def __init__(self, dim=64, heads=4, seq=16):
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc, self.out = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.register_buffer("mask", torch.tril(torch.ones(seq, seq, dtype=torch.bool)))

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // self.heads)     # (B, nh, T, T)
        att = att.masked_fill(~self.mask[:T, :T], float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)                    # (B, T, C)
        x = x + self.proj(y)
        return x + self.out(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))


class ResidualBlock(nn.Module):
    """A ResNet basic block as torchvision writes it: ReLU(inplace=True) and `out += identity`,
    in-place writes over intermediates that torch.compile turns into functional ops."""

    def __init__(self, c=8):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


def pointwise_chain(x, b):
    return ((x.cos() * b).relu() + 1).exp().sigmoid()


def softmax(x):
    return torch.softmax(x, -1)


def sums_over_each_axis(x):
    # one input, two reductions of different outputs: Inductor fuses reductions only of the
    # same (outputs, reduced elements), so these are two kernels each reading x
    return x.sum(0), x.sum(1)


# (id, build) -> (model, args, kwargs); the tolerance is 10% unless a comment says why not.
CASES = {
    "pointwise chain": lambda: (pointwise_chain, (torch.randn(64, 128), torch.randn(128)), None),
    "softmax": lambda: (softmax, (torch.randn(32, 128),), None),
    "sums over each axis": lambda: (sums_over_each_axis, (torch.randn(64, 32),), None),
    "layer norm + residual": lambda: (LayerNormResidual().eval(),
                                      (torch.randn(8, 16, 64), torch.randn(8, 16, 64)), None),
    "gpt2 block by hand": lambda: (Block().eval(), (torch.randn(2, 16, 64),), None),
    "residual block, in-place relu": lambda: (ResidualBlock().eval(),
                                              (torch.randn(2, 8, 16, 16),), None),
    "mlp": lambda: workload("mlp", preset="tiny", batch=4),
    "gpt2": lambda: workload("gpt2", size="tiny", seq=16),
    "bert": lambda: workload("bert", size="tiny", seq=16),
    "llama": lambda: workload("llama", preset="tiny", seq=16),
    "moe": lambda: workload("moe", preset="tiny", seq=16),
    "vit": lambda: workload("vit", size="tiny"),
    "resnet": lambda: workload("resnet", image=32),
}

@pytest.fixture(scope="module", params=sorted(CASES))
def comparison(request):
    model, args, kwargs = CASES[request.param]()
    return request.param, compare(model, args, kwargs)


def test_fused_bytes_match_inductor(comparison):
    name, c = comparison
    assert abs(c.rel_diff) <= TOLERANCE, f"{name}: {c.rel_diff:+.1%}\n{c}"


def test_kernel_counts_match_inductor(comparison):
    name, c = comparison
    # the C++ backend's rules (docs/fusion.md): gathers inlined into the embedding sums, a conv's
    # batch norm and ReLU one kernel, a cat's view inputs and a matmul's unfoldable operands
    # copied by kernels of their own, a softmax over a broadcast mask split at its exp, a
    # reduction fused into another only where both have the same outputs and reduced elements
    # (ResNet's stem: its max pool a kernel of its own after the batch norm's statistics).
    assert len(c.fxroof) == len(c.inductor), f"{name}\n{c}"


def test_exact_agreement_on_simple_fusions(comparison):
    name, c = comparison
    if name not in ("pointwise chain", "softmax", "layer norm + residual", "mlp",
                    "residual block, in-place relu"):
        pytest.skip("not one of the simple fusions")
    assert c.inductor_bytes == c.fxroof_bytes
    assert len(c.inductor) == len(c.fxroof)
    if name == "pointwise chain":
        # x (64,128) and b (128,) read once, the result written once: (8192+128+8192)*4 = 66048
        assert c.fxroof_bytes == 66048
    if name == "residual block, in-place relu":
        # conv, bn1 + relu_, conv, bn2 + add_ + relu_: a conv reads its 2x8x16x16 input (16384)
        # and 8x8x3x3 weight (2304), a batch norm its input and 4 vectors of 8 (128), the last
        # kernel x too; each writes one 2x8x16x16 tensor
        assert [k.bytes_read for k in c.fxroof] == [18688, 16512, 18688, 16512 + 16384]
        assert [k.bytes_written for k in c.fxroof] == [16384] * 4


def test_inductor_kernels_report_extern_matmuls():
    model, args, _ = workload("mlp", preset="tiny", batch=4)
    ks = inductor_kernels(model, args)
    externs = [k for k in ks if k.extern]
    assert len(externs) == 2 and all("mm" in k.target for k in externs)   # addmm: Linear layers
    # the first Linear reads x (4*16*4 = 256), weight (64*16*4 = 4096) and bias (64*4 = 256)
    assert externs[0].bytes_read == 256 + 4096 + 256
    assert externs[0].bytes_written == 4 * 64 * 4
    assert [k.bytes for k in ks if not k.extern] == [2 * 4 * 64 * 4]        # the gelu


def test_layout_optimization_is_what_separates_conv_models():
    """With Inductor's default layout optimization on, it copies conv inputs and weights to
    channels-last on every call; fxroof keeps the model's layout (as a frozen deployment would),
    so the gap is those copies: here the 1x3x32x32 image and the 64x3x8x8 patch weight, each
    read and written once."""
    model, args, _ = workload("vit", size="tiny")
    off = compare(model, args)
    on = compare(model, args, layout_optimization=True)
    assert on.inductor_bytes - off.inductor_bytes == 2 * (3 * 32 * 32 + 64 * 3 * 8 * 8) * 4
    # (fxroof's side does not depend on Inductor's layout setting)
