"""The bundled workloads in models/: they load by path, build on meta, run, export, and match the
published parameter counts, recomputed here from each architecture's formula."""

import importlib.util
import itertools
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

MODELS = Path(__file__).resolve().parents[1] / "models"
WORKLOAD_FILES = sorted(p.stem for p in MODELS.glob("*.py") if not p.name.startswith("_"))
_ids = itertools.count()


def load(name: str):
    """Load models/<name>.py by path, as the command line does; deliberately not put in sys.modules."""
    spec = importlib.util.spec_from_file_location(f"workload_{name}_{next(_ids)}", MODELS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(name: str, **options):
    """(model, args, kwargs, output) for models/<name>.py's workload(**options)."""
    model, args, *rest = load(name).workload(**options)
    kwargs = rest[0] if rest else {}
    with torch.no_grad():
        return model, args, kwargs, model(*args, **kwargs)


def shapes(out):
    return tuple(o.shape for o in out) if isinstance(out, tuple) else out.shape


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # a tied parameter is counted once


# Small options per workload: enough to run on CPU with real numbers and to export quickly.
TINY = {
    "mlp": dict(preset="tiny"),
    "gpt2": dict(size="tiny", seq=16),
    "bert": dict(size="tiny", seq=16),
    "vit": dict(size="tiny"),
    "resnet": dict(image=32),
    "moe": dict(preset="tiny", seq=16),
    "llama": dict(preset="tiny", seq=16),
}


def test_every_workload_has_tiny_options():
    assert set(WORKLOAD_FILES) == set(TINY), "add the new workload to TINY"


# --- defaults on meta --------------------------------------------------------------------------


@pytest.mark.parametrize("name", WORKLOAD_FILES)
def test_default_workload_builds_on_meta_and_runs(name):
    returned = load(name).workload()
    assert isinstance(returned, tuple) and len(returned) in (2, 3)
    model, args = returned[:2]
    assert not model.training
    assert all(p.is_meta for p in model.parameters())
    assert all(a.is_meta for a in args if isinstance(a, torch.Tensor))
    with torch.no_grad():
        model(*args, **(returned[2] if len(returned) == 3 else {}))


@pytest.mark.parametrize("name, options, expected", [
    ("mlp", dict(batch=4), (4, 512)),
    ("gpt2", dict(batch=2, seq=64), (2, 64, 50257)),
    ("bert", dict(batch=2, seq=32), ((2, 32, 768), (2, 768))),
    ("bert", dict(size="large", seq=512, layers=1), ((1, 512, 1024), (1, 1024))),
    ("vit", dict(batch=2), (2, 1000)),
    ("vit", dict(image=384, layers=1), (1, 1000)),
    ("resnet", dict(batch=2), (2, 1000)),
    ("resnet", dict(depth=152, image=256), (1, 1000)),
    ("moe", dict(batch=2, seq=32), (2, 32, 32000)),
    ("moe", dict(seq=32, dispatch="dense"), (1, 32, 32000)),
    ("llama", dict(batch=2, seq=32), (2, 32, 32000)),
    ("llama", dict(preset="llama3-70b", phase="decode", batch=3, ctx=8192, layers=2), (3, 1, 128256)),
])
def test_output_shape_on_meta(name, options, expected):
    *_, out = run(name, **options)
    assert shapes(out) == expected


def test_workload_dtype_option():
    model, args, kwargs, out = run("llama", preset="tiny", seq=8, dtype="fp16")
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    assert kwargs["cache"][0][0].dtype == torch.float16 and out.dtype == torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        load("mlp").workload(dtype="fp7")


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="llama2-7b"):
        load("llama").workload(preset="llama9")
    with pytest.raises(ValueError, match="50, 101, 152"):
        load("resnet").workload(depth=18)


def test_loads_by_path_from_another_directory(tmp_path):
    # A fresh interpreter, so the _common import is really resolved from the file's own folder.
    code = textwrap.dedent(f"""
        import importlib.util
        spec = importlib.util.spec_from_file_location("llama_by_path", {str(MODELS / "llama.py")!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        model, args, kwargs = module.workload(preset="tiny", seq=4)
        print(tuple(model(*args, **kwargs).shape))
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(1, 4, 512)"


# --- real numbers on CPU -----------------------------------------------------------------------


@pytest.mark.parametrize("name", WORKLOAD_FILES)
def test_tiny_workload_runs_on_cpu(name):
    model, args, kwargs, out = run(name, device="cpu", **TINY[name])
    assert all(p.device.type == "cpu" for p in model.parameters())
    for o in out if isinstance(out, tuple) else (out,):
        assert o.device.type == "cpu" and torch.isfinite(o).all()


# --- torch.export ------------------------------------------------------------------------------


def export(model, args, kwargs):
    return torch.export.export(model, args, kwargs, strict=False)


def ops(ep) -> set[str]:
    return {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}


@pytest.mark.parametrize("name, expected_op", [
    ("mlp", "aten.linear.default"),
    ("gpt2", "aten.scaled_dot_product_attention.default"),
    ("bert", "aten.scaled_dot_product_attention.default"),
    ("vit", "aten.conv2d.default"),
    ("resnet", "aten.conv2d.default"),
    ("moe", "aten.index_add.default"),
    ("llama", "aten.index_copy_.default"),
])
def test_tiny_workload_exports(name, expected_op):
    model, args, *rest = load(name).workload(**TINY[name])
    ep = export(model, args, rest[0] if rest else {})
    assert expected_op in ops(ep)


def test_real_size_layer_exports_on_meta():
    # One Llama-2-70B layer in decode: full-size shapes, no memory, fast.
    model, args, kwargs = load("llama").workload(preset="llama2-70b", phase="decode", ctx=4096, layers=1)
    ep = export(model, args, kwargs)
    out = next(n for n in ep.graph.nodes if n.op == "output").args[0][0]
    assert tuple(out.meta["val"].shape) == (1, 1, 32000)


# --- Llama KV cache ----------------------------------------------------------------------------


def test_decode_writes_the_cache_at_ctx_only():
    ctx, max_len = 5, 9
    model, (tokens,), kwargs, out = run("llama", preset="tiny", phase="decode", batch=2, ctx=ctx,
                                        max_len=max_len, device="cpu", dtype="fp32")
    assert tokens.shape == (2, 1) and out.shape == (2, 1, 512)
    for k, v in kwargs["cache"]:
        assert k.shape == v.shape == (2, 2, max_len, 32)  # (B, n_kv_heads, max_len, head_dim)
        written = (k != 0).any(dim=(0, 1, 3))              # which positions changed
        assert written.tolist() == [i == ctx for i in range(max_len)]
        assert (v[:, :, ctx] != 0).any()


def test_decode_export_writes_position_ctx():
    ctx = 7
    model, args, kwargs = load("llama").workload(preset="tiny", phase="decode", ctx=ctx, max_len=16)
    ep = export(model, args, kwargs)
    writes = [n for n in ep.graph.nodes if n.target == torch.ops.aten.index_copy_.default]
    assert len(writes) == 2 * 2  # k and v, 2 layers
    dim, index = writes[0].args[1], writes[0].args[2]
    assert dim == 2 and index.target == torch.ops.aten.arange.start and index.args[:2] == (ctx, ctx + 1)
    # attention reads the ctx + 1 filled positions, not the whole max_len
    sdpa = [n for n in ep.graph.nodes if n.target == torch.ops.aten.scaled_dot_product_attention.default]
    assert [tuple(n.args[1].meta["val"].shape) for n in sdpa] == [(1, 2, ctx + 1, 32)] * 2


def test_prefill_then_decode_matches_one_long_prefill():
    # The cache, the rope positions and GQA agree: logits for token n+1 are the same whether it is
    # decoded after a prefill of n tokens or is the last token of a prefill of n+1.
    llama = load("llama")
    n = 6
    model, _, kwargs = llama.workload(preset="tiny", batch=2, seq=n, max_len=n + 1, device="cpu",
                                      dtype="fp32")
    tokens = torch.randint(0, 512, (2, n + 1))
    with torch.no_grad():
        full = model(tokens)
        model(tokens[:, :n], **kwargs)                              # fills positions 0 .. n-1
        step = model(tokens[:, n:], kwargs["cache"], start_pos=n)  # decode position n
        # chunked prefill: the last 3 tokens against a cache holding the first n-2
        cache = llama.new_cache(model.cfg, 2, n + 1, torch.float32, "cpu")
        model(tokens[:, : n - 2], cache)
        chunk = model(tokens[:, n - 2 :], cache, start_pos=n - 2)
    torch.testing.assert_close(step[:, 0], full[:, n], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(chunk, full[:, n - 2 :], rtol=1e-4, atol=1e-4)


def test_cache_too_small_is_refused():
    with pytest.raises(ValueError, match="max_len"):
        load("llama").workload(phase="decode", ctx=100, max_len=100)


# --- MoE dispatch ------------------------------------------------------------------------------


def test_moe_capacity_dispatch_equals_dense_when_nothing_is_dropped():
    moe = load("moe")
    torch.manual_seed(0)
    model, (tokens,) = moe.workload(preset="tiny", batch=2, seq=8, device="cpu", dtype="fp32")
    with torch.no_grad():
        for layer in model.layers:
            layer.moe.dispatch = "dense"
        dense = model(tokens)
        for layer in model.layers:  # capacity = n_experts / top_k = 4 / 2: every expert takes every token
            layer.moe.dispatch, layer.moe.capacity = "capacity", 2.0
        routed = model(tokens)
    torch.testing.assert_close(routed, dense, rtol=1e-5, atol=1e-5)


def test_moe_capacity_runs_expert_matmuls_on_c_slots():
    # tiny: E = 4 experts, top-2, N = 16 tokens, capacity 1.0 -> C = ceil(16 * 2 / 4) = 8 slots
    model, args = load("moe").workload(preset="tiny", seq=16, layers=1)
    bmm_rows = {tuple(n.meta["val"].shape) for n in export(model, args, {}).graph.nodes
                if n.target == torch.ops.aten.matmul.default}
    assert (4, 8, 128) in bmm_rows and (4, 8, 64) in bmm_rows  # (E, C, ffn) and (E, C, dim)


# --- parameter counts --------------------------------------------------------------------------


def llama_params(dim, layers, heads, kv_heads, ffn, vocab):
    head_dim = dim // heads
    attention = 2 * dim * dim + 2 * dim * kv_heads * head_dim  # wq, wo; wk, wv
    return 2 * vocab * dim + layers * (attention + 3 * dim * ffn + 2 * dim) + dim


@pytest.mark.parametrize("preset, shape, published", [
    # 2*32000*4096 + 32*(4*4096^2 + 3*4096*11008 + 2*4096) + 4096
    #   = 262,144,000 + 32*202,383,360 + 4,096 = 6,738,415,616
    ("llama2-7b", (4096, 32, 32, 32, 11008, 32000), 6_738_415_616),
    ("llama2-13b", (5120, 40, 40, 40, 13824, 32000), 13_015_864_320),
    ("llama2-70b", (8192, 80, 64, 8, 28672, 32000), 68_976_648_192),
    ("llama3-8b", (4096, 32, 32, 8, 14336, 128256), 8_030_261_248),
    ("llama3-70b", (8192, 80, 64, 8, 28672, 128256), 70_553_706_496),
    # Mistral-7B-v0.1's safetensors total: 262,144,000 + 32*218,112,000 + 4,096
    ("mistral-7b", (4096, 32, 32, 8, 14336, 32000), 7_241_732_096),
])
def test_llama_parameter_counts(preset, shape, published):
    assert llama_params(*shape) == published
    model, *_ = load("llama").workload(preset=preset)
    assert n_params(model) == published


def test_mistral_refuses_contexts_past_its_window():
    # 4,096 positions is full attention; one more would read keys Mistral's window drops
    llama = load("llama")
    assert llama.workload(preset="mistral-7b", phase="decode", ctx=4095, layers=1)
    with pytest.raises(ValueError, match="sliding window.*4097 positions"):
        llama.workload(preset="mistral-7b", phase="decode", ctx=4096, layers=1)


def transformer_layer_params(d):
    return 12 * d * d + 13 * d  # qkv + proj 4(d^2 + d), mlp d->4d->d 8d^2 + 5d, two LayerNorms 4d


@pytest.mark.parametrize("size, d, layers, published", [
    # 50257*768 + 1024*768 + 12*(12*768^2 + 13*768) + 2*768
    #   = 38,597,376 + 786,432 + 12*7,087,872 + 1,536 = 124,439,808 (lm_head tied to wte)
    ("small", 768, 12, 124_439_808),
    ("medium", 1024, 24, 354_823_168),
    ("large", 1280, 36, 774_030_080),
    ("xl", 1600, 48, 1_557_611_200),
])
def test_gpt2_parameter_counts(size, d, layers, published):
    assert 50257 * d + 1024 * d + layers * transformer_layer_params(d) + 2 * d == published
    model, _ = load("gpt2").workload(size=size)
    assert model.lm_head.weight is model.wte.weight
    assert n_params(model) == published


@pytest.mark.parametrize("size, d, layers, published", [
    # embeddings (30522 + 512 + 2)*768 + LayerNorm 2*768 = 23,837,184; 12 layers 85,054,464;
    # pooler 768^2 + 768 = 590,592; total 109,482,240
    ("base", 768, 12, 109_482_240),
    ("large", 1024, 24, 335_141_888),
])
def test_bert_parameter_counts(size, d, layers, published):
    assert (30522 + 512 + 2) * d + 2 * d + layers * transformer_layer_params(d) + d * d + d == published
    model, _ = load("bert").workload(size=size)
    assert n_params(model) == published


def test_vit_b16_parameter_count():
    d, patches = 768, (224 // 16) ** 2
    # patch conv 3*16*16*768 + 768 = 590,592; cls 768; positions 197*768 = 151,296;
    # 12 layers 85,054,464; final LayerNorm 1,536; head 768*1000 + 1000 = 769,000
    expected = ((3 * 16 * 16 * d + d) + d + (patches + 1) * d + 12 * transformer_layer_params(d)
                + 2 * d + (d * 1000 + 1000))
    assert expected == 86_567_656  # timm vit_base_patch16_224
    model, _ = load("vit").workload()
    assert n_params(model) == expected


def resnet_params(blocks, n_classes=1000):
    conv_bn = lambda c_in, c_out, k: c_in * c_out * k * k + 2 * c_out  # bias-free conv + BN scale, shift
    total, c_in = conv_bn(3, 64, 7), 64
    for stage, n in enumerate(blocks):
        width = 64 * 2 ** stage
        for j in range(n):
            total += conv_bn(c_in, width, 1) + conv_bn(width, width, 3) + conv_bn(width, 4 * width, 1)
            if j == 0:  # projection shortcut
                total += conv_bn(c_in, 4 * width, 1)
            c_in = 4 * width
    return total + c_in * n_classes + n_classes


@pytest.mark.parametrize("depth, blocks, published", [
    (50, (3, 4, 6, 3), 25_557_032),  # torchvision resnet50
    (101, (3, 4, 23, 3), 44_549_160),
    (152, (3, 8, 36, 3), 60_192_808),
])
def test_resnet_parameter_counts(depth, blocks, published):
    assert resnet_params(blocks) == published
    model, _ = load("resnet").workload(depth=depth)
    assert n_params(model) == published


def test_mixtral_parameter_count():
    dim, layers, kv, ffn, experts, vocab = 4096, 32, 8 * 128, 14336, 8, 32000
    # per layer: attention 2*4096^2 + 2*4096*1024 = 41,943,040; router 4096*8 = 32,768;
    # experts 8*3*4096*14336 = 1,409,286,144; two RMSNorms 8,192 -> 1,451,270,144
    per_layer = 2 * dim * dim + 2 * dim * kv + dim * experts + experts * 3 * dim * ffn + 2 * dim
    expected = 2 * vocab * dim + layers * per_layer + dim
    assert expected == 46_702_792_704
    model, _ = load("moe").workload(preset="mixtral-8x7b")
    assert n_params(model) == expected
