"""Tensor parallelism: collective formulas by hand, the Megatron plan through DTensor on a fake
process group, and the must-hold regimes of a TP-8 MLP on PCIe (L40S) and NVLink (H100 SXM)."""
import importlib.util
from pathlib import Path

import fxroof.pipeline as api
import pytest
import torch
import torch.distributed as dist
from torch import nn

from fxroof.chips import chip as find_chip
from fxroof.cost.formulas import OpCall, lookup
from fxroof.graph.capture import capture
from fxroof.graph.parallel import fake_process_group, megatron_plan, tensor_parallel
from fxroof.studies.scaling import format_tp_scaling, tp_scaling

c10d = torch.ops._c10d_functional
BF16 = 2                                      # bytes per bf16 element
D, FF, TOKENS = 8192, 28672, 4096             # a Llama-2-70B-sized MLP, 4096 tokens
MODELS = Path(__file__).resolve().parents[1] / "models"


def meta(*shape, dtype=torch.bfloat16):
    return torch.empty(*shape, device="meta", dtype=dtype)


def cost(op, *args, out):
    return lookup(op).fn(OpCall(op, args, {}, out))


def megatron_mlp(d=D, ff=FF, dtype=torch.bfloat16, device="meta", bias=False):
    with torch.device(device):
        return nn.Sequential(nn.Linear(d, ff, bias=bias), nn.GELU(),
                             nn.Linear(ff, d, bias=bias)).to(dtype)


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"tp_workload_{name}", MODELS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- collective formulas, by hand ------------------------------------------------------------

def test_all_gather_ring_by_hand():
    shard, full = meta(512, 1024), meta(8 * 512, 1024)
    c = cost(c10d.all_gather_into_tensor.default, shard, 8, "g", out=full)
    buf = 8 * 512 * 1024 * BF16                  # the FULL gathered buffer: 8 MiB
    assert c.category == "collective" and c.flops == 0
    assert c.comm_bytes == 7 * buf // 8          # (n-1)/n of it: 7 shards of 1 MiB arrive
    assert c.comm_steps == 7                     # n-1 ring steps
    assert c.bytes_read == 512 * 1024 * BF16 and c.bytes_written == buf


def test_reduce_scatter_ring_by_hand():
    full, shard = meta(4 * 256, 1024), meta(256, 1024)
    c = cost(c10d.reduce_scatter_tensor.default, full, "sum", 4, "g", out=shard)
    buf = 4 * 256 * 1024 * BF16                  # the input is the full buffer: 2 MiB
    assert c.comm_bytes == 3 * buf // 4          # (n-1)/n = 3/4 of it: 1.5 MiB
    assert c.comm_steps == 3
    assert c.flops == 3 * 256 * 1024             # (n-1)/n of the 4*256*1024 elements added
    assert c.bytes_read == buf and c.bytes_written == buf // 4


def test_all_reduce_all_to_all_broadcast_need_the_live_group():
    x = meta(64, 1024)
    buf = 64 * 1024 * BF16
    with fake_process_group(4) as group:
        name = group.group_name
        ar = cost(c10d.all_reduce.default, x, "sum", name, out=meta(64, 1024))
        a2a = cost(c10d.all_to_all_single.default, x, [16] * 4, [16] * 4, name, out=meta(64, 1024))
        bc = cost(c10d.broadcast.default, x, 0, name, out=meta(64, 1024))
    assert ar.comm_bytes == 2 * 3 * buf // 4 and ar.comm_steps == 2 * 3   # 2(n-1)/n, 2(n-1)
    assert ar.flops == 3 * 64 * 1024 // 4                                   # (n-1)/n adds
    assert a2a.comm_bytes == 3 * buf // 4 and a2a.comm_steps == 3           # (n-1)/n
    assert bc.comm_bytes == buf and bc.comm_steps == 3                      # the buffer
    # After the group is gone its size is unknown: marked unknown, never a guessed n.
    gone = cost(c10d.all_reduce.default, x, "sum", name, out=meta(64, 1024))
    assert not gone.known and gone.comm_bytes == 0
    assert lookup(c10d.wait_tensor.default).category == "view"
    assert ar.nvls_bytes == 0             # 4 ranks: the switch's multicast does not pay


def test_all_reduce_in_the_switch_by_hand():
    # NVLS over 8 ranks: each rank's buffer goes in once, its 1/8 share of the sum back in
    # for the switch to copy out: 9/8 of the buffer each way, against the ring's 14/8
    x = meta(64, 1024)
    buf = 64 * 1024 * BF16
    with fake_process_group(8) as group:
        ar = cost(c10d.all_reduce.default, x, "sum", group.group_name, out=meta(64, 1024))
    assert ar.nvls_bytes == 9 * buf // 8 and ar.comm_bytes == 14 * buf // 8
    with fake_process_group(16) as group:      # beyond one 8-GPU board's switch: rings only
        wide = cost(c10d.all_reduce.default, x, "sum", group.group_name, out=meta(64, 1024))
    assert wide.nvls_bytes == 0


# -- the must-holds: a TP-8 Megatron MLP ------------------------------------------------------

def tp8_mlp(chip):
    return api.analyze(megatron_mlp(), (meta(TOKENS, D),), chip=chip, tp=8)


@pytest.fixture(scope="module")
def l40s():
    return tp8_mlp("l40s")


def test_tp8_mlp_is_communication_bound_on_pcie_not_on_nvlink(l40s):
    assert l40s.regime == "communication"
    assert tp8_mlp("h100-sxm").regime == "compute"


def test_tp8_all_reduce_follows_the_ring_formula(l40s):
    (ar,) = [k for k in l40s.kernels if k.category == "collective"]
    chip = find_chip("l40s")                 # PCIe Gen4: 32 GB/s one direction, 10 us per step
    buf = TOKENS * D * BF16                  # 4096*8192*2 = 67,108,864 bytes
    sent = 2 * (8 - 1) / 8 * buf             # 117,440,512 bytes
    expected = sent / chip.link_bw + 2 * (8 - 1) * chip.link_latency_s   # 3.670 ms + 0.140 ms
    assert ar.op == "all_reduce" and ar.regime == "communication"
    assert ar.timing.comm_s == pytest.approx(expected)
    assert ar.timing.comm_s == pytest.approx(117_440_512 / 32e9 + 14 * 10e-6)
    # Per rank: two matmuls of 2*4096*8192*(28672/8) FLOPs each = 2 * 240.5 GFLOP.
    mm = [k for k in l40s.kernels if k.category == "matmul"]
    assert sum(k.flops for k in mm) == 2 * 2 * TOKENS * D * (FF // 8)


def test_a_pair_of_mi300x_has_one_link_of_seven():
    # MI300X boards wire each GPU to each other one: 7 links of 64 GB/s each way. A tp=2 split
    # all-reduces over the one link between the pair, 448/7 GB/s; tp=8 over all seven.
    mlp = megatron_mlp(d=1024, ff=4096)
    (pair,) = [k for k in api.analyze(mlp, (meta(TOKENS, 1024),), chip="mi300x", tp=2).kernels
               if k.category == "collective"]
    buf = TOKENS * 1024 * BF16                 # 8 MiB: the Simple ring, 2 steps of 5 us
    assert pair.timing.comm_s == pytest.approx(buf / 64e9 + 2 * 5e-6)
    (eight,) = [k for k in api.analyze(mlp, (meta(TOKENS, 1024),), chip="mi300x", tp=8).kernels
                if k.category == "collective"]
    # 14.7 MB over 448 GB/s: the LL protocol's half bandwidth and 0.18 of the latency, 78 us,
    # beats Simple's 103 us
    assert eight.timing.comm_s == pytest.approx(14 / 8 * buf / 224e9 + 14 * 0.9e-6)


def test_per_rank_graph_has_local_shapes():
    with tensor_parallel(megatron_mlp(), 8, (meta(TOKENS, D),)) as (local, args, kwargs):
        gm = capture(local, args, kwargs).gm
    vals = {n.name: n.meta["val"] for n in gm.graph.nodes if n.op != "output"}
    mms = [n for n in gm.graph.nodes if n.op == "call_function" and "mm" in str(n.target)]
    assert tuple(vals[mms[0].name].shape) == (TOKENS, FF // 8)     # colwise: 28672/8 = 3584
    assert tuple(vals[mms[1].name].shape) == (TOKENS, D)           # rowwise: partial sums
    weights = [tuple(n.meta["val"].shape) for n in gm.graph.nodes if n.op == "placeholder"][:2]
    assert weights == [(FF // 8, D), (D, FF // 8)]                 # the local shards
    assert [str(n.target) for n in gm.graph.nodes if "c10d" in str(n.target)] == [
        "_c10d_functional.all_reduce.default", "_c10d_functional.wait_tensor.default"]
    assert not dist.is_initialized()                               # the fake group is torn down


# -- the user's model ------------------------------------------------------------------------

def test_users_model_is_untouched_and_calls_repeat():
    model = megatron_mlp(64, 256, torch.float32, "cpu", bias=True)
    before = {k: (v, v.detach().clone()) for k, v in model.named_parameters()}
    model.train()
    for _ in range(2):                                             # the fake group is rebuilt
        r = api.analyze(model, (torch.randn(16, 64),), tp=4)
        assert [k.op for k in r.kernels if k.category == "collective"] == ["all_reduce"]
        assert not dist.is_initialized()
    after = dict(model.named_parameters())
    assert after.keys() == before.keys()
    for k, (param, values) in before.items():
        assert after[k] is param and type(param) is nn.Parameter
        assert torch.equal(param.detach(), values)
    assert all(m.training for m in model.modules())
    for m in model.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks)


def test_model_parallelized_by_the_user_on_a_fake_group():
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel,
                                                   parallelize_module)
    model = megatron_mlp(512, 2048)
    with fake_process_group(4):
        mesh = init_device_mesh("cpu", (4,))
        parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
        r = api.analyze(model, (meta(128, 512),), chip="h100-sxm")
    (ar,) = [n for n in r.nodes if n.category == "collective"]
    assert ar.op == "all_reduce" and ar.known
    assert ar.comm_bytes == 2 * 3 * (128 * 512 * BF16) // 4        # ring, n = 4
    assert r.weights_bytes == 2 * (512 * 2048 // 4) * BF16         # local shards only
    assert sum(n.flops for n in r.nodes if n.category == "matmul") == 2 * 2 * 128 * 512 * 512


# -- the plan ----------------------------------------------------------------------------------

def test_unsupported_layout_names_the_linear_layers():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 8))
    with pytest.raises(ValueError, match=r"Linear layers found: 0, 2, 3"):
        megatron_plan(model, 2)
    with pytest.raises(ValueError, match="does not divide by tp=3"):
        megatron_plan(megatron_mlp(64, 256), 3)


def test_bundled_models_plan_or_refuse_clearly():
    llama = load("llama")
    model, args, kwargs = llama.workload(preset="tiny")             # 4 heads, 2 k/v heads
    plan = megatron_plan(model, 2)
    assert plan.styles["layers.0.attention.wq"] == "colwise"
    assert plan.styles["layers.0.feed_forward.w2"] == "rowwise"
    assert plan.styles["tok_embeddings"] == "embedding" and plan.styles["output"] == "lm_head"
    assert plan.attrs["layers.0.attention"] == {"n_heads": 2, "n_kv_heads": 1}
    # 2 k/v heads over 4 ranks: each kept by 2 ranks, one a rank (vLLM's and Megatron's QKV
    # layers replicate them); 4 query heads over 8 ranks cannot split
    replicated = megatron_plan(model, 4)
    assert replicated.kv_replicas == {f"layers.{i}.attention": 2 for i in (0, 1)}
    assert replicated.attrs["layers.0.attention"] == {"n_heads": 1, "n_kv_heads": 1}
    with pytest.raises(ValueError, match="n_heads=4 does not divide by tp=8"):
        megatron_plan(model, 8)
    with pytest.raises(ValueError, match="fused q/k/v projection 'c_attn'"):
        megatron_plan(load("gpt2").workload(size="tiny")[0], 2)
    with pytest.raises(ValueError, match="already initialised"):
        with fake_process_group(2):
            api.analyze(model, args, kwargs, tp=2)


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_k_v_heads_fewer_than_the_ranks_are_kept_one_a_rank(phase):
    # the tiny Llama (dim 128, 4 heads and 2 k/v heads of 32, 2 layers) over 4 ranks, 2
    # sequences: a rank's k projection makes one head, 2 x 128 x 32 FLOPs a token; its q one
    # head too; its attention one query head over its one k/v head; its cache one k/v head
    options = dict(preset="tiny", batch=2, phase=phase,
                   **({"seq": 16} if phase == "prefill" else {"ctx": 16}))
    model, args, kwargs = load("llama").workload(**options)
    rank = api.analyze(model, args, kwargs, chip="h100-sxm", tp=4)
    tokens = 2 * (16 if phase == "prefill" else 1)
    flops = {leaf: sum(n.flops for n in rank.nodes if n.category == "matmul"
                       and n.module == f"layers.0.attention.{leaf}") for leaf in ("wq", "wk", "wv")}
    assert flops == dict.fromkeys(("wq", "wk", "wv"), 2 * tokens * 128 * 32)
    (attention,) = [n for n in rank.nodes if n.category == "attention"
                    and n.module == "layers.0.attention"]
    assert attention.grid[0] == 2 * 1                       # batch x one query head
    # keys and values of one head, 2 sequences, 2 layers, bf16: 16 (17) positions
    positions = 16 if phase == "prefill" else 17
    assert rank.memory.kv_cache == 2 * 2 * 2 * positions * 32 * 2
    assert any(n.startswith("k/v heads fewer than tp=4: each rank keeps one") for n in rank.notes)


def test_llama_cache_and_heads_are_cut_per_rank():
    model, args, kwargs = load("llama").workload(preset="tiny", seq=32)   # dim 128, hs 32
    with tensor_parallel(model, 2, args, kwargs) as (local, largs, lkwargs):
        assert local.layers[0].attention.n_heads == 2
        assert tuple(lkwargs["cache"][0][0].shape) == (1, 1, 32, 32)      # 2 k/v heads / 2
        gm = capture(local, largs, lkwargs).gm
    assert model.layers[0].attention.n_heads == 4                         # the original keeps 4
    attn = [n for n in gm.graph.nodes if "scaled_dot_product" in str(n.target)]
    q = attn[0].args[0].meta["val"]
    assert tuple(q.shape) == (1, 2, 32, 32)                               # (B, nh/tp, T, hs)


# -- the report section -----------------------------------------------------------------------

def test_tp_scaling_llama_layers():
    model, args, kwargs = load("llama").workload(layers=2, seq=512)     # Llama-2-7B shapes
    rows = tp_scaling(model, args, kwargs, chip="l40s", degrees=(1, 2, 8))
    assert [r["tp"] for r in rows] == [1, 2, 8]
    assert rows[0]["comm_bytes"] == 0 and rows[0]["comm_share"] == 0
    assert rows[1]["weights_bytes"] == pytest.approx(rows[0]["weights_bytes"] / 2, rel=0.01)
    assert rows[2]["comm_share"] > rows[1]["comm_share"] > 0
    assert rows[2]["regime"] == "communication"                        # PCIe: 8 ranks starve
    # 2 layers x (attention + MLP) all-reduces, the embedding's all-reduce, the logits' gather
    assert rows[2]["collectives"] == 6
    table = format_tp_scaling(rows)
    assert all(len(line) <= 100 for line in table.splitlines())
    assert "communication" in table


def test_hugging_face_llama_and_gpt2():
    transformers = pytest.importorskip("transformers")
    from fxroof.cli.hf import from_config
    small = dict(num_hidden_layers=1, hidden_size=256, num_attention_heads=8, vocab_size=512)
    for cfg in (transformers.LlamaConfig(**small, intermediate_size=512, num_key_value_heads=4),
                transformers.GPT2Config(n_layer=1, n_embd=256, n_head=8, vocab_size=512,
                                        n_positions=64, bos_token_id=0, eos_token_id=0)):
        model, args, kwargs = from_config(cfg.to_dict(), batch=2, seq=16)
        r = api.analyze(model, args, kwargs, tp=4)
        ops = [k.op for k in r.kernels if k.category == "collective"]
        # embedding, attention, MLP all-reduces; the logits' all-gather
        assert ops.count("all_reduce") == 3 and ops.count("all_gather_into_tensor") == 1
        (attn,) = [n for n in r.nodes if n.category == "attention"]
        # (B, nh/tp, T, hs): 2*2*2*16*16*32 for Q@K^T and again for P@V
        assert attn.flops == 2 * (2 * 2 * 16 * 16 * 32) * 2


def test_hugging_face_encoder_decoders_split_their_out_proj_and_fc_blocks():
    transformers = pytest.importorskip("transformers")
    from fxroof.cli.hf import from_config
    shapes = dict(encoder_layers=2, decoder_layers=2, d_model=64, encoder_ffn_dim=128,
                  decoder_ffn_dim=128, encoder_attention_heads=4, decoder_attention_heads=4,
                  vocab_size=256, pad_token_id=0, bos_token_id=0, eos_token_id=0,
                  decoder_start_token_id=0)
    for cfg, reduces in (
            # the two token embeddings; 2 a encoder layer (attention, fc2), 3 a decoder layer
            (transformers.BartConfig(**shapes, max_position_embeddings=64), 2 + 2 * 2 + 2 * 3),
            # Whisper's encoder takes mel frames: the decoder's embedding alone
            (transformers.WhisperConfig(**shapes, num_mel_bins=16, max_source_positions=32,
                                        max_target_positions=32), 1 + 2 * 2 + 2 * 3)):
        model, args, kwargs = from_config(cfg.to_dict(), batch=2, seq=16)
        whole = api.analyze(model, args, kwargs)
        rank = api.analyze(model, args, kwargs, tp=2)
        ops = [k.op for k in rank.kernels if k.category == "collective"]
        assert ops.count("all_reduce") == reduces
        assert ops.count("all_gather_into_tensor") == 1          # the LM head's logits

        def matmul_flops(r):
            return sum(n.flops for n in r.nodes if n.category == "matmul")
        # every projection and the LM head split by 2: each rank does half the matmul work
        assert 2 * matmul_flops(rank) == matmul_flops(whole) > 0


def test_phis_dense_attention_output_splits_by_rows_and_berts_dense_layers_do_not():
    transformers = pytest.importorskip("transformers")
    from fxroof.cli.hf import from_config
    small = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=256,
                 intermediate_size=128)
    model, args, kwargs = from_config(transformers.PhiConfig(**small).to_dict(), batch=2, seq=16)
    whole, rank = api.analyze(model, args, kwargs), api.analyze(model, args, kwargs, tp=2)
    ops = [k.op for k in rank.kernels if k.category == "collective"]
    # the embedding, then per layer the attention's `dense` and the MLP's fc2
    assert ops.count("all_reduce") == 1 + 2 * 2 and ops.count("all_gather_into_tensor") == 1

    def matmul_flops(r):
        return sum(n.flops for n in r.nodes if n.category == "matmul")
    assert 2 * matmul_flops(rank) == matmul_flops(whole) > 0
    # BERT's `dense` Linears sit apart from its query/key/value: no layout, one clear line
    bert, args, kwargs = from_config(transformers.BertConfig(**small).to_dict(), seq=16)
    with pytest.raises(ValueError, match="no tensor-parallel layout recognised in BertModel"):
        api.analyze(bert, args, kwargs, tp=2)


def tiny_mixtral(intermediate_size: int):
    """A two-layer bf16 Mixtral of 4 experts, top-2, 64 wide, on meta; 16 tokens for it."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.MixtralConfig(hidden_size=64, intermediate_size=intermediate_size,
                                     num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, num_local_experts=4,
                                     num_experts_per_tok=2, vocab_size=512)
    with torch.device("meta"):
        model = transformers.MixtralForCausalLM(cfg).to(torch.bfloat16)
    return model, torch.zeros(1, 16, dtype=torch.long, device="meta")


def test_hugging_face_moe_experts_split_over_their_intermediate_size_and_reduce_once():
    # Hugging Face's Mixtral keeps its experts' weights as 3-D parameters (gate_up_proj: 4 x
    # 256 x 64, down_proj: 4 x 64 x 128). Its own TP plan splits them over the intermediate
    # size and all-reduces the experts' output once; they were left whole on every rank.
    # 16 tokens x top-2 = 32 routed rows: gate_up 2 x 32 x 64 x 256 = 1,048,576 FLOPs and down
    # 2 x 32 x 128 x 64 = 524,288 a layer, two layers: 3,145,728; half of it on each of 2 ranks
    model, ids = tiny_mixtral(intermediate_size=128)

    def expert_flops(r):
        return sum(n.flops for n in r.nodes if ".experts" in n.module and n.category == "matmul")
    assert expert_flops(api.analyze(model, (ids,))) == 3_145_728
    r = api.analyze(model, (ids,), tp=2)
    assert expert_flops(r) == 3_145_728 // 2
    # the embedding, then each layer's o_proj and its experts once: 16 x 64 bf16 = 2,048 B
    reduces = [n for n in r.nodes if n.op == "all_reduce"]
    assert [n.module for n in reduces] == ["model.embed_tokens"] + [
        f"model.layers.{i}.{m}" for i in (0, 1) for m in ("self_attn.o_proj", "mlp.experts")]
    assert {n.comm_bytes for n in reduces} == {2048}
    assert model.model.layers[0].mlp.experts.down_proj.shape == (4, 64, 128)   # untouched
    with pytest.raises(ValueError, match=r"mlp.experts: experts' intermediate size=128 does "
                                         r"not divide by tp=3"):
        megatron_plan(model, 3)


def test_packed_experts_as_wide_as_the_hidden_size_split_too():
    # gate_up_proj (4, 64, 64) fits either layout by its shape alone: the down projection's,
    # (4, 64 hidden, 32), says which. 16 tokens x top-2 = 32 routed rows: gate_up 2 x 32 x 64 x
    # 64 = 262,144 FLOPs and down 2 x 32 x 32 x 64 = 131,072 a layer, two layers: 786,432; half
    # of it on each of 2 ranks. Before, the experts stayed whole on every rank, unsaid.
    model, ids = tiny_mixtral(intermediate_size=32)
    r = api.analyze(model, (ids,), tp=2)
    assert sum(n.flops for n in r.nodes if ".experts" in n.module
               and n.category == "matmul") == 786_432 // 2


def test_stacked_experts_of_the_bundled_moe_split_and_reduce_once():
    # models/moe.py stacks its experts' weights: w1, w3 (4, 64, 128) and w2 (4, 128, 64). 512
    # tokens, top-2 of 4 experts: 256 slots an expert, so each of the three batched products is
    # 2 x 4 x 256 x 64 x 128 = 16,777,216 FLOPs; each of 2 ranks holds half of every expert's
    # 128 intermediate outputs, and the block's output is all-reduced once
    model, args = load("moe").workload(preset="tiny")[:2]
    r = api.analyze(model, args, tp=2)
    expert = [n.flops for n in r.nodes if n.module == "layers.0.moe" and n.category == "matmul"]
    assert expert == [16_777_216 // 2] * 3
    assert [n.module for n in r.nodes if n.op == "all_reduce"] == [
        "tok_embeddings", "layers.0.attention.wo", "layers.0.moe", "layers.1.attention.wo",
        "layers.1.moe"]
    assert model.layers[0].moe.w2.shape == (4, 128, 64)          # the user's model untouched


def test_deepseeks_latent_attention_splits_its_up_projections_by_heads():
    # DeepSeek-V3's attention: q_a_proj (64 -> 32 latents) and kv_a_proj_with_mqa (64 -> 16 + 8)
    # stay whole on every rank, as serving engines keep them (the latent cache is each rank's);
    # q_b_proj (32 -> 4 heads x 24) and kv_b_proj (16 -> 4 heads x (16 + 16)) split by heads,
    # o_proj (4 x 16 -> 64) by rows. 16 tokens on 2 ranks: q_b 2 x 16 x 32 x 48 = 49,152 FLOPs,
    # kv_b 2 x 16 x 16 x 64 = 32,768, o_proj 2 x 16 x 32 x 64 = 65,536
    transformers = pytest.importorskip("transformers")
    cfg = transformers.DeepseekV3Config(
        hidden_size=64, intermediate_size=128, moe_intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, q_lora_rank=32, kv_lora_rank=16,
        qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16, n_routed_experts=4,
        num_experts_per_tok=2, n_group=1, topk_group=1, first_k_dense_replace=1, vocab_size=256)
    with torch.device("meta"):
        model = transformers.DeepseekV3ForCausalLM(cfg).to(torch.bfloat16)
    ids = torch.zeros(1, 16, dtype=torch.long, device="meta")
    r = api.analyze(model, (ids,), tp=2)
    flops = {n.module.removeprefix("model.layers.0.self_attn."): n.flops for n in r.nodes
             if n.module.startswith("model.layers.0.self_attn.") and n.category == "matmul"}
    assert flops == {"q_a_proj": 2 * 16 * 64 * 32, "q_b_proj": 49_152,
                     "kv_a_proj_with_mqa": 2 * 16 * 64 * 24, "kv_b_proj": 32_768,
                     "o_proj": 65_536}
    # per layer the attention's output, then the dense MLP's (layer 0) or the routed experts'
    # partial sums and the shared experts' (layer 1)
    assert [n.module for n in r.nodes if n.op == "all_reduce"] == [
        "model.embed_tokens", "model.layers.0.self_attn.o_proj", "model.layers.0.mlp.down_proj",
        "model.layers.1.self_attn.o_proj", "model.layers.1.mlp.experts",
        "model.layers.1.mlp.shared_experts.down_proj"]
    assert model.model.layers[0].self_attn.q_b_proj.weight.shape == (4 * 24, 32)   # untouched


def test_packed_qkv_and_gate_up_projections_split_by_heads_and_units():
    # Phi-3 packs q, k and v in qkv_proj and cuts its output at its config's head counts;
    # its MLP and GLM-4's pack the gate and the up projection in gate_up_proj. Each rank's
    # attention reads a config of its own (the user's is left as it was), and every
    # projection's work halves on 2 ranks. The decode step's cache, k and v of 4 heads of 16 over
    # 64 positions for 2 sequences in bf16 (2 x 2 x 4 x 64 x 16 x 2 = 32,768 B a layer) and each
    # layer's 8-byte token count, is cut to 2 heads on a rank: 16,384 B a layer.
    transformers = pytest.importorskip("transformers")
    from fxroof.cli.hf import from_config
    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, vocab_size=256, pad_token_id=0)
    for cfg in (transformers.Phi3Config(**small),
                transformers.Glm4Config(**small, head_dim=16)):
        model, args, kwargs = from_config(cfg.to_dict(), batch=2, phase="decode", ctx=63,
                                          dtype="bf16")
        whole, rank = api.analyze(model, args, kwargs), api.analyze(model, args, kwargs, tp=2)

        def matmul_flops(r):
            return sum(n.flops for n in r.nodes if n.category == "matmul")
        assert 2 * matmul_flops(rank) == matmul_flops(whole) > 0
        assert whole.memory.kv_cache == 2 * (32_768 + 8)
        assert rank.memory.kv_cache == 2 * (16_384 + 8)
        assert model.model.config.num_attention_heads == 4                # the user's
        assert [n.module.rpartition(".")[2] for n in rank.nodes if n.op == "all_reduce"] == [
            "embed_tokens"] + ["o_proj", "down_proj"] * 2


def test_grouped_query_decode_copies_its_cache_the_same_way_split_or_not():
    # Under torch.compile transformers copies each k/v head out to the query heads' count
    # before attention (repeat_kv); in eager mode it folds the query's heads instead (pack_gqa).
    # torch.export traces the compiled branch, and so must every other capture, or one rank of
    # a split (make_fx) reads its cache twice less than the whole model does. 8 query and 4
    # k/v heads of 32 over 64 positions, 2 sequences, bf16: each of k and v written out at
    # 2 x 8 x 64 x 32 x 2 = 65,536 B, on one of 2 ranks 32,768 B.
    transformers = pytest.importorskip("transformers")
    from fxroof.cli.hf import from_config
    cfg = transformers.Qwen2Config(hidden_size=256, intermediate_size=512, num_hidden_layers=1,
                                   num_attention_heads=8, num_key_value_heads=4, vocab_size=256)
    model, args, kwargs = from_config(cfg.to_dict(), batch=2, phase="decode", ctx=63, dtype="bf16")

    def copies(r):      # the copies that feed the attention: repeat_kv's
        return sorted(n.bytes_written for n in r.nodes if n.module.endswith("self_attn")
                      and n.category == "copy" and n.bytes_written > 16_384)
    assert copies(api.analyze(model, args, kwargs)) == [65_536] * 2
    assert copies(api.analyze(model, args, kwargs, tp=2)) == [32_768] * 2


def test_the_report_says_what_copying_the_k_v_heads_costs_and_who_does_not_pay_it():
    # The same one-layer Qwen2 decode as above: k and v each copied out once, 65,536 B apiece.
    # With as many k/v heads as query heads nothing is copied and nothing is said.
    transformers = pytest.importorskip("transformers")
    from fxroof.cli.hf import from_config
    kw = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=1,
              num_attention_heads=8, vocab_size=256)
    grouped = transformers.Qwen2Config(num_key_value_heads=4, **kw).to_dict()
    note = [n for n in api.analyze(*from_config(grouped, batch=2, phase="decode", ctx=63,
                                                dtype="bf16")).notes if "repeat_kv" in n]
    assert len(note) == 1 and "(2 copies, 131 kB written" in note[0]
    full = transformers.Qwen2Config(num_key_value_heads=8, **kw).to_dict()
    assert not any("repeat_kv" in n for n in api.analyze(*from_config(
        full, batch=2, phase="decode", ctx=63, dtype="bf16")).notes)
