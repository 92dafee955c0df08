"""Mamba-2's chunked scan captured as mamba_ssm's kernels (fxroof.graph.fused_ssd): against
transformers' own fallback on real tensors, PyTorch's FLOP counter and hand arithmetic."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from helpers import assert_fused_gradients_match, meta_training_step

import fxroof
from fxroof.cli.hf import from_config
from fxroof.graph.fused_recurrences import fused_recurrences

transformers = pytest.importorskip("transformers")
modeling_mamba2 = pytest.importorskip("transformers.models.mamba2.modeling_mamba2")

B = 2
# 2 layers, hidden 32 expanded to 64 channels: 8 heads of P = 8, one group, state N = 8,
# chunks of 16
MAMBA2 = dict(hidden_size=32, num_hidden_layers=2, vocab_size=256, num_heads=8, head_dim=8,
              state_size=8, n_groups=1, chunk_size=16, expand=2)
HEADS, P, GROUPS, N, C = 8, 8, 1, 8, 16


def config():
    return transformers.Mamba2Config(**MAMBA2)


def prefill(seq: int):
    return fxroof.analyze(*from_config(config().to_dict(), batch=B, seq=seq), chip="h100-sxm")


def test_a_prefill_holds_one_scan_a_layer_however_long_the_prompt():
    short, long = prefill(16), prefill(200)
    scans = [n for n in long.nodes if n.op == "ssd_chunk_scan"]
    assert len(scans) == 2 and scans[0].category == "matmul"
    assert len(short.nodes) == len(long.nodes)
    # by hand: 200 tokens pad to 13 chunks of 16; per sequence and padded token, a head's
    # 4PN + 2CP and a group's 2CN
    assert scans[0].flops == B * 208 * (HEADS * (4 * P * N + 2 * C * P) + GROUPS * 2 * C * N)
    # and the report says which kernels it assumed
    assert any("2 recurrent token mixers run as mamba_ssm's chunked scan kernels" in note
               for note in long.notes)


def test_its_products_are_transformers_einsums_but_the_dense_product_over_chunk_pairs():
    # with as many groups as heads the fallback's einsums run the kernels' products, and one
    # more: the start state of every chunk as a product over all chunk pairs (2 (chunks + 1)^2
    # H P N a sequence), which the kernels run as a scan over the chunks
    torch.manual_seed(0)
    x, dt = torch.randn(B, 40, HEADS, P), torch.rand(B, 40, HEADS)
    b, c = (torch.randn(B, 40, HEADS, N) for _ in range(2))
    with FlopCounterMode(display=False) as counter:
        modeling_mamba2.mamba2_chunk_scan(x, dt, -torch.rand(HEADS), b, c, chunk_size=C,
                                          D=torch.rand(HEADS), dt_softplus=True)
    # fxroof's capture of the same call swaps in the fused op
    captured = fxroof.analyze(lambda *a: modeling_mamba2.mamba2_chunk_scan(
        *a, chunk_size=C, dt_softplus=True), (x, dt, -torch.rand(HEADS), b, c), chip="h100-sxm")
    scan = [n for n in captured.nodes if n.op == "ssd_chunk_scan"][0]
    chunks = 3
    assert scan.flops == counter.get_total_flops() - B * 2 * (chunks + 1) ** 2 * HEADS * P * N


def test_the_fused_op_computes_what_transformers_fallback_computes():
    torch.manual_seed(0)
    model = transformers.Mamba2ForCausalLM(config()).eval()
    ids = torch.randint(0, 256, (B, 40))
    with torch.no_grad():
        reference = model(ids[:, :-1], use_cache=True)
        step = model(ids[:, -1:], cache=reference.past_key_values, use_cache=True)
        with fused_recurrences():
            fused = model(ids[:, :-1], use_cache=True)
            fused_step = model(ids[:, -1:], cache=fused.past_key_values, use_cache=True)
    torch.testing.assert_close(fused.logits, reference.logits, rtol=1e-4, atol=1e-4)
    # the decode step starts from the fused scan's last state
    torch.testing.assert_close(fused_step.logits, step.logits, rtol=1e-4, atol=1e-4)


def test_the_model_keeps_transformers_scan_after_a_capture():
    original = modeling_mamba2.mamba2_chunk_scan
    prefill(8)
    assert modeling_mamba2.mamba2_chunk_scan is original


def test_its_gradients_are_transformers_fallbacks():
    torch.manual_seed(0)
    model = transformers.Mamba2ForCausalLM(config()).train()
    assert_fused_gradients_match(model, torch.randint(0, 256, (B, 40)), rtol=1e-3, atol=1e-5)


def test_a_training_step_holds_one_scan_and_one_backward_a_layer():
    short, long = (meta_training_step(transformers.Mamba2ForCausalLM, config(), B, seq)
                   for seq in (16, 100))
    assert len(short.nodes) == len(long.nodes)
    backward = [n for n in long.nodes if n.op == "ssd_chunk_scan_backward"]
    assert len(backward) == 2 and sum(n.op == "ssd_chunk_scan" for n in long.nodes) == 2
    # by hand at 100 tokens, 7 chunks of 16: heads (10PN + 4CP) + groups 6CN a padded token
    assert backward[0].flops == B * 112 * (HEADS * (10 * P * N + 4 * C * P)
                                          + GROUPS * 6 * C * N)
