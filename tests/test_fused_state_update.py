"""A Mamba layer's decode step captured as the kernels a GPU runs, mamba_ssm's state update
(fxroof.graph.fused_state_update) and causal-conv1d's window update
(fxroof.graph.fused_conv_window): against transformers' own fallbacks on real tensors and hand
arithmetic."""
import pytest
import torch
from helpers import Ops

import fxroof
from fxroof.cli.hf import from_config
from fxroof.graph.fused_recurrences import fused_recurrences

transformers = pytest.importorskip("transformers")

B = 2
# Mamba-1: hidden 32 expanded to 64 channels, state 8; Mamba-2: 8 heads of 8, one group, state 8
MAMBA = dict(hidden_size=32, num_hidden_layers=2, vocab_size=256, state_size=8)
MAMBA2 = dict(hidden_size=32, num_hidden_layers=2, vocab_size=256, num_heads=8, head_dim=8,
              state_size=8, n_groups=1, chunk_size=16, expand=2)
CONFIGS = {"mamba": (transformers.MambaConfig, transformers.MambaForCausalLM, MAMBA),
           "mamba2": (transformers.Mamba2Config, transformers.Mamba2ForCausalLM, MAMBA2)}


def decode_step(family: str, op: str):
    """The family's decode step analyzed eagerly, and its nodes running `op`."""
    config, _, fields = CONFIGS[family]
    report = fxroof.analyze(*from_config(config(**fields).to_dict(), batch=B, phase="decode",
                                         ctx=8), chip="h100-sxm", mode="eager")
    return report, [n for n in report.nodes if n.op == op]


@pytest.mark.parametrize("family", CONFIGS)
def test_a_decode_step_is_one_state_update_a_layer(family):
    report, updates = decode_step(family, "selective_state_update")
    assert len(updates) == 2
    # by hand, a layer: 8 FLOPs a state element, B x 64 x 8 of them (Mamba-1's 64 channels,
    # Mamba-2's 8 heads x 8), and per channel dt's bias and softplus (2) and D x (2), Mamba-1's
    # gate too (2)
    per_channel = 6 if family == "mamba" else 4
    assert updates[0].flops == 8 * B * 64 * 8 + per_channel * B * 64
    # it reads the state (fp32) and writes it back in place
    state = B * 64 * 8 * 4
    assert updates[0].bytes_read > state and state < updates[0].bytes_written < 2 * state
    # in eager mode the fallback's dozen ops a layer are one launch
    assert any("mamba_ssm's state update" in note for note in report.notes)


@pytest.mark.parametrize("family", CONFIGS)
def test_a_decode_steps_convolution_is_one_window_update_a_layer(family):
    _, updates = decode_step(family, "causal_conv1d_update")
    assert len(updates) == 2
    # by hand, a layer: one output a channel (Mamba-1's 64; Mamba-2's 64 and the 2 x 8 of B and
    # C, 80), 4 taps (8 FLOPs), the bias and the SiLU
    channels = 64 if family == "mamba" else 80
    assert updates[0].flops == B * channels * (2 * 4 + 1 + 1)
    # it reads the window (B, channels, 4), fp32, and writes it back shifted
    window = B * channels * 4 * 4
    assert updates[0].bytes_read > window and window < updates[0].bytes_written < 2 * window


@pytest.mark.parametrize("family", CONFIGS)
def test_the_fused_step_computes_what_transformers_fallback_computes(family):
    config, causal_lm, fields = CONFIGS[family]
    torch.manual_seed(0)
    model = causal_lm(config(**fields)).eval()
    ids = torch.randint(0, 256, (B, 20))
    with torch.no_grad():
        prompt = model(ids[:, :-1], use_cache=True)
        reference = model(ids[:, -1:], cache=prompt.past_key_values, use_cache=True)
        prompt = model(ids[:, :-1], use_cache=True)
        with fused_recurrences(), Ops() as ran:
            fused = model(ids[:, -1:], cache=prompt.past_key_values, use_cache=True)
    assert ran.ops.count("fxroof.selective_state_update.default") == 2
    assert ran.ops.count("fxroof.causal_conv1d_update.default") == 2
    torch.testing.assert_close(fused.logits, reference.logits, rtol=1e-4, atol=1e-5)
    # the state and window the kernels wrote in place are the cache's next ones
    for layer in range(2):
        for state in ("get_recurrent_state", "get_conv_state"):
            torch.testing.assert_close(
                getattr(fused.past_key_values, state)(layer, state_idx=0),
                getattr(reference.past_key_values, state)(layer, state_idx=0),
                rtol=1e-4, atol=1e-5)
