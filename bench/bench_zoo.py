"""A zoo of tiny Hugging Face (and timm) models: does fxroof capture each, cost every op, and count
the same matrix FLOPs as PyTorch's own counter?

Every model is built from its config at toy sizes (nothing is downloaded), with random weights on
the CPU. For each: whether capture worked, coverage (share of ops with a formula, the unknown ops
named), fxroof's matmul + conv + attention FLOPs beside torch.utils.flop_counter.FlopCounterMode's
count of one eager forward on the same inputs, and the seconds fxroof.analyze took (noisy: the
models are small and the machine may be shared).

    python bench/bench_zoo.py [--only llama,bert] [--verbose]
    python bench/bench_zoo.py --decode     # the decoders' decode step over a static KV cache

With --decode each decoder is built as `fxroof.cli.hf.from_config(..., phase="decode")` makes it
(one new token per sequence over T cached ones) and the step runs eagerly on the CPU for the
counter.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop

import fxroof
from fxroof.cost.record import MATRIX_CATEGORIES
from fxroof.errors import one_line
from fxroof.graph.engine_kernels import engine_kernels
from fxroof.graph.flash_attention import OP as FLASH_ATTENTION
from fxroof.graph.fused_recurrences import OPS as FUSED_OPS
from fxroof.graph.latent_attention import OP as LATENT_ATTENTION

FUSED_NAMES = {op.__name__ for op in FUSED_OPS}
B, T = 2, 16                                    # text batch and tokens
IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=0)
TEXT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=256, max_position_embeddings=64, **IDS)
MOE = dict(TEXT, num_local_experts=4, num_experts=4, num_experts_per_tok=2, n_routed_experts=4,
           moe_intermediate_size=32, shared_expert_intermediate_size=64)
VISION = dict(image_size=32, patch_size=8, num_channels=3, hidden_size=64, num_hidden_layers=2,
              num_attention_heads=4, intermediate_size=128)
DELTA = dict(TEXT, head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
             linear_key_head_dim=16, linear_value_head_dim=16)
CNN = dict(num_channels=3, hidden_sizes=[16, 32], depths=[1, 1], embedding_size=16, num_stages=2)
AUDIO = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
             conv_dim=[32, 32], conv_stride=[5, 2], conv_kernel=[10, 3],
             num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
SEQ2SEQ = dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
               decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
               vocab_size=256, max_position_embeddings=64, **IDS)

# model_type: (inputs kind, config overrides)
ZOO = {
    # decoders
    "llama": ("causal", TEXT), "mistral": ("causal", TEXT), "qwen2": ("causal", TEXT),
    "qwen3": ("causal", TEXT), "gemma": ("causal", dict(TEXT, head_dim=16)),
    "gemma2": ("causal", dict(TEXT, head_dim=16)),
    "gemma3_text": ("causal", dict(TEXT, head_dim=16)), "phi": ("causal", TEXT),
    "phi3": ("causal", TEXT), "gpt2": ("causal", dict(TEXT, n_positions=64)),
    "gpt_neox": ("causal", TEXT), "gptj": ("causal", dict(TEXT, n_positions=64, rotary_dim=8)),
    "gpt_neo": ("causal", dict(TEXT, attention_types=[[["global", "local"], 1]], window_size=8)),
    "gpt_bigcode": ("causal", dict(TEXT, n_positions=64)), "falcon": ("causal", TEXT),
    "opt": ("causal", dict(TEXT, ffn_dim=128, word_embed_proj_dim=64)),
    "bloom": ("causal", dict(TEXT, n_head=4)), "starcoder2": ("causal", TEXT),
    "stablelm": ("causal", TEXT), "olmo2": ("causal", TEXT), "cohere": ("causal", TEXT),
    "granite": ("causal", TEXT), "olmo": ("causal", TEXT), "glm4": ("causal", TEXT),
    "nemotron": ("causal", TEXT), "helium": ("causal", dict(TEXT, head_dim=16)),
    "biogpt": ("causal", TEXT),
    "exaone4": ("causal", TEXT), "ernie4_5": ("causal", TEXT), "roformer": ("encoder", TEXT),
    "codegen": ("causal", dict(TEXT, n_positions=64, rotary_dim=8)),
    "mpt": ("causal", dict(d_model=64, n_layers=2, n_heads=4, vocab_size=256, max_seq_len=64)),
    "mamba": ("causal", dict(hidden_size=64, num_hidden_layers=2, vocab_size=256, state_size=8)),
    "recurrent_gemma": ("causal", dict(TEXT, lru_width=64, head_dim=16, attention_window_size=16)),
    "rwkv": ("causal", dict(hidden_size=64, num_hidden_layers=2, vocab_size=256,
                            attention_hidden_size=64, intermediate_size=128, context_length=64)),
    "mamba2": ("causal", dict(hidden_size=64, num_hidden_layers=2, vocab_size=256, state_size=8,
                              num_heads=8, head_dim=16, n_groups=1, chunk_size=8)),
    "falcon_mamba": ("causal", dict(hidden_size=64, num_hidden_layers=2, vocab_size=256,
                                    state_size=8)),
    "xlnet": ("causal", dict(d_model=64, n_layer=2, n_head=4, d_inner=128, vocab_size=256)),
    "reformer": ("causal", dict(hidden_size=64, attention_head_size=16, num_attention_heads=4,
                                attn_layers=["local", "lsh"], feed_forward_size=128,
                                vocab_size=256, axial_pos_shape=[4, 4],
                                axial_pos_embds_dim=[32, 32], max_position_embeddings=16,
                                local_attn_chunk_length=8, lsh_attn_chunk_length=8,
                                num_buckets=2, is_decoder=True)),
    "llama4_text": ("causal", MOE),
    "qwen3_next": ("causal", MOE),
    "nemotron_h": ("causal", dict(TEXT, mamba_num_heads=8, mamba_head_dim=8, ssm_state_size=8,
                                  n_groups=1, hybrid_override_pattern="M*")),
    "lfm2": ("causal", dict(TEXT, layer_types=["conv", "full_attention"])),
    # the gated delta rule (fxroof.graph.fused_delta_rules), Kimi's with a decay per channel
    "qwen3_5_text": ("causal", DELTA), "olmo_hybrid": ("causal", DELTA),
    "kimi_linear": ("causal", dict(
        TEXT, num_key_value_heads=4, num_experts=8, moe_intermediate_size=32, kv_lora_rank=16,
        qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=16, linear_attn_config=dict(
            kda_layers=[1], full_attn_layers=[2], num_heads=4, head_dim=16,
            short_conv_kernel_size=4))),
    # mixtures of experts
    "mixtral": ("causal", MOE), "qwen2_moe": ("causal", MOE), "qwen3_moe": ("causal", MOE),
    "olmoe": ("causal", MOE), "deepseek_v3": ("causal", dict(
        MOE, q_lora_rank=32, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
        v_head_dim=16, first_k_dense_replace=1, n_group=1, topk_group=1,
        num_key_value_heads=4)),     # latent attention: as many key heads as query heads
    "deepseek_v32": ("causal", dict(    # latent attention, and a sparse attention's indexer
        MOE, q_lora_rank=32, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
        v_head_dim=16, first_k_dense_replace=1, n_group=1, topk_group=1,
        num_key_value_heads=4, index_n_heads=2, index_head_dim=16, index_topk=4)),
    "gpt_oss": ("causal", dict(MOE, head_dim=16)), "jamba": ("causal", dict(
        MOE, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
        expert_layer_offset=1, mamba_d_state=8, mamba_dt_rank=8, use_mamba_kernels=False)),
    # encoders
    "bert": ("encoder", TEXT), "roberta": ("encoder", TEXT), "distilbert": ("encoder", dict(
        dim=64, n_layers=2, n_heads=4, hidden_dim=128, vocab_size=256)),
    "deberta-v2": ("encoder", TEXT), "deberta": ("encoder", TEXT), "electra": ("encoder", dict(
        TEXT, embedding_size=32)), "albert": ("encoder", dict(TEXT, embedding_size=32)),
    "xlm-roberta": ("encoder", TEXT), "modernbert": ("encoder", TEXT),
    "mpnet": ("encoder", TEXT), "funnel": ("encoder", dict(
        d_model=64, n_head=4, d_head=16, d_inner=128, block_sizes=[1, 1], vocab_size=256,
        block_repeats=[1, 1], num_decoder_layers=1, architectures=["FunnelModel"])),
    # encoder-decoders
    "t5": ("seq2seq", dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                           vocab_size=256)),
    "bart": ("seq2seq", SEQ2SEQ), "mbart": ("seq2seq", SEQ2SEQ), "pegasus": ("seq2seq", SEQ2SEQ),
    "marian": ("seq2seq", dict(SEQ2SEQ, decoder_vocab_size=256)),
    "whisper": ("speech2seq", dict(SEQ2SEQ, num_mel_bins=16, max_source_positions=16,
                                   max_target_positions=64)),
    # vision
    "vit": ("vision", VISION), "deit": ("vision", VISION), "beit": ("vision", VISION),
    "dinov2": ("vision", VISION), "swin": ("vision", dict(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4],
        window_size=4)), "convnext": ("vision", CNN), "resnet": ("vision", CNN),
    "regnet": ("vision", dict(CNN, hidden_sizes=[16, 32], groups_width=8)),
    "mobilenet_v2": ("vision", dict(image_size=32, depth_multiplier=0.25)),
    "efficientnet": ("vision", dict(image_size=32, width_coefficient=0.25,
                                    depth_coefficient=0.25, hidden_dim=320)),
    "segformer": ("vision", dict(hidden_sizes=[16, 32], depths=[1, 1], num_encoder_blocks=2,
                                 sr_ratios=[2, 1], num_attention_heads=[1, 2],
                                 patch_sizes=[7, 3], strides=[4, 2], decoder_hidden_size=32)),
    "clip_vision_model": ("vision", VISION), "siglip_vision_model": ("vision", VISION),
    "mobilevit": ("vision", dict(image_size=32, hidden_sizes=[32, 48, 64],
                                 neck_hidden_sizes=[8, 16, 24, 32, 48, 64, 80])),
    "levit": ("vision", dict(image_size=32, hidden_sizes=[32, 48, 64],
                             num_attention_heads=[1, 2, 4], depths=[1, 1, 1], key_dim=[8, 8, 8])),
    "poolformer": ("vision", dict(hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1])),
    "fnet": ("encoder", dict(TEXT, tpu_short_seq_length=16)),
    "longformer": ("encoder", dict(TEXT, attention_window=8)),
    "big_bird": ("encoder", dict(TEXT, attention_type="original_full")),
    # audio
    "encodec": ("audio", dict(num_filters=8, hidden_size=32, num_lstm_layers=2,
                              upsampling_ratios=[4, 4], codebook_size=32)),
    "speech_to_text": ("speech2seq", dict(SEQ2SEQ, input_feat_per_channel=16,
                                          input_channels=1, num_mel_bins=16,
                                          max_source_positions=32)),
    "wav2vec2": ("audio", AUDIO), "hubert": ("audio", AUDIO), "wavlm": ("audio", AUDIO),
}


def build(model_type: str):
    """(model, args, kwargs): the tiny model in eval mode, random weights, example inputs."""
    import transformers
    kind, overrides = ZOO[model_type]
    cfg = transformers.AutoConfig.for_model(model_type, **overrides)
    auto = transformers.AutoModelForCausalLM if kind == "causal" else transformers.AutoModel
    torch.manual_seed(0)
    model = auto.from_config(cfg).eval()
    ids = torch.randint(0, 256, (B, T))
    if kind == "causal":
        return model, (ids,), {"use_cache": False}
    if kind == "encoder":
        return model, (ids,), {}
    if kind == "seq2seq":
        return model, (ids,), {"decoder_input_ids": ids[:, :8], "use_cache": False}
    if kind == "speech2seq":     # whisper: (B, mel bins, frames); speech_to_text: (B, frames, bins)
        frames, bins = 2 * cfg.max_source_positions, cfg.num_mel_bins
        feats = torch.randn(B, frames, bins) if model_type == "speech_to_text" else \
            torch.randn(B, bins, frames)
        return model, (feats,), {"decoder_input_ids": ids[:, :8], "use_cache": False}
    if kind == "vision":
        return model, (torch.randn(B, 3, 32, 32),), {}
    if model_type == "encodec":
        return model, (torch.randn(B, 1, 1600),), {}    # one channel
    return model, (torch.randn(B, 1600),), {}    # audio: 0.1 s at 16 kHz


# Hybrids whose two tiny layers are both recurrent: a step with no attention layer is one
# transformers cannot mask (Cache.get_mask_sizes), so the decode zoo gives them one of each
DECODE_LAYERS = {"qwen3_next": dict(layer_types=["linear_attention", "full_attention"]),
                 "qwen3_5_text": dict(layer_types=["linear_attention", "full_attention"]),
                 "olmo_hybrid": dict(layer_types=["linear_attention", "full_attention"]),
                 "recurrent_gemma": dict(block_types=["recurrent", "attention"])}


def build_decode(model_type: str):
    """(step, args, kwargs): one decode step of the tiny decoder over a static cache of T
    tokens, random weights on the CPU."""
    import transformers

    from fxroof.cli.hf import from_config
    cfg = transformers.AutoConfig.for_model(model_type, **ZOO[model_type][1],
                                            **DECODE_LAYERS.get(model_type, {}))
    torch.manual_seed(0)
    return from_config(cfg, batch=B, phase="decode", ctx=T, device="cpu")



def torch_flops(model, args, kwargs) -> int:
    """PyTorch's count of one forward of `model`. Its table lacks the CPU's fused attention
    kernel and the grouped matmul of transformers' experts (each routed row times its expert's
    matrix): it is given PyTorch's own attention formula and 2 * rows * K * N."""
    def raw(fn):
        fn._get_raw = True       # takes the tensors, not their shapes
        return fn

    extra = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
             raw(lambda *a, **k: sdpa_flop(*a, **k))}
    grouped = raw(lambda x, w, *a, **k: 2 * x.shape[0] * x.shape[1] * w.shape[-1])
    for namespace, name in (("transformers", "grouped_mm_fallback"), ("aten", "_grouped_mm")):
        if hasattr(getattr(torch.ops, namespace), name):
            extra[getattr(getattr(torch.ops, namespace), name)] = grouped
    # oneDNN's recurrent kernel is one op the counter does not know; the native one runs the
    # per-step matrix products it counts. The counter's module hooks fail under no_grad on
    # transformers' hub-kernel function layers (Mamba's, Jamba's), and with grad on inside a
    # custom autograd Function (Reformer's reversible layers): the FLOPs are the same either way.
    # The recurrences fxroof captures as fused kernels (Mamba's scans, the gated delta rule:
    # fxroof.graph.fused_recurrences) run fused here too and count on neither side: their kernels'
    # products are not transformers' loops' (tests/test_fused_*.py hold them to those loops, to
    # the counter where the products agree and to hand arithmetic)
    for op in FUSED_OPS:
        extra[op] = lambda *a, **k: 0
    # Attention runs here as the capture takes it (fxroof.graph.engine_kernels), counted by
    # PyTorch's attention formula over the shapes it attends with: a latent attention's decode
    # step absorbed, its query and keys joined with their rotary parts over one shared head;
    # attention with sinks, and a prompt's sliding-window attention, as one op
    extra[LATENT_ATTENTION] = raw(lambda q, q_rot, kv, k_rot, *a, **k: sdpa_flop(
        _joined(q, q_rot), _joined(kv, k_rot), kv))
    extra[FLASH_ATTENTION] = raw(lambda q, k, v, *a, **kw: sdpa_flop(q, k, v))
    for grad in (False, True):
        try:
            with FlopCounterMode(display=False, custom_mapping=extra) as counter, \
                    torch.set_grad_enabled(grad), torch.backends.mkldnn.flags(enabled=False), \
                    engine_kernels():
                model(*args, **kwargs)
            return counter.get_total_flops()
        except AssertionError:
            if grad:
                raise


def _joined(a, b):
    """A meta tensor of a and b joined on their last dim."""
    return torch.empty(*a.shape[:-1], a.shape[-1] + b.shape[-1], device="meta")


def exported_flops(model, args, kwargs) -> int:
    """PyTorch's count of the program torch.export traces: some models run other code when
    traced than eagerly (transformers branches on tracing), so fxroof can differ from the eager
    count and still be exact on the graph it analyzes."""
    from fxroof.graph.capture import TensorOutputs, quiet_torch
    # quiet: a failed export prints its partial graph, where the table names the error
    with quiet_torch(), engine_kernels():
        program = torch.export.export(TensorOutputs(model), args, kwargs, strict=False)
    return torch_flops(program.module(), args, kwargs)


def _traced(model, args, kwargs, ours: int) -> str:
    """"traced" where fxroof equals PyTorch's count of the exported program, else "NO"."""
    try:
        return "traced" if ours == exported_flops(model, args, kwargs) else "NO"
    except Exception as e:   # export alone fails (fxroof captured another way): nothing to add
        return f"NO (export: {type(e).__name__})"


def measure(name: str, build_fn) -> dict:
    """One row: build, count eagerly, analyze, compare."""
    if sys.stderr.isatty():     # progress on a terminal; a piped run prints the table only
        print(f"  {name} ...", file=sys.stderr, flush=True)
    try:
        model, args, kwargs = build_fn()
    except Exception as e:   # a config this library version rejects: say so, go on
        return dict(name=name, error=f"build: {type(e).__name__}: {str(e)[:80]}")
    try:
        truth = torch_flops(model, args, kwargs)
    except Exception as e:   # the tiny config runs nowhere: not fxroof's failure
        return dict(name=name, error=f"eager run: {type(e).__name__}: {str(e)[:80]}")
    start = time.perf_counter()
    try:
        report = fxroof.analyze(model, args, kwargs)
    except Exception as e:   # the first line of the cause: capture's lists each strategy
        what = "capture" if isinstance(e, fxroof.CaptureError) else "analyze"
        return dict(name=name, error=f"{what}: {one_line(e, width=110)}")
    seconds = time.perf_counter() - start
    ours = sum(n.flops for n in report.nodes
               if n.category in MATRIX_CATEGORIES and n.op not in FUSED_NAMES)
    exact = "yes" if ours == truth else _traced(model, args, kwargs, ours)
    return dict(name=name, captured=report.capture.split(':')[0], coverage=report.coverage,
                unknown=report.unknown_ops, ours=ours, truth=truth, exact=exact,
                seconds=seconds)


def timm_rows() -> list[dict]:
    try:
        import timm
    except ImportError:
        print("timm: not installed, its models skipped")
        return []

    def build_timm(name: str):
        size = dict(img_size=32) if "vit" in name else {}
        model = timm.create_model(name, pretrained=False, num_classes=10, **size).eval()
        return model, (torch.randn(B, 3, 32, 32),), {}
    return [measure(f"timm/{name}", lambda name=name: build_timm(name)) for name in (
        "resnet18", "efficientnet_b0", "vit_tiny_patch16_224", "convnext_atto")]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--only", help="comma-separated model types")
    p.add_argument("--verbose", action="store_true", help="name every unknown op")
    p.add_argument("--decode", action="store_true",
                   help="the decoders' decode step over a static KV cache instead")
    ns = p.parse_args()
    warnings.filterwarnings("ignore")
    names = ns.only.split(",") if ns.only else list(ZOO)
    if ns.decode:
        names = [n for n in names if ZOO[n][0] == "causal"]
        rows = [measure(n, lambda n=n: build_decode(n)) for n in names]
    else:
        rows = [measure(n, lambda n=n: build(n)) for n in names] + \
            ([] if ns.only else timm_rows())
    print(f"{'model':22}{'capture':>14}{'coverage':>10}{'fxroof MFLOP':>14}{'torch MFLOP':>13}"
          f"{'exact':>8}{'seconds':>9}  unknown ops")
    for r in rows:
        if "error" in r:
            print(f"{r['name']:22}  {r['error']}")
            continue
        unknown = ", ".join(r["unknown"]) if ns.verbose else ", ".join(list(r["unknown"])[:4])
        print(f"{r['name']:22}{r['captured']:>14}{r['coverage']:>10.1%}{r['ours'] / 1e6:>14.3f}"
              f"{r['truth'] / 1e6:>13.3f}{r['exact']:>8}{r['seconds']:>9.2f}  {unknown}")
    ok = [r for r in rows if "error" not in r]
    captured = len(ok) + sum(r.get("error", "").startswith("analyze") for r in rows)
    n = len(rows)
    print(f"\nexact: fxroof's matrix FLOPs equal FlopCounterMode's on the eager forward; traced: "
          f"on the exported graph, the eager forward running other code\n"
          f"captured {captured}/{n}, analyzed {len(ok)}/{n}, "
          f"full coverage {sum(r['coverage'] == 1 for r in ok)}/{n}, "
          f"exact FLOPs {sum(r['exact'] == 'yes' for r in ok)}/{n} "
          f"(+{sum(r['exact'] == 'traced' for r in ok)} exact on the traced graph)")


if __name__ == "__main__":
    main()
