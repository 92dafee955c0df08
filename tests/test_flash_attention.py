"""gpt-oss's attention with sinks, and a prompt's sliding-window attention, captured as the one
fused kernel a GPU deployment runs (fxroof.graph.flash_attention): against transformers' own
attention on real tensors, and hand arithmetic."""
import pytest
import torch

import fxroof
from fxroof.chips.expected import causal_share
from fxroof.cli.hf import from_config
from fxroof.graph.engine_kernels import engine_kernels

transformers = pytest.importorskip("transformers")

B, SEQ, CTX = 2, 20, 11
# 4 query heads of 16 over 2 key heads; a sliding layer (window 8), then a full one
HEADS, KV, D, WINDOW = 4, 2, 16, 8
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=HEADS,
            num_key_value_heads=KV, head_dim=D, intermediate_size=64, num_local_experts=4,
            num_experts_per_tok=2, vocab_size=256, sliding_window=WINDOW,
            layer_types=["sliding_attention", "full_attention"], max_position_embeddings=128,
            pad_token_id=0)


def build(model_type="gpt_oss", fields=TINY, **options):
    """The tiny model (or decode step) on the CPU, random weights and sinks (transformers
    initialises some to zero), a random cache."""
    torch.manual_seed(0)
    model, args, kwargs = from_config(transformers.AutoConfig.for_model(model_type, **fields),
                                      device="cpu", dtype="fp32", **options)
    for p in model.parameters():
        p.data.normal_(0, 0.2)
    for layer in kwargs.get("cache", []):
        for t in layer:
            if t.is_floating_point():
                t.normal_()
    return model, args, kwargs


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_the_fused_op_gives_transformers_own_logits(phase):
    options = dict(batch=B, seq=SEQ) if phase == "prefill" else \
        dict(batch=B, phase="decode", ctx=CTX)
    outputs = []
    for fused in (False, True):
        model, args, kwargs = build(**options)
        with torch.no_grad(), engine_kernels() if fused else torch.no_grad():
            out = model(*args, **kwargs)
        outputs.append(getattr(out, "logits", out))
    assert outputs[0].abs().max() > 0.1
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)


def test_a_prompt_is_one_kernel_a_layer_reading_the_kv_heads_once():
    report = fxroof.analyze(*from_config(transformers.AutoConfig.for_model("gpt_oss", **TINY),
                                         batch=B, seq=SEQ), chip="h100-sxm")
    attention = [n for n in report.nodes if n.category == "attention"]
    assert [n.op for n in attention] == ["flash_attention"] * 2
    sliding, full = attention
    # by hand: every query head against every key, q.k and p.v over 16 each, 2 FLOPs a
    # multiply-add (PyTorch's dense convention, which the counter keeps on transformers' code)
    assert full.flops == 2 * (B * HEADS * SEQ) * SEQ * (D + D)
    # q, k and v (2 key heads, not 4) and the 4 sinks, fp32; no mask read, none written
    assert full.bytes_read == 4 * (B * HEADS * SEQ * D + 2 * B * KV * SEQ * D + HEADS)
    assert (full.causal, full.window, sliding.causal, sliding.window) == (True, 0, True, WINDOW)
    # no score-sized tensor in the layer: transformers' eager code writes B x 4 x 20 x 21 of them
    layer = [n for n in report.nodes if n.module == "model.layers.0.self_attn"]
    assert max(n.bytes_written for n in layer) < 4 * B * HEADS * SEQ * SEQ
    assert any("FlashAttention-3 with sinks" in note for note in report.notes)


def test_a_window_skips_the_key_blocks_before_it():
    # 8,192 queries of one head size 64 over 8,192 keys (K = 2 x keys), blocks of 128 queries
    # and 64 keys: the first block reads keys 0-127; each other block i its 128 queries'
    # window, keys 128i - 128 to 128i + 127 (64-key blocks from 128i - 127 down), 256 keys
    grid = (1, 8192, 64, 2 * 8192)
    assert causal_share(grid, 128) == pytest.approx((128 + 63 * 256) / (64 * 8192))
    # a decode step's one query at the end of 8,193 keys: key blocks from 8,064 (8,065 down to
    # a multiple of 64) to the end, 129 keys
    assert causal_share((1, 1, 64, 2 * 8193), 128) == pytest.approx(129 / 8193)
    # no window: the causal share as before, each block up to its last query
    assert causal_share(grid) == pytest.approx(sum(128 * (i + 1) for i in range(64))
                                               / (64 * 8192))


def test_other_models_eager_attention_is_left_alone():
    config = transformers.AutoConfig.for_model(
        "llama", hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, vocab_size=256)
    config._attn_implementation = "eager"
    report = fxroof.analyze(*from_config(config, batch=B, seq=SEQ), chip="h100-sxm")
    assert not any(n.op == "flash_attention" for n in report.nodes)
    assert sum(n.op in ("matmul", "bmm") for n in report.nodes) == 2   # q.k, then p.v


# Mistral with a window of 8 over a prompt of 20: transformers' SDPA reads a mask of the window
MISTRAL = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=HEADS,
               num_key_value_heads=KV, head_dim=D, intermediate_size=128, vocab_size=256,
               sliding_window=WINDOW, pad_token_id=0)


def assert_own_logits(model_type, fields):
    """The prompt's logits with the swaps in place are transformers' own."""
    outputs = []
    for fused in (False, True):
        model, args, kwargs = build(model_type, fields, batch=B, seq=SEQ)
        with torch.no_grad(), engine_kernels() if fused else torch.no_grad():
            outputs.append(model(*args, **kwargs).logits)
    assert outputs[0].abs().max() > 0.1
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)


def test_a_prompts_sliding_window_gives_transformers_own_logits_as_one_op():
    assert_own_logits("mistral", MISTRAL)
    report = fxroof.analyze(*from_config(transformers.AutoConfig.for_model("mistral", **MISTRAL),
                                         batch=B, seq=SEQ), chip="h100-sxm")
    (attention,) = [n for n in report.nodes if n.category == "attention"]
    assert (attention.op, attention.causal, attention.window) == ("flash_attention", True, WINDOW)
    # dense FLOPs, q, k and v (the 2 key heads) read, no mask (the 20 x 20 one it had read)
    assert attention.flops == 2 * (B * HEADS * SEQ) * SEQ * (D + D)
    assert attention.bytes_read == 4 * (B * HEADS * SEQ * D + 2 * B * KV * SEQ * D)
    assert any("sliding-window attention runs as" in note for note in report.notes)
    # within its reach the window is no bound: PyTorch's own causal kernel, no mask
    short = fxroof.analyze(*from_config(transformers.AutoConfig.for_model("mistral", **MISTRAL),
                                        batch=B, seq=WINDOW // 2), chip="h100-sxm")
    assert [(n.op, n.note) for n in short.nodes if n.category == "attention"] == [
        ("scaled_dot_product_attention", "causal, gqa 4q/2kv")]


def test_a_window_that_is_not_causal_reaches_as_far_after_each_query():
    # ModernBERT's local attention: query i sees keys i - 64 .. i + 64 (a window of 65 each
    # way). A block of 128 queries from 128i reads the 64-key blocks from 128i - 64 to
    # 128i + 127 + 64, 256 keys; the first block 0-191 (192), the last 8,064-64 .. 8,191 (192)
    grid = (1, 8192, 64, 2 * 8192)
    assert causal_share(grid, 65, causal=False) == pytest.approx(
        (192 + 62 * 256 + 192) / (64 * 8192))
    # ModernBERT's second layer is local (a window of 16, 8 + 1 each way), its first global
    config = transformers.AutoConfig.for_model(
        "modernbert", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, vocab_size=256, local_attention=16, global_attn_every_n_layers=2,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
    report = fxroof.analyze(*from_config(config, batch=B, seq=64), chip="h100-sxm")
    attention = [n for n in report.nodes if n.category == "attention"]
    assert [(n.op, n.causal, n.window) for n in attention] == [
        ("scaled_dot_product_attention", False, 0), ("flash_attention", False, 9)]


# Llama 4's text layers: three of chunked attention (chunks of 8), then one of full attention
LLAMA4 = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=HEADS,
              num_key_value_heads=KV, head_dim=D, intermediate_size=128,
              intermediate_size_mlp=128, num_local_experts=2, interleave_moe_layer_step=1,
              vocab_size=256, attention_chunk_size=WINDOW, pad_token_id=0)


def test_a_prompts_chunked_attention_gives_transformers_own_logits_chunk_by_chunk():
    assert_own_logits("llama4_text", LLAMA4)
    report = fxroof.analyze(*from_config(transformers.AutoConfig.for_model(
        "llama4_text", **LLAMA4), batch=B, seq=SEQ), chip="h100-sxm")
    chunked = [n for n in report.nodes if n.op == "flash_attention"]
    # 20 tokens: two whole chunks of 8 as a batch of 2 x 2 sequences, then the last 4, each a
    # causal kernel; dense FLOPs by hand, q against its chunk's keys only
    assert sorted(n.flops for n in chunked) == sorted(
        [2 * (B * 2 * HEADS * 8) * 8 * (D + D), 2 * (B * HEADS * 4) * 4 * (D + D)] * 3)
    assert all(n.causal and "chunk 8" in n.note for n in chunked)
    (full,) = [n for n in report.nodes if n.op == "scaled_dot_product_attention"]
    assert full.flops == 2 * (B * HEADS * SEQ) * SEQ * (D + D)     # the full layer's, as before
    assert any(note.startswith("3 chunked attentions run as a causal flash kernel over each "
                               "chunk") for note in report.notes)
    # a prompt within one chunk is causal attention: PyTorch's own kernel, no mask
    short = fxroof.analyze(*from_config(transformers.AutoConfig.for_model(
        "llama4_text", **LLAMA4), batch=B, seq=WINDOW), chip="h100-sxm")
    assert {n.op for n in short.nodes if n.category == "attention"} == {
        "scaled_dot_product_attention"}
