"""DeepSeek's multi-head latent attention in a decode step captured absorbed, as serving engines run
it (fxroof.graph.latent_attention): against transformers' own expanding code on real tensors,
and hand arithmetic."""
import pytest
import torch

import fxroof
from fxroof.cli.hf import from_config
from fxroof.graph.latent_attention import absorbed_latent_attention

transformers = pytest.importorskip("transformers")

B, CTX = 2, 9
# 4 heads, a latent of 16 and a rotary part of 4 a row, keys' own parts of 8, values of 8
HEADS, RANK, ROPE, NOPE, V = 4, 16, 4, 8, 8
TINY = dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
            num_hidden_layers=2, num_attention_heads=HEADS, num_key_value_heads=HEADS,
            n_shared_experts=1, n_routed_experts=4, num_experts_per_tok=2,
            first_k_dense_replace=1, kv_lora_rank=RANK, q_lora_rank=24, qk_nope_head_dim=NOPE,
            qk_rope_head_dim=ROPE, v_head_dim=V, n_group=1, topk_group=1, vocab_size=256,
            max_position_embeddings=128, pad_token_id=0,
            index_n_heads=2, index_head_dim=8, index_topk=4)   # DeepSeek-V3.2's indexer


def config(model_type="deepseek_v3"):
    return transformers.AutoConfig.for_model(model_type, **TINY)


@pytest.mark.parametrize("model_type", ["deepseek_v3", "deepseek_v2", "minicpm3",
                                        "deepseek_v32"])
def test_the_absorbed_step_gives_transformers_own_logits(model_type):
    torch.manual_seed(0)
    step, args, kwargs = from_config(config(model_type), batch=B, phase="decode", ctx=CTX,
                                     device="cpu", dtype="fp32")
    for layer in kwargs["cache"]:
        for t in layer:
            if t.is_floating_point():
                t.normal_()       # a cache of random latent rows, not zeros
    saved = [[t.clone() for t in layer] for layer in kwargs["cache"]]
    ids = torch.randint(0, 256, (B, 1))
    with torch.no_grad():
        expanded = step(ids, args[1], **kwargs)
        for layer, before in zip(kwargs["cache"], saved):
            for t, b in zip(layer, before):
                t.copy_(b)
        with absorbed_latent_attention():
            absorbed = step(ids, args[1], **kwargs)
    assert absorbed.abs().max() > 0.1
    torch.testing.assert_close(absorbed, expanded, rtol=1e-5, atol=1e-5)


def test_a_decode_step_reads_the_latent_cache_once_and_expands_none_of_it():
    report = fxroof.analyze(*from_config(config(), batch=B, phase="decode", ctx=CTX),
                            chip="h100-sxm", mode="eager")
    attention = [n for n in report.nodes if n.op == "latent_attention"]
    assert len(attention) == 2
    keys = CTX + 1                   # the cache's positions, the new token's included
    # by hand: each of B x 4 heads' one query against every row: scores over the latent and
    # its rotary part (16 + 4), output over the latent (16), 2 FLOPs a multiply-add
    assert attention[0].flops == 2 * B * HEADS * keys * (RANK + ROPE + RANK)
    # the rows (16 + 4 wide, fp32) read once for all four heads, not once a head; the heads'
    # queries (16 + 4 wide) and the mask (a byte a row)
    rows = B * keys * (RANK + ROPE) * 4
    assert attention[0].bytes_read == rows + B * HEADS * (RANK + ROPE) * 4 + B * keys
    # kv_b_proj is no longer run over the cache: no product in the layer grows with it but
    # the attention (the absorbing products are one query row a head)
    layer = [n for n in report.nodes if n.module.startswith("model.model.layers.0.self_attn")
             and n.category == "matmul"]
    assert all(n.grid[1] * n.grid[0] <= B * HEADS for n in layer)
    assert not any(n.module.endswith("kv_b_proj") for n in report.nodes)
    assert any("FlashMLA" in note for note in report.notes)


def test_a_prompt_keeps_transformers_own_expansion():
    report = fxroof.analyze(*from_config(config(), batch=B, seq=16), chip="h100-sxm")
    assert not any(n.op == "latent_attention" for n in report.nodes)
    assert any(n.module.endswith("kv_b_proj") for n in report.nodes)
    assert not any("FlashMLA" in note for note in report.notes)


def test_tensor_parallel_ranks_absorb_their_heads_only():
    report = fxroof.analyze(*from_config(config(), batch=B, phase="decode", ctx=CTX),
                            chip="h100-sxm", mode="eager", tp=2)
    attention = [n for n in report.nodes if n.op == "latent_attention"]
    assert attention and attention[0].flops == 2 * B * (HEADS // 2) * (CTX + 1) * (2 * RANK + ROPE)
    # the query's absorbing product: B x 2 heads x one row x NOPE -> RANK
    absorbing = [n for n in report.nodes if n.module == "model.model.layers.0.self_attn"
                 and n.op in ("bmm", "einsum")]
    assert absorbing[0].flops == 2 * B * (HEADS // 2) * NOPE * RANK


def test_the_classes_are_restored():
    cls = transformers.models.deepseek_v3.modeling_deepseek_v3.DeepseekV3Attention
    module = transformers.models.deepseek_v3.modeling_deepseek_v3
    before = (cls.forward, cls.expand_kv, module.ALL_ATTENTION_FUNCTIONS)
    with absorbed_latent_attention():
        assert cls.forward is not before[0]
    assert (cls.forward, cls.expand_kv, module.ALL_ATTENTION_FUNCTIONS) == before


def test_a_sparse_attentions_indexer_keys_are_cache_inputs():
    # DeepSeek-V3.2's indexer keeps keys of its own beside the latent rows: the step takes them
    # as inputs, as it takes the rows, and writes its new one in place
    step, args, kwargs = from_config(config("deepseek_v32"), batch=B, phase="decode", ctx=CTX)
    assert [t.shape for t in kwargs["cache"][0]][3] == (B, CTX + 1, 8)
    report = fxroof.analyze(step, args, kwargs, chip="h100-sxm")
    assert sum(n.op == "latent_attention" for n in report.nodes) == 2
    # two layers of latent rows (16 + 4) and indexer keys (8), fp32, and each layer's two
    # counts (int64)
    assert report.memory.kv_cache == 2 * B * (CTX + 1) * (RANK + ROPE + 8) * 4 + 2 * 2 * 8
