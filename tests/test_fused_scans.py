"""Mamba's selective scan captured as one fused kernel (fxroof.graph.fused_scans): against
transformers' own reference loop on real tensors and hand arithmetic."""
import pytest
import torch
from helpers import Ops, assert_fused_gradients_match

import fxroof
from fxroof.cli.hf import from_config
from fxroof.graph.fused_recurrences import fused_recurrences

transformers = pytest.importorskip("transformers")
modeling_mamba = pytest.importorskip("transformers.models.mamba.modeling_mamba")

B = 2
# 2 layers, hidden 32 (so 64 channels), state 8, dt rank 2
MAMBA = dict(hidden_size=32, num_hidden_layers=2, vocab_size=256, state_size=8)


def prefill(seq: int):
    return fxroof.analyze(*from_config(transformers.MambaConfig(**MAMBA).to_dict(), batch=B,
                                       seq=seq), chip="h100-sxm")


def test_a_prefill_holds_one_scan_a_layer_however_long_the_prompt():
    short, long = prefill(16), prefill(256)
    scans = [n for n in short.nodes if n.op == "selective_scan"]
    assert len(scans) == 2
    # the graph does not grow with the prompt: no op per token
    assert len(short.nodes) == len(long.nodes)
    # by hand, a layer at 16 tokens: 8 FLOPs per (sequence, channel, token, state element),
    # and per (sequence, channel, token) dt's bias and softplus (2), D * u (2), the gate (2)
    per_layer = 8 * B * 64 * 16 * 8 + 6 * B * 64 * 16
    assert [n.flops for n in scans] == [per_layer] * 2
    # reads u, dt and the gate (B, 64, 16), A (64, 8), B and C (B, 8, 16), D and dt's bias
    # (64), fp32; writes y (B, 64, 16); the state stays on chip (no cache in a prefill)
    assert scans[0].bytes_read == 4 * (3 * B * 64 * 16 + 64 * 8 + 2 * B * 8 * 16 + 2 * 64)
    assert scans[0].bytes_written == 4 * B * 64 * 16


def test_the_fused_op_computes_what_transformers_reference_loop_computes():
    torch.manual_seed(0)
    model = transformers.MambaForCausalLM(transformers.MambaConfig(**MAMBA)).eval()
    ids = torch.randint(0, 256, (B, 12))
    with torch.no_grad():
        reference = model(ids, use_cache=False).logits
        with fused_recurrences(), Ops() as ran:
            fused = model(ids, use_cache=False).logits
    assert ran.ops.count("fxroof.selective_scan.default") == 2      # one a layer, no loop
    torch.testing.assert_close(fused, reference, rtol=1e-4, atol=1e-5)


def test_the_model_keeps_transformers_scan_after_a_capture():
    original = modeling_mamba.mamba_selective_scan
    prefill(8)
    assert modeling_mamba.mamba_selective_scan is original


def test_its_gradients_are_transformers_loops():
    torch.manual_seed(0)
    model = transformers.MambaForCausalLM(transformers.MambaConfig(**MAMBA)).train()
    assert_fused_gradients_match(model, torch.randint(0, 256, (B, 12)))


def test_a_training_step_holds_one_scan_and_one_backward_a_layer():
    def step(seq: int):
        with torch.device("meta"):
            model = transformers.MambaForCausalLM(transformers.MambaConfig(**MAMBA))
        ids = torch.zeros(B, seq, dtype=torch.long, device="meta")
        return fxroof.analyze(model, (ids,), {"labels": ids, "use_cache": False}, train=True,
                              chip="h100-sxm")
    short, long = step(16), step(128)
    assert len(short.nodes) == len(long.nodes)
    backward = [n for n in short.nodes if n.op == "selective_scan_backward"]
    assert len(backward) == 2 and sum(n.op == "selective_scan" for n in short.nodes) == 2
    # by hand at 16 tokens: 27 FLOPs a state element, twice the forward's 6 a channel and token;
    # reads dy beside the forward's inputs, writes a gradient as large as each
    assert backward[0].flops == 27 * B * 64 * 16 * 8 + 2 * 6 * B * 64 * 16
    inputs = 4 * (3 * B * 64 * 16 + 64 * 8 + 2 * B * 8 * 16 + 2 * 64)
    assert (backward[0].bytes_read, backward[0].bytes_written) == (4 * B * 64 * 16 + inputs,
                                                                   inputs)
