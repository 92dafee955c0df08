"""Per-op FLOPs and bytes: hand arithmetic beside each expected value, PyTorch's counter as truth."""
import pytest
import torch
import torch.nn.functional as F
from helpers import cost_of, flop_counter_total, fn_module, op_costs
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

import fxroof
from fxroof.cost.formulas import FORMULAS, OpCall, call_cost, register_formula
from fxroof.cost.record import Cost

F32 = 4  # bytes per fp32 element


def test_mm_flops_and_bytes():
    c = cost_of(fn_module(torch.mm), "mm", torch.randn(4, 5), torch.randn(5, 6))
    assert c.flops == 2 * 4 * 6 * 5                   # 2*M*N*K = 240
    assert c.bytes_read == (4 * 5 + 5 * 6) * F32      # both operands once
    assert c.bytes_written == 4 * 6 * F32
    assert c.category == "matmul" and c.dtype == "fp32"


def test_linear_ignores_bias_add_like_pytorch():
    c = cost_of(torch.nn.Linear(8, 3), "linear", torch.randn(2, 5, 8))
    assert c.flops == 2 * (2 * 5) * 3 * 8             # 2 * tokens * N * K = 480
    assert c.bytes_read == (2 * 5 * 8 + 3 * 8 + 3) * F32   # x, weight, bias


def test_bmm_baddbmm_matmul_einsum():
    a, b = torch.randn(3, 4, 5), torch.randn(3, 5, 6)
    assert cost_of(fn_module(torch.bmm), "bmm", a, b).flops == 2 * 3 * 4 * 6 * 5          # 720
    bias = torch.randn(3, 4, 6)
    assert cost_of(fn_module(torch.baddbmm), "baddbmm", bias, a, b).flops == 720
    # matmul with broadcast batch: (2,1,4,5) @ (3,5,6) -> (2,3,4,6), K=5: 2*144*5 = 1440
    m = op_costs(fn_module(torch.matmul), torch.randn(2, 1, 4, 5), torch.randn(3, 5, 6))
    assert sum(c.flops for _, c in m) == 2 * (2 * 3 * 4 * 6) * 5
    # einsum "bij,bjk->bik": every (b,i,j,k) point is one multiply-add: 2*3*4*5*6 = 720
    e = op_costs(fn_module(lambda x, y: torch.einsum("bij,bjk->bik", x, y)), a, b)
    assert sum(c.flops for _, c in e) == 720


def test_matmul_family_agrees_with_flop_counter():
    cases = [
        (fn_module(torch.mm), (torch.randn(7, 9), torch.randn(9, 11))),
        (torch.nn.Linear(16, 32), (torch.randn(3, 4, 16),)),
        (fn_module(lambda x, y: torch.einsum("bhqd,bhkd->bhqk", x, y)),
         (torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8))),
        (fn_module(lambda x, y: x @ y), (torch.randn(2, 5, 6), torch.randn(6, 4))),
    ]
    for model, args in cases:
        ours = sum(c.flops for _, c in op_costs(model, *args))
        assert ours == flop_counter_total(model, *args), model


@pytest.mark.parametrize("conv,x", [
    (torch.nn.Conv1d(4, 8, 3, stride=2), torch.randn(2, 4, 17)),
    (torch.nn.Conv2d(6, 12, 3, padding=1, groups=3), torch.randn(2, 6, 9, 9)),
    (torch.nn.Conv3d(2, 4, (1, 3, 3), bias=False), torch.randn(1, 2, 4, 6, 6)),
    (torch.nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1), torch.randn(2, 8, 5, 5)),
    (torch.nn.ConvTranspose1d(6, 6, 3, groups=2), torch.randn(1, 6, 10)),
])
def test_convolutions_agree_with_flop_counter(conv, x):
    ours = [c for _, c in op_costs(conv, x)]
    assert [c.category for c in ours] == ["conv"]
    assert ours[0].flops == flop_counter_total(conv, x)


def test_conv2d_by_hand():
    # out (2, 8, 6, 6); weight (8, 3, 3, 3): 2 * batch * prod(w) * out positions
    c = cost_of(torch.nn.Conv2d(3, 8, 3), "conv2d", torch.randn(2, 3, 8, 8))
    assert c.flops == 2 * 2 * (8 * 3 * 3 * 3) * (6 * 6)       # 62208


# (input shape, conv): small enough for PyTorch's own im2col code, or taken by oneDNN for one of
# the reasons its rule lists (kernel over 3x3, batch over 1, input over 20480 elements, groups,
# half precision).
_CONV_CASES = [
    ((1, 8, 8, 8), torch.nn.Conv2d(8, 8, 3, padding=1)),                 # small 3x3: native
    ((1, 16, 8, 8), torch.nn.Conv2d(16, 32, 1)),                         # small 1x1: native
    ((1, 16, 8, 8), torch.nn.Conv2d(16, 16, 2, stride=2)),               # small 2x2/2: native
    ((2, 16, 8, 8), torch.nn.Conv2d(16, 32, 1)),                         # 1x1, batch 2: native
    ((1, 3, 32, 32), torch.nn.Conv2d(3, 64, 8, stride=8)),               # 8x8 patches: oneDNN
    ((2, 8, 8, 8), torch.nn.Conv2d(8, 8, 3, padding=1)),                 # batch 2: oneDNN
    ((1, 32, 32, 32), torch.nn.Conv2d(32, 32, 3, padding=1)),            # 32768 elements: oneDNN
    ((1, 16, 8, 8), torch.nn.Conv2d(16, 16, 3, padding=1, groups=16)),   # depthwise: oneDNN's
    ((1, 16, 8, 8), torch.nn.Conv2d(16, 32, 3, padding=1, groups=16)),   # 2 out a group: oneDNN
    ((1, 16, 8, 8), torch.nn.Conv2d(16, 16, 3, padding=1, groups=4)),    # grouped: oneDNN
    ((1, 4, 40), torch.nn.Conv1d(4, 8, 5)),                              # conv1d as 2-d: native
    ((1, 8, 8, 8), torch.nn.Conv2d(8, 8, 3, padding=1).to(torch.bfloat16)),  # bf16: oneDNN
]


def _library_pytorch_runs(conv, x, capfd) -> str:
    """The profiler's view of the library; for oneDNN, its own log of the kernel it ran (a
    depthwise one is named so: "jit_dw:avx512_core", "jit_dw:avx2")."""
    capfd.readouterr()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof, \
            torch.no_grad(), torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        conv(x)
    names = {e.name for e in prof.events()}
    assert "aten::mkldnn_convolution" in names or "aten::_slow_conv2d_forward" in names \
        or "aten::thnn_conv2d" in names, names
    if "aten::mkldnn_convolution" not in names:
        return "native"
    kernels = [line.split(",")[6] for line in capfd.readouterr().out.splitlines()
               if ",exec," in line and ",convolution," in line]
    assert kernels, "oneDNN logged no convolution"
    return "onednn-depthwise" if any("_dw" in k for k in kernels) else "onednn"


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape,conv", _CONV_CASES)
def test_conv_variant_is_the_library_pytorch_runs(shape, conv, threads, capfd):
    """The truth: which kernel torch's profiler sees the CPU build call for the same conv."""
    dtype = conv.weight.dtype
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no oneDNN bf16 path")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(shape, dtype=dtype)
        expected = _library_pytorch_runs(conv, x, capfd)
        (c,) = [c for _, c in op_costs(conv, x)]
    finally:
        torch.set_num_threads(before)
    assert c.variant == expected


def test_conv_variant_on_the_meta_device_follows_the_cpu_rule():
    # meta models are analyzed for CPU chips too: the rule reads shapes only
    conv = torch.nn.Conv2d(3, 64, 8, stride=8).to("meta")
    (c,) = [c for _, c in op_costs(conv, torch.empty(1, 3, 32, 32, device="meta"))]
    assert c.variant == "onednn"


def sdpa(**kw):
    return fn_module(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, **kw))


def test_sdpa_on_cpu_is_counted_though_pytorch_says_zero():
    q, k, v = torch.randn(2, 4, 16, 8), torch.randn(2, 4, 16, 8), torch.randn(2, 4, 16, 8)
    with torch.utils.flop_counter.FlopCounterMode(display=False) as fc:
        F.scaled_dot_product_attention(q, k, v)
    assert fc.get_total_flops() == 0          # PyTorch's counter misses the CPU flash kernel
    c = cost_of(sdpa(), "scaled_dot_product_attention", q, k, v)
    assert c.flops == 2 * (2 * 4 * 16 * 16 * 8) * 2   # QK^T and PV: 2*B*H*Sq*Sk*D each = 32768
    assert c.flops == flop_counter_total(sdpa(), q, k, v)
    assert c.bytes_read == 3 * 2 * 4 * 16 * 8 * F32   # q, k, v once; no S x S matrix
    assert c.bytes_written == 2 * 4 * 16 * 8 * F32


@pytest.mark.parametrize("hq,hkv,sq,sk", [(8, 2, 16, 16), (8, 1, 16, 16), (8, 2, 1, 33)])
def test_sdpa_gqa_mqa_and_decode_agree_with_flop_counter(hq, hkv, sq, sk):
    q, k, v = torch.randn(1, hq, sq, 16), torch.randn(1, hkv, sk, 16), torch.randn(1, hkv, sk, 16)
    model = sdpa(enable_gqa=True)
    c = cost_of(model, "scaled_dot_product_attention", q, k, v)
    assert c.flops == 4 * hq * sq * sk * 16            # every query head over all keys
    assert c.flops == flop_counter_total(model, q, k, v)
    assert "gqa" in c.note


def test_causal_attention_is_counted_dense_and_says_so():
    q = torch.randn(1, 2, 8, 4)
    causal = cost_of(sdpa(is_causal=True), "scaled_dot_product_attention", q, q, q)
    full = cost_of(sdpa(), "scaled_dot_product_attention", q, q, q)
    assert causal.flops == full.flops == flop_counter_total(sdpa(is_causal=True), q, q, q)
    assert "causal" in causal.note and "causal" not in full.note


@pytest.mark.parametrize("dtype,size", [(torch.bfloat16, 2), (torch.int8, 1), (torch.bool, 1),
                                        (torch.complex64, 8), (torch.float8_e4m3fn, 1)])
def test_bytes_follow_the_dtype(dtype, size):
    x = torch.zeros(10, 10).to(dtype)
    c = cost_of(fn_module(lambda t: t.clone()), "clone", x)
    assert c.bytes_read == c.bytes_written == 100 * size


def test_input_used_twice_is_read_once():
    c = cost_of(fn_module(lambda x: x * x), "mul", torch.randn(100))
    assert c.bytes_read == 100 * F32 and c.bytes_written == 100 * F32


def test_views_move_nothing():
    costs = op_costs(fn_module(lambda x: x.view(4, 25).t().t().reshape(100)[:50].unsqueeze(0).expand(3, 50)),
                     torch.randn(100))
    assert costs == []    # every op is a view: no rows with bytes


def test_copying_reshape_moves_bytes():
    c = cost_of(fn_module(lambda x: x.t().reshape(-1)), "reshape", torch.randn(4, 6))
    assert c.bytes_read == c.bytes_written == 24 * F32


def test_broadcast_input_counts_at_real_size():
    c = cost_of(fn_module(lambda x, b: x + b), "add", torch.randn(64, 32), torch.randn(32))
    assert c.bytes_read == (64 * 32 + 32) * F32           # the bias once, not 64 times


def test_embedding_reads_only_gathered_rows():
    emb = torch.nn.Embedding(50000, 16)
    idx = torch.zeros(2, 5, dtype=torch.long)
    c = cost_of(emb, "embedding", idx)
    assert c.bytes_read == 2 * 5 * 8 + 2 * 5 * 16 * F32   # int64 indices + 10 rows of 16 floats
    assert c.bytes_written == 2 * 5 * 16 * F32


def test_pointwise_via_tag_counts_one_flop_per_element():
    c = cost_of(fn_module(torch.erf), "erf", torch.randn(7, 3))
    assert c.flops == 21 and c.category == "pointwise" and c.known


def test_kv_cache_write_counts_only_the_written_slot():
    def write(cache, new, pos):
        return cache.index_copy_(2, pos, new)
    cache = torch.zeros(1, 2, 64, 8)
    c = cost_of(fn_module(write), "index_copy_", cache, torch.randn(1, 2, 1, 8),
                torch.tensor([5]))
    assert c.bytes_written == 1 * 2 * 1 * 8 * F32        # one position of the cache, not 64
    assert c.bytes_read == 2 * 8 * F32 + 8                # the new values and the int64 index


@pytest.fixture
def mystery():
    """A custom op without a formula; the op and any formula registered for it go afterwards."""
    lib = torch.library.Library("fxroof_test", "DEF")
    lib.define("mystery(Tensor x) -> Tensor")
    lib.impl("mystery", lambda x: x * 2, "CompositeExplicitAutograd")
    lib.impl("mystery", lambda x: torch.empty_like(x), "Meta")
    op = torch.ops.fxroof_test.mystery
    try:
        yield op
    finally:
        FORMULAS.pop(op, None)
        lib._destroy()


def test_unknown_op_is_explicit_then_registrable(mystery):
    model = fn_module(lambda x: mystery(x))
    x = torch.randn(10)
    before = cost_of(model, "mystery", x)
    assert not before.known and before.flops == 0             # no formula: no FLOPs, and says so
    assert before.bytes_read == before.bytes_written == 10 * F32   # bytes still seen
    register_formula(mystery, category="reduction", fn=lambda call: 3 * call.inputs[0].numel())
    after = cost_of(model, "mystery", x)
    assert after.known and after.flops == 3 * 10
    assert after.category == "reduction"                      # an int result takes the op's category
    assert after.bytes_read == after.bytes_written == 10 * F32
    with pytest.raises(ValueError, match="already registered"):
        register_formula(mystery, category="pointwise", fn=lambda call: 1)


def test_unknown_category_is_rejected():
    with pytest.raises(ValueError, match="unknown category"):
        Cost(category="matmult")


@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 9), k=st.integers(1, 9), n=st.integers(1, 9), batch=st.integers(1, 3),
       bias=st.booleans())
def test_linear_matches_flop_counter_for_any_shape(m, k, n, batch, bias):
    model = torch.nn.Linear(k, n, bias=bias)
    x = torch.randn(batch, m, k)
    assert cost_of(model, "linear", x).flops == flop_counter_total(model, x) == 2 * batch * m * n * k


@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=4),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_pointwise_bytes_are_inputs_plus_output(shape, dtype):
    a, b = torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)
    c = cost_of(fn_module(torch.add), "add", a, b)
    elems = a.numel()
    assert c.bytes_read == 2 * elems * a.element_size()
    assert c.bytes_written == elems * a.element_size()
    assert c.flops == elems


def test_matmul_counts_the_copies_it_makes_to_fold_the_batch():
    # q from a head split (B,T,H,D) -> (B,H,T,D) is not viewable as (B*H, T, D): matmul copies it,
    # and k.transpose(-2, -1) too. Each copy: written once, read once by bmm.
    def scores(x):
        q = x.view(2, 8, 4, 16).transpose(1, 2)                 # (2, 4, 8, 16), strided
        return q @ q.transpose(-2, -1)
    c = cost_of(fn_module(scores), "matmul", torch.randn(2, 8, 64))
    copy = 2 * 4 * 8 * 16 * F32                                 # one operand's copy: 4096 B
    assert c.bytes_read == 2 * copy + 2 * copy                  # each operand into its copy, then
                                                                # bmm reads both copies: 16384 B
    assert c.bytes_written == 2 * 4 * 8 * 8 * F32 + 2 * copy    # scores, plus two copies written
    contiguous = cost_of(fn_module(lambda a, b: a @ b), "matmul", torch.randn(2, 4, 8, 16),
                         torch.randn(2, 4, 16, 8))
    assert contiguous.bytes_written == 2 * 4 * 8 * 8 * F32      # views suffice: no copies


def _pytorch_copies(fn, x) -> int:
    """How many copies PyTorch itself makes running fn(x) on the CPU (its profiler's count)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn(x)
    return sum(e.name == "aten::copy_" for e in prof.events())


@pytest.mark.parametrize("name, fn", [
    ("layer_norm", lambda t: F.layer_norm(t, (16,))),
    ("softmax", lambda t: torch.softmax(t, -1)),
    ("log_softmax", lambda t: torch.log_softmax(t, -1)),
    ("linear", lambda t: F.linear(t, torch.ones(8, 16)))])
def test_kernels_that_read_a_contiguous_input_count_the_copy_of_a_strided_one(name, fn):
    # a channels-first tensor seen channels-last (LayerNorm2d's permute): PyTorch copies it to a
    # contiguous one before the kernel (its profiler shows the copy), and not a contiguous one
    x = torch.randn(2, 16, 4, 8)
    strided, contiguous = x.permute(0, 2, 3, 1), x.permute(0, 2, 3, 1).contiguous()
    assert (_pytorch_copies(fn, strided), _pytorch_copies(fn, contiguous)) == (1, 0)
    plain = cost_of(fn_module(fn), name, contiguous)
    copied = cost_of(fn_module(lambda t: fn(t.permute(0, 2, 3, 1))), name, x)
    elements = 2 * 16 * 4 * 8                                # 1,024 elements, 4 KB in fp32
    assert copied.bytes_read == plain.bytes_read + elements * F32       # the copy reads it,
    assert copied.bytes_written == plain.bytes_written + elements * F32  # and writes it
    assert copied.flops == plain.flops


def test_a_broadcast_input_is_copied_whole_before_a_softmax():
    # a (4, 1, 8) tensor seen as (4, 16, 8): 128 B in memory, 2 KB as the softmax sees it. The
    # copy reads the 128 B and writes 2 KB, and the kernel reads that 2 KB and writes its 2 KB
    fn = lambda t: torch.softmax(t.expand(4, 16, 8), -1)    # noqa: E731
    x = torch.randn(4, 1, 8)
    assert _pytorch_copies(fn, x) == 1
    c = cost_of(fn_module(fn), "softmax", x)
    assert c.bytes_read == 4 * 8 * F32 + 4 * 16 * 8 * F32   # 128 B + 2,048 B
    assert c.bytes_written == 2 * 4 * 16 * 8 * F32           # the copy, then the result


def test_eval_dropout_is_free_and_in_place_ops_take_their_functional_formula():
    m = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Dropout(0.1),
                            torch.nn.Hardswish(inplace=True))
    x = torch.randn(8, 64)
    ops = lambda r: {k.op: k for k in r.kernels}   # noqa: E731
    # eval: dropout returns its input, no kernel; hardswish_ is hardswish's work written in place:
    # 8 x 64 = 512 elements, one FLOP each, 2 KB read and 2 KB written (fp32)
    evaluated = ops(fxroof.analyze(m.eval(), (x,), mode="eager"))
    assert "dropout" not in evaluated
    assert (evaluated["hardswish_"].flops, evaluated["hardswish_"].bytes) == (512, 4096)
    trained = ops(fxroof.analyze(m.train(), (x,), mode="eager"))
    assert trained["dropout"].bytes == 2 * 512 * 4          # train: reads x, writes the result


def _lstm_gru_cases():
    # (layer, input, matrix FLOPs by hand, gate FLOPs by hand); tokens = 3 x 5 = 15 throughout
    return [
        # 2 layers x 2 directions, 4 gates of 16: layer 0 weights (64, 8) and (64, 16), layer 1
        # (64, 32) and (64, 16): 2*15*(64*8 + 64*16)*2 + 2*15*(64*32 + 64*16)*2 = 276480;
        # gates 13 per token, hidden unit, layer and direction: 13*15*16*4 = 12480
        (torch.nn.LSTM(8, 16, num_layers=2, bidirectional=True, batch_first=True),
         torch.randn(3, 5, 8), 276480, 12480),
        # 3 gates of 16: 2*15*(48*8 + 48*16) = 34560; gates 11*15*16 = 2640
        (torch.nn.GRU(8, 16), torch.randn(5, 3, 8), 34560, 2640),
        # projection to 4: (64, 8), (64, 4), (4, 16): 2*15*(512 + 256 + 64) = 24960; 13*15*16
        (torch.nn.LSTM(8, 16, proj_size=4), torch.randn(5, 3, 8), 24960, 3120),
        # tanh RNN, 1 gate block: 2*15*(16*8 + 16*16) = 11520; add and tanh: 2*15*16
        (torch.nn.RNN(8, 16), torch.randn(5, 3, 8), 11520, 480),
    ]


@pytest.mark.parametrize("layer,x,matrix,gates", _lstm_gru_cases())
def test_recurrent_layers_are_their_matmuls_plus_gate_work(layer, x, matrix, gates):
    layer.eval()
    name = {torch.nn.LSTM: "lstm", torch.nn.GRU: "gru", torch.nn.RNN: "rnn_tanh"}[type(layer)]
    c = cost_of(layer, name, x)
    assert (c.flops, c.category) == (matrix + gates, "matmul")
    # PyTorch's counter sees the per-step products of the native (non-oneDNN) kernel
    with torch.backends.mkldnn.flags(enabled=False), FlopCounterMode(display=False) as fc:
        layer(x)
    assert fc.get_total_flops() == matrix


def test_a_onednn_rnn_layer_is_its_two_matmuls_plus_gate_work():
    # One LSTM layer, one direction, as oneDNN runs it (mode 2), over 5 steps x 3 sequences:
    # weights (64, 8) and (64, 16): 2*15*(512 + 1024) = 46080; gates 13*15*16 = 3120
    class Layer(torch.nn.Module):
        def forward(self, x, w0, w1, b0, b1, h, c):
            return torch.ops.aten.mkldnn_rnn_layer(x, w0, w1, b0, b1, h, c, False, [], 2, 16, 1,
                                                   True, False, False, False)[0]
    args = (torch.randn(5, 3, 8), torch.randn(64, 8), torch.randn(64, 16), torch.randn(64),
            torch.randn(64), torch.randn(3, 16), torch.randn(3, 16))
    report = fxroof.analyze(Layer(), args)
    assert (report.flops, report.coverage) == (46080 + 3120, 1.0)


def test_convolution_backward_agrees_with_flop_counter():
    x, w = torch.randn(2, 4, 9, 9), torch.randn(6, 4, 3, 3)
    grad = torch.randn(2, 6, 4, 4)
    args = (grad, x, w, [6], [2, 2], [0, 0], [1, 1], False, [0, 0], 1, [True, True, False])
    op = torch.ops.aten.convolution_backward.default
    with FlopCounterMode(display=False) as fc:
        out = op(*args)
    c = call_cost(OpCall(op, args, {}, out))
    assert c.flops == fc.get_total_flops() == 2 * (2 * 2 * (6 * 4 * 3 * 3) * (4 * 4))   # 27648


def test_spectral_sampling_and_distance_ops_by_hand():
    fft = cost_of(fn_module(torch.fft.rfft), "fft_rfft", torch.randn(2, 64))
    assert (fft.flops, fft.category) == (2.5 * 128 * 6, "other")   # 2.5 N log2 N, twice
    sample = cost_of(fn_module(lambda x, g: F.grid_sample(x, g, align_corners=False)),
                     "grid_sampler", torch.randn(1, 3, 8, 8), torch.rand(1, 4, 5, 2))
    assert sample.flops == 2 * 4 * (3 * 4 * 5)       # 4 bilinear taps per output element
    dist = cost_of(fn_module(torch.cdist), "cdist", torch.randn(2, 5, 3), torch.randn(2, 7, 3))
    assert dist.flops == 3 * (2 * 5 * 7) * 3         # difference, power, sum per coordinate


def test_packed_sequence_counts_only_its_tokens():
    gru = torch.nn.GRU(8, 16)
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(5, 3, 8), [5, 4, 2])
    args = (packed.data, packed.batch_sizes, torch.zeros(1, 3, 16), list(gru._flat_weights),
            True, 1, 0.0, False, False)
    with torch.backends.mkldnn.flags(enabled=False), FlopCounterMode(display=False) as fc:
        out = torch.ops.aten.gru.data(*args)
    c = call_cost(OpCall(torch.ops.aten.gru.data, args, {}, out))
    # 5 + 4 + 2 = 11 tokens, not 15: 2*11*(48*8 + 48*16) = 25344 of products, 11*11*16 of gates
    assert fc.get_total_flops() == 25344
    assert c.flops == 25344 + 1936


def _norm_rereads(norm, layer, x, train: bool) -> dict:
    """{op: Cost.reread} of the norm ops of layer -> norm, analysed as a training step or not
    (the layer before makes the norm's input need its gradient, as in a real net)."""
    model = torch.nn.Sequential(layer, norm).train(train)
    r = fxroof.analyze(model, (x,), mode="eager", train=train, optimizer="none")
    return {n.op: n.reread for n in r.nodes if n.category == "norm"}


def test_norms_that_reduce_before_their_elementwise_pass_name_the_tensors_they_read_again():
    # PyTorch's CUDA kernels (elementwise.py's _REREADS cites them): a training batch norm reads
    # x for its statistics, then again to normalise; its gradient sums dy and dy * x-hat, then
    # reads both again for dx. 4 x 8 x 16 x 16 fp32 = 32,768 B a tensor
    x, size = torch.randn(4, 8, 16, 16), 4 * 8 * 16 * 16 * F32
    conv = torch.nn.Conv2d(8, 8, 1)
    assert _norm_rereads(torch.nn.BatchNorm2d(8), conv, x, True) == {
        "native_batch_norm": (size,), "native_batch_norm_backward": (size, size)}
    # inference: the running statistics, one pass
    assert _norm_rereads(torch.nn.BatchNorm2d(8), conv, x, False) == {"batch_norm": ()}
    # a group norm computes its statistics on every call, in inference too
    assert _norm_rereads(torch.nn.GroupNorm(2, 8), conv, x, False) == {"group_norm": (size,)}
    assert _norm_rereads(torch.nn.GroupNorm(2, 8), conv, x, True) == {
        "native_group_norm": (size,), "native_group_norm_backward": (size, size)}
    # a layer norm reads each row once; its gradient's dgamma and dbeta read dy and x again
    # column by column, and without weights there are none to compute
    linear = torch.nn.Linear(16, 16)
    assert _norm_rereads(torch.nn.LayerNorm(16), linear, x, True) == {
        "native_layer_norm": (), "native_layer_norm_backward": (size, size)}
    assert _norm_rereads(torch.nn.LayerNorm(16, elementwise_affine=False), linear, x, True) == {
        "native_layer_norm": (), "native_layer_norm_backward": ()}


def test_a_batch_norm_gradient_without_dx_is_one_pass_and_rereads_leave_the_bytes_alone():
    # the first layer's batch norm: its input needs no gradient, so only the sums are computed
    x = torch.randn(4, 8, 16, 16)
    bn = torch.nn.BatchNorm2d(8)
    r = fxroof.analyze(bn, (x,), mode="eager", train=True, optimizer="none")
    (backward,) = [n for n in r.nodes if n.op == "native_batch_norm_backward"]
    assert backward.reread == ()
    # the bytes stay the op's: x read once, y written once, the small vectors beside them
    (forward,) = [n for n in r.nodes if n.op == "native_batch_norm"]
    assert forward.reread == (x.numel() * F32,)
    assert x.numel() * F32 <= forward.bytes_read < x.numel() * F32 + 1024


def test_a_convolution_with_a_bias_names_the_kernel_cuda_adds_it_in():
    # PyTorch's _convolution runs cuDNN's convolution without the bias, then
    # output.add_(bias): a kernel of its own reading and writing the output; its backward sums
    # the output's gradient for the bias in another (conv.py cites Convolution.cpp). FLOPs and
    # bytes stay the op's
    x = torch.randn(2, 8, 10, 10)
    out = 2 * 16 * 10 * 10 * F32                              # 12,800 B
    with_bias = cost_of(torch.nn.Conv2d(8, 16, 3, padding=1), "conv2d", x)
    without = cost_of(torch.nn.Conv2d(8, 16, 3, padding=1, bias=False), "conv2d", x)
    assert (with_bias.bias_bytes, without.bias_bytes) == (2 * out, 0)
    assert with_bias.flops == without.flops
    # PyTorch's depthwise kernel takes the bias itself
    assert cost_of(torch.nn.Conv2d(8, 8, 3, groups=8), "conv2d", x).bias_bytes == 0
    # a training step: the gradient's sum over the 12,800 B of the output's gradient
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU())
    r = fxroof.analyze(model, (x,), train=True, optimizer="none")
    (backward,) = [n for n in r.nodes if n.op == "convolution_backward"]
    assert backward.bias_bytes == out


def test_a_convolution_on_a_channel_slice_counts_the_copy_pytorch_makes_first():
    # torch.split along channels (CSP, Inception-style blocks) hands a convolution a strided
    # slice; PyTorch's _convolution makes it contiguous before its library runs (its profiler
    # shows the copy on this CPU; CUDA's path calls the same input.contiguous())
    x = torch.randn(2, 16, 8, 8)
    conv = torch.nn.Conv2d(8, 8, 3, padding=1)
    half = lambda t: conv(t[:, 8:])                           # noqa: E731
    assert _pytorch_copies(half, x) == 1
    assert _pytorch_copies(conv, x[:, 8:].contiguous()) == 0
    plain = cost_of(conv, "conv2d", x[:, 8:].contiguous())
    sliced = cost_of(fn_module(half), "conv2d", x)
    elements = 2 * 8 * 8 * 8                                 # 1,024 elements, 4 KB in fp32
    assert sliced.bytes_read == plain.bytes_read + elements * F32
    assert sliced.bytes_written == plain.bytes_written + elements * F32
    # a channels-last input is taken as it is
    cl = x[:, 8:].contiguous(memory_format=torch.channels_last)
    assert cost_of(conv, "conv2d", cl).bytes_read == plain.bytes_read


def test_a_pooling_window_reads_only_the_taps_inside_its_input():
    # EfficientNet's head (transformers): AvgPool2d(hidden_dim=1280, ceil_mode=True) over the
    # last 3 x 3 feature map. One window, clipped to the input: 9 taps a channel, 8 channels
    c = cost_of(torch.nn.AvgPool2d(1280, ceil_mode=True), "avg_pool2d", torch.randn(1, 8, 3, 3))
    assert c.flops == 8 * 9                           # not 8 * 1280 * 1280 = 13,107,200
    # ResNet's stem pool, 3x3 / 2 with padding 1 over 112 pixels: 56 windows a dim, the first
    # hanging one tap over the edge: 2 + 55 * 3 = 167 taps a dim, 167^2 = 27,889 a channel
    c = cost_of(torch.nn.MaxPool2d(3, stride=2, padding=1), "max_pool2d",
                torch.randn(1, 1, 112, 112))
    assert c.flops == 167 * 167
    # windows that tile the input: every input element once (2 x 4 x 6 x 6 = 288)
    c = cost_of(torch.nn.MaxPool2d(2), "max_pool2d", torch.randn(2, 4, 6, 6))
    assert c.flops == 288
    # dilation 2, kernel 3 over 5: one window, taps at 0, 2, 4
    c = cost_of(torch.nn.MaxPool1d(3, stride=1, dilation=2), "max_pool1d", torch.randn(1, 1, 5))
    assert c.flops == 3
