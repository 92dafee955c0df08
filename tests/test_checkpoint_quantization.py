"""A config's quantization_config read as the scheme its checkpoint ships with
(fxroof.cli.checkpoint_quantization), and applied by the command line unless --quantize says
otherwise."""
import json

import pytest

from fxroof.cli.checkpoint_quantization import QuantizationUnknown, from_quantization_config
from fxroof.cli.main import main
from fxroof.cost.whatif import Quantization, kept_module, parse

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
    if "--set" not in flags:
        flags = ("--set", "seq=16", *flags)
    assert main(["analyze", "--hf", str(path), "--json", str(out), *flags]) == 0
    return json.loads(out.read_text())


def test_the_command_line_prices_the_checkpoint_as_it_ships(tmp_path, capsys):
    pytest.importorskip("transformers")
    awq = _analyze(tmp_path, {**LLAMA, "quantization_config": PUBLISHED["awq"][0]})
    stated = _analyze(tmp_path, LLAMA, "--quantize", "w4")
    assert awq["whatif"] == stated["whatif"] == Quantization(weights="int4").label
    # AWQ leaves the output head in bf16, which the what-if quantizes: 64 x 256 weights, 2 bytes
    # each against half a byte and a 2-byte scale a group of 128
    assert awq["weights_bytes"] - stated["weights_bytes"] == 64 * 256 * 2 - (
        64 * 256 // 2 + 64 * 256 // 128 * 2)
    assert any("as the checkpoint ships" in note and "awq" in note
               and "left unquantized: lm_head" in note for note in awq["notes"])
    # --quantize none: the config's dtype, 69,824 bf16 parameters (test_cli's hand count)
    plain = _analyze(tmp_path, {**LLAMA, "quantization_config": PUBLISHED["awq"][0]},
                     "--quantize", "none")
    assert plain["whatif"] == "" and plain["weights_bytes"] == pytest.approx(2 * 69_824, abs=256)
    assert awq["weights_bytes"] < 0.65 * plain["weights_bytes"]


def test_a_method_it_cannot_price_is_said_once_and_priced_in_the_dtype(tmp_path, capsys):
    pytest.importorskip("transformers")
    capsys.readouterr()
    data = _analyze(tmp_path, {**LLAMA, "quantization_config": {"quant_method": "hqq"}})
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'hqq'" in err and "not priced" in err
    assert data["whatif"] == "" and data["weights_bytes"] == pytest.approx(2 * 69_824, abs=256)


# module names and the patterns that leave them unquantized, as published configs write them
NAMES = ("lm_head", "model.embed_tokens", "model.layers.0.self_attn.q_proj",
         "model.layers.11.self_attn.o_proj", "model.layers.1.mlp.router",
         "model.layers.1.mlp.gate", "model.layers.1.mlp.gate_proj",
         "model.decoder.layers.23.fc1", "model.layers.1.attn")
PATTERNS = ("lm_head", "model.layers.*.self_attn", "model.layers.*.mlp.router",
            "model.embed_tokens", "model.layers.1", "mlp.gate", "fc1", "layers.1")


@pytest.mark.parametrize("pattern", PATTERNS)
def test_modules_kept_out_are_those_transformers_keeps_out(pattern):
    # transformers' own rule (should_convert_module) is the truth, name by name
    pytest.importorskip("transformers")
    from transformers.quantizers.quantizers_utils import should_convert_module
    for name in NAMES:
        assert kept_module(name, (pattern,)) == (not should_convert_module(name, [pattern])), name


def test_llm_compressors_patterns_are_regexes():
    assert kept_module("model.layers.0.mlp.gate", ("re:.*mlp.gate$",))
    assert not kept_module("model.layers.0.mlp.gate_proj", ("re:.*mlp.gate$",))


def test_what_a_checkpoint_leaves_unquantized():
    # transformers' quantizers keep the output head where the config names nothing; the list
    # where it does (gpt-oss names its head); AWQ keeps the head besides; GPTQ unless lm_head;
    # llm-compressor's ignore as written
    kept = lambda block: from_quantization_config(block).kept  # noqa: E731
    assert kept(PUBLISHED["fp8"][0]) == ("lm_head", "proj_out")
    assert kept(PUBLISHED["mxfp4"][0]) == ("model.layers.*.self_attn",)
    assert kept({**PUBLISHED["awq"][0], "modules_to_not_convert": ["visual"]}) == \
        ("visual", "lm_head", "proj_out")
    assert kept(PUBLISHED["gptq"][0]) == ("lm_head", "proj_out")
    assert kept({**PUBLISHED["gptq"][0], "lm_head": True}) == ()
    assert kept({**PUBLISHED["compressed-tensors w4a16"][0], "ignore": ["lm_head"]}) == \
        ("lm_head",)
    assert kept({**PUBLISHED["bitsandbytes"][0], "llm_int8_skip_modules": ["mlp.gate"]}) == \
        ("mlp.gate",)
    # an export naming every layer's module is shown by its first four
    many = from_quantization_config({**PUBLISHED["fp8"][0], "modules_to_not_convert": [
        f"model.layers.{i}.mlp.gate" for i in range(60)]})
    assert len(many.kept) == 60 and "model.layers.3.mlp.gate and 56 more)" in many.source
    with pytest.raises(QuantizationUnknown, match="no pattern"):
        from_quantization_config({**PUBLISHED["fp8"][0], "modules_to_not_convert": ["a(b"]})
    with pytest.raises(QuantizationUnknown, match="a list of module names"):
        from_quantization_config({**PUBLISHED["fp8"][0], "modules_to_not_convert": "lm_head"})


def test_gpt_oss_keeps_its_attention_router_and_head_in_bf16(tmp_path):
    # openai/gpt-oss's published block: its experts MXFP4 (half a byte a weight, a 1-byte scale
    # a block of 32), its attention, router, embedding and head bf16. Against every matrix
    # quantized alike (--quantize w4g32: 2-byte scales), one layer of 64 hidden keeps, by hand:
    # q and o (64 x 64), k and v (64 x 32), the router (64 x 4) and the head (64 x 256) at 2
    # bytes a weight, where the what-if stores them in half a byte and a 2-byte scale a block
    # of 32; its experts' 4 x (64 x 128 + 64 x 64) weights take 1 byte less a block. Biases stay
    # bf16 in both, as the what-if says (a linear's bias had been quantized with its weight)
    pytest.importorskip("transformers")
    config = {"model_type": "gpt_oss", "num_hidden_layers": 1, "hidden_size": 64,
              "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
              "head_dim": 16, "num_local_experts": 4, "num_experts_per_tok": 2,
              "vocab_size": 256, "sliding_window": 8, "layer_types": ["full_attention"],
              "torch_dtype": "bfloat16",
              "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": [
                  "model.layers.*.self_attn", "model.layers.*.mlp.router",
                  "model.embed_tokens", "lm_head"]}}
    kept = 2 * 64 * 64 + 2 * 64 * 32 + 64 * 4 + 64 * 256
    experts = 4 * (64 * 128 + 64 * 64)
    by_hand = 2 * kept - (kept // 2 + kept // 32 * 2) - experts // 32
    for phase in (["--set", "seq=16"], ["--set", "phase=decode", "--set", "ctx=8"]):
        # the decode step wraps the model: its names are still the checkpoint's
        shipped = _analyze(tmp_path, config, *phase)
        every = _analyze(tmp_path, config, *phase, "--quantize", "w4g32")
        assert shipped["weights_bytes"] - every["weights_bytes"] == by_hand
