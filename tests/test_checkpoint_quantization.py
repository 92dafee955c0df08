"""A config's quantization_config read as the scheme its checkpoint ships with
(fxroof.cli.checkpoint_quantization), and applied by the command line unless --quantize says
otherwise."""
import json

import pytest

from fxroof.cli.checkpoint_quantization import QuantizationUnknown, from_quantization_config
from fxroof.cli.main import main
from fxroof.cost.whatif import Quantization, parse

# quantization_config blocks as published checkpoints' config.json files carry them
PUBLISHED = {
    # deepseek-ai/DeepSeek-V3: fp8 weights in 128 x 128 blocks, activations scaled at each call
    "fp8": ({"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
             "weight_block_size": [128, 128]}, dict(matmul="fp8", activations="row")),
    # an AutoAWQ export: int4 weights, a scale (and zero) a group of 128
    "awq": ({"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True,
             "version": "gemm"}, dict(weights="int4", group=128)),
    # a GPTQ export without groups: a scale a row
    "gptq": ({"quant_method": "gptq", "bits": 4, "group_size": -1, "desc_act": False},
             dict(weights="int4", group=0)),
    # openai/gpt-oss: MXFP4 experts, an 8-bit scale a block of 32
    "mxfp4": ({"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn"]},
              dict(weights="int4", group=32, scale_bytes=1)),
    # llm-compressor's FP8-dynamic: fp8 weights a scale a channel, activations a scale a token
    "compressed-tensors fp8": ({"quant_method": "compressed-tensors", "config_groups": {
        "group_0": {"targets": ["Linear"],
                    "weights": {"num_bits": 8, "type": "float", "strategy": "channel",
                                "dynamic": False},
                    "input_activations": {"num_bits": 8, "type": "float", "strategy": "token",
                                          "dynamic": True}}}},
        dict(matmul="fp8", activations="row")),
    # llm-compressor's W4A16: int4 weights in groups of 128, 16-bit activations
    "compressed-tensors w4a16": ({"quant_method": "compressed-tensors", "config_groups": {
        "group_0": {"targets": ["Linear"],
                    "weights": {"num_bits": 4, "type": "int", "strategy": "group",
                                "group_size": 128, "symmetric": True},
                    "input_activations": None}}}, dict(weights="int4", group=128)),
    # bitsandbytes NF4: 4 bits in blocks of 64
    "bitsandbytes": ({"quant_method": "bitsandbytes", "load_in_4bit": True,
                      "bnb_4bit_quant_type": "nf4"}, dict(weights="int4", group=64)),
}


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_configs_read_as_their_schemes(name):
    block, fields = PUBLISHED[name]
    q = from_quantization_config(block)
    assert {k: getattr(q, k) for k in fields} == fields
    assert q.source.startswith(f"the config's quantization_config ({block['quant_method']}")


def test_a_method_fxroof_cannot_price_is_named():
    with pytest.raises(QuantizationUnknown, match="'hqq'"):
        from_quantization_config({"quant_method": "hqq", "nbits": 4})


def test_none_is_no_quantization():
    assert parse("none") is None and parse(" None ") is None


LLAMA = {"model_type": "llama", "num_hidden_layers": 1, "hidden_size": 64,
         "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
         "vocab_size": 256, "torch_dtype": "bfloat16"}


def _analyze(tmp_path, config: dict, *flags) -> dict:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    out = tmp_path / "report.json"
    assert main(["analyze", "--hf", str(path), "--set", "seq=16", "--json", str(out),
                 *flags]) == 0
    return json.loads(out.read_text())


def test_the_command_line_prices_the_checkpoint_as_it_ships(tmp_path, capsys):
    pytest.importorskip("transformers")
    awq = _analyze(tmp_path, {**LLAMA, "quantization_config": PUBLISHED["awq"][0]})
    stated = _analyze(tmp_path, LLAMA, "--quantize", "w4")
    assert awq["whatif"] == stated["whatif"] == Quantization(weights="int4").label
    assert awq["weights_bytes"] == stated["weights_bytes"]
    assert any("as the checkpoint ships" in note and "awq" in note for note in awq["notes"])
    # --quantize none: the config's dtype, 69,824 bf16 parameters (test_cli's hand count)
    plain = _analyze(tmp_path, {**LLAMA, "quantization_config": PUBLISHED["awq"][0]},
                     "--quantize", "none")
    assert plain["whatif"] == "" and plain["weights_bytes"] == pytest.approx(2 * 69_824, abs=256)
    assert awq["weights_bytes"] < 0.6 * plain["weights_bytes"]


def test_a_method_it_cannot_price_is_said_once_and_priced_in_the_dtype(tmp_path, capsys):
    pytest.importorskip("transformers")
    capsys.readouterr()
    data = _analyze(tmp_path, {**LLAMA, "quantization_config": {"quant_method": "hqq"}})
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'hqq'" in err and "not priced" in err
    assert data["whatif"] == "" and data["weights_bytes"] == pytest.approx(2 * 69_824, abs=256)
