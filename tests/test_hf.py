"""fxroof.cli.hf.from_config: transformers models from small configs, on meta, with no network."""

import json
import socket
import sys
from unittest import mock

import pytest
import torch

transformers = pytest.importorskip("transformers")

import fxroof  # noqa: E402
from fxroof.cli.hf import from_config  # noqa: E402
from fxroof.graph.fused_recurrences import fused_recurrences  # noqa: E402

B, T = 2, 16
SMALL = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4, vocab_size=256)

# family -> (config, model class name, output shape of the first output for (B, T) tokens)
FAMILIES = {
    "llama": (lambda: transformers.LlamaConfig(**SMALL, num_key_value_heads=2),
              "LlamaForCausalLM", (B, T, 256)),
    "mistral": (lambda: transformers.MistralConfig(**SMALL, num_key_value_heads=2),
                "MistralForCausalLM", (B, T, 256)),
    "qwen2": (lambda: transformers.Qwen2Config(**SMALL, num_key_value_heads=2),
              "Qwen2ForCausalLM", (B, T, 256)),
    "gpt2": (lambda: transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=256, n_positions=64,
                                             bos_token_id=0, eos_token_id=0),
             "GPT2LMHeadModel", (B, T, 256)),
    "bert": (lambda: transformers.BertConfig(**SMALL), "BertModel", (B, T, 64)),  # last hidden state
}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No hub access: offline mode, and any socket connection fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def write_json(tmp_path, data, name="config.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def first_output_shape(ep):
    out = next(n for n in ep.graph.nodes if n.op == "output").args[0][0]
    return tuple(out.meta["val"].shape)


@pytest.mark.parametrize("family", FAMILIES)
def test_dict_config_builds_on_meta_and_exports(family):
    make, cls_name, out_shape = FAMILIES[family]
    model, args, kwargs = from_config(make().to_dict(), batch=B, seq=T)
    assert type(model).__name__ == cls_name
    assert not model.training
    assert all(p.is_meta for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    (input_ids,) = args
    assert input_ids.is_meta and input_ids.shape == (B, T) and input_ids.dtype == torch.long
    # The forward pass on meta, run as fxroof runs it: traced by torch.export on fake tensors.
    ep = torch.export.export(model, args, kwargs, strict=False)
    assert first_output_shape(ep) == out_shape


@pytest.mark.parametrize("family", FAMILIES)
def test_config_json_path_builds_the_same_model(family, tmp_path):
    make, cls_name, _ = FAMILIES[family]
    path = write_json(tmp_path, make().to_dict())
    for source in (path, str(path)):
        model, args, _ = from_config(source, seq=8)
        assert type(model).__name__ == cls_name
        assert all(p.is_meta for p in model.parameters())
        assert args[0].shape == (1, 8)


@pytest.mark.parametrize("family", FAMILIES)
def test_cpu_forward_with_real_numbers(family):
    make, _, out_shape = FAMILIES[family]
    model, args, kwargs = from_config(make(), batch=B, seq=T, device="cpu")
    with torch.no_grad():
        out = model(*args, **kwargs)[0]
    assert out.shape == out_shape and torch.isfinite(out).all()


def test_encoder_forward_runs_eagerly_on_meta():
    model, args, kwargs = from_config(FAMILIES["bert"][0](), batch=B, seq=T)
    assert model(*args, **kwargs)[0].shape == (B, T, 64)


def test_decoders_get_use_cache_false_and_encoders_nothing():
    assert from_config(FAMILIES["llama"][0]())[2] == {"use_cache": False}
    assert from_config(FAMILIES["bert"][0]())[2] == {}


def test_architectures_field_decides_the_head():
    config = FAMILIES["bert"][0]().to_dict()
    assert type(from_config({**config, "architectures": ["BertForMaskedLM"]})[0]).__name__ == "BertModel"
    causal = from_config({**config, "architectures": ["BertLMHeadModel"]})[0]
    assert type(causal).__name__ == "BertLMHeadModel"


@pytest.mark.parametrize("dtype, expected", [("bf16", torch.bfloat16), ("fp16", torch.float16),
                                             (torch.bfloat16, torch.bfloat16)])
def test_dtype(dtype, expected):
    model, _, _ = from_config(FAMILIES["qwen2"][0](), dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {expected}


def test_large_config_costs_nothing_on_meta():
    # Llama-3-70B's shapes (meta-llama/Meta-Llama-3-70B config.json), built without allocating weights.
    config = dict(model_type="llama", hidden_size=8192, num_hidden_layers=80, num_attention_heads=64,
                  num_key_value_heads=8, intermediate_size=28672, vocab_size=128256, rope_theta=500000.0)
    model, _, _ = from_config(config, dtype="bf16")
    assert sum(p.numel() for p in model.parameters()) == 70_553_706_496


# --- errors ------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope" / "config.json"
    with pytest.raises(ValueError, match="does not exist") as info:
        from_config(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content, cause", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not an object"),
    ('{"hidden_size": 64}', "no \"model_type\""),
    ('{"model_type": "no-such-model"}', "'no-such-model'"),
])
def test_bad_config_file(tmp_path, content, cause):
    path = write_json(tmp_path, content)
    with pytest.raises(ValueError, match=cause) as info:
        from_config(path)
    assert str(path) in str(info.value)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        from_config(tmp_path)


def test_unknown_model_type_in_dict():
    with pytest.raises(ValueError, match="config dict names model_type 'no-such-model'"):
        from_config({"model_type": "no-such-model"})


def test_wrong_config_type():
    with pytest.raises(TypeError, match="PretrainedConfig"):
        from_config(42)


def test_unknown_dtype():
    with pytest.raises(ValueError, match="unknown dtype 'fp7'"):
        from_config(FAMILIES["llama"][0](), dtype="fp7")


def test_sequence_longer_than_learned_positions():
    with pytest.raises(ValueError, match="64 learned positions"):
        from_config(FAMILIES["gpt2"][0](), seq=65)


def test_missing_transformers_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(ImportError, match=r"pip install fxroof\[hf\]"):
        from_config({"model_type": "llama"})


# -- one decode step over a static KV cache -----------------------------------------------------

CTX = 24


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_a_decode_step_reads_the_weights_and_the_whole_cache(family):
    import fxroof
    cfg = FAMILIES[family][0]()
    model, args, kwargs = from_config(cfg.to_dict(), batch=B, phase="decode", ctx=CTX,
                                      dtype="bf16")
    r = fxroof.analyze(model, args, kwargs, chip="h100-sxm")
    text = cfg.get_text_config(decoder=True)
    layers, heads = text.num_hidden_layers, getattr(text, "num_key_value_heads", None) \
        or text.num_attention_heads
    head_dim = text.hidden_size // text.num_attention_heads
    # by hand: keys and values of every layer, ctx + 1 positions, bf16; and each layer's count
    # of cached tokens (one int64), which the step also updates in place
    cache = layers * (2 * B * heads * (CTX + 1) * head_dim * 2 + 8)
    assert r.memory.kv_cache == cache
    state = [*model.parameters(), *model.buffers()]      # buffers: rotary frequencies
    assert r.memory.weights == sum(t.numel() * t.element_size() for t in state)
    # the new token's one row of each projection: no (B, T) work, one token a sequence
    assert args[0].shape == (B, 1)


def test_a_decode_steps_matrix_flops_match_flop_counter_mode():
    import fxroof
    from torch.utils.flop_counter import FlopCounterMode
    cfg = FAMILIES["llama"][0]().to_dict()
    model, args, kwargs = from_config(cfg, batch=B, phase="decode", ctx=CTX, device="cpu")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(*args, **kwargs)             # a real step on real tensors
    r = fxroof.analyze(model, args, kwargs, chip="h100-sxm")
    # FlopCounterMode counts the projections (aten.mm) and has no formula for the CPU's
    # attention kernel, so that part is by hand: q @ k^T and p @ v for one query over the
    # ctx + 1 cached positions, 4 query heads of 16, per layer
    assert sum(n.flops for n in r.nodes if n.category == "matmul") == \
        counter.get_total_flops() > 0
    per_layer = 2 * (2 * B * 4 * 1 * (CTX + 1) * 16)
    assert sum(n.flops for n in r.nodes if n.category == "attention") == 2 * per_layer


def test_decode_errors_name_the_cause():
    with pytest.raises(ValueError, match="phase=decode is for decoders"):
        from_config(FAMILIES["bert"][0]().to_dict(), phase="decode")
    with pytest.raises(ValueError, match="unknown phase 'train'"):
        from_config(FAMILIES["llama"][0]().to_dict(), phase="train")
    with pytest.raises(ValueError, match="at least one cached token"):
        from_config(FAMILIES["llama"][0]().to_dict(), phase="decode", ctx=0)
    with pytest.raises(ValueError, match="no learned position"):
        from_config(FAMILIES["gpt2"][0]().to_dict(), phase="decode", ctx=64)
    # a config the model's own constructor rejects (a padding token past the vocabulary: the
    # embedding asserts): one error naming the file's model and the constructor's reason
    bad = FAMILIES["llama"][0]().to_dict() | {"pad_token_id": 1000}
    with pytest.raises(ValueError, match="cannot build a model.*AssertionError: Padding_idx"):
        from_config(bad)


MAMBA = dict(hidden_size=32, num_hidden_layers=2, vocab_size=256, state_size=8)


def test_a_recurrent_models_decode_step_carries_states_that_do_not_grow_with_the_context():
    import fxroof
    from torch.utils.flop_counter import FlopCounterMode
    cfg = transformers.MambaConfig(**MAMBA).to_dict()
    steps = {ctx: from_config(cfg, batch=B, phase="decode", ctx=ctx) for ctx in (8, 4096)}
    reports = {ctx: fxroof.analyze(*step, chip="h100-sxm") for ctx, step in steps.items()}
    # by hand: each layer's convolution state (B, 64 channels, kernel 4) and recurrent state
    # (B, 64, state 8), fp32, and its count of tokens seen (one int64), at any context
    states = 2 * (B * 64 * 4 * 4 + B * 64 * 8 * 4 + 8)
    assert reports[8].memory.kv_cache == reports[4096].memory.kv_cache == states
    flops = {ctx: sum(n.flops for n in r.nodes) for ctx, r in reports.items()}
    assert flops[8] == flops[4096] > 0
    # PyTorch's counter on a real step: one token a sequence (generate() gives a recurrent
    # model no mask after the prompt; one over the positions would broadcast the token), its
    # state update run as the fused kernel fxroof captures (tests/test_fused_state_update.py),
    # vector work the counter does not see, where the fallback computes y = h C as a bmm
    model, args, kwargs = from_config(cfg, batch=B, phase="decode", ctx=8, device="cpu")
    with FlopCounterMode(display=False) as counter, fused_recurrences():
        model(*args, **kwargs)
    matrix = [n for n in reports[8].nodes if n.category in ("matmul", "conv")]
    assert sum(n.flops for n in matrix) == counter.get_total_flops()
    # its projections by hand, one row a sequence: in (32 -> 2 x 64), x (64 -> 2 + 2 x 8),
    # dt (2 -> 64), out (64 -> 32) a layer, and the head (32 -> 256)
    per_token = 2 * 2 * (32 * 128 + 64 * 18 + 2 * 64 + 64 * 32) + 2 * 32 * 256
    assert counter.get_flop_counts()["Global"][torch.ops.aten.mm] == B * per_token
    # a generation's steps read no keys: its table does not say they do
    g = fxroof.generation(lambda **o: from_config(cfg, **o), prompt=16, new_tokens=4, batch=B,
                          chip="h100-sxm")
    assert g.first.memory.kv_cache == g.last.memory.kv_cache == states
    assert "keys read" not in str(g) and "keys read" in str(fxroof.generation(
        lambda **o: from_config(FAMILIES["llama"][0]().to_dict(), **o), prompt=16,
        new_tokens=4, batch=B, chip="h100-sxm"))


def test_an_8_bit_kv_cache_leaves_a_recurrences_states_at_their_precision():
    import fxroof
    step = from_config(transformers.MambaConfig(**MAMBA).to_dict(), batch=B, phase="decode",
                       ctx=24, dtype="bf16")
    # by hand, a layer: the convolution window (B, 64, 4), bf16, a cache of past inputs moved
    # along, one byte a value in fp8; the recurrent state (B, 64, 8), fp32, which the step
    # computes from itself, kept; the count of tokens seen, one int64 value, one byte
    assert fxroof.analyze(*step, chip="h100-sxm").memory.kv_cache == \
        2 * (B * 64 * 4 * 2 + B * 64 * 8 * 4 + 8)
    assert fxroof.analyze(*step, chip="h100-sxm", quantize="kv-fp8").memory.kv_cache == \
        2 * (B * 64 * 4 + B * 64 * 8 * 4 + 1)


def test_a_hybrid_models_decode_step_grows_only_by_its_attention():
    import fxroof
    cfg = transformers.JambaConfig(hidden_size=32, num_hidden_layers=2, vocab_size=256,
                                   num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=64, attn_layer_period=2, attn_layer_offset=1,
                                   expert_layer_period=2, expert_layer_offset=1, num_experts=4,
                                   num_experts_per_tok=2, mamba_d_state=8,
                                   use_mamba_kernels=False).to_dict()
    r = {ctx: fxroof.analyze(*from_config(cfg, batch=B, phase="decode", ctx=ctx),
                             chip="h100-sxm") for ctx in (8, 40)}
    # layer 0 is Mamba: its states (B, 64, 4) and (B, 64, 8), fp32, and a count; layer 1
    # attends over ctx + 1 positions: keys and values of 2 heads of 8, fp32, and a count
    states = B * 64 * 4 * 4 + B * 64 * 8 * 4 + 8
    assert r[8].memory.kv_cache == states + 2 * B * 2 * 9 * 8 * 4 + 8
    assert r[40].memory.kv_cache - r[8].memory.kv_cache == 2 * B * 2 * 32 * 8 * 4
    # q @ k^T and p @ v of one query, 4 heads of 8, over 9 and 41 positions; nothing else grows
    attention = {ctx: sum(n.flops for n in rep.nodes if n.category == "attention")
                 for ctx, rep in r.items()}
    assert attention == {8: 2 * 2 * B * 4 * 9 * 8, 40: 2 * 2 * B * 4 * 41 * 8}
    assert len({sum(n.flops for n in rep.nodes if n.category == "matmul")
                for rep in r.values()}) == 1


def test_a_generation_of_a_config_prefills_then_decodes_over_its_cache():
    import fxroof
    cfg = FAMILIES["llama"][0]().to_dict()
    g = fxroof.generation(lambda **o: from_config(cfg, **o), prompt=16, new_tokens=4, batch=B,
                          chip="h100-sxm")
    # the first step attends over 16 + 1 positions, the last over 19 + 1: by hand, 3 positions
    # of 2 layers' keys and values, B x 2 heads x 16 each, fp32 (the config gives no dtype)
    per_position = 2 * 2 * B * 2 * 16 * 4
    assert g.last.memory.kv_cache - g.first.memory.kv_cache == 3 * per_position
    assert g.prefill.memory.kv_cache == 0                # the prompt's pass keeps no cache


def test_a_generations_prompt_computes_the_logits_generate_asks_for():
    # transformers' generate() runs the prompt with logits_to_keep=1: its output head reads the
    # last position. The generation's prompt step counts what PyTorch's counter counts on that
    # call, run for real; the forward as written (prompt_logits="all") what it counts without
    import fxroof
    from torch.utils.flop_counter import FlopCounterMode
    cfg = FAMILIES["llama"][0]().to_dict()
    model, args, kwargs = from_config(cfg, batch=B, seq=16, device="cpu")
    counted = {}
    for keep in (1, 0):
        with FlopCounterMode(display=False) as counter:
            model(*args, **kwargs, logits_to_keep=keep)
        counted[keep] = counter.get_total_flops()
    for asked, keep in (("last", 1), ("all", 0)):
        g = fxroof.generation(lambda **o: from_config(cfg, **o), prompt=16, new_tokens=2,
                              batch=B, chip="h100-sxm", prompt_logits=asked)
        matrix = [n for n in g.prefill.nodes if n.category == "matmul"]
        assert sum(n.flops for n in matrix) == counted[keep]
    # the head by hand: 64 hidden -> 256 logits, 15 positions a sequence fewer
    assert counted[0] - counted[1] == 2 * B * 15 * 64 * 256
    # a head of another name (BioGPT's output_projection) is the one transformers names
    bio = transformers.BioGptConfig(**SMALL).to_dict()
    g = fxroof.generation(lambda **o: from_config(bio, **o), prompt=16, new_tokens=2, batch=B,
                          chip="h100-sxm")
    (head,) = [n for n in g.prefill.nodes if n.module.endswith("output_projection")
               and n.category == "matmul"]
    assert head.flops == 2 * B * 64 * 256
    assert any("last logits only" in n for n in g.notes)


def test_a_vision_language_checkpoints_config_builds_its_generating_model():
    # Gemma 3's and LLaVA's published configs name their ForConditionalGeneration class: built
    # as transformers' image-text-to-text model, with its output head, a decode step over its
    # cache, and a note that the prompt is text; the prompt's matrix FLOPs are what PyTorch's
    # counter counts on transformers' own text-only call (generate()'s logits_to_keep=1)
    import fxroof
    from torch.utils.flop_counter import FlopCounterMode
    text = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=128, vocab_size=256)
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=64, image_size=32, patch_size=8)
    configs = {"Gemma3ForConditionalGeneration": transformers.Gemma3Config(
                   text_config=dict(text, head_dim=16), vision_config=vision,
                   mm_tokens_per_image=4),
               "LlavaForConditionalGeneration": transformers.LlavaConfig(
                   text_config=dict(text, model_type="llama"),
                   vision_config=dict(vision, model_type="clip_vision_model"))}
    for arch, config in configs.items():
        cfg = {**config.to_dict(), "architectures": [arch]}
        model, args, kwargs = from_config(cfg, batch=B, seq=16, device="cpu")
        assert type(model).__name__ == arch
        with FlopCounterMode(display=False) as counter:
            model(*args, **kwargs, logits_to_keep=1)
        g = fxroof.generation(lambda **o: from_config(cfg, **o), prompt=16, new_tokens=2,
                              batch=B, chip="h100-sxm")
        assert sum(n.flops for n in g.prefill.nodes if n.category == "matmul") == \
            counter.get_total_flops()
        # a decode step's head by hand: one row a sequence, 64 hidden -> 256 logits
        (head,) = [n for n in g.first.nodes if n.module.endswith("lm_head")]
        assert head.flops == 2 * B * 64 * 256
        assert any(n.startswith(f"{arch} is priced on text alone: its vision encoder")
                   for n in g.first.notes)


def test_images_in_a_vision_language_prompt():
    # images=2: each prompt holds two 32-px images, as many tokens each as the vision encoder
    # and projector make (Gemma 3: mm_tokens_per_image, 4; LLaVA: its 16 patches, the class
    # token dropped), ahead of 16 text tokens. The prompt's products are what PyTorch's counter
    # counts on transformers' own forward of those inputs (the vision encoder's included); each
    # decode step caches the images' tokens before the text's
    import fxroof
    from torch.utils.flop_counter import FlopCounterMode
    text = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=128, vocab_size=300)
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=64, image_size=32, patch_size=8)
    configs = {"Gemma3ForConditionalGeneration": (transformers.Gemma3Config(
                   text_config=dict(text, head_dim=16), vision_config=vision,
                   mm_tokens_per_image=4, image_token_index=260), 4),
               "LlavaForConditionalGeneration": (transformers.LlavaConfig(
                   text_config=dict(text, model_type="llama"),
                   vision_config=dict(vision, model_type="clip_vision_model"),
                   image_token_index=260), 16)}
    for arch, (config, per_image) in configs.items():
        cfg = {**config.to_dict(), "architectures": [arch]}
        model, args, kwargs = from_config(cfg, batch=B, seq=16, images=2, device="cpu")
        assert args[0].shape == (B, 2 * per_image + 16)
        assert int((args[0] == 260).sum()) == B * 2 * per_image
        with FlopCounterMode(display=False) as counter:
            model(*args, **kwargs, logits_to_keep=1)
        build = lambda **o: from_config(cfg, **o)  # noqa: E731
        g = fxroof.generation(build, prompt=16, new_tokens=2, batch=B, chip="h100-sxm",
                              options={"images": 2})
        assert sum(n.flops for n in g.prefill.nodes if n.category in ("matmul", "conv")) == \
            counter.get_total_flops()
        # fp32 keys and values of 2 layers, 2 heads of 16, B sequences: 1,024 bytes a position
        text_only = fxroof.generation(build, prompt=16, new_tokens=2, batch=B, chip="h100-sxm")
        assert g.first.memory.kv_cache - text_only.first.memory.kv_cache == \
            2 * per_image * 2 * 2 * B * 2 * 16 * 4
        assert any(f"2 images of 32 x 32 px ahead of its text, {per_image} tokens each" in n
                   for n in g.prefill.notes)
        # the generation's table counts them among the prompt's tokens and keys
        tokens = 2 * per_image + 16
        assert g.prompt_tokens == tokens and f"{B}x{tokens}" in str(g)
        assert f"≤{tokens}" in str(g) and text_only.prompt_tokens == 16
    with pytest.raises(ValueError, match="which is no vision-language decoder"):
        from_config(FAMILIES["llama"][0]().to_dict(), images=1)
    # Qwen2.5-VL's images are patch grids of any size, not pixels at one: refused, saying so
    qwen = transformers.Qwen2_5_VLConfig(
        text_config=dict(text, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2,
                           out_hidden_size=64))
    with pytest.raises(ValueError, match="cannot make from pixels alone .its vision config"):
        from_config({**qwen.to_dict(), "architectures": ["Qwen2_5_VLForConditionalGeneration"]},
                    images=1)


def test_a_decode_step_transformers_keeps_no_static_cache_for_is_refused_saying_why():
    # xLSTM reads a cache class of its own, DeepSeek-V4's compressed attention layers have no
    # static cache in transformers: one line each, naming it, where an AttributeError or a bare
    # KeyError had come out
    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=256,
                 head_dim=16)
    with pytest.raises(ValueError, match=r"a cache of its own \(xLSTMCache\)"):
        from_config(transformers.xLSTMConfig(**small).to_dict(), phase="decode", ctx=8)
    with pytest.raises(ValueError, match="no static cache for its 'heavily_compressed_attention'"):
        from_config(transformers.AutoConfig.for_model("deepseek_v4", **small).to_dict(),
                    phase="decode", ctx=8)


def test_a_decode_step_whose_states_are_module_attributes_runs_on_meta():
    # RecurrentGemma keeps its recurrent and convolution states as plain tensor attributes its
    # first step makes: on the meta device they had met the capture's fake CPU weights and
    # failed; priced as the CPU build prices them
    import fxroof
    cfg = transformers.RecurrentGemmaConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
        intermediate_size=128, vocab_size=256, lru_width=64, attention_window_size=16,
        block_types=["recurrent", "attention"]).to_dict()
    meta, cpu = (fxroof.analyze(*from_config(cfg, batch=B, phase="decode", ctx=8, device=d),
                                chip="h100-sxm") for d in ("meta", "cpu"))
    assert meta.flops == cpu.flops > 0 and meta.memory.kv_cache == cpu.memory.kv_cache


def test_a_text_only_decode_step_of_mllama_skips_its_cross_attention():
    # Llama 3.2 Vision's text-only step skips a cross-attention layer while its cache is empty:
    # the step leaves that layer's cache empty (it had failed on its missing keys). Its cache is
    # the self-attention layer's alone, by hand: keys and values, 2 heads of 16 over 9
    # positions, fp32; its products what PyTorch's counter counts on the step run for real
    import fxroof
    from torch.utils.flop_counter import FlopCounterMode
    cfg = transformers.MllamaConfig(
        text_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, vocab_size=256,
                         cross_attention_layers=[1], pad_token_id=0),
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_global_layers=1,
                           attention_heads=2, intermediate_size=64, image_size=32, patch_size=8,
                           vision_output_dim=64)).to_dict()
    cfg["architectures"] = ["MllamaForConditionalGeneration"]
    report = fxroof.analyze(*from_config(cfg, batch=B, phase="decode", ctx=8), chip="h100-sxm")
    assert report.memory.kv_cache == 2 * B * 2 * 9 * 16 * 4 + 8     # and the step's count
    step, args, kwargs = from_config(cfg, batch=B, phase="decode", ctx=8, device="cpu")
    with FlopCounterMode(display=False) as counter:
        step(*args, **kwargs)
    assert sum(n.flops for n in report.nodes if n.category == "matmul") == \
        counter.get_flop_counts()["Global"][torch.ops.aten.mm]


def test_a_tensor_parallel_rank_holds_half_the_cache():
    import fxroof
    cfg = FAMILIES["llama"][0]().to_dict()
    model, args, kwargs = from_config(cfg, batch=B, phase="decode", ctx=CTX, dtype="bf16")
    whole = fxroof.analyze(model, args, kwargs, chip="h100-sxm")
    rank = fxroof.analyze(model, args, kwargs, chip="h100-sxm", tp=2)
    # each rank keeps 1 of the 2 key/value heads of every layer (the counts stay whole)
    counts = 2 * 8
    assert rank.memory.kv_cache - counts == (whole.memory.kv_cache - counts) // 2
    # and half of the vocabulary's logits: the head is split as a top-level one would be

    def head_flops(r):
        return sum(n.flops for n in r.nodes if n.module.endswith("lm_head"))
    assert head_flops(rank) * 2 == head_flops(whole) == 2 * B * 64 * 256


# --- encoder-decoders and non-text inputs -------------------------------------------------------

ENC_DEC = dict(encoder_layers=2, decoder_layers=2, d_model=64, encoder_ffn_dim=128,
               decoder_ffn_dim=128, encoder_attention_heads=4, decoder_attention_heads=4,
               vocab_size=256)
TOKENS = dict(pad_token_id=0, bos_token_id=0, eos_token_id=0, decoder_start_token_id=0)

# family -> (config, model class, shapes of the inputs: args, then decoder_input_ids if any)
OTHER_INPUTS = {
    "t5": (lambda: transformers.T5Config(num_layers=2, num_decoder_layers=2, d_model=64, d_kv=16,
                                         d_ff=128, num_heads=4, vocab_size=256, **TOKENS),
           "T5ForConditionalGeneration", [(B, T), (B, T)]),
    "bart": (lambda: transformers.BartConfig(**ENC_DEC, max_position_embeddings=64, **TOKENS),
             "BartForConditionalGeneration", [(B, T), (B, T)]),
    # Whisper's encoder takes 2 x max_source_positions mel frames (its convolution halves them)
    "whisper": (lambda: transformers.WhisperConfig(**ENC_DEC, num_mel_bins=16,
                                                   max_source_positions=32,
                                                   max_target_positions=32, **TOKENS),
                "WhisperForConditionalGeneration", [(B, 16, 64), (B, T)]),
    "vit": (lambda: transformers.ViTConfig(**SMALL | dict(vocab_size=None), image_size=32,
                                           patch_size=8),
            "ViTModel", [(B, 3, 32, 32)]),
}


@pytest.mark.parametrize("family", OTHER_INPUTS)
def test_encoder_decoders_and_images_get_the_inputs_their_model_takes(family):
    import fxroof
    from torch.utils.flop_counter import FlopCounterMode
    make, cls_name, shapes = OTHER_INPUTS[family]
    model, args, kwargs = from_config(make().to_dict(), batch=B, seq=T, device="cpu")
    assert type(model).__name__ == cls_name
    given = [*args, *([kwargs["decoder_input_ids"]] if "decoder_input_ids" in kwargs else [])]
    assert [tuple(t.shape) for t in given] == shapes
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(*args, **kwargs)                 # a real forward on real tensors
    r = fxroof.analyze(model, args, kwargs, chip="h100-sxm")
    # FlopCounterMode counts the projections and convolutions (its attention kernels on the
    # CPU have no formula): the same total, from a graph fxroof captured on its own
    assert sum(n.flops for n in r.nodes if n.category in ("matmul", "conv")) == \
        counter.get_total_flops() > 0


def test_an_encoder_decoders_attention_by_hand():
    import fxroof
    model, args, kwargs = from_config(OTHER_INPUTS["t5"][0]().to_dict(), batch=B, seq=T)
    r = fxroof.analyze(model, args, kwargs, chip="h100-sxm")
    # encoder self-attention in 2 layers, decoder self- and cross-attention in 2: 6 calls of
    # q @ k^T and p @ v over 16 x 16 positions, 4 heads of 16
    assert sum(n.flops for n in r.nodes if n.category == "attention") == \
        6 * 2 * (2 * B * 4 * T * T * 16)


def test_the_bare_encoder_decoder_when_the_config_names_it():
    config = OTHER_INPUTS["t5"][0]().to_dict() | {"architectures": ["T5Model"]}
    model, _, kwargs = from_config(config, batch=B, seq=T)
    assert type(model).__name__ == "T5Model" and kwargs["decoder_input_ids"].shape == (B, T)


def test_an_input_it_does_not_make_says_so():
    cfg = transformers.Wav2Vec2Config(num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                                      num_attention_heads=4)
    with pytest.raises(ValueError, match="whose input 'input_values' --hf does not make"):
        from_config(cfg.to_dict())


def test_a_dual_encoder_gets_texts_and_images():
    import fxroof
    from torch.utils.flop_counter import FlopCounterMode
    tower = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                 num_attention_heads=4)
    cfg = transformers.CLIPConfig(text_config=dict(**tower, vocab_size=256,
                                                   max_position_embeddings=T),
                                  vision_config=dict(**tower, image_size=32, patch_size=8),
                                  projection_dim=32)
    model, args, kwargs = from_config(cfg.to_dict(), batch=B, seq=T, device="cpu")
    assert type(model).__name__ == "CLIPModel"
    assert args[0].shape == (B, T) and kwargs["pixel_values"].shape == (B, 3, 32, 32)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(*args, **kwargs)
    r = fxroof.analyze(model, args, kwargs, chip="h100-sxm")
    assert sum(n.flops for n in r.nodes if n.category in ("matmul", "conv")) == \
        counter.get_total_flops() > 0
    with pytest.raises(ValueError, match=f"seq=32 is longer than the {T} learned positions of "
                                         f"the text encoder"):
        from_config(cfg.to_dict(), seq=32)


def test_a_config_transformers_wrote_with_infinity_reads_back(tmp_path):
    # transformers 5 writes Mamba2's time_step_limit (0, inf) as {"__float__": "Infinity"}
    cfg = transformers.Mamba2Config(num_hidden_layers=1, hidden_size=64, num_heads=4,
                                    head_dim=32, vocab_size=256, n_groups=1)
    cfg.to_json_file(tmp_path / "config.json")
    model, _, _ = from_config(tmp_path / "config.json", seq=8)
    assert model.config.time_step_limit[1] == float("inf")
    # a field the config class rejects: one line naming the file and the field
    bad = json.loads((tmp_path / "config.json").read_text()) | {"time_step_limit": "x"}
    with pytest.raises(ValueError, match="is not a mamba2 config the installed transformers "
                                         "accepts: .*time_step_limit"):
        from_config(write_json(tmp_path, bad, "bad.json"))


def test_a_convnet_without_an_image_size_takes_the_one_given():
    cfg = transformers.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1])
    with pytest.raises(ValueError, match=r"gives no image_size .* \(--set image_size=224\)"):
        from_config(cfg.to_dict())
    model, args, _ = from_config(cfg.to_dict(), batch=B, image_size=64)
    assert type(model).__name__ == "ResNetModel" and args[0].shape == (B, 3, 64, 64)
    # a ViT is built for its config's size: another one is refused, not silently interpolated
    vit = OTHER_INPUTS["vit"][0]().to_dict()
    assert from_config(vit, image_size=32)[1][0].shape[-1] == 32
    with pytest.raises(ValueError, match="for 32-px images .* not 64"):
        from_config(vit, image_size=64)


def test_an_image_classifier_without_a_bare_model_is_built_with_its_head():
    from transformers.models.auto import modeling_auto
    if not hasattr(transformers, "PPLCNetConfig"):
        pytest.skip("this transformers has no PP-LCNet")
    assert "pp_lcnet" not in modeling_auto.MODEL_MAPPING_NAMES     # AutoModel cannot build it
    cfg = transformers.PPLCNetConfig(num_labels=10)
    model, args, _ = from_config(cfg.to_dict(), batch=B, image_size=64)
    assert type(model).__name__ == "PPLCNetForImageClassification"
    assert args[0].shape == (B, 3, 64, 64)


@pytest.mark.parametrize("family", ["bart", "whisper", "t5"])
def test_an_encoder_decoders_step_reads_its_caches_and_projects_no_encoder_state(family):
    import fxroof
    from torch.utils.flop_counter import FlopCounterMode
    config = OTHER_INPUTS[family][0]().to_dict()
    # Whisper's encoder takes its fixed window; a text model's the source= tokens
    given = {} if family == "whisper" else {"source": T}
    real = from_config(config, batch=B, phase="decode", ctx=8, device="cpu", **given)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        real[0](*real[1], **real[2])             # a real step on real tensors
    step, args, kwargs = from_config(config, batch=B, phase="decode", ctx=8, **given)
    # the new tokens, their position, the encoder's output: T source tokens, Whisper's 32 frames
    source = 32 if family == "whisper" else T
    assert [tuple(t.shape) for t in args] == [(B, 1), (1,), (B, source, 64)]
    r = fxroof.analyze(step, args, kwargs, chip="h100-sxm")
    # by hand, per layer: self-attention q, k, v, o and cross-attention q, o on one token a
    # sequence (the encoder's keys and values were projected once, at the first step), 2 x B x
    # 64 x 64 each, and the MLP's 2 x B x 64 x 128 twice; then the head, 2 x B x 64 x 256
    per_layer = 6 * (2 * B * 64 * 64) + 2 * (2 * B * 64 * 128)
    hand = 2 * per_layer + 2 * B * 64 * 256
    assert sum(n.flops for n in r.nodes if n.category == "matmul") == hand \
        == counter.get_total_flops()
    # the self-attention cache it updates: 2 layers' keys and values over ctx + 1 positions,
    # B x 4 heads x 16, fp32, and each layer's count
    assert r.memory.kv_cache == 2 * (2 * B * 4 * 9 * 16 * 4 + 8)
    if family != "t5":              # T5 is refused by tp= (its position bias is per head)
        rank = fxroof.analyze(step, args, kwargs, chip="h100-sxm", tp=2)
        assert 2 * sum(n.flops for n in rank.nodes if n.category == "matmul") == hand
        assert rank.memory.kv_cache == 2 * (2 * B * 2 * 9 * 16 * 4 + 8)    # 2 of 4 heads


def test_an_encoder_decoders_source_is_the_encoders_length():
    config = OTHER_INPUTS["bart"][0]().to_dict()
    # a prefill of 4 decoder tokens over a 32-token source (generation's first pass)
    _, args, kwargs = from_config(config, batch=B, seq=4, source=32)
    assert args[0].shape == (B, 32) and kwargs["decoder_input_ids"].shape == (B, 4)
    with pytest.raises(ValueError, match="decode step reads its encoder's output: give source="):
        from_config(config, phase="decode", ctx=8)
    with pytest.raises(ValueError, match="source=65 is longer than the 64 learned positions"):
        from_config(config, seq=4, source=65)
    whisper = OTHER_INPUTS["whisper"][0]().to_dict()
    with pytest.raises(ValueError, match="fixed window of 64 mel frames"):
        from_config(whisper, seq=4, source=32)


def test_a_prompts_causal_mask_is_left_to_the_kernel_as_an_eager_run_leaves_it():
    # transformers' eager run of an unpadded prompt passes no mask and is_causal=True (flash
    # attention, causal blocks skipped, the 2 k/v heads read as they are); its trace had built
    # the 16 x 16 mask and read it, and copied k/v out to the 4 query heads
    config = transformers.AutoConfig.for_model(
        "llama", hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, vocab_size=256)
    model, args, kwargs = from_config(config, batch=2, seq=16)
    attention = [n for n in fxroof.analyze(model, args, kwargs).nodes
                 if n.category == "attention"]
    assert [(n.causal, n.note) for n in attention] == [(True, "causal, gqa 4q/2kv")]
    # by hand: q (2 x 4 x 16 x 16) and k, v (2 x 2 x 16 x 16), fp32; no mask
    assert attention[0].bytes_read == 4 * (2 * 4 * 16 * 16 + 2 * 2 * 2 * 16 * 16)
    # the eager run takes the same path: PyTorch's attention op sees is_causal and no mask
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, is_causal=False, **kw):
        calls.append((attn_mask is None, is_causal))
        return sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kw)
    real = transformers.AutoModelForCausalLM.from_config(config).eval()
    with mock.patch("torch.nn.functional.scaled_dot_product_attention", spy), torch.no_grad():
        real(torch.zeros(2, 16, dtype=torch.long), use_cache=False)
    assert calls == [(True, True)]

