"""scaled_dot_product_attention on inputs PyTorch's fused kernels do not take: its math path,
against PyTorch's own run of it (profiler, FlopCounterMode) and hand arithmetic."""
import pytest
import torch
import torch.nn.functional as F
from helpers import fn_module
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

import fxroof


class BlockAttention(torch.nn.Module):
    """NesT's attention: heads over (batch, heads, blocks, tokens, head size)."""

    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Linear(32, 96)

    def forward(self, x):                              # (batch, blocks, tokens, 32)
        b, t, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, t, n, 3, 2, c // 2).permute(3, 0, 4, 1, 2, 5).unbind(0)
        return F.scaled_dot_product_attention(q, k, v)


def _pytorch_ops(fn, *args) -> list:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn(*args)
    return [e.name.removeprefix("aten::") for e in prof.events()]


def test_five_dim_attention_runs_the_math_path_pytorch_runs():
    # 2 images, 4 blocks of 49 tokens, 2 heads of 16: PyTorch's fused kernels take 4-D inputs
    # only, so it computes q @ k^T, a softmax over the scores and @ v, as its profiler shows
    x = torch.randn(2, 4, 49, 32)
    model = torch.nn.Sequential(BlockAttention())
    ran = _pytorch_ops(model, x)
    assert ran.count("bmm") == 2 and ran.count("_safe_softmax") == 1
    r = fxroof.analyze(model, (x,), chip="h100-sxm")
    ops = [n.op for n in r.nodes if n.category != "view"]
    assert "scaled_dot_product_attention" not in ops
    assert ops.count("bmm") == 2 and ops.count("_safe_softmax") == 1
    # the scores reach memory: 2 x 2 heads x 4 blocks = 16 matrices of 49 x 49 in fp32
    scores = 16 * 49 * 49 * 4                                  # 153,664 B
    (softmax,) = [n for n in r.nodes if n.op == "_safe_softmax"]
    assert (softmax.bytes_read, softmax.bytes_written) == (scores, scores)
    # FLOPs as PyTorch counts its own run: the projection and the two products
    with FlopCounterMode(display=False) as counter:
        model(x)
    assert sum(n.flops for n in r.nodes if n.category == "matmul") == counter.get_total_flops()
    # the spelled-out ops keep the attention's module
    assert {n.module for n in r.nodes if n.op in ("bmm", "_safe_softmax")} == {"0"}
    # and the report says so, with what would let the fused kernel run
    assert any("on 5-D inputs runs PyTorch's math path" in n and "fp32" not in n
               for n in r.notes)
    # the model is left as it was: one call of it still runs
    assert model(x).shape == (2, 2, 4, 49, 16)


def test_sixteen_bit_inputs_are_computed_in_fp32_unless_the_flag_allows_16():
    # since PyTorch 2.5 the math path upcasts fp16 and bf16 inputs: the scores are fp32, the
    # products fp32 matmuls, and the output and the probabilities cast back to 16 bits
    q = torch.empty(2, 3, 4, 49, 32, dtype=torch.float16, device="meta")
    sdpa = fn_module(F.scaled_dot_product_attention)

    def softmax_and_products(r):
        (softmax,) = [n for n in r.nodes if n.op == "_safe_softmax"]
        return softmax.dtype, {n.dtype for n in r.nodes if n.op == "bmm"}

    r = fxroof.analyze(sdpa, (q, q, q), chip="h100-sxm")
    assert softmax_and_products(r) == ("fp32", {"fp32"})
    assert any("the scores reach memory, in fp32" in n for n in r.notes)
    # the output cast back, and the probabilities too (the path's second output, computed all
    # the same): 24 x 49 x 49 fp32 read, fp16 written
    casts = [n for n in r.nodes if n.op == "_to_copy" and n.dtype == "fp16"]
    assert sorted(c.bytes_written for c in casts) == [24 * 49 * 32 * 2, 24 * 49 * 49 * 2]
    allowed = torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()
    torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(True)
    try:
        r16 = fxroof.analyze(sdpa, (q, q, q), chip="h100-sxm")
    finally:
        torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(allowed)
    assert softmax_and_products(r16) == ("fp16", {"fp16"})


def test_four_dim_attention_stays_one_fused_kernel():
    q = torch.empty(2, 3, 49, 32, dtype=torch.float16, device="meta")
    r = fxroof.analyze(fn_module(F.scaled_dot_product_attention), (q, q, q), chip="h100-sxm")
    assert [n.op for n in r.nodes if n.category != "view"] == ["scaled_dot_product_attention"]


def test_a_sweep_over_a_math_path_model_captures_each_value_and_says_why():
    def workload(batch=2):
        return BlockAttention(), (torch.empty(batch, 4, 49, 32, device="meta"),)
    s = fxroof.sweep(workload, {"batch": [2, 4]}, chip="h100-sxm")
    assert s.method == "per-point" and "math path" in " ".join(s.notes)
    direct = fxroof.analyze(*workload(4), chip="h100-sxm")
    assert s.points[-1].time_s == pytest.approx(direct.time_s)


def test_three_dim_attention_takes_the_math_path_too_and_the_note_says_what_fixes_it():
    # (batch, length, size) with no heads dimension: PyTorch's CPU run shows the two products
    q = torch.randn(4, 64, 32)
    sdpa = fn_module(F.scaled_dot_product_attention)
    assert _pytorch_ops(sdpa, q, q, q).count("bmm") == 2
    r = fxroof.analyze(sdpa, (q, q, q), chip="h100-sxm")
    assert [n.op for n in r.nodes if n.category == "matmul"] == ["bmm", "bmm"]
    assert any("on 3-D inputs" in n and "a heads dimension" in n for n in r.notes)


class HeadSplitAttention(torch.nn.Module):
    """Attention as Hugging Face's Swin writes it: heads split off projections, a bias a head
    (its relative positions, from a table of weights) as the mask, the output put back."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.out = (torch.nn.Linear(64, 64) for _ in range(4))
        self.table = torch.nn.Parameter(torch.zeros(4, 8, 8))

    def forward(self, x):                              # (batch, 8 tokens, 64)
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, 4, 16).transpose(1, 2) for p in (self.q, self.k, self.v))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias())
        return self.out(o.transpose(1, 2).contiguous().view(b, t, 64))

    def bias(self):
        return 16 * torch.tanh(self.table).unsqueeze(0)     # computed from the table, as Swin's


def test_a_fused_attention_output_takes_its_querys_layout_so_putting_it_back_copies_nothing():
    model, x = HeadSplitAttention().eval(), torch.randn(2, 8, 64)
    # what PyTorch itself does: the CPU kernel writes the output in its query's layout,
    # (batch, tokens, heads, head size), so the transpose back is already contiguous
    with torch.no_grad():      # as a model serves: the bias is a weight's, needing no grad
        q = model.q(x).view(2, 8, 4, 16).transpose(1, 2)
        real = F.scaled_dot_product_attention(q, q, q, attn_mask=model.bias())
    assert real.stride() == q.stride() == (512, 16, 64, 1) and real.transpose(1, 2).is_contiguous()
    # torch.export traces it with the grad on, where PyTorch's composite op lays the output out
    # contiguous (the path it takes for a mask that needs a grad): the transpose back would copy
    r = fxroof.analyze(model, (x,), chip="h100-sxm", mode="eager")
    assert not [n for n in r.nodes if n.op == "contiguous" and n.category != "view"]
    assert [n.op for n in r.nodes if n.category == "copy"] == []
