"""The gated delta rule captured as FLA's fused kernels (fxroof.graph.fused_delta_rules): against
transformers' own chunked and token loops on real tensors, PyTorch's FLOP counter and hand
arithmetic."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from helpers import Ops, assert_fused_gradients_match, meta_training_step

import fxroof
from fxroof.cli.hf import from_config
from fxroof.graph.fused_recurrences import fused_recurrences

transformers = pytest.importorskip("transformers")
qwen3_next = pytest.importorskip("transformers.models.qwen3_next.modeling_qwen3_next")

B = 2
# one linear-attention layer and one full-attention layer; the linear one has 2 key heads and
# 4 value heads of 16 (grouped), a window of 4
QWEN3_NEXT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, intermediate_size=128, vocab_size=256,
                  num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                  shared_expert_intermediate_size=32,
                  layer_types=["linear_attention", "full_attention"], linear_num_key_heads=2,
                  linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16)
K = V = 16
HEADS, KEY_HEADS, C = 4, 2, 64


def config():
    return transformers.Qwen3NextConfig(**QWEN3_NEXT)


def prefill(seq: int):
    return fxroof.analyze(*from_config(config().to_dict(), batch=B, seq=seq), chip="h100-sxm")


def test_a_prefill_holds_one_delta_rule_a_linear_layer_however_long_the_prompt():
    short, long = prefill(16), prefill(300)
    rules = [n for n in long.nodes if n.op == "chunked_delta_rule"]
    assert len(rules) == 1 and rules[0].category == "matmul"
    # the graph does not grow with the prompt: no op per chunk or per token
    assert len(short.nodes) == len(long.nodes)
    # by hand: 300 tokens pad to 5 chunks of 64; per sequence, value head and padded token,
    # 6CK + 4CV + 6KV
    assert rules[0].flops == B * HEADS * 320 * (6 * C * K + 4 * C * V + 6 * K * V)
    assert any("1 recurrent token mixer run as flash-linear-attention's chunked delta rule"
               in note for note in long.notes)


def test_its_products_are_those_transformers_traced_loop_runs():
    # transformers' fallback, as torch.export traces it (the triangular system inverted by
    # forward substitution, then applied as products), under PyTorch's own counter
    torch.manual_seed(0)
    q, k = (torch.randn(B, 300, KEY_HEADS, K) for _ in range(2))
    v = torch.randn(B, 300, HEADS, V)
    g, beta = -torch.rand(B, 300, HEADS), torch.rand(B, 300, HEADS)
    original = qwen3_next.is_torchdynamo_exporting
    qwen3_next.is_torchdynamo_exporting = lambda: True
    try:
        with FlopCounterMode(display=False) as counter:
            qwen3_next.torch_chunk_gated_delta_rule(q, k, v, g=g, beta=beta,
                                                     use_qk_l2norm_in_kernel=True)
    finally:
        qwen3_next.is_torchdynamo_exporting = original
    rule = [n for n in prefill(300).nodes if n.op == "chunked_delta_rule"][0]
    assert rule.flops == counter.get_total_flops()


def test_the_fused_ops_compute_what_transformers_loops_compute():
    torch.manual_seed(0)
    model = transformers.Qwen3NextForCausalLM(config()).eval()
    ids = torch.randint(0, 256, (B, 70))       # two chunks, the second partial
    with torch.no_grad():
        reference = model(ids[:, :-1], use_cache=True)
        step = model(ids[:, -1:], cache=reference.past_key_values, use_cache=True)
        with fused_recurrences(), Ops() as ran:
            fused = model(ids[:, :-1], use_cache=True)
            fused_step = model(ids[:, -1:], cache=fused.past_key_values,
                               use_cache=True)
    # one chunked rule for the prompt, one recurrent step for the new token: no loop
    assert ran.ops.count("fxroof.chunked_delta_rule.default") == 1
    assert ran.ops.count("fxroof.recurrent_delta_rule.default") == 1
    torch.testing.assert_close(fused.logits, reference.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fused_step.logits, step.logits, rtol=1e-4, atol=1e-4)


def test_kimi_delta_attentions_per_channel_decay_is_the_same_op():
    kimi = pytest.importorskip("transformers.models.kimi_linear.modeling_kimi_linear")
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, 70, HEADS, K) for _ in range(3))
    g = -torch.rand(B, 70, HEADS, K)           # a decay per key channel
    beta = torch.rand(B, 70, HEADS)
    state = torch.randn(B, HEADS, K, V)
    reference = kimi.chunk_kimi_delta_attention(q, k, v, g=g, beta=beta, initial_state=state,
                                                output_final_state=True,
                                                use_qk_l2norm_in_kernel=True)
    with fused_recurrences():
        fused = kimi.chunk_kimi_delta_attention(q, k, v, g=g, beta=beta, initial_state=state,
                                                output_final_state=True,
                                                use_qk_l2norm_in_kernel=True)
    for ours, theirs in zip(fused, reference):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_the_model_keeps_transformers_functions_after_a_capture():
    originals = (qwen3_next.torch_chunk_gated_delta_rule,
                 qwen3_next.torch_recurrent_gated_delta_rule)
    prefill(8)
    assert (qwen3_next.torch_chunk_gated_delta_rule,
            qwen3_next.torch_recurrent_gated_delta_rule) == originals


def test_its_gradients_are_transformers_loops():
    torch.manual_seed(0)
    model = transformers.Qwen3NextForCausalLM(config()).train()
    assert_fused_gradients_match(model, torch.randint(0, 256, (B, 70)), rtol=1e-3, atol=1e-5)


def test_a_training_step_holds_one_rule_and_one_backward():
    short, long = (meta_training_step(transformers.Qwen3NextForCausalLM, config(), B, seq)
                   for seq in (16, 200))
    assert len(short.nodes) == len(long.nodes)
    backward = [n for n in long.nodes if n.op == "chunked_delta_rule_backward"]
    assert len(backward) == 1 and sum(n.op == "chunked_delta_rule" for n in long.nodes) == 1
    # by hand at 200 tokens, 4 chunks of 64: 16CK + 10CV + 16KV + 4C^2 a head and token
    assert backward[0].flops == B * HEADS * 256 * (16 * C * K + 10 * C * V + 16 * K * V
                                                  + 4 * C * C)


def test_a_decode_step_runs_the_recurrent_kernel_on_states_that_do_not_grow():
    steps = {ctx: from_config(config().to_dict(), batch=B, phase="decode", ctx=ctx)
             for ctx in (8, 40)}
    reports = {ctx: fxroof.analyze(*s, chip="h100-sxm") for ctx, s in steps.items()}
    rules = [n for n in reports[8].nodes if n.op == "recurrent_delta_rule"]
    assert len(rules) == 1 and rules[0].category == "other"
    # by hand, a token: 7KV + 2V + 1 decay + K scaling a value head; q and k l2-normalized,
    # 3K each a key head
    assert rules[0].flops == B * (HEADS * (7 * K * V + 2 * V + 1 + K) + KEY_HEADS * 6 * K)
    # it reads the state (B, 4, 16, 16) in fp32 and writes it back
    assert rules[0].bytes_read > B * HEADS * K * V * 4
    assert rules[0].bytes_written >= B * HEADS * K * V * 4
    # the linear layer's state is the same at any context; the attention layer's cache grows
    # by 32 positions of keys and values (2 heads of 16, fp32)
    assert reports[40].memory.kv_cache - reports[8].memory.kv_cache == 2 * B * 2 * 32 * 16 * 4
