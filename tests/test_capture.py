"""Capture: real models, meta-device giants, clear errors, and the user's model left untouched."""
import resource

import pytest
import torch
from helpers import flop_counter_total, fn_module

from fxroof.cost.annotate import annotate
from fxroof.cost.record import COST_KEY
from fxroof.graph.capture import CaptureError, capture
from fxroof.graph.tensors import dtype_name

transformers = pytest.importorskip("transformers")


def tiny_hf(name):
    t = transformers
    if name == "gpt2":
        return t.GPT2LMHeadModel(t.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128,
                                              n_positions=64))
    if name == "llama":   # GQA: 4 query heads share 2 key/value heads
        return t.LlamaForCausalLM(t.LlamaConfig(
            num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=128))
    return t.BertModel(t.BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                    intermediate_size=128, vocab_size=128))


@pytest.mark.parametrize("name", ["gpt2", "llama", "bert"])
def test_transformers_models_capture_where_symbolic_trace_fails(name):
    model = tiny_hf(name).eval()
    ids = torch.randint(0, 128, (2, 16))
    with pytest.raises(Exception):
        torch.fx.symbolic_trace(model)          # the plain fx tracer cannot handle these
    captured = capture(model, (ids,))
    assert captured.strategy == "torch.export"
    gm = annotate(captured.gm)
    calls = [n for n in gm.graph.nodes if n.op == "call_function"]
    assert all("val" in n.meta for n in calls)
    unknown = {str(n.target) for n in calls if not n.meta[COST_KEY].known}
    assert unknown == set()
    ours = sum(n.meta[COST_KEY].flops for n in calls
               if n.meta[COST_KEY].category in ("matmul", "attention", "conv"))
    assert ours == flop_counter_total(model, ids)


def llama_on_meta(**shape):
    config = transformers.LlamaConfig(**shape)
    with torch.device("meta"):
        return transformers.LlamaForCausalLM(config).eval()


def test_llama2_7b_shaped_on_meta_allocates_nothing():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = llama_on_meta(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=32, vocab_size=32000)
    ids = torch.zeros(1, 32, dtype=torch.long, device="meta")
    captured = capture(model, (ids,))
    weights = [n.meta["val"] for n in captured.gm.graph.nodes
               if n.op == "placeholder" and n.name in captured.weights]
    # 6,738,415,616 parameters (Llama-2-7B model card: 32 layers of 4*4096^2 attention +
    # 3*4096*11008 MLP + 2*4096 norms, two 32000x4096 embeddings, one final norm), plus the
    # rotary buffers inv_freq and original_inv_freq of head_dim/2 = 64 each
    assert sum(w.numel() for w in weights) == 32 * (4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096) \
        + 2 * 32000 * 4096 + 4096 + 2 * 64
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 1_000_000     # 27 GB of fp32 weights would be far above 1 GB


def test_llama3_70b_shaped_on_meta_captures():
    model = llama_on_meta(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                          num_attention_heads=64, num_key_value_heads=8, vocab_size=128256,
                          rope_theta=500000.0)
    ids = torch.zeros(1, 16, dtype=torch.long, device="meta")
    gm = annotate(capture(model, (ids,)).gm)
    sdpa = [n for n in gm.graph.nodes if "scaled_dot_product" in str(n.target)]
    assert len(sdpa) == 80
    from fxroof.graph.nodes import module_path
    k_proj = [n for n in gm.graph.nodes if module_path(n) == "model.layers.0.self_attn.k_proj"]
    assert k_proj[0].meta["val"].shape[-1] == 8 * 128         # GQA: 8 kv heads of 128


def test_shape_mismatch_names_every_strategy_and_the_shapes():
    with pytest.raises(CaptureError) as err:
        capture(torch.nn.Linear(10, 20), (torch.randn(4, 11),))
    text = str(err.value)
    for strategy in ("torch.export", "make_fx", "symbolic_trace"):
        assert strategy in text
    assert "[4, 11]" in text and "[10, 20]" in text
    # every strategy stopped on the same call: one line, the cause once, no traceback
    assert text == ("could not capture Linear: RuntimeError: a and b must have same reduction "
                    "dim, but got [4, 11] X [10, 20]. (every capture strategy stopped there: "
                    "torch.export, make_fx, symbolic_trace)")


def test_strategies_that_stop_apart_get_a_line_each():
    # torch.export and make_fx meet the model's own error; symbolic tracing stops earlier, at
    # the tensor value it cannot read as a bool: each cause is given
    attempts = [("torch.export", ValueError("weights not loaded")),
                ("make_fx", ValueError("weights not loaded")),
                ("symbolic_trace", TypeError("symbolically traced variables cannot be used as "
                                             "inputs to control flow"))]
    text = str(CaptureError("Broken", attempts))
    assert text.splitlines() == [
        "could not capture Broken:", "  torch.export: ValueError: weights not loaded",
        "  make_fx: ValueError: weights not loaded",
        "  symbolic_trace: TypeError: symbolically traced variables cannot be used as inputs "
        "to control flow"]


def test_model_that_raises_is_a_capture_error():
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise ValueError("weights not loaded")
    with pytest.raises(CaptureError, match="weights not loaded"):
        capture(Broken(), (torch.randn(2),))


def test_not_a_model_is_a_capture_error():
    with pytest.raises(CaptureError, match="expected an nn.Module"):
        capture(42, ())


def test_exported_program_graph_module_function_and_fake_inputs():
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU())
    x = torch.randn(3, 8)
    assert capture(torch.export.export(model, (x,)), ()).strategy == "torch.export"
    from torch.fx.experimental.proxy_tensor import make_fx
    gm = make_fx(lambda t: torch.relu(t @ t.T), tracing_mode="fake")(x)
    assert capture(gm, ()).strategy == "graph"
    assert capture(lambda t: t.cos(), (x,)).name == "<lambda>"
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        fake = torch.randn(3, 8)
    assert capture(model, (fake,)).strategy == "torch.export"


def test_exported_program_meta_is_not_written():
    ep = torch.export.export(fn_module(torch.cos), (torch.randn(4),))
    annotate(capture(ep, ()).gm)
    assert all(COST_KEY not in n.meta for n in ep.graph.nodes)


def test_user_model_untouched_after_capture_and_after_error():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2))
    model.train()
    model[2].eval()
    calls = []
    model[0].register_forward_hook(lambda *a: calls.append(1))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    hooks = [dict(m._forward_hooks) for m in model.modules()]
    for x in (torch.randn(2, 8), torch.randn(2, 9)):       # the second one fails
        try:
            capture(model, (x,))
        except CaptureError:
            pass
        assert [m.training for m in model.modules()] == modes
        assert [dict(m._forward_hooks) for m in model.modules()] == hooks
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
        assert all(p.device.type == "cpu" and not p.is_meta for p in model.parameters())


class _SizedByItsInput(torch.nn.Module):
    """A size read from the input's values, then an LSTM (whose CPU kernel's scratch output a
    fake kernel sizes otherwise: values stop there, the trace goes on)."""

    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(4, 4, batch_first=True)

    def forward(self, x):
        n = int(x.sum().item())
        return self.lstm(torch.ones(1, n, 4))[0]


def test_real_inputs_settle_a_size_read_from_their_values():
    model, x = _SizedByItsInput().eval(), torch.full((3,), 2.0)
    captured = capture(model, (x,))
    line = _SizedByItsInput.forward.__code__.co_firstlineno + 1     # n = int(x.sum().item())
    assert captured.strategy == (f"make_fx on example values: branches and sizes at "
                                 f"test_capture.py:{line} follow the example inputs")
    out = [n for n in captured.gm.graph.nodes if n.op == "output"][0].args[0][0]
    assert tuple(out.meta["val"].shape) == (1, 6, 4)      # the example's sum, 2 * 3
    assert not any(isinstance(s, torch.SymInt) for n in captured.gm.graph.nodes
                   if isinstance(n.meta.get("val"), torch.Tensor) for s in n.meta["val"].shape)
    assert torch.equal(x, torch.full((3,), 2.0))
    with pytest.raises(CaptureError, match=r"uses a tensor value as a size or number"):
        capture(model, (torch.full((3,), 2.0, device="meta"),))    # no values to follow


class AutocastLinear(torch.nn.Module):
    def __init__(self, device_type: str):
        super().__init__()
        self.fc, self.device_type = torch.nn.Linear(64, 32), device_type

    def forward(self, x):
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return torch.softmax(self.fc(x), -1)


def test_autocast_in_the_forward_runs_its_matmuls_in_its_dtype():
    import fxroof
    x = torch.randn(8, 64)
    model = AutocastLinear("cpu")
    # PyTorch's own run: CPU autocast computes the linear in bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.fc(x).dtype == torch.bfloat16
    r = fxroof.analyze(model, (x,), chip="h100-sxm")
    (mm,) = [n for n in r.nodes if n.category == "matmul"]
    # 2*8*64*32 FLOPs at the bf16 peak, its fp32 operands cast to bf16 first
    assert (mm.dtype, mm.flops) == ("bf16", 2 * 8 * 64 * 32)
    assert sum(n.op == "_to_copy" for n in r.nodes) == 3      # x, weight, bias
    assert not any("CUDA autocast" in note for note in r.notes)


class BiasedAttention(torch.nn.Module):
    """BEiT's attention: a mask made from a parameter (a relative position bias), under CUDA
    autocast, which sends the capture to make_fx."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(1, 2, 16, 16))

    def forward(self, q):
        with torch.autocast("cuda", dtype=torch.float16):
            return torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=self.bias)


def test_a_forward_is_traced_without_grad_as_inference_runs_it():
    q, model = torch.randn(1, 2, 16, 8), BiasedAttention()
    # PyTorch's own choice for the 16-bit mask autocast makes of the parameter: made with grad
    # on, it requires grad and sends CPU attention to its math path (0); made under no_grad,
    # as inference makes it, the fused kernel (1)
    qh = q.half()
    assert torch._fused_sdp_choice(qh, qh, qh, model.bias.half(), 0.0, False) == 0
    with torch.no_grad():
        assert torch._fused_sdp_choice(qh, qh, qh, model.bias.half(), 0.0, False) == 1
    captured = capture(model, (q,))
    ops = [str(n.target) for n in captured.gm.graph.nodes if n.op == "call_function"]
    assert captured.strategy == "make_fx"
    assert sum("_scaled_dot_product_flash_attention" in op for op in ops) == 1
    assert not any("softmax" in op for op in ops)
    assert model.bias.requires_grad and torch.is_grad_enabled()    # the user's left as found


class AutocastBlock(torch.nn.Module):
    """A pre-norm block's ops under autocast: which run in 16 bits and which in fp32."""

    def __init__(self, device_type):
        super().__init__()
        self.fc, self.norm, self.device_type = torch.nn.Linear(64, 64), torch.nn.LayerNorm(64), \
            device_type

    def forward(self, x, target):
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            h = self.fc(x)
            y = torch.nn.functional.gelu(self.norm(h)) + h.softmax(-1) + (h ** 2).exp()
            return torch.nn.functional.cross_entropy(self.fc(y), target) + h.sum()


def _dtypes(report) -> dict:
    """{op: dtype} of the forward's ops (a training step's backward follows the forward)."""
    return {n.op: n.dtype for n in reversed(report.nodes) if n.phase in ("", "forward")}


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA autocast runs as itself here")
def test_cuda_autocast_runs_cudas_fp32_ops_in_fp32():
    import fxroof
    x, target = torch.randn(8, 64), torch.zeros(8, dtype=torch.long)
    for train in (False, True):
        r = fxroof.analyze(AutocastBlock("cuda"), (x, target), chip="h100-sxm", train=train)
        d = _dtypes(r)
        # PyTorch's autocast op reference: linear to 16 bits; layer_norm, softmax, pow, exp,
        # sum and cross_entropy (log_softmax, nll_loss) to fp32 on CUDA; gelu not listed, it
        # runs in its input's dtype (fp32 after the norm)
        assert d["addmm"] == "bf16"
        assert {d[op] for op in ("native_layer_norm", "_softmax", "pow", "exp", "sum",
                                 "_log_softmax")} == {"fp32"}
    # CPU's own policy, as PyTorch runs it here: softmax and pow stay in bf16
    cpu = _dtypes(fxroof.analyze(AutocastBlock("cpu"), (x, target), chip="h100-sxm"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = torch.nn.Linear(64, 64)(x)
        assert h.softmax(-1).dtype == (h ** 2).dtype == torch.bfloat16
    assert cpu["_softmax"] == cpu["pow"] == "bf16"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA autocast runs as itself here")
def test_cuda_autocast_without_a_gpu_is_traced_as_cpu_autocast_and_said():
    import fxroof
    x = torch.randn(8, 64)
    for train in (False, True):
        r = fxroof.analyze(AutocastLinear("cuda"), (x,), chip="h100-sxm", train=train)
        # not the fp32 a CPU-only torch would trace with CUDA autocast turned off
        assert {n.dtype for n in r.nodes if n.category == "matmul"} == {"bf16"}
        assert any("CUDA autocast (bf16)" in note for note in r.notes)


class LayerScaleBlock(torch.nn.Module):
    """A pre-norm residual branch with a layer scale: an fp32 parameter in elementwise math."""

    def __init__(self):
        super().__init__()
        self.norm, self.fc = torch.nn.LayerNorm(64), torch.nn.Linear(64, 64)
        self.gamma = torch.nn.Parameter(torch.full((64,), 0.1))

    def forward(self, x):
        return x + self.gamma * self.fc(self.norm(x))


def test_amp_runs_the_forward_as_autocast_does_and_leaves_the_model_alone():
    from torch.utils._python_dispatch import TorchDispatchMode

    import fxroof

    class Dtypes(TorchDispatchMode):        # each op's output dtype, as PyTorch runs it
        def __init__(self):
            super().__init__()
            self.seen = {}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and func.overloadpacket.__name__ in OPS:
                self.seen[func.overloadpacket.__name__] = out.dtype
            return out

    OPS = ("addmm", "mul", "add")
    x, model = torch.randn(4, 8, 64), LayerScaleBlock()
    with Dtypes() as run, torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
    # PyTorch's CPU autocast: the linear in bf16, its fp32 scale promoting the product to fp32
    assert run.seen["addmm"] == torch.bfloat16 and run.seen["mul"] == torch.float32
    before = fxroof.analyze(model, (x,), chip="cpu", mode="eager")
    r = fxroof.analyze(model, (x,), chip="cpu", mode="eager", amp="bf16")
    traced = {n.op: n.dtype for n in r.nodes if n.op in OPS}
    assert traced == {op: dtype_name(d) for op, d in run.seen.items()}
    # the same ops where they were (module paths kept), the weights cast at their call
    assert {n.module for n in r.nodes} == {n.module for n in before.nodes} | {"fc"}
    assert any(n.op == "_to_copy" and n.module == "fc" for n in r.nodes)
    assert type(model) is LayerScaleBlock and "_fxroof_amp" not in model.__dict__
    assert model.fc.weight.dtype == torch.float32
    # a GPU runs CUDA's policy: the norm in fp32 (CPU's runs it in its input's dtype, fp32 here)
    gpu = fxroof.analyze(model, (x,), chip="h100-sxm", mode="eager", amp="fp16")
    assert {n.op: n.dtype for n in gpu.nodes if n.op in ("addmm", "mul")} == \
        {"addmm": "fp16", "mul": "fp32"}


def test_amp_names_its_choices():
    import fxroof
    with pytest.raises(ValueError, match=r"unknown amp 'fp8'; expected one of fp16, bf16"):
        fxroof.Target(amp="fp8")
    gm = torch.fx.symbolic_trace(LayerScaleBlock())
    with pytest.raises(TypeError, match=r"amp= runs a module's forward under autocast"):
        fxroof.analyze(gm, (torch.randn(2, 64),), amp="bf16")


def test_batch_norm_traced_by_make_fx_is_the_one_op_eager_calls():
    import fxroof
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8),
                                torch.nn.ReLU()).eval()
    x = torch.randn(1, 3, 16, 16)
    # PyTorch's profiler: the forward issues three ops; batch norm allocates its reserve buffer
    # (aten::empty) inside its own call
    with torch.profiler.profile() as prof:
        model(x)
    top = [e.name for e in prof.events() if e.cpu_parent is None and e.name.startswith("aten::")]
    inner = [e.name for e in prof.events() if e.cpu_parent is not None]
    assert top == ["aten::conv2d", "aten::batch_norm", "aten::relu"] and "aten::empty" in inner
    # under amp= the capture is make_fx's, which traces the reserve: not an op of its own
    r = fxroof.analyze(model, (x,), chip="h100-sxm", mode="eager", amp="fp16")
    assert [k.op for k in r.eager.kernels if k.op != "_to_copy"] == \
        ["convolution", "native_batch_norm", "relu"]


def test_work_on_the_graphs_own_allocations_that_nothing_reads_is_dropped():
    # DTensor's sharding propagation (torch 2.11) runs each op of a tensor-parallel model once
    # more on empty tensors of the unsplit shapes and make_fx records it: nothing reads it, and
    # no model's eager run computes on tensors it never filled. What the model computes, and a
    # write into an allocation, stay.
    from torch.fx.experimental.proxy_tensor import make_fx

    def step(x, buf):
        torch.mm(torch.empty(64, 32), torch.empty(32, 64)).t()      # an inference, unread
        torch.empty(8).add_(1)                                       # a write: kept
        buf.mul_(2)
        return torch.mm(x, x.t())

    gm = make_fx(step)(torch.randn(4, 32), torch.randn(3))
    assert sum(n.target is torch.ops.aten.mm.default for n in gm.graph.nodes) == 2
    ops = [n.target for n in capture(gm).gm.graph.nodes if n.op == "call_function"]
    assert ops.count(torch.ops.aten.mm.default) == 1 and torch.ops.aten.t.default in ops
    assert torch.ops.aten.add_.Tensor in ops and torch.ops.aten.mul_.Tensor in ops
    assert torch.ops.aten.empty.memory_format in ops       # the written allocation, kept
