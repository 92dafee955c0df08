"""Llama 4's experts, which transformers runs densely, captured as the routed grouped GEMMs
engines run (fxroof.graph.routed_experts)."""
import pytest
import torch

import fxroof
from fxroof.cli.hf import from_config
from fxroof.graph.engine_kernels import engine_kernels

transformers = pytest.importorskip("transformers")

B, SEQ, CTX = 2, 12, 12
# 4 experts of 32 inside, one chosen a token, beside a shared expert of 128
LLAMA4 = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              head_dim=16, intermediate_size=32, intermediate_size_mlp=128, vocab_size=256,
              num_local_experts=4, num_experts_per_tok=1, interleave_moe_layer_step=1,
              pad_token_id=0)


def config():
    return transformers.AutoConfig.for_model("llama4_text", **LLAMA4)


def test_routed_experts_give_transformers_own_logits():
    torch.manual_seed(0)
    model, args, kwargs = from_config(config(), batch=B, seq=SEQ, device="cpu", dtype="fp32")
    for p in model.parameters():
        p.data.normal_(0, 0.2)
    with torch.no_grad():
        dense = model(*args, **kwargs).logits
        with engine_kernels():
            routed = model(*args, **kwargs).logits
    assert dense.abs().max() > 0.1
    torch.testing.assert_close(routed, dense, rtol=1e-5, atol=1e-5)
    # and the class is its own again
    assert type(model.model.layers[0].feed_forward).forward.__module__.endswith("modeling_llama4")


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_each_token_runs_its_chosen_expert_alone(phase):
    options = dict(seq=SEQ) if phase == "prefill" else dict(phase="decode", ctx=CTX)
    report = fxroof.analyze(*from_config(config(), batch=B, **options), chip="h100-sxm")
    tokens = B * (SEQ if phase == "prefill" else 1)
    layer = [n for n in report.nodes if n.category == "matmul" and
             n.module.endswith("layers.0.feed_forward")]
    # by hand, a layer: the router (64 -> 4), then each token through one expert: 64 -> 2 x 32,
    # 32 -> 64 (transformers' code runs it through all 4: four times these)
    assert sorted(n.flops for n in layer) == sorted(
        [2 * tokens * 64 * 4, 2 * tokens * 64 * 64, 2 * tokens * 32 * 64])
    assert any("grouped expert matmuls count every routed token once" in n for n in report.notes)
