"""Mixture-of-experts models: expert matmuls counted whichever way transformers runs the experts
(grouped, batched, or a loop over the experts a router picked), against PyTorch's FlopCounterMode
and hand arithmetic; the routing assumption and what it decides."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import fxroof
from fxroof.graph.engine_kernels import engine_kernels
from fxroof.graph.parallel import megatron_plan
from fxroof.graph.routing import Routing, parse
from tests.helpers import fn_module

transformers = pytest.importorskip("transformers")

_COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
_DEEPSEEK = dict(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                 n_shared_experts=1, first_k_dense_replace=1, num_key_value_heads=4,
                 kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
                 v_head_dim=16, n_group=1, topk_group=1)
CONFIGS = {
    "MixtralConfig": dict(num_local_experts=4, num_experts_per_tok=2),
    "Qwen2MoeConfig": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                           shared_expert_intermediate_size=64),
    "DeepseekV2Config": _DEEPSEEK,
    "DeepseekV3Config": _DEEPSEEK,
    "GptOssConfig": dict(num_local_experts=4, num_experts_per_tok=2, head_dim=16,
                         sliding_window=8),
    "JambaConfig": dict(num_experts=4, num_experts_per_tok=2, attn_layer_period=2,
                        attn_layer_offset=1, expert_layer_period=1, expert_layer_offset=0,
                        mamba_d_state=8, mamba_dt_rank=8),
}


def tiny(name: str, experts: str, dtype=torch.float32):
    """A two-layer model of the family, its experts run by `experts` ("grouped_mm",
    "batched_mm" or "eager", the loop)."""
    config = getattr(transformers, name)(**{**_COMMON, **CONFIGS[name]})
    config._experts_implementation = experts
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).eval().to(dtype)


def reference_matmul_flops(name: str, tokens: torch.Tensor) -> int:
    """PyTorch's count of the matrix products (mm, addmm, bmm) of the model with its experts
    batched, which FlopCounterMode sees (it does not count _grouped_mm). Grad mode stays on:
    the counter's module hooks fail on transformers' hub-kernel function layers under no_grad.
    Jamba's selective scan runs fused, as fxroof captures it (tests/test_fused_scans.py): vector
    work, where transformers' token loop would run a small bmm a token; gpt-oss's attention
    with sinks one fused attention op (tests/test_flash_attention.py), not two bmms."""
    with FlopCounterMode(display=False) as counter, engine_kernels():
        tiny(name, "batched_mm")(tokens, use_cache=False)
    counts = counter.get_flop_counts()["Global"]
    return sum(counts.get(op, 0) for op in (torch.ops.aten.mm, torch.ops.aten.addmm,
                                            torch.ops.aten.bmm))


def matmul_flops(report) -> int:
    return sum(row.flops for row in report.nodes if row.category == "matmul")


TOKENS = torch.arange(8).view(1, 8)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("experts, dtype", [
    ("grouped_mm", torch.float32),     # transformers' grouped_mm_fallback op
    ("grouped_mm", torch.bfloat16),    # aten._grouped_mm
    ("eager", torch.float32),          # a loop over the experts the router picked
])
def test_expert_matmul_flops_match_flop_counter(name, experts, dtype):
    report = fxroof.analyze(tiny(name, experts, dtype), (TOKENS,), dict(use_cache=False))
    assert matmul_flops(report) == reference_matmul_flops(name, TOKENS)
    assert all(row.known for row in report.nodes if row.category != "view")
    if experts == "eager":      # the loop over experts the router picked: routing assumed
        assert report.capture == "make_fx, balanced routing"
        assert any("expert routing assumed balanced" in note for note in report.notes)


def test_experts_whose_sizes_export_leaves_symbolic_take_the_routing_on_meta():
    # JetMoE's experts (its MLP and its mixture of attention heads) are sized by the router's
    # counts, which torch.export keeps as symbols on meta weights: the routed capture sizes
    # them. Every token runs on k experts, so the matrix FLOPs do not depend on which: PyTorch's
    # count of a real forward on real weights is the truth
    cfg = transformers.JetMoeConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                                    num_key_value_heads=4, kv_channels=16, num_local_experts=4,
                                    num_experts_per_tok=2, vocab_size=128)
    torch.manual_seed(0)
    real = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        real(TOKENS, use_cache=False)
    with torch.device("meta"):
        meta = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    report = fxroof.analyze(meta, (TOKENS.to("meta"),), dict(use_cache=False))
    assert report.capture == "make_fx, balanced routing"
    assert matmul_flops(report) == counter.get_total_flops() > 0


def test_grouped_experts_at_decode_read_only_the_routed_experts_weights():
    # Mixtral, 1 token, top-2 of 4 experts: 2 experts' gate_up (64 x 256) and down (128 x 64)
    # weights in bf16 a layer, not all 4 experts'
    report = fxroof.analyze(tiny("MixtralConfig", "grouped_mm", torch.bfloat16),
                            (TOKENS[:, :1],), dict(use_cache=False))
    grouped = [row for row in report.nodes if row.op == "_grouped_mm"]
    assert [row.flops for row in grouped] == [2 * 2 * 64 * 256, 2 * 2 * 128 * 64] * 2
    # read: the 2 routed rows (bf16), the int32 offsets of 4 experts, 2 experts' weights
    assert [row.bytes_read for row in grouped] == [2 * 64 * 2 + 16 + 2 * 64 * 256 * 2,
                                                   2 * 128 * 2 + 16 + 2 * 128 * 64 * 2] * 2
    assert "balanced routing" in " ".join(report.notes)


def test_expert_loop_runs_the_tokens_the_routing_gives_each_expert():
    # 8 tokens, top-2 of 4: balanced, 4 tokens an expert; skew=0.5, tokens 0-3 lead with
    # expert 0 and deal their second picks over experts 1-3 (1,2,3,1), tokens 4-7 deal theirs
    # over all four in turn ({0,1},{2,3},{0,1},{2,3}): 6, 4, 3, 3 tokens.
    for routing, per_expert in ((None, [4, 4, 4, 4]), ("skew=0.5", [6, 4, 3, 3])):
        report = fxroof.analyze(tiny("MixtralConfig", "eager", torch.bfloat16), (TOKENS,),
                                dict(use_cache=False), routing=routing)
        # the gate-up product of each expert the loop runs: (tokens, 64) @ (64, 256)
        tokens = [row.grid[1] for row in report.nodes
                  if row.op == "mm" and row.grid[2:] == (256, 64)]
        assert tokens == per_expert * 2      # two layers


def test_a_chosen_routing_reaches_grouped_experts_through_their_offsets():
    skew = fxroof.analyze(tiny("MixtralConfig", "grouped_mm", torch.bfloat16), (TOKENS[:, :2],),
                          dict(use_cache=False), routing="skew=1")
    assert skew.capture == "make_fx, skew=1 routing"
    # 2 tokens, top-2 of 4: balanced routing touches round(4*(1-(1/2)^2)) = 3 experts;
    # skew=1 makes both tokens pick expert 0 and deal the other picks over experts 1-2
    notes = {row.note for row in skew.nodes if row.op == "_grouped_mm"}
    assert notes == {"expert weights read: 3 of 4 experts (routing assumed)"}


def test_routing_assignment_by_hand():
    # expected experts touched, E*(1-(1-k/E)^T): 8*(1-0.75^4) = 5.47 -> 5; a token: k of them
    assert Routing().experts_touched(4, 2, 8) == 5
    assert Routing().experts_touched(1, 8, 256) == 8
    assert Routing().experts_touched(4096, 8, 256) == 256
    picks = Routing().assign(4, 2, 8)
    assert picks.tolist() == [[0, 1], [2, 3], [4, 0], [1, 2]]
    assert Routing(1.0).assign(3, 2, 8).tolist() == [[0, 1], [0, 2], [0, 3]]


def test_bad_routing_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown routing 'skewed'"):
        parse("skewed")
    with pytest.raises(ValueError, match=r"skew must be in \[0, 1\]"):
        fxroof.Target(routing="skew=2")


@pytest.mark.parametrize("a_shape, b_shape, offs, flops", [
    ((12, 64), (4, 64, 32), [3, 6, 9, 12], 2 * 12 * 64 * 32),     # routed rows x experts
    ((4, 5, 64), (4, 64, 32), None, 2 * 4 * 5 * 64 * 32),          # batched, as bmm
    ((16, 40), (40, 32), [10, 25, 40], 2 * 16 * 40 * 32),           # groups split K
])
def test_grouped_mm_flops_by_hand(a_shape, b_shape, offs, flops):
    def f(a, b, o):
        return torch._grouped_mm(a, b, offs=o)
    a, b = (torch.empty(s, dtype=torch.bfloat16, device="meta") for s in (a_shape, b_shape))
    o = None if offs is None else torch.tensor(offs, dtype=torch.int32, device="meta")
    report = fxroof.analyze(fn_module(f), (a, b, o))
    assert [row.flops for row in report.nodes if row.op == "_grouped_mm"] == [flops]


def test_cli_routing_reaches_the_report_and_a_bad_one_exits_2(tmp_path, capsys):
    from fxroof.cli.main import main
    path = tmp_path / "loop.py"
    path.write_text(  # 4 experts, top-1, a loop over the experts hit: 8 tokens, 2 an expert
        "import torch\n"
        "class Loop(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.router = torch.nn.Linear(16, 4)\n"
        "        self.experts = torch.nn.ModuleList(torch.nn.Linear(16, 16) for _ in range(4))\n"
        "    def forward(self, x):\n"
        "        picks = self.router(x).topk(1, dim=-1).indices[:, 0]\n"
        "        out = torch.zeros_like(x)\n"
        "        for e in picks.unique():\n"
        "            rows = (picks == e).nonzero()[:, 0]\n"
        "            out = out.index_add(0, rows, self.experts[int(e)](x[rows]))\n"
        "        return out\n"
        "def workload():\n"
        "    return Loop(), (torch.randn(8, 16),)\n")
    assert main(["analyze", str(path), "--routing", "skew=0.5", "--json", "-"]) == 0
    report = __import__("json").loads(capsys.readouterr().out)
    assert report["capture"] == "make_fx, skew=0.5 routing"
    # skew=0.5: tokens 0-3 pick expert 0, tokens 4-7 experts 0-3 in turn: 5, 1, 1, 1 tokens
    rows = [n["flops"] // (2 * 16 * 16) for n in report["nodes"]
            if n["module"].startswith("experts") and n["op"] in ("addmm", "linear")]
    assert rows == [5, 1, 1, 1]
    assert main(["analyze", str(path), "--routing", "skewed"]) == 2


def _moe_decoder():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "models" / "moe.py"
    spec = importlib.util.spec_from_file_location("moe_workload", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cached_moe_decoder_reads_the_chosen_experts_and_stores_every_one_quantized():
    moe = _moe_decoder()
    # tiny: dim 64, ffn 128, 4 experts, top-2, 2 layers; a decode step of one token
    model, args, kwargs = moe.decoder(preset="tiny", phase="decode", ctx=16)
    r = fxroof.analyze(model, args, kwargs, chip="a100-80gb")
    expert = 3 * 64 * 128 * 2                   # w1, w3, w2 of one expert, bf16: 49,152 B
    expert_reads = sum(n.bytes_read for n in r.nodes
                       if n.category == "matmul" and ".experts." in n.module)
    # one token picks k = 2 experts a layer (routing assumed): their weights, not all 4
    assert 2 * 2 * expert <= expert_reads < 2 * 2 * expert * 1.05
    # int8 weights, one fp16 scale a row, for every expert, chosen or not: each expert's three
    # matrices of 128 and 64 rows (nn.Linear's (out, in)) shrink from 49,152 to 24,576 + 640 B
    full = fxroof.analyze(model, args, kwargs, chip="a100-80gb").to_dict()["memory"]["weights"]
    w8 = fxroof.analyze(model, args, kwargs, chip="a100-80gb",
                        quantize="w8").to_dict()["memory"]["weights"]
    per_expert_saved = expert - (expert // 2 + 2 * (128 + 128 + 64))
    assert full - w8 >= 2 * 4 * per_expert_saved


def test_a_tensor_parallel_rank_of_the_moe_decoder_traces_its_chosen_experts_shards():
    moe = _moe_decoder()
    model, args, kwargs = moe.decoder(preset="tiny", phase="decode", ctx=16)
    r = fxroof.analyze(model, args, kwargs, chip="a100-80gb", tp=2)
    assert "routing" in r.capture
    w1 = [n for n in r.nodes if n.module.endswith(".w1") and ".experts." in n.module]
    # k = 2 chosen experts a layer, 2 layers; each rank holds half of w1's 128 outputs:
    # 64 x 64 bf16 = 8,192 B of weight and the token's 64 inputs, 128 B
    assert [n.bytes_read for n in w1] == [8192 + 128] * 4
    # the Megatron split all-reduces each row-parallel product: the embedding's rows, then in
    # each layer attention's wo and the expert block's output once (its chosen experts' w2
    # products stay partial sums until their weighted sum), one token's 64 bf16 values each
    reduces = [n for n in r.nodes if n.op == "all_reduce"]
    assert len(reduces) == 1 + 2 * (1 + 1) and {n.comm_bytes for n in reduces} == {128}
    assert [n.module for n in reduces][1:3] == ["layers.0.attention.wo", "layers.0.feed_forward"]


def test_gpt_fasts_expert_layout_counts_as_pytorch_does_and_splits_its_stacked_experts():
    # GatheredExperts (gpt-fast's mixtral-moe/model.py): the chosen experts' weights gathered
    # and contracted by einsums. Run for real on the CPU, PyTorch's FlopCounterMode counts the
    # matrix products; fxroof's einsum formula must count the same.
    moe = _moe_decoder()
    model, args, kwargs = moe.decoder(preset="tiny", phase="decode", ctx=16, experts="gathered",
                                      device="cpu", dtype="fp32")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*args, **kwargs)
    report = fxroof.analyze(model, args, kwargs, chip="a100-80gb")
    assert sum(n.flops for n in report.nodes if n.category == "matmul") == \
        counter.get_total_flops()
    # its three einsums a layer read the k = 2 chosen experts' rows, gathered from (4, ., .)
    gathers = [n for n in report.nodes if n.op == "index" and "feed_forward" in n.module]
    assert [n.bytes_read for n in gathers[:3]] == [2 * 128 * 64 * 4 + 2 * 8] * 3
    # a tensor-parallel rank holds half of each expert's 128 intermediate rows, and the block
    # all-reduces its output once
    model, args, kwargs = moe.decoder(preset="tiny", phase="decode", ctx=16, experts="gathered")
    r = fxroof.analyze(model, args, kwargs, chip="a100-80gb", tp=2)
    gathers = [n for n in r.nodes if n.op == "index" and "feed_forward" in n.module]
    assert gathers[0].bytes_read == 2 * 64 * 64 * 2 + 2 * 8        # bf16, half the rows
    reduces = [n.module for n in r.nodes if n.op == "all_reduce"]
    assert reduces[1:3] == ["layers.0.attention.wo", "layers.0.feed_forward"]
    with pytest.raises(ValueError, match="experts layout"):
        moe.decoder(preset="tiny", experts="grouped")


def test_gpt_oss_experts_as_wide_as_its_tokens_split_over_their_intermediate_size():
    # gpt-oss's experts: gate_up_proj (experts, hidden, 2 x inner), down_proj (experts, inner,
    # hidden), and its configs make inner = hidden (2,880 and 2,880), so down_proj alone cannot
    # say which dim is which: the packed projection's doubled dim is the inner one
    config = transformers.GptOssConfig(**{**_COMMON, **CONFIGS["GptOssConfig"],
                                          "intermediate_size": _COMMON["hidden_size"]})
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config).eval()
    (layout, *_) = megatron_plan(model, 2).fused_experts.values()
    assert (layout.size, layout.dims) == (
        config.intermediate_size, {"down_proj": 1, "gate_up_proj": 2, "gate_up_proj_bias": 1})
    ranks = {tp: [n for n in fxroof.analyze(model, (TOKENS.to("meta"),), dict(use_cache=False),
                                            tp=tp).nodes if "experts" in n.module
                  and n.category == "matmul"] for tp in (1, 2)}
    # each rank runs half of every expert product
    assert sum(n.flops for n in ranks[2]) * 2 == sum(n.flops for n in ranks[1]) > 0
