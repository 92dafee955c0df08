"""fuse.py: the kernels a fusing compiler would emit, with hand arithmetic beside each expectation,
and property tests on random pointwise/reduction graphs."""
import dataclasses
import operator

import networkx as nx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import fn_module
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.fx.experimental.proxy_tensor import make_fx

from fxroof.cost.annotate import annotate
from fxroof.cost.record import COST_KEY, KERNEL_KEY
from fxroof.fuse.cpp import CAT_COPY, FOLD_COPY
from fxroof.fuse.fuser import Kernel, fuse, unfused
from fxroof.graph.capture import capture

F32 = 4  # bytes per fp32 element


def graph(model, *args):
    return annotate(capture(model, args).gm)


def kernels(model, *args, **options):
    return fuse(graph(model, *args), **options)


def total(ks) -> int:
    return sum(k.bytes for k in ks)


def ops_of(gm):
    return [n for n in gm.graph.nodes
            if n.op == "call_function" and n.meta[COST_KEY].category != "view"]


def check_invariants(gm, ks):
    """What every fusion must keep: the checks the property tests run on random graphs."""
    eager = unfused(gm)
    ks = fuse(gm) if ks is None else ks
    names = [n for k in ks if k.reason not in (CAT_COPY, FOLD_COPY) for n in k.nodes]
    ops = ops_of(gm)
    # every op that is not a view in exactly one kernel, and meta says which (the C++ backend's
    # copies of a cat's view inputs are named by the view)
    assert sorted(names) == sorted(n.name for n in ops)
    assert all(ks[n.meta[KERNEL_KEY]].nodes.count(n.name) == 1 for n in ops)
    assert all(KERNEL_KEY not in n.meta for n in gm.graph.nodes if n not in set(ops))
    # fusion never changes FLOPs and never adds bytes
    assert sum(k.flops for k in ks) == sum(n.meta[COST_KEY].flops for n in ops)
    assert total(ks) <= total(eager)
    # the kernel graph is acyclic and the kernels come in a topological order
    edges = {(ks_of(p), n.meta[KERNEL_KEY]) for n in ops for p in producers(n)} - {
        (i, i) for i in range(len(ks))}
    kg = nx.DiGraph(list(edges))
    kg.add_nodes_from(range(len(ks)))
    assert nx.is_directed_acyclic_graph(kg)
    assert all(a < b for a, b in edges)
    return ks


def ks_of(node):
    return node.meta[KERNEL_KEY]


def producers(node):
    """The ops a node reads data from, looking through views (full_like reads a shape only)."""
    if node.meta[COST_KEY].bytes_read == 0 and node.meta[COST_KEY].category == "pointwise":
        return set()
    found, stack = set(), list(node.all_input_nodes)
    while stack:
        n = stack.pop()
        if KERNEL_KEY in n.meta:
            found.add(n)
        elif n.op == "call_function":
            stack.extend(n.all_input_nodes)
    return found


class Bias(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.b = nn.Parameter(torch.randn(n))

    def forward(self, x):
        return torch.relu(x + self.b)


# --- hand arithmetic -----------------------------------------------------------------------------

def test_cos_cos_fuses_into_one_kernel():
    n = 1000
    gm = graph(lambda x: x.cos().cos(), torch.randn(n))
    eager, ks = unfused(gm), check_invariants(gm, fuse(gm))
    assert total(eager) == 4 * n * F32        # read x, write t, read t, write out = 16000
    assert len(ks) == 1 and total(ks) == 2 * n * F32   # read x, write out = 8000
    k = ks[0]
    assert k.nodes == ("cos", "cos_1") and k.category == "pointwise" and k.flops == 2 * n
    assert k.reason == "output of graph" and k.dtype == "fp32" and k.known


def test_broadcast_bias_then_relu():
    gm = graph(Bias(32).eval(), torch.randn(64, 32))
    eager, ks = unfused(gm), check_invariants(gm, None)
    # add: read x 64*32*4 = 8192 and b 32*4 = 128, write 8192; relu: read 8192, write 8192
    assert total(eager) == 8192 + 128 + 8192 + 8192 + 8192
    assert len(ks) == 1
    assert ks[0].bytes_read == 8192 + 128 and ks[0].bytes_written == 8192


def test_layer_norm_takes_its_pointwise_prologue():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln = nn.LayerNorm(64)

        def forward(self, x, r):
            return self.ln(x + r)
    gm = graph(Residual().eval(), torch.randn(8, 64), torch.randn(8, 64))
    ks = check_invariants(gm, None)
    assert len(ks) == 1 and ks[0].category == "norm" and ks[0].module == "ln"
    # read x and r (2 * 8*64*4 = 4096), weight and bias (2 * 64*4 = 512), write 8*64*4 = 2048
    assert ks[0].bytes_read == 4096 + 512 and ks[0].bytes_written == 2048


def test_softmax_written_out_is_one_kernel():
    def softmax(x):
        e = (x - x.amax(-1, keepdim=True)).exp()
        return e / e.sum(-1, keepdim=True)
    gm = graph(softmax, torch.randn(16, 128))
    eager, ks = unfused(gm), check_invariants(gm, None)
    x = 16 * 128 * F32                               # 8192
    row = 16 * F32                                   # 64: one value per row
    # amax r x w row; sub r x+row w x; exp r x w x; sum r x w row; div r x+row w x
    assert total(eager) == (x + row) + (2 * x + row) + 2 * x + (x + row) + (2 * x + row)
    assert len(ks) == 1 and ks[0].category == "reduction"
    assert ks[0].bytes == 2 * x                      # read x once, write the result once


def test_aten_softmax_and_rms_chain():
    ks = kernels(lambda x: torch.softmax(x, -1) * 2, torch.randn(16, 128))
    assert len(ks) == 1 and ks[0].bytes == 2 * 16 * 128 * F32    # epilogue over the same space

    def rms(x):   # mean over the row, an epilogue on the (8, 1) result, then on (8, 64) again
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    ks = kernels(rms, torch.randn(8, 64))
    assert len(ks) == 1 and ks[0].category == "reduction"
    assert ks[0].bytes == 2 * 8 * 64 * F32


def test_reduction_output_used_over_another_space_ends_the_kernel():
    def f(x, y):
        return x.sum(-1).unsqueeze(0) + y     # (8,) then (4, 8): 32 elements, neither 512 nor 8
    gm = graph(f, torch.randn(8, 64), torch.randn(4, 8))
    ks = check_invariants(gm, None)
    assert len(ks) == 2
    assert ks[0].reason.startswith("reduction output used by")
    assert ks[0].bytes == 8 * 64 * F32 + 8 * F32    # read x, write the sums
    assert ks[1].bytes == (8 + 32 + 32) * F32       # read sums and y, write out


@pytest.mark.parametrize("epilogues", [False, True])
def test_matmul_then_gelu(epilogues):
    model = nn.Sequential(nn.Linear(32, 64, bias=False), nn.GELU()).eval()
    gm = graph(model, torch.randn(8, 32))
    ks = check_invariants(gm, fuse(gm, matmul_epilogues=epilogues))
    x, w, y = 8 * 32 * F32, 32 * 64 * F32, 8 * 64 * F32      # 1024, 8192, 2048
    if epilogues:   # cuBLASLt / Triton template: the gelu runs on the matmul's output tile
        assert len(ks) == 1 and ks[0].category == "matmul" and ks[0].module == "0"
        assert ks[0].bytes == x + w + y                      # 11264
    else:
        assert [k.category for k in ks] == ["matmul", "pointwise"]
        assert ks[0].reason == "library matmul"
        assert total(ks) == (x + w + y) + (y + y)            # 15360
    assert sum(k.flops for k in ks) == 2 * 8 * 64 * 32 + 8 * 64


def test_matmul_epilogue_bias_relu_residual():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 16)

        def forward(self, x):
            return torch.relu(self.fc(x)) + x
    gm = graph(M().eval(), torch.randn(4, 16))
    assert len(check_invariants(gm, fuse(gm))) == 2
    ks = check_invariants(gm, fuse(gm, matmul_epilogues=True))
    assert len(ks) == 1
    # read x 256 once (matmul and residual), weight 1024, bias 64; write 256
    assert ks[0].bytes_read == 256 + 1024 + 64 and ks[0].bytes_written == 256


def test_view_in_the_middle_of_a_chain_stays_inside():
    n = 12 * 10
    gm = graph(lambda x: x.cos().t().reshape(-1).sin(), torch.randn(12, 10))
    ks = check_invariants(gm, None)
    # reshape of a transposed tensor copies: a copy op fused like pointwise work
    assert len(ks) == 1 and total(ks) == 2 * n * F32
    gm = graph(lambda x: x.cos().view(10, 12).sin(), torch.randn(12, 10))
    ks = check_invariants(gm, None)
    assert len(ks) == 1 and ks[0].nodes == ("cos", "sin") and total(ks) == 2 * n * F32


def test_view_of_an_input_reads_its_real_footprint():
    ks = kernels(lambda x: x[:, :16].cos(), torch.randn(64, 32))
    assert ks[0].bytes_read == 64 * 16 * F32        # the slice, not all of x
    ks = kernels(lambda x, b: x * b.expand(64, 32), torch.randn(64, 32), torch.randn(32))
    assert ks[0].bytes_read == (64 * 32 + 32) * F32  # the expanded bias at its own size
    ks = kernels(lambda x: x.t().cos() + x.t(), torch.randn(64, 32))
    assert ks[0].bytes_read == 64 * 32 * F32         # one tensor, read once through two views


def test_siblings_reading_one_input_fuse():
    n = 4096
    gm = graph(lambda x: (x.sin(), x.cos()), torch.randn(n))
    ks = check_invariants(gm, None)
    assert total(unfused(gm)) == 4 * n * F32
    assert len(ks) == 1 and total(ks) == 3 * n * F32    # read x once, write both


def test_graph_output_used_inside_a_kernel_is_still_written():
    n = 4096

    def f(x):
        c = x.cos()             # returned, and read by sin inside the same kernel
        return c, c.sin()
    gm = graph(f, torch.randn(n))
    ks = check_invariants(gm, None)
    assert len(ks) == 1
    assert ks[0].bytes_read == n * F32 and ks[0].bytes_written == 2 * n * F32   # c and sin(c)


def test_creation_ops_fuse_into_their_consumer():
    gm = graph(lambda x: x + torch.arange(1024, dtype=torch.float32), torch.randn(8, 1024))
    ks = check_invariants(gm, None)
    assert len(ks) == 1 and ks[0].bytes == 2 * 8 * 1024 * F32   # arange never reaches memory
    assert ks[0].nodes == ("arange", "add") and ks[0].category == "pointwise"


def test_no_fusion_closes_a_cycle():
    w = torch.randn(64, 64)

    def f(x):
        a = x.sin()           # a -> mm -> add and a -> add: fusing a with add would be a cycle
        return a + a @ w
    gm = graph(f, torch.randn(64, 64))
    ks = check_invariants(gm, None)
    assert len(ks) == 3
    assert [k.category for k in ks] == ["pointwise", "matmul", "pointwise"]


def test_in_place_ops_stay_alone():
    def f(buf, idx, src, x):
        buf.index_copy_(0, idx, src)
        return buf.cos() + x
    args = (torch.zeros(8, 4), torch.tensor([1, 3]), torch.ones(2, 4), torch.randn(8, 4))
    gm = annotate(capture(make_fx(f, tracing_mode="fake")(*args)).gm)
    ks = check_invariants(gm, None)
    alone = [k for k in ks if "index_copy" in k.nodes[0]]
    assert len(alone) == 1 and alone[0].nodes == ("index_copy_",)
    assert alone[0].reason.startswith("in-place write")
    assert [k.nodes for k in ks if k is not alone[0]] == [("cos", "add")]


def test_in_place_op_on_an_intermediate_fuses_like_its_functional_op():
    def f(x):
        y = x.cos()
        z = y.sin()            # read before the write
        y.relu_()              # over a whole intermediate: torch.compile makes it relu(y)
        return z + y           # y read through its old node: the value relu_ wrote
    gm = graph(fn_module(f), torch.randn(8, 16))
    assert any(n.target is torch.ops.aten.relu_.default for n in gm.graph.nodes)
    ks = check_invariants(gm, None)
    assert [k.nodes for k in ks] == [("cos", "sin", "relu_", "add")]
    assert ks[0].bytes_read == 8 * 16 * F32 and ks[0].bytes_written == 8 * 16 * F32   # x, out


def test_in_place_op_into_a_view_of_an_intermediate_stays_alone():
    def f(x):
        y = x.cos()
        y[:, :2].relu_()       # a write into part of y: a scatter into its base
        return y
    gm = graph(fn_module(f), torch.randn(8, 16))
    ks = check_invariants(gm, None)
    assert [k.nodes for k in ks] == [("cos",), ("relu_",)]
    assert ks[1].reason == "in-place write (relu_)"
    assert ks[1].bytes == 2 * 8 * 2 * F32                # reads and writes the 8x2 slice


def test_a_tensor_read_by_every_layer_fuses_within_each_layer_only():
    """A table read by every layer, with a matmul between layers: sibling reads of the table
    in one layer fuse (q and k of a rotary embedding), those of different layers never do."""
    w = torch.randn(16, 16)

    def f(x, c):
        for _ in range(12):
            q, k = (x * c).relu(), (x - c).exp()
            x = (q + k) @ w
        return x
    gm = graph(fn_module(f), torch.randn(16, 16), torch.randn(16))
    ks = check_invariants(gm, None)
    assert [k.category for k in ks] == ["pointwise", "matmul"] * 12
    # each layer's kernel reads x (16*16*4 = 1024) and c (64) and writes q + k (1024)
    assert all(k.bytes == 1024 + 64 + 1024 for k in ks[::2])


def test_backend_is_checked():
    gm = graph(lambda x: x.cos(), torch.randn(4))
    with pytest.raises(ValueError, match="backend must be one of triton, cpp"):
        fuse(gm, backend="cuda")


def test_cpp_backend_writes_a_cat_for_its_readers():
    gm = graph(lambda x: torch.cat([x.neg(), x.cos()], -1).exp(), torch.randn(8, 16))
    x, out = 8 * 16 * F32, 8 * 32 * F32                  # 512, 1024
    ks = check_invariants(gm, fuse(gm, backend="triton"))
    assert [k.nodes for k in ks] == [("neg", "cos", "cat", "exp")] and total(ks) == x + out
    ks = check_invariants(gm, fuse(gm, backend="cpp"))   # each input written into the result
    assert [k.nodes for k in ks] == [("neg", "cos", "cat"), ("exp",)]
    assert total(ks) == (x + out) + (out + out)


def test_cpp_backend_copies_a_cat_input_that_is_a_view_with_a_kernel_of_its_own():
    gm = graph(lambda x: torch.cat([-x[:, 8:], x[:, :8]], -1).exp(), torch.randn(8, 16))
    half, whole = 8 * 8 * F32, 8 * 16 * F32                # 256, 512
    ks = check_invariants(gm, fuse(gm, backend="triton"))
    assert [k.nodes for k in ks] == [("neg", "cat", "exp")] and total(ks) == 2 * whole
    ks = check_invariants(gm, fuse(gm, backend="cpp"))     # rotate_half, as Inductor's CPU code
    assert [(k.nodes, k.category) for k in ks] == [(("slice_2",), "copy"),
                                                   (("neg", "cat"), "pointwise"),
                                                   (("exp",), "pointwise")]
    # the copy moves x[:, :8] into the result, the neg the other half; exp reads it back
    assert [(k.bytes_read, k.bytes_written) for k in ks] == [(half, half), (half, half),
                                                              (whole, whole)]


def test_cpp_backend_copies_matmul_operands_a_view_cannot_fold_with_kernels_of_their_own():
    def scores(x):      # (2, 16, 64) split into 4 heads of 16: q @ q^T per head
        q = x.view(2, 16, 4, 16).transpose(1, 2)
        return q @ q.transpose(-2, -1)
    gm = graph(scores, torch.randn(2, 16, 64))
    x, out = 2 * 16 * 64 * F32, 2 * 4 * 16 * 16 * F32      # 8192, 8192
    ks = check_invariants(gm, fuse(gm, backend="triton"))  # the copies inside the matmul kernel
    assert [k.nodes for k in ks] == [("matmul",)] and total(ks) == (2 * x + out) + 2 * (x + x)
    ks = check_invariants(gm, fuse(gm, backend="cpp"))     # Inductor's clones, then its bmm
    assert [(k.nodes, k.category) for k in ks] == [(("transpose",), "copy"),
                                                   (("transpose_1",), "copy"),
                                                   (("matmul",), "matmul")]
    assert [(k.bytes_read, k.bytes_written) for k in ks] == [(x, x), (x, x), (2 * x, out)]


@pytest.mark.parametrize("mask, split", [(torch.tril(torch.ones(16, 16, dtype=torch.bool)), True),
                                         (torch.ones(2, 4, 16, 16, dtype=torch.bool), False)])
def test_cpp_backend_splits_a_softmax_whose_input_reads_a_broadcast_mask(mask, split):
    gm = graph(fn_module(lambda x: torch.softmax(x.masked_fill(mask, -1e9), -1)),
               torch.randn(2, 4, 16, 16))
    x, m = 2 * 4 * 16 * 16 * F32, mask.numel()               # 8192 bytes of scores, a bool mask
    ks = check_invariants(gm, fuse(gm, backend="triton"))
    assert [k.nodes for k in ks] == [("masked_fill", "softmax")] and total(ks) == x + m + x
    ks = check_invariants(gm, fuse(gm, backend="cpp"))
    if not split:      # a mask as large as the scores: one kernel, as Inductor's
        assert [k.nodes for k in ks] == [("masked_fill", "softmax")]
        return
    # as torch.compile's CPU code: the masked scores' exp written after the max, then the
    # sum and the division read it back
    assert [k.nodes for k in ks] == [("masked_fill",), ("softmax",)]
    assert [(k.bytes_read, k.bytes_written) for k in ks] == [(x + m, x), (x, x)]


def test_cpp_backend_keeps_a_reduction_apart_from_work_over_its_output_size():
    def f(x):     # siblings reading x: a row sum (8x64 loop) and work over 8 elements
        return x.sum(-1, keepdim=True), x[:, :1].exp()
    gm = graph(f, torch.randn(8, 64))
    ks = check_invariants(gm, fuse(gm, backend="triton"))
    assert len(ks) == 1 and total(ks) == 8 * 64 * F32 + 2 * 8 * F32   # x once, two outputs
    ks = check_invariants(gm, fuse(gm, backend="cpp"))
    assert [k.nodes for k in ks] == [("sum_1",), ("exp",)]
    # the sum reads x and writes 8 sums; exp reads the 8-element column and writes 8 values
    assert [k.bytes for k in ks] == [8 * 64 * F32 + 8 * F32, 2 * 8 * F32]


def test_a_gather_is_inlined_into_its_reader_on_both_backends():
    # Inductor's embedding lowering is a Pointwise over an indirect index on any device
    emb = nn.Embedding(1000, 16).eval()
    gm = graph(fn_module(lambda ids: emb(ids) * 2), torch.tensor([[1, 2, 3]]))
    for backend in ("triton", "cpp"):
        ks = check_invariants(gm, fuse(gm, backend=backend))
        assert [k.nodes for k in ks] == [("embedding", "mul")]
        # the 3 ids (3*8) and the 3 rows picked (3*16*4), not the table; the product written once
        assert ks[0].bytes_read == 3 * 8 + 3 * 16 * F32 and ks[0].bytes_written == 3 * 16 * F32


def test_analyze_inlines_gathers_on_every_chip():
    import fxroof
    emb = nn.Embedding(1000, 16).eval()
    model, ids = fn_module(lambda ids: emb(ids) * 2), torch.tensor([[1, 2, 3]])
    on = {chip: [k.nodes for k in fxroof.analyze(model, (ids,), chip=chip).compiled.kernels]
          for chip in ("cpu", "h100-sxm")}
    assert on == {"cpu": [("embedding", "mul")], "h100-sxm": [("embedding", "mul")]}


def test_gathers_stay_alone_and_keep_their_cost():
    emb = nn.Embedding(1000, 16).eval()
    gm = graph(emb, torch.tensor([[1, 2, 3]]))
    ks = check_invariants(gm, None)
    assert len(ks) == 1 and ks[0].category == "copy"
    # reads the 3 ids (3*8) and the 3 rows it picks (3*16*4), not the whole table
    assert ks[0].bytes_read == 3 * 8 + 3 * 16 * F32


def test_kernel_is_a_frozen_record():
    k = Kernel(("a",), "pointwise", 1, 2, 3, "fp32", "single op")
    with pytest.raises(dataclasses.FrozenInstanceError):
        k.flops = 2


def test_eager_mode_is_one_kernel_per_op():
    gm = graph(Bias(8).eval(), torch.randn(4, 8))
    eager = unfused(gm)
    assert [k.nodes for k in eager] == [("add",), ("relu",)]
    assert all(KERNEL_KEY not in n.meta for n in gm.graph.nodes)   # the key is fuse()'s
    # add: reads x 4*8*4 = 128 and b 8*4 = 32, writes 128, one FLOP an element; relu the same
    # without b: each op moves its own bytes, nothing stays on chip
    assert [(k.bytes_read, k.bytes_written, k.flops) for k in eager] == [(160, 128, 32),
                                                                       (128, 128, 32)]


def test_unannotated_graph_is_refused():
    gm = capture(lambda x: x.cos(), (torch.randn(4),)).gm
    with pytest.raises(ValueError, match="annotate"):
        fuse(gm)


def test_bundled_gpt2_block_structure():
    """A GPT-2 block: the layer norms take the residual adds, matmuls and attention stay alone."""
    class Block(nn.Module):
        def __init__(self, dim=32, heads=2):
            super().__init__()
            self.heads = heads
            self.ln_1, self.ln_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.fc, self.out = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = self.qkv(self.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T, self.heads, -1).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
            return x + self.out(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))
    gm = graph(Block().eval(), torch.randn(1, 8, 32))
    ks = check_invariants(gm, None)
    # sdpa's output already lies as (B, T, nh, hs): the transpose + reshape after it is a view
    assert [k.category for k in ks] == ["norm", "matmul", "attention", "matmul", "norm",
                                        "matmul", "pointwise", "matmul", "pointwise"]
    assert ks[4].nodes == ("add", "layer_norm_1")    # residual add + layer norm: one kernel
    attn = ks[2]
    assert attn.bytes_read == 8 * 96 * F32           # q, k, v: three views of one qkv tensor


# --- properties on random graphs -----------------------------------------------------------------

UNARY = {"relu": torch.relu, "exp": torch.exp, "neg": torch.neg,
         "sum": lambda v: v.sum(-1, keepdim=True), "mean": lambda v: v.mean(-1, keepdim=True),
         "amax": lambda v: v.amax(-1, keepdim=True), "view": lambda v: v.view(v.shape),
         "clone": lambda v: v.clone(), "full": lambda v: torch.full_like(v, 2.0)}
BINARY = {"add": torch.add, "mul": torch.mul}
STEP = st.tuples(st.sampled_from(sorted(UNARY) + sorted(BINARY)), st.integers(0, 99),
                 st.integers(0, 99))


def random_program(steps, outputs):
    """Values start as x (4, 8), y (4, 8) and b (8,); each step applies an op to earlier values
    (reductions keep dims, so every pair still broadcasts)."""
    def program(x, y, b):
        values = [x, y, b]
        for name, i, j in steps:
            u, v = values[i % len(values)], values[j % len(values)]
            values.append(UNARY[name](u) if name in UNARY else BINARY[name](u, v))
        return tuple(values[3 + k % len(steps)] for k in outputs) + (values[-1],)
    return program


@settings(max_examples=40, deadline=None)
@given(st.lists(STEP, min_size=1, max_size=12), st.lists(st.integers(0, 99), max_size=3),
       st.booleans(), st.sampled_from(["triton", "cpp"]))
def test_random_graphs_keep_the_invariants(steps, outputs, epilogues, backend):
    args = (torch.randn(4, 8), torch.randn(4, 8), torch.randn(8))
    gm = graph(random_program(steps, outputs), *args)
    check_invariants(gm, fuse(gm, matmul_epilogues=epilogues, backend=backend))


@settings(max_examples=20, deadline=None)
@given(st.lists(STEP, min_size=1, max_size=10))
def test_random_graphs_with_a_matmul_in_the_middle(steps):
    w = torch.randn(8, 8)

    def program(x, y, b):
        values = [x, y, b]
        for k, (name, i, j) in enumerate(steps):
            u, v = values[i % len(values)], values[j % len(values)]
            values.append(UNARY[name](u) if name in UNARY else BINARY[name](u, v))
            if k == len(steps) // 2:
                values.append(torch.relu(values[-1].expand(4, 8) @ w))
        return values[-1], values[len(values) // 2]
    gm = graph(program, torch.randn(4, 8), torch.randn(4, 8), torch.randn(8))
    for epilogues in (False, True):
        check_invariants(gm, fuse(gm, matmul_epilogues=epilogues))


def test_getitem_of_tuple_outputs_reads_the_element():
    def f(x):
        values, idx = x.max(-1)
        return values * 2
    gm = graph(f, torch.randn(16, 32))
    ks = check_invariants(gm, None)
    assert any(n.target is operator.getitem for n in gm.graph.nodes)
    # max reads x (2048) and the epilogue over its (16,) output fuses; idx is never used
    assert len(ks) == 1 and ks[0].bytes == 16 * 32 * F32 + 16 * F32


def test_eager_kernels_carry_the_view_calls_made_before_them():
    def f(x):
        q, k = x.split(4, dim=-1)                 # split: one view call; getitem is no call
        q = q.transpose(0, 1).reshape(-1)         # transpose: a view call; this reshape copies
        return q.sum() + k.t().sum()              # t: one view call, made before the second sum
    ks = unfused(graph(fn_module(f), torch.randn(8, 8)))
    assert [(k.category, k.views) for k in ks] == [
        ("copy", 2), ("reduction", 0), ("reduction", 1), ("pointwise", 0)]


# -- one-row products under coordinate descent tuning (gpt-fast's setting) ----------------------

def _bf16(*shape):
    return torch.empty(*shape, device="meta", dtype=torch.bfloat16)


ONE_ROW_CASES = {   # name -> (function, its inputs)
    "linear, one token": (lambda x, w: F.linear(x, w), (_bf16(1, 1, 64), _bf16(32, 64))),
    "linear, four tokens": (lambda x, w: F.linear(x, w), (_bf16(1, 4, 64), _bf16(32, 64))),
    "linear with bias, one token": (lambda x, w, b: F.linear(x, w, b),
                                    (_bf16(1, 1, 64), _bf16(32, 64), _bf16(32))),
    "mm, one column": (torch.mm, (_bf16(8, 64), _bf16(64, 1))),
    "bmm, a row a batch": (torch.bmm, (_bf16(4, 1, 64), _bf16(4, 64, 32))),
    "bmm, three rows": (torch.bmm, (_bf16(4, 3, 64), _bf16(4, 64, 32))),
    "gpt-fast's experts, up": (lambda x, w: torch.einsum("ti,taoi->tao", x, w),
                               (_bf16(1, 64), _bf16(1, 2, 32, 64))),
    "gpt-fast's experts, down": (lambda x, w: torch.einsum("tao,taio->tai", x, w),
                                 (_bf16(1, 2, 32), _bf16(1, 2, 64, 32))),
    "gpt-fast's expert sum": (lambda x, w: torch.einsum("tai,ta->ti", x, w),
                              (_bf16(1, 2, 64), _bf16(1, 2))),
    "einsum, two tokens": (lambda x, w: torch.einsum("ti,taoi->tao", x, w),
                           (_bf16(2, 64), _bf16(2, 2, 32, 64))),
}


@pytest.mark.parametrize("name", sorted(ONE_ROW_CASES))
def test_one_row_products_are_the_ones_inductor_decomposes(name):
    # The truth: Inductor's own decomposition table under coordinate_descent_tuning, traced on
    # meta tensors (a device that is not the CPU, where it decomposes): a product it turns
    # into a multiply and a sum leaves no mm, bmm or addmm behind.
    import torch._inductor.config as inductor_config
    from torch._inductor.decomposition import select_decomp_table

    from fxroof.fuse.policy import one_row_product
    fn, args = ONE_ROW_CASES[name]
    with inductor_config.patch(coordinate_descent_tuning=True):
        traced = make_fx(fn, decomposition_table=select_decomp_table())(*args)
    left = {n.target.__name__.split(".")[0] for n in traced.graph.nodes if n.op == "call_function"}
    decomposed = not left & {"mm", "bmm", "addmm"}
    (product,) = [n for n in graph(fn_module(fn), *args).graph.nodes
                  if n.op == "call_function" and n.meta[COST_KEY].category == "matmul"]
    assert one_row_product(product) == decomposed


class Int8Linear(nn.Module):
    """gpt-fast's WeightOnlyInt8Linear: int8 weights cast up in the call, a scale per row."""

    def __init__(self, k=256, n=512):
        super().__init__()
        self.register_buffer("weight", torch.empty(n, k, dtype=torch.int8, device="meta"))
        self.register_buffer("scales", torch.empty(n, dtype=torch.bfloat16, device="meta"))

    def forward(self, x):
        return F.linear(x, self.weight.to(x.dtype)) * self.scales


def test_a_decomposed_one_row_product_fuses_its_weight_cast_and_scale():
    k, n = 256, 512
    gm = graph(Int8Linear(k, n), _bf16(1, 1, k))
    # the library path: the cast writes bf16 weights (k n x 1 read, k n x 2 written), the
    # GEMV reads them again, the scale is a pointwise kernel of its own
    assert len(check_invariants(gm, fuse(gm))) == 3
    (kernel,) = check_invariants(gm, fuse(gm, decompose_products=True))
    assert kernel.category == "reduction" and kernel.main.startswith("linear")
    # the kernel gpt-fast's int8 bandwidth was measured on: a dequantizing one
    assert kernel.variant == "int8 weights"
    assert {k.variant for k in fuse(gm)} == {""}
    # one pass: int8 weights once (k n), the token (2 k), the scales (2 n); the output (2 n)
    assert kernel.bytes_read == k * n + 2 * k + 2 * n
    assert kernel.bytes_written == 2 * n
    # the C++ backend has no such decomposition (Inductor keeps it to GPUs)
    assert len(fuse(gm, backend="cpp", decompose_products=True)) > 1


class GatheredExperts(nn.Module):
    """gpt-fast's ConditionalFeedForward: the chosen experts' weights gathered, then einsums."""

    def __init__(self, experts=8, dim=64, hidden=128):
        super().__init__()
        for name, shape in (("w1", (hidden, dim)), ("w2", (dim, hidden)), ("w3", (hidden, dim))):
            setattr(self, name, nn.Parameter(_bf16(experts, *shape)))

    def forward(self, x, expert_indices):
        w1, w3, w2 = self.w1[expert_indices], self.w3[expert_indices], self.w2[expert_indices]
        x1 = F.silu(torch.einsum("ti,taoi -> tao", x, w1))
        x3 = torch.einsum("ti, taoi -> tao", x, w3)
        return torch.einsum("tao, taio -> tai", (x1 * x3), w2)


def test_gathered_experts_read_only_the_chosen_weights_once():
    dim, hidden, chosen = 64, 128, 2
    idx = torch.zeros(1, chosen, dtype=torch.long, device="meta")
    gm = graph(GatheredExperts(dim=dim, hidden=hidden), _bf16(1, dim), idx)
    expert = hidden * dim * 2                   # one expert's projection in bf16
    up, down = check_invariants(gm, fuse(gm, decompose_products=True))
    # up: the gate and up projections of the chosen experts, read where they lie (no gathered
    # copy), the token and the indices; silu(x1) * x3 fused in, written once (2 x hidden)
    assert up.category == down.category == "reduction"
    assert up.bytes_read == 2 * chosen * expert + 2 * dim + 8 * chosen
    assert up.bytes_written == 2 * chosen * hidden
    # down: its own reduction (other outputs over other elements): the chosen experts' w2
    assert down.bytes_read == chosen * expert + 2 * chosen * hidden + 8 * chosen
    # the library path copies the gathered experts out first and the einsums read the copies:
    # gathers (3 c e + indices read, 3 c e written); up and gate (token, c e each, x1 and x3
    # written); silu * mul (x1, x3 read, their product written); down (product, c e, output)
    x1 = 2 * chosen * hidden
    library = ((3 * chosen * expert + 8 * chosen) + 3 * chosen * expert
               + 2 * (2 * dim + chosen * expert + x1) + (2 * x1 + x1)
               + (x1 + chosen * expert + 2 * chosen * dim))
    assert total(fuse(gm)) == library


def test_coordinate_descent_tuning_is_read_from_the_process(monkeypatch):
    # the setting as PyTorch holds it: Inductor's config where imported, else the environment
    # variable that config reads when it is imported (fxroof does not import Inductor for it)
    import sys

    import torch._inductor.config as inductor_config

    from fxroof.fuse.policy import coordinate_descent_tuning
    with inductor_config.patch(coordinate_descent_tuning=True):
        assert coordinate_descent_tuning()
    with inductor_config.patch(coordinate_descent_tuning=False):
        assert not coordinate_descent_tuning()
    monkeypatch.delitem(sys.modules, "torch._inductor.config")
    monkeypatch.setenv("TORCHINDUCTOR_COORDINATE_DESCENT_TUNING", "1")
    assert coordinate_descent_tuning()
    monkeypatch.setenv("TORCHINDUCTOR_COORDINATE_DESCENT_TUNING", "0")
    assert not coordinate_descent_tuning()


def test_sibling_reach_masks_meet_a_search_of_the_graph():
    import random
    import networkx as nx
    from fxroof.fuse.reach import SiblingReach
    rng = random.Random(0)
    for trial in range(40):
        n = rng.randrange(5, 60)
        g = nx.DiGraph()
        g.add_nodes_from(range(n))
        for a in range(n):      # edges only forward in the numbering: the ranks are topological
            for b in rng.sample(range(a + 1, n), min(n - a - 1, rng.randrange(0, 4))):
                g.add_edge(a, b)
        rank = {x: x for x in range(n)}
        siblings = rng.sample(range(n), rng.randrange(2, min(n, 8)))
        reach = SiblingReach(g, rank, siblings)
        for x in rng.sample(range(n), n):       # in any order, as the pass asks
            found = {s for s in siblings if s == x or s in nx.descendants(g, x)}
            assert reach.mask(x) == sum(reach.bits[s] for s in found), (trial, x)
        a = siblings[0]
        for b in siblings[1:]:
            # a path through a third group joins them: merging would close a cycle
            lo, hi = sorted((a, b), key=rank.get)
            third = any(hi in nx.descendants(g, s) or s == hi for s in g.succ[lo] if s != hi)
            assert reach.blocked(a, b) == third, (trial, a, b)
