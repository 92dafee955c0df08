"""Training steps: forward, backward and optimizer as one graph, checked against PyTorch's own
FlopCounterMode around a real `loss.backward()` and its MemTracker around a real step."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace as K

import pytest
import torch
import transformers
from torch.distributed._tools.mem_tracker import MemTracker
from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop, sdpa_flop
from helpers import needs_inductor_hook

import fxroof
from fxroof.cli.main import main
from fxroof.cost.record import MATRIX_CATEGORIES
from fxroof.graph.parallel import fake_process_group, tensor_parallel
from fxroof.graph.training import PHASES, selective_policy
from fxroof.report.streams import schedule
from fxroof.report.units import si

aten = torch.ops.aten
# FlopCounterMode counts the fused attention kernels a CUDA build runs; a CPU build runs its own,
# which PyTorch leaves uncounted: the same formulas of PyTorch's counter are given for them.


def _grouped(formula, query_at: int):
    """PyTorch's formula, counting grouped-query attention's keys and values at the query's
    heads, as the counter of torch 2.13 does (2.11's refuses their shapes)."""
    def count(*shapes, **kwargs):
        heads = shapes[query_at][1]
        return formula(*shapes[:query_at + 1], *((s[0], heads, *s[2:]) for s in
                                                 shapes[query_at + 1:query_at + 3]),
                       *shapes[query_at + 3:], **kwargs)
    return count


CPU_ATTENTION = {aten._scaled_dot_product_flash_attention_for_cpu:
                     _grouped(sdpa_flop.__wrapped__, 0),
                 aten._scaled_dot_product_flash_attention_for_cpu_backward:
                     _grouped(sdpa_backward_flop.__wrapped__, 1)}


def real_step_flops(model, args, kwargs=None, loss_fn=None) -> int:
    """PyTorch's count of a real forward and `loss.backward()`, on a copy of the model."""
    model = copy.deepcopy(model).train()
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        out = model(*args, **(kwargs or {}))
        loss = loss_fn(out) if loss_fn else getattr(out, "loss", None)
        (out.mean() if loss is None else loss).backward()
    return counter.get_total_flops()


def matrix_flops(report, phase=None) -> int:
    return sum(n.flops for n in report.nodes
               if n.category in MATRIX_CATEGORIES and phase in (None, n.phase))


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def test_mlp_step_by_hand():
    r = fxroof.analyze(mlp(), (torch.randn(3, 8),), train=True)
    assert matrix_flops(r, "forward") == 1152     # 2*3*8*16 + 2*3*16*4 = 768 + 384
    # layer 2: the input's gradient 2*3*4*16 = 384 and the weight's 2*16*4*3 = 384; layer 1: the
    # weight's 2*16*8*3 = 768 and no input gradient (x needs none): 2x the forward less 768
    assert matrix_flops(r, "backward") == 1536
    assert matrix_flops(r, "optimizer") == 0
    assert matrix_flops(r) == real_step_flops(mlp(), (torch.randn(3, 8),))
    # AdamW on 8*16+16 + 16*4+4 = 212 fp32 parameters: two fp32 states each
    assert r.memory.weights == r.memory.gradients == 212 * 4
    assert r.memory.optimizer == 2 * 212 * 4 and r.memory.kv_cache == 0


def _hf(config_class, model_class, **config):
    torch.manual_seed(0)
    model = model_class(config_class(num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                                     num_attention_heads=4, vocab_size=128, **config))
    ids = torch.randint(0, 128, (2, 16))
    return model, (ids,), {"labels": ids}


def meta_gpt2():
    """A 3-layer GPT-2 and a batch of 2 x 16 token ids, on the meta device."""
    config = transformers.GPT2Config(n_layer=3, n_embd=64, n_head=2, vocab_size=128,
                                     n_positions=32)
    with torch.device("meta"):
        model = transformers.GPT2LMHeadModel(config)
    return model, torch.zeros(2, 16, dtype=torch.long, device="meta")


def gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128,
                                     n_positions=32)
    ids = torch.randint(0, 128, (2, 16))
    return transformers.GPT2LMHeadModel(config), (ids,), {"labels": ids}


def llama():
    return _hf(transformers.LlamaConfig, transformers.LlamaForCausalLM, num_key_value_heads=2)


def bert():
    return _hf(transformers.BertConfig, transformers.BertForMaskedLM)


def cnn():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(16, 10))
    return model, (torch.randn(4, 3, 16, 16),), {}


class Attention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Linear(32, 96)

    def forward(self, x):
        q, k, v = self.qkv(x).view(2, 10, 3, 4, 8).permute(2, 0, 3, 1, 4)   # (B, nh, T, hs)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


def attention():
    torch.manual_seed(0)
    return Attention(), (torch.randn(2, 10, 32),), {}


@pytest.mark.parametrize("build", [gpt2, llama, bert, cnn, attention])
def test_step_flops_match_flop_counter(build):
    model, args, kwargs = build()
    # PyTorch counts a step run on this CPU, whose attention with dropout (GPT-2's, BERT's) takes
    # the math path: the step is analyzed as a CPU runs it
    r = fxroof.analyze(model, args, kwargs, train=True, chip="cpu")
    assert matrix_flops(r) == real_step_flops(model, args, kwargs)
    assert r.unknown_ops == {}       # every backward and optimizer op has a formula
    assert matrix_flops(r, "optimizer") == 0
    assert matrix_flops(r, "backward") > matrix_flops(r, "forward")


def test_sdpa_backward_counts_the_recomputed_scores():
    r = fxroof.analyze(*attention(), train=True, optimizer="none")
    fwd, bwd = ([n.flops for n in r.nodes if n.category == "attention" and n.phase == p]
                for p in ("forward", "backward"))
    # forward: Q K^T and P V, 2 * (2*4*10) * 10 * (8 + 8) = 25,600; backward: five products,
    # 2 * 80 * 10 * (3*8 + 2*8) = 64,000 = 2.5x
    assert (fwd, bwd) == ([25_600], [64_000])


def test_users_model_left_untouched():
    model, args, kwargs = gpt2()
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fxroof.analyze(model, args, kwargs, train=True)
    assert not model.training and all(not m.training for m in model.modules())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_phases_in_rows_tables_and_json():
    r = fxroof.analyze(mlp(), (torch.randn(64, 8),), train=True)
    assert {n.phase for n in r.nodes} == set(PHASES) == {k.phase for k in r.kernels}
    d = json.loads(json.dumps(r.to_dict()))
    assert d["training"] == "adamw" and list(d["phases"]) == list(PHASES)
    assert d["phases"]["backward"]["flops"] > d["phases"]["forward"]["flops"]
    assert 0 < d["mfu"] < 1 and "Training step by phase" in str(r)
    assert d["memory"]["optimizer"] == 2 * d["memory"]["gradients"]
    inference = fxroof.analyze(mlp(), (torch.randn(64, 8),)).to_dict()
    assert not {"phases", "training", "mfu"} & set(inference)
    assert not any("phase" in row for row in inference["nodes"] + inference["kernels"])
    assert not {"gradients", "optimizer"} & set(inference["memory"])


def test_optimizers():
    x = torch.randn(3, 8)
    none = fxroof.analyze(mlp(), (x,), train=True, optimizer="none")
    sgd = fxroof.analyze(mlp(), (x,), train=True, optimizer="sgd")
    assert "optimizer" not in {n.phase for n in none.nodes} and none.memory.optimizer == 0
    # SGD: one multiply-add per parameter (212), no state
    assert [n.op for n in sgd.nodes if n.phase == "optimizer"] == ["add_"] * 4
    assert sum(n.flops for n in sgd.nodes if n.phase == "optimizer") == 212
    assert sgd.memory.optimizer == 0 and sgd.memory.gradients == 212 * 4


def test_mixed_precision_keeps_fp32_master_weights():
    model = mlp().to(torch.bfloat16)
    r = fxroof.analyze(model, (torch.randn(3, 8, dtype=torch.bfloat16),), train=True)
    # 212 bf16 parameters and gradients; fp32 master weights and two fp32 moments
    assert (r.memory.weights, r.memory.gradients, r.memory.optimizer) == (424, 424, 3 * 212 * 4)


def test_meta_model_needs_no_memory():
    config = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=4096,
                                      intermediate_size=11008, num_attention_heads=32,
                                      vocab_size=32000)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    ids = torch.zeros(1, 128, dtype=torch.long, device="meta")
    r = fxroof.analyze(model, (ids,), {"labels": ids}, train=True)
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())     # rotary inv_freq
    assert r.memory.weights == 2 * params + buffers and r.memory.gradients == 2 * params
    assert r.memory.optimizer == 12 * params    # fp32 master weights and two fp32 moments
    # 6 FLOPs per parameter and token for the matmuls, +2 for the embedding's (a gather, no
    # matmul: less 6 * its 131M) and attention; within 2%
    tokens, embedding = 128, 32000 * 4096
    assert matrix_flops(r) == pytest.approx(6 * (params - embedding) * tokens, rel=0.02)


class Checkpointed(torch.nn.Module):
    def __init__(self, reentrant: bool):
        super().__init__()
        self.a, self.b, self.reentrant = torch.nn.Linear(16, 64), torch.nn.Linear(64, 16), reentrant

    def forward(self, x):
        return x + checkpoint(lambda y: self.b(torch.relu(self.a(y))), x,
                              use_reentrant=self.reentrant)


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_recomputes_in_backward(reentrant):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), Checkpointed(reentrant),
                                Checkpointed(reentrant))
    x = torch.randn(4, 8)
    r = fxroof.analyze(model, (x,), train=True)
    assert matrix_flops(r) == real_step_flops(model, (x,))
    assert matrix_flops(r, "forward") == 33_792       # 2*4*8*16 + 2 blocks * 2 * 2*4*16*64
    # without recomputation: 2*4*8*16 for the first weight, 4 * 2*4*16*64 a block = 66,560.
    # Reentrant checkpointing runs each block's forward again (2 * 2*4*16*64 a block);
    # non-reentrant stops once the tensors the backward needs are back: `a`, not `b`.
    again = 2 * (2 * (2 * 4 * 16 * 64) if reentrant else 2 * 4 * 16 * 64)
    assert matrix_flops(r, "backward") == 66_560 + again


def test_memory_matches_mem_tracker():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(),
                                torch.nn.Linear(1024, 1024), torch.nn.GELU(),
                                torch.nn.Linear(1024, 256))
    x = torch.randn(2048, 256)
    r = fxroof.analyze(model, (x,), train=True)
    real = copy.deepcopy(model)
    opt = torch.optim.AdamW(real.parameters(), foreach=False)

    def step():
        opt.zero_grad()
        real(x).mean().backward()
        opt.step()
    step()       # AdamW makes its state on the first step; the second is the steady one
    tracker = MemTracker()
    tracker.track_external(real, opt)
    with tracker:
        step()
    peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]
    kinds = {k.value: v for k, v in peak.items() if k != "Total"}
    assert r.memory.weights == kinds["Parameter"] and r.memory.optimizer <= kinds["Optstate"]
    # x was made before tracking: MemTracker does not see it
    assert r.memory.total - r.memory.inputs == pytest.approx(peak["Total"], rel=0.10)


def test_loss_choices_and_misuse():
    model, args, kwargs = gpt2()
    own = fxroof.analyze(model, args, kwargs, train=True, optimizer="none", chip="cpu")
    by_fn = fxroof.analyze(model, args, train=True, optimizer="none", chip="cpu",
                           loss_fn=lambda out: out.logits.float().pow(2).mean())
    assert matrix_flops(by_fn) == real_step_flops(model, args,
                                                  loss_fn=lambda out: out.logits.pow(2).mean())
    assert matrix_flops(own) == matrix_flops(by_fn)     # the same matmuls whatever the loss
    with pytest.raises(ValueError, match="give one"):
        fxroof.analyze(model, args, kwargs, train=True, loss_fn=lambda out: out.logits.mean())
    with pytest.raises(ValueError, match="one element"):
        fxroof.analyze(mlp(), (torch.randn(3, 8),), train=True, loss_fn=lambda out: out)
    with pytest.raises(TypeError, match="train=True"):
        fxroof.analyze(mlp(), (torch.randn(3, 8),), loss_fn=lambda out: out.sum())
    with pytest.raises(ValueError, match="unknown optimizer"):
        fxroof.analyze(mlp(), (torch.randn(3, 8),), train=True, optimizer="lion")
    with pytest.raises(ValueError, match="weight-only and KV-cache what-ifs model inference"):
        fxroof.analyze(mlp(), (torch.randn(3, 8),), train=True, quantize="w4")
    frozen = mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        fxroof.analyze(frozen, (torch.randn(3, 8),), train=True)


def test_data_parallel_all_reduces_the_gradients():
    r = fxroof.analyze(mlp(), (torch.randn(3, 8),), train=True, dp=4)
    reduces = [n for n in r.nodes if n.category == "collective"]
    # one bucket (under DDP's first 1 MiB) of 212 fp32 gradients; a ring of 4 sends 2*3/4 of it
    assert [(n.op, n.bytes_read, n.comm_bytes, n.phase) for n in reduces] == [
        ("all_reduce", 848, 1272, "backward")]
    assert r.dp == 4 and "one rank of dp=4" in str(r) and r.notes
    assert matrix_flops(r) == matrix_flops(fxroof.analyze(mlp(), (torch.randn(3, 8),), train=True))
    with pytest.raises(ValueError, match="train=True"):
        fxroof.analyze(mlp(), (torch.randn(3, 8),), dp=4)
    # a split model whose mesh has no 'dp' dimension of dp ranks: DDP has no group to average over
    with tensor_parallel(two_blocks(), 2, (torch.randn(3, 8),)) as (local, args, _):
        with pytest.raises(ValueError, match="'dp' dimension of 4 ranks"):
            fxroof.analyze(local, args, train=True, dp=4)


def two_blocks():
    torch.manual_seed(0)
    return torch.nn.Sequential(*(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(),
                                                     torch.nn.Linear(16, 8)) for _ in range(2)))


@pytest.mark.parametrize("tp", [2, 4])
def test_tensor_parallel_step_by_hand(tp):
    model, x = two_blocks(), torch.randn(3, 8)
    before = {k: (type(p), p.clone()) for k, p in model.named_parameters()}
    r = fxroof.analyze(model, (x,), train=True, tp=tp)
    assert r.tp == tp and r.training == "adamw"
    # each Linear split (column then row): its matrix products are 1/tp of the unsplit ones;
    # forward 2 blocks * (2*3*8*16 + 2*3*16*8) = 3072; backward: block 2's two Linears take both
    # gradients (2*1536), block 1's second both (1536), its first only the weight's (768)
    assert matrix_flops(r, "forward") == 3072 // tp
    assert matrix_flops(r, "backward") == 5376 // tp
    assert matrix_flops(r) == real_step_flops(two_blocks(), (x,)) // tp
    # Megatron's all-reduces of one rank's (3, 8) fp32 activations (96 bytes) over tp ranks, a
    # ring sending 2(tp-1)/tp of it: each row-split output in the forward, and in the backward
    # the input gradient of block 2's column split (block 1's input needs none)
    reduces = [(n.op, n.phase, n.bytes_read, n.comm_bytes, n.comm_steps)
               for n in r.nodes if n.category == "collective"]
    ring = ("all_reduce", 96, 96 * 2 * (tp - 1) // tp, 2 * (tp - 1))
    assert reduces == [(ring[0], phase, *ring[1:]) for phase in
                       ("forward", "forward", "backward")]
    # a rank's weights: the split weights (8*16 twice) and column biases (16) are 1/tp, the row
    # biases (8) whole: 2 * ((128 + 16 + 128) / tp + 8) fp32; gradients alike, AdamW's two states
    shard = 2 * ((128 + 16 + 128) // tp + 8) * 4
    assert (r.memory.weights, r.memory.gradients, r.memory.optimizer) == (shard, shard, 2 * shard)
    assert {k: type(p) for k, p in model.named_parameters()} == {k: t for k, (t, _) in
                                                                  before.items()}
    assert all(torch.equal(p, before[k][1]) and p.grad is None
               for k, p in model.named_parameters())


@pytest.mark.parametrize("dp", [2, 4])
def test_tensor_and_data_parallel_step_by_hand(dp):
    # one rank of a (dp, tp=2) mesh: the Megatron split over the tp ranks, DDP over the dp ranks
    model, x = two_blocks(), torch.randn(3, 8)
    r = fxroof.analyze(model, (x,), train=True, tp=2, dp=dp)
    assert (r.tp, r.dp) == (2, dp) and f"one rank of tp=2 × dp={dp}" in str(r)
    # the tp=2 step's work: forward 3072/2, backward 5376/2 (test_tensor_parallel_step_by_hand)
    assert (matrix_flops(r, "forward"), matrix_flops(r, "backward")) == (1536, 2688)
    reduces = [(n.op, n.phase, n.bytes_read, n.comm_bytes, n.comm_steps)
               for n in r.nodes if n.category == "collective"]
    # Megatron's three all-reduces of (3, 8) fp32 activations over the 2 tp ranks, as at tp=2;
    # then DDP's one bucket (under 1 MiB) of the rank's shard gradients: per block the column
    # split's 8*16/2 weights and 16/2 biases, the row split's 16*8/2 weights and its 8 whole
    # biases, 2 * (64 + 8 + 64 + 8) = 288 fp32 = 1152 bytes, a ring of dp ranks sending
    # 2(dp-1)/dp of it in 2(dp-1) steps (dp=2: 1152, dp=4: 1728)
    assert reduces == [("all_reduce", phase, 96, 96, 2) for phase in
                       ("forward", "forward", "backward")] + [
        ("all_reduce", "backward", 1152, 1152 * 2 * (dp - 1) // dp, 2 * (dp - 1))]
    assert (r.memory.weights, r.memory.gradients, r.memory.optimizer) == (1152, 1152, 2304)


def test_fsdp_over_tensor_parallel_shards_by_hand():
    # one rank of a (dp=2, tp=2) mesh: the Megatron split over tp, FSDP2 over dp of each
    # block's (a unit's) tp shards: 8*16/2 + 16/2 + 16*8/2 + 8 (the row bias, whole under tp)
    # = 144 fp32, a flat shard of 72 per rank
    model, x = two_blocks(), torch.randn(3, 8)
    r = fxroof.analyze(model, (x,), train=True, tp=2, dp=2, fsdp=True)
    assert (r.tp, r.dp, r.fsdp) == (2, 2, True) and "one rank of tp=2 × fsdp=2" in str(r)
    assert (matrix_flops(r, "forward"), matrix_flops(r, "backward")) == (1536, 2688)
    comm = [(n.op, n.phase, n.bytes_read, n.bytes_written) for n in r.nodes
            if n.category == "collective"]
    gather = ("all_gather_into_tensor", 72 * 4, 144 * 4)
    tp_reduce = ("all_reduce", 96, 96)      # (3, 8) fp32 activations, as at tp=2 alone
    # the forward gathers both blocks (the second prefetched), then Megatron's two forward
    # all-reduces; the backward gathers both again (resharded after the forward), all-reduces
    # block 2's input gradient, then reduce-scatters each block's 144 gradients to 72
    assert comm == [(gather[0], "forward", *gather[1:])] * 2 \
        + [(tp_reduce[0], "forward", *tp_reduce[1:])] * 2 \
        + [(gather[0], "backward", *gather[1:])] * 2 + [(tp_reduce[0], "backward", 96, 96)] \
        + [("reduce_scatter_tensor", "backward", 144 * 4, 72 * 4)] * 2
    # weights, gradients: 2 blocks x 72 fp32; AdamW twice that
    assert (r.memory.weights, r.memory.gradients, r.memory.optimizer) == (576, 576, 1152)


def test_tensor_parallel_llama_step_meets_flop_counter():
    model, args, kwargs = llama()
    r = fxroof.analyze(model, args, kwargs, train=True, tp=2)
    # every matrix product is split (projections, heads, the vocabulary of lm_head): half the
    # unsplit step's, as PyTorch counts it
    assert matrix_flops(r) == real_step_flops(model, args, kwargs) // 2
    assert r.unknown_ops == {}
    collectives = [(n.op, n.phase, n.module) for n in r.nodes if n.category == "collective"]
    # forward: the vocabulary-split embedding's and each row split's (o_proj, down_proj) sums,
    # the logits gathered; backward: each column split's input gradient summed, one by one
    # (DTensor reduces q, k and v apart), the logits' too
    assert collectives[:6] == [("all_reduce", "forward", m) for m in (
        "embed_tokens", *(f"layers.{i}.{p}" for i in (0, 1) for p in ("self_attn.o_proj",
                                                                    "mlp.down_proj")))] + [
        ("all_gather_into_tensor", "forward", "lm_head")]
    assert collectives[6:] == [("all_reduce", "backward", m) for m in ("lm_head", *(
        f"layers.{i}.{p}" for i in (1, 0) for p in ("mlp.up_proj", "mlp.gate_proj",
                                                    "self_attn.v_proj", "self_attn.k_proj",
                                                    "self_attn.q_proj")))]


def test_two_streams_by_hand():
    # backward: mm 3 s, then bucket 1's all-reduce (4 s), mm 1 s, mm 2 s, bucket 2's (2 s);
    # the optimizer's update (1 s) reads both buckets
    ks = [K(nodes=("mm",), category="matmul", waits=(), time_s=3.0),
          K(nodes=("ar1",), category="collective", waits=(), time_s=4.0),
          K(nodes=("mm1",), category="matmul", waits=(), time_s=1.0),
          K(nodes=("mm2",), category="matmul", waits=(), time_s=2.0),
          K(nodes=("ar2",), category="collective", waits=(), time_s=2.0),
          K(nodes=("add_",), category="pointwise", waits=("ar1", "ar2"), time_s=1.0)]
    s = schedule(ks, lambda k: (0.0, k.time_s))
    # bucket 1 runs 3..7 beside the mms (3..6); bucket 2, issued at 6, waits for the link: 7..9;
    # the update waits for it: 9..10. Compute 7 s, communication 6 s, 3 s of it exposed.
    assert s.starts == (0.0, 3.0, 3.0, 4.0, 7.0, 9.0) and s.end_s == 10.0
    assert (s.compute_s, s.comm_s, s.exposed_s, s.hidden_s) == (7.0, 6.0, 3.0, 3.0)
    # nothing to overlap when the next kernel reads the result: the times add up
    ks[2] = K(nodes=("mm1",), category="matmul", waits=("ar1",), time_s=1.0)
    assert schedule(ks, lambda k: (0.0, k.time_s)).end_s == 3 + 4 + 1 + 2 + 2 + 1


def two_buckets(width: int = 512):
    """Two 1 MiB fp32 weights (at width 512): DDP's first bucket (1 MiB) holds the second, the
    next the first."""
    with torch.device("meta"):
        return torch.nn.Sequential(torch.nn.Linear(width, width, bias=False), torch.nn.ReLU(),
                                   torch.nn.Linear(width, width, bias=False))


def slow_link(tmp_path, gbps):
    spec = fxroof.chip("h100-sxm").to_dict()
    data = {"name": "slow", "title": "An H100 on a slow link", "kind": "gpu",
            "peak_TFLOPS": {k: v / 1e12 for k, v in spec["peak_flops"].items()},
            "vector_TFLOPS": 67, "mem_bw_GBps": 3350, "mem_GB": 80, "link_bw_GBps": gbps,
            "link_latency_us": 5, "launch_us": 2, "dispatch_us": 10}
    path = tmp_path / "slow.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_ddp_buckets_overlap_the_backward(tmp_path):
    x = torch.empty(4096, 512, device="meta")
    r = fxroof.analyze(two_buckets(), (x,), train=True, dp=8, chip="h100-sxm", mode="eager")
    ks = r.kernels
    reduces = [i for i, k in enumerate(ks) if k.category == "collective"]
    assert [ks[i].bytes_read for i in reduces] == [512 * 512 * 4] * 2
    first, second = reduces
    # the backward after bucket 1 reads none of it; the optimizer reads both buckets
    assert not any(k.waits for k in ks[first + 1:second])
    assert {w for k in ks if k.phase == "optimizer" for w in k.waits} == {
        ks[first].nodes[0], ks[second].nodes[0]}
    s = r.summary.schedule
    assert s.starts[first] == s.ends[first - 1] and s.starts[first + 1] == s.ends[first - 1]
    assert 0 < s.hidden_s < s.comm_s and r.time_s < sum(k.time_s for k in ks)
    assert r.regime != "communication" and "exposed" in str(r)
    assert sum(r.phase_times.values()) == pytest.approx(r.time_s)
    # 1 GB/s: the all-reduces outlast the whole backward
    slow = fxroof.analyze(two_buckets(), (x,), train=True, dp=8, chip=slow_link(tmp_path, 1),
                          mode="eager")
    s = slow.summary.schedule
    assert s.exposed_s > s.compute_s and slow.regime == "communication"
    assert slow.to_dict()["comm"]["exposed_s"] == s.exposed_s


def test_fsdp_shards_state_and_gathers_per_unit():
    # 4 MiB weights: a gather lasts longer than the host takes to issue the matmul after it
    x = torch.empty(4096, 1024, device="meta")
    r = fxroof.analyze(two_buckets(1024), (x,), train=True, dp=4, fsdp=True, mode="eager")
    weight = 1024 * 1024 * 4        # bytes
    # each rank holds a quarter of each 4 MiB weight, of its gradient and of AdamW's two moments
    assert (r.memory.weights, r.memory.gradients, r.memory.optimizer) == (
        2 * weight // 4, 2 * weight // 4, 2 * 2 * weight // 4)
    comm = [(k.op, k.phase, k.bytes_read, k.bytes_written) for k in r.kernels
            if k.category == "collective"]
    gather, scatter = ("all_gather_into_tensor", "reduce_scatter_tensor")
    # both layers gathered before the forward (the second prefetched), again before the
    # backward (the first prefetched as the second's runs), both gradients reduce-scattered
    assert comm == [(gather, "forward", weight // 4, weight)] * 2 \
        + [(gather, "backward", weight // 4, weight)] * 2 \
        + [(scatter, "backward", weight, weight // 4)] * 2
    # the second layer's gather runs on the link while the first layer's matmul computes
    s, ks = r.summary.schedule, r.kernels
    second = [i for i, k in enumerate(ks) if k.op == gather][1]
    first_mm = next(i for i, k in enumerate(ks) if k.op == "mm")
    assert s.starts[first_mm] < s.ends[second] and s.starts[second] < s.ends[first_mm]
    ddp = fxroof.analyze(two_buckets(1024), (x,), train=True, dp=4, mode="eager")
    assert sum(k.flops for k in r.kernels if k.phase == "optimizer") * 4 == \
        sum(k.flops for k in ddp.kernels if k.phase == "optimizer")
    assert matrix_flops(r) == matrix_flops(ddp)
    assert "one rank of fsdp=4" in str(r) and r.to_dict()["fsdp"] is True
    with pytest.raises(ValueError, match="give dp > 1"):
        fxroof.analyze(mlp(), (torch.randn(3, 8),), train=True, fsdp=True)


def test_fsdp_units_are_transformer_layers():
    model, ids = meta_gpt2()
    r = fxroof.analyze(model, (ids,), {"labels": ids}, train=True, dp=8, fsdp=True)
    full = sum(p.numel() for p in model.parameters()) * 4       # wte and lm_head tied: once
    layer = sum(p.numel() for p in model.transformer.h[0].parameters()) * 4
    scatters = [n.bytes_read for n in r.nodes if n.op == "reduce_scatter_tensor"]
    # one reduce-scatter per layer, the root's (embeddings, final norm) last
    assert scatters == [layer] * 3 + [full - 3 * layer]
    assert r.memory.weights == full // 8


def small_chip(tmp_path) -> Path:
    """An H100 with 8 MB of memory: a chip file the step's footprint can outgrow."""
    small = json.loads(Path(slow_link(tmp_path, 450)).read_text()) | {"mem_GB": 0.008}
    chip = tmp_path / "small.json"
    chip.write_text(json.dumps(small))
    return chip


def test_cli_check_gates_a_rank_of_a_training_step(tmp_path, capsys):
    spec = tmp_path / "work.py"
    spec.write_text("import torch\nfrom torch import nn\n\ndef workload():\n"
                    "    with torch.device('meta'):\n"
                    "        m = nn.Sequential(nn.Linear(512, 512, bias=False), nn.ReLU(), "
                    "nn.Linear(512, 512, bias=False))\n"
                    "    return m, (torch.empty(16, 512, device='meta'),)\n")
    chip = small_chip(tmp_path)
    args = ["check", str(spec), "--chip", str(chip), "--train", "--dp", "4"]
    # a DDP rank holds 2 MiB of weights, 2 of gradients, 4 of AdamW state: over 8 MB
    assert main(args) == 1 and "memory" in capsys.readouterr().out
    # sharded over 4 ranks, a quarter of each
    assert main(args + ["--fsdp"]) == 0
    assert main(args + ["--fsdp", "--max-time-ms", "1e-6"]) == 1
    capsys.readouterr()
    assert main(["check", str(spec), "--fsdp"]) == 2
    assert "dp > 1" in capsys.readouterr().err


def test_cli_checks_a_workload_sharded_by_fully_shard(tmp_path, capsys):
    spec = tmp_path / "sharded.py"
    spec.write_text(
        "import torch\nimport torch.distributed as dist\nfrom torch import nn\n"
        "from torch.distributed.fsdp import fully_shard\n"
        "from torch.testing._internal.distributed.fake_pg import FakeStore\n\n"
        "def workload():\n"
        "    if not dist.is_initialized():\n"
        "        dist.init_process_group('fake', store=FakeStore(), rank=0, world_size=4)\n"
        "    with torch.device('meta'):\n"
        "        m = nn.Sequential(nn.Linear(512, 512, bias=False), nn.ReLU(), "
        "nn.Linear(512, 512, bias=False))\n"
        "    fully_shard(m[0])\n    fully_shard(m[2])\n    fully_shard(m)\n"
        "    return m, (torch.empty(16, 512, device='meta'),)\n")
    chip = small_chip(tmp_path)
    try:
        # the world and the sharding come from the workload's own fully_shard: a quarter of
        # 2 MiB of weights, gradients and 4 MiB of AdamW state fit in 8 MB, as with --fsdp
        assert main(["check", str(spec), "--chip", str(chip), "--train"]) == 0
        assert main(["check", str(spec), "--chip", str(chip), "--train", "--world", "4"]) == 0
        capsys.readouterr()
        assert main(["check", str(spec), "--train", "--world", "2"]) == 2
        assert "dp=2, but the model's fully_shard runs over 4 ranks" in capsys.readouterr().err
    finally:
        torch.distributed.destroy_process_group()


def test_recompute_trades_flops_for_memory_by_hand():
    n, batch, d = 4, 256, 128
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Sequential(
        torch.nn.Linear(d, 4 * d, bias=False), torch.nn.GELU(),
        torch.nn.Linear(4 * d, d, bias=False)) for _ in range(n)])
    x, a = torch.randn(batch, d), batch * d * 4        # a: one fp32 activation of width d
    plain, ckpt = (fxroof.analyze(model, (x,), train=True, optimizer="sgd", recompute=flag)
                   for flag in (False, True))
    # each block's fc1 and GELU run again in the backward; fc2's output, which no backward op
    # reads, is not made again
    assert ckpt.recompute_flops == n * (2 * batch * d * 4 * d + batch * 4 * d) and \
        plain.recompute_flops == 0
    assert matrix_flops(ckpt) - matrix_flops(plain) == n * 2 * batch * d * 4 * d
    assert "recomputation 135 MFLOP" in str(ckpt)
    peak = [r.memory.total - r.memory.weights - r.memory.inputs for r in (plain, ckpt)]
    # without: at the last block's GELU backward, the first three blocks' fc1 and GELU outputs
    # (8a each) and its own fc1 output (4a), the inputs of blocks 2-4 (3a), fc2's input gradient
    # (4a), its weight gradient (2a), the GELU's input gradient (4a), and the loss (4 B): 41a
    # with: at the first block's GELU backward, its recomputed fc1 output (4a), the other blocks'
    # weight gradients (12a), its fc2's (2a), fc2's input gradient (4a), the GELU's (4a): 26a
    assert peak == [41 * a + 4, 26 * a + 4]
    # the report says what it saves: 41a - 26a = 15a, a = 256 x 128 x 4 B = 131,072 B
    assert f"recomputation saves {si(15 * a, 'B')}" in " ".join(ckpt.notes)
    with pytest.raises(ValueError, match="train=True"):
        fxroof.analyze(model, (x,), recompute=True)
    # under FSDP the same recomputation, on each block's weights gathered again for its
    # backward: its fc1 (the recomputed matmul) waits for a gather of the backward phase
    sharded = fxroof.analyze(model, (x,), train=True, optimizer="sgd", recompute=True, dp=2,
                             fsdp=True, mode="eager")
    assert sharded.recompute_flops == ckpt.recompute_flops
    gathers = {k.nodes[0]: k.phase for k in sharded.kernels if k.op == "all_gather_into_tensor"}
    recomputed = {n.name for n in sharded.nodes if n.recomputed}
    again = [k for k in sharded.kernels if k.category == "matmul" and recomputed & set(k.nodes)]
    assert len(again) == n and all(
        [gathers[w] for w in k.waits] == ["backward"] for k in again)
    # four gathers a phase: every block resharded after its forward
    assert sorted(gathers.values()) == ["backward"] * n + ["forward"] * n


def test_recompute_of_a_hugging_face_model_meets_its_own_checkpointing_under_fsdp():
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128,
                                     n_positions=32, attn_implementation="eager")
    model, ids = transformers.GPT2LMHeadModel(config), torch.randint(0, 128, (2, 16))
    # PyTorch's count of a real step with Hugging Face's own non-reentrant checkpointing of
    # every block: forward, each block's forward again in the backward, backward
    real = copy.deepcopy(model)
    real.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    counted = real_step_flops(real, (ids,), {"labels": ids})
    for fields in ({}, {"dp": 4, "fsdp": True}):     # under FSDP: the blocks gathered again
        r = fxroof.analyze(model, (ids,), {"labels": ids}, train=True, recompute=True, **fields)
        assert matrix_flops(r) == counted and r.recompute_flops > 0


def test_a_data_parallel_group_across_tensor_parallel_servers_crosses_the_network():
    config = transformers.LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=1,
                                      num_attention_heads=8, num_key_value_heads=8,
                                      vocab_size=512, attn_implementation="sdpa")
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    ids = torch.zeros(2, 64, dtype=torch.long, device="meta")
    r = fxroof.analyze(model, (ids,), {"labels": ids}, train=True, tp=8, dp=2, chip="a100-80gb",
                       optimizer="sgd")
    # the mesh is (dp, tp): a tensor-parallel group is 8 neighbouring ranks, one server; the
    # data-parallel group rank 0 is in is ranks 0 and 8, a server each
    assert {(n.comm_ranks, n.comm_stride) for n in r.nodes if n.comm_ranks} == {(8, 1), (2, 8)}
    assert any("span 2 servers of 8 GPUs, 1 of their ranks on each" in n for n in r.notes)


def test_selective_recompute_runs_again_what_the_policy_does_not_keep():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2,
                                      vocab_size=100, attn_implementation="sdpa")
    model, ids = transformers.LlamaForCausalLM(config), torch.randint(0, 100, (2, 64))
    # PyTorch's count of a real step under torch's own selective checkpointing of every block
    real = copy.deepcopy(model)
    real.gradient_checkpointing_enable(gradient_checkpointing_kwargs={
        "use_reentrant": False,
        "context_fn": lambda: create_selective_checkpoint_contexts(selective_policy())})
    counted = real_step_flops(real, (ids,), {"labels": ids})
    plain, full, selective = (
        fxroof.analyze(model, (ids,), {"labels": ids}, train=True, optimizer="sgd", recompute=how)
        for how in (False, True, "selective"))
    assert matrix_flops(selective) == counted
    # by hand, 128 tokens: each block's second, fourth and sixth matmuls (k, o and up
    # projections, 64 wide into 32, 64 and 128) run again, 2*128*64*(32 + 64 + 128) = 3,670,016
    # a block; the attention is kept (full recomputation runs all seven and the attention again)
    assert matrix_flops(selective) - matrix_flops(plain) == 4 * 3_670_016
    # each recomputed op reads as its own module, not as the one whose backward asked for it
    again = {n.module.split(".", 2)[-1] for n in selective.nodes
             if n.recomputed and n.op == "mm"}
    assert again == {"self_attn.k_proj", "self_attn.o_proj", "mlp.up_proj"}
    assert matrix_flops(full) - matrix_flops(plain) > matrix_flops(selective) - \
        matrix_flops(plain)
    # it keeps more than full recomputation does, less than no recomputation
    peaks = [r.memory.total for r in (full, selective, plain)]
    assert peaks == sorted(peaks) and len(set(peaks)) == 3
    # every second block in full (torchtitan's selective layer option): the 2nd and the 4th of
    # the four, half of what every block adds
    alternate = fxroof.analyze(model, (ids,), {"labels": ids}, train=True, optimizer="sgd",
                               recompute=2)
    assert 2 * (matrix_flops(alternate) - matrix_flops(plain)) == \
        matrix_flops(full) - matrix_flops(plain)
    assert {n.module.split(".")[1] for n in alternate.nodes if n.recomputed} == {"1", "3"}
    with pytest.raises(ValueError, match="every n-th block"):
        fxroof.analyze(model, (ids,), {"labels": ids}, train=True, recompute=0)
    with pytest.raises(ValueError, match="unknown recompute 'some'"):
        fxroof.analyze(model, (ids,), {"labels": ids}, train=True, recompute="some")
    # GPT-2's projections carry biases (addmm): its first and third a block are kept, and the
    # step meets PyTorch's count of a real one under the same policy
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=64,
        attn_implementation="sdpa"))
    ids = torch.randint(0, 128, (2, 32))
    real = copy.deepcopy(gpt2)
    real.gradient_checkpointing_enable(gradient_checkpointing_kwargs={
        "use_reentrant": False,
        "context_fn": lambda: create_selective_checkpoint_contexts(selective_policy())})
    r = fxroof.analyze(gpt2, (ids,), {"labels": ids}, train=True, optimizer="sgd",
                       recompute="selective", chip="cpu")     # counted on a CPU, as above
    assert matrix_flops(r) == real_step_flops(real, (ids,), {"labels": ids})
    # by hand, 64 tokens: each block's second and fourth run again, the attention's output
    # projection (64 into 64) and the MLP's (256 into 64): 2*64*64*(64 + 256) = 2,621,440
    assert sum(n.flops for n in r.nodes if n.recomputed and n.op == "addmm") == 2 * 2_621_440


def test_cli_train(tmp_path, capsys):
    spec = tmp_path / "work.py"
    spec.write_text("import torch\n\ndef workload():\n    torch.manual_seed(0)\n"
                    "    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), "
                    "torch.nn.Linear(16, 4))\n    return m, (torch.randn(3, 8),)\n")
    assert main(["analyze", str(spec), "--train", "--optimizer", "sgd", "--dp", "2",
                 "--json", "-"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["training"] == "sgd" and d["dp"] == 2 and set(d["phases"]) == set(PHASES)
    assert d["recompute_flops"] == 0 and d["comm"]["busy_s"] > 0
    assert main(["analyze", str(spec), "--train", "--recompute", "--json", "-"]) == 0
    d = json.loads(capsys.readouterr().out)
    # a Linear's backward reads only its input and weight, which the checkpoint keeps: only the
    # ReLU's output (3 x 16) is made again
    assert d["recompute_flops"] == 3 * 16
    assert [n["op"] for n in d["nodes"] if n.get("recomputed")] == ["relu"]
    # selective: the ReLU is not among what the policy keeps, so it runs again as before
    assert main(["analyze", str(spec), "--train", "--selective-recompute", "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["recompute_flops"] == 3 * 16
    assert main(["analyze", str(spec), "--train", "--recompute-every", "2", "--json", "-"]) == 0
    assert "recompute_flops" in json.loads(capsys.readouterr().out)
    assert main(["analyze", str(spec), "--optimizer", "sgd"]) == 2
    assert "--train" in capsys.readouterr().err


def test_fp8_training_runs_every_matmul_on_8_bit_operands():
    with torch.device("meta"):
        model = torch.nn.Linear(256, 128, bias=False).to(torch.bfloat16)
    x = torch.empty(64, 256, dtype=torch.bfloat16, device="meta")
    plain = fxroof.analyze(model, (x,), train=True, chip="h100-sxm")
    r = fxroof.analyze(model, (x,), train=True, chip="h100-sxm", quantize="fp8")
    mms = [(n.phase, n.dtype, n.bytes_read, n.bytes_written) for n in r.nodes
           if n.category == "matmul"]
    # forward x(64x256) @ w.T(256x128); backward only the weight's gradient (x needs none):
    # g.T(128x64) @ x(64x256). Operands a byte each, outputs as they were (bf16)
    assert mms == [("forward", "fp8", 64 * 256 + 256 * 128, 64 * 128 * 2),
                   ("backward", "fp8", 128 * 64 + 64 * 256, 128 * 256 * 2)]
    assert matrix_flops(r) == matrix_flops(plain)
    # the weights stay bf16 (and AdamW's fp32 master and moments): no storage saved
    assert r.memory == plain.memory and any("fp8 training" in note for note in r.notes)
    # at the fp8 peak: an H100's dense fp8 figure is twice its bf16 one
    fp8, bf16 = ([k.timing.compute_s for k in rep.kernels if k.category == "matmul"]
                 for rep in (r, plain))
    assert fp8 == pytest.approx([t / 2 for t in bf16], rel=1e-3)


def four_weights():
    """Four 1 MiB fp32 weights in a row."""
    with torch.device("meta"):
        return torch.nn.Sequential(*[torch.nn.Linear(512, 512, bias=False) for _ in range(4)])


def test_pytorchs_own_ddp_wrapper_gives_ranks_and_bucket_size():
    from torch.nn.parallel import DistributedDataParallel
    x = torch.empty(4096, 512, device="meta")
    mib = 512 * 512 * 4

    def reduces(r):
        return [k.bytes_read for k in r.kernels if k.category == "collective"]

    with fake_process_group(8):
        # meta weights: nothing to check or broadcast across ranks at construction
        default = DistributedDataParallel(four_weights(), init_sync=False)
        small = DistributedDataParallel(four_weights(), init_sync=False, bucket_cap_mb=2)
        r = fxroof.analyze(default, (x,), train=True, mode="eager")
        # gradients come last layer first: DDP's 1 MiB first bucket holds the fourth weight,
        # its 25 MiB buckets the other three; with 2 MiB buckets: 4th | 3rd, 2nd | 1st
        assert reduces(r) == [mib, 3 * mib] and r.dp == 8
        assert reduces(fxroof.analyze(small, (x,), train=True)) == [mib, 2 * mib, mib]
        with pytest.raises(ValueError, match="dp=4, but the model's DistributedDataParallel "
                                             "runs over 8 ranks"):
            fxroof.analyze(default, (x,), train=True, dp=4)
        with pytest.raises(ValueError, match="analyze it with train=True"):
            fxroof.analyze(default, (x,))
        assert all(p.grad is None and p.device.type == "meta" for p in default.parameters())
    # the same step without a wrapper: dp=8 sets up DDP's defaults
    assert reduces(fxroof.analyze(four_weights(), (x,), train=True, dp=8)) == reduces(r)


def test_pytorchs_own_fully_shard_gives_units_reshard_and_dtypes():
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
    x = torch.empty(4096, 512, device="meta")
    n = 512 * 512       # elements of each weight
    with fake_process_group(4):
        model = four_weights()
        mesh = init_device_mesh("cpu", (4,))
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        fully_shard(model[1], mesh=mesh, mp_policy=mp)
        fully_shard(model[2], mesh=mesh, mp_policy=mp, reshard_after_forward=False)
        fully_shard(model, mesh=mesh, mp_policy=mp)     # the root: weights 0 and 3
        hooks = [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in model.modules()]
        r = fxroof.analyze(model, (x,), train=True, mode="eager")
        assert (r.dp, r.fsdp, r.model) == (4, True, "Sequential")     # the class FSDP wraps
        comm = [(k.op, k.phase, k.bytes_read, k.bytes_written) for k in r.kernels
                if k.category == "collective"]
        gather, scatter = ("all_gather_into_tensor", "reduce_scatter_tensor")
        # gathered in bf16 (2 bytes), a quarter from each rank: the root's two weights, then
        # units 1 and 2 in the forward; in the backward only unit 1, the one that reshards;
        # gradients reduce-scattered in fp32 (4 bytes), unit 2's, 1's, then the root's
        assert comm == [(gather, "forward", 2 * n // 2, 2 * 2 * n), (gather, "forward", n // 2,
                                                                       2 * n),
                        (gather, "forward", n // 2, 2 * n), (gather, "backward", n // 2, 2 * n),
                        (scatter, "backward", 4 * n, n), (scatter, "backward", 4 * n, n),
                        (scatter, "backward", 2 * 4 * n, 2 * n)]
        # fp32 shards: a quarter of the 4 MiB of weights, and of their gradients
        assert r.memory.weights == r.memory.gradients == 4 * 4 * n // 4
        # the user's model is as it was: sharded, FSDP's classes and hooks in place
        assert isinstance(model[1], FSDPModule) and hooks == [
            (len(m._forward_pre_hooks), len(m._forward_hooks)) for m in model.modules()]
        assert all(type(p).__name__ == "DTensor" and p.grad is None for p in model.parameters())
        with pytest.raises(ValueError, match="dp=2, but the model's fully_shard runs over 4"):
            fxroof.analyze(model, (x,), train=True, dp=2)


def test_fully_shard_per_layer_is_what_fsdp_true_models():
    model, ids = meta_gpt2()

    def comm(r):
        return [(k.op, k.phase, k.bytes_read) for k in r.kernels if k.category == "collective"]

    plain = fxroof.analyze(model, (ids,), {"labels": ids}, train=True, dp=8, fsdp=True)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    with fake_process_group(8):
        wrapped = copy.deepcopy(model)
        for block in wrapped.transformer.h:
            fully_shard(block, mesh=init_device_mesh("cpu", (8,)))
        fully_shard(wrapped)
        r = fxroof.analyze(wrapped, (ids,), {"labels": ids}, train=True)
        assert comm(r) == comm(plain) and r.memory == plain.memory


def test_fully_shard_of_tensor_parallel_weights_points_to_tp_and_fsdp():
    from torch.distributed.fsdp import fully_shard
    with tensor_parallel(two_blocks(), 2, (torch.randn(3, 8),), dp=2) as (local, args, _):
        mesh = next(local.parameters()).device_mesh._get_root_mesh()
        fully_shard(local, mesh=mesh["dp"])
        with pytest.raises(ValueError, match="'0.0.weight' lies on a mesh of its own.*tp=, dp= and "
                                             "fsdp=True"):
            fxroof.analyze(local, args, train=True)


def test_fully_shard_without_the_root_is_refused():
    from torch.distributed.fsdp import fully_shard
    with fake_process_group(2):
        model = four_weights()
        fully_shard(model[0])
        with pytest.raises(ValueError, match=r"parameter '1.weight' is in no fully_shard unit"):
            fxroof.analyze(model, (torch.empty(4, 512, device="meta"),), train=True)


@needs_inductor_hook
def test_compiled_adamw_update_is_one_kernel_a_parameter_as_inductor_makes_it():
    from fxroof.graph.training import _update
    from fxroof.measure.inductor import inductor_kernels

    class Update(torch.nn.Module):
        def forward(self, p, g, m, v):
            _update("adamw", p, g, m, v)
            return p
    n = 4096
    (kernel,) = inductor_kernels(Update(), [torch.randn(n) for _ in range(4)])
    inputs = {k: v for k, v in kernel.reads if k.startswith("arg")}
    # Inductor: one kernel reading the parameter, its gradient and both moments, writing back
    # the parameter and the moments: 16 + 12 bytes a fp32 parameter (its scheduler also counts
    # a re-read of a buffer the kernel updates in place, which it holds in registers)
    assert sorted(inputs.values()) == [4 * n] * 4 and kernel.bytes_written == 3 * 4 * n
    # fxroof's compiled step: each parameter's eight update ops one kernel, the same 28 bytes
    # (the optimizer compiles apart from the backward, so no update joins a gradient's kernel)
    r = fxroof.analyze(mlp(), (torch.randn(3, 8),), train=True)
    updates = [k for k in r.compiled.kernels if k.phase == "optimizer"]
    sizes = (8 * 16, 16, 16 * 4, 4)     # weight and bias of each Linear
    assert [(len(k.nodes), k.bytes_read, k.bytes_written) for k in updates] == [
        (8, 16 * n, 12 * n) for n in sizes]
    assert sum(len(k.nodes) for k in r.eager.kernels if k.phase == "optimizer") == 32
    # and no compiled kernel holds ops of two phases
    phase = {n.name: n.phase for n in r.nodes}
    assert all(len({phase[n] for n in k.nodes if n in phase}) == 1 for k in r.compiled.kernels)



def test_eager_adamw_on_a_gpu_runs_torchs_foreach_ops():
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.utils._foreach_utils import _get_foreach_kernels_supported_devices
    # torch.optim takes its foreach path by default on CUDA tensors, not on CPU ones
    assert "cuda" in _get_foreach_kernels_supported_devices()
    assert "cpu" not in _get_foreach_kernels_supported_devices()
    model = mlp()
    params = list(copy.deepcopy(model).parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW(params, foreach=True)
    opt.step()      # its state made; the second step is the steady one
    traced = make_fx(lambda: opt.step())()
    ops = [n.target.overloadpacket.__name__.removeprefix("_foreach_") for n in traced.graph.nodes
           if "_foreach_" in str(n.target)]
    assert ops[0] == "add_"      # the step counters, tensors of one element: not modelled
    r = fxroof.analyze(model, (torch.randn(3, 8),), train=True, chip="h100-sxm")
    foreach = [k for k in r.eager.kernels if k.phase == "optimizer"]
    # one eager kernel per foreach op of torch's own, in its order, each over the 4 parameters
    # (torch's single-tensor update divides out of place where its foreach one divides in place)
    assert [k.op.split(" ")[0].rstrip("_") for k in foreach] == [op.rstrip("_") for op in ops[1:]]
    assert all(len(k.nodes) == 4 for k in foreach)
    # the same bytes as the single-tensor path, which a CPU runs (AdamW's 80 bytes a parameter
    # over its eight ops: 8+12+8+12+8+8+8+16)
    cpu = fxroof.analyze(model, (torch.randn(3, 8),), train=True, chip="cpu")
    single = [k for k in cpu.eager.kernels if k.phase == "optimizer"]
    assert len(single) == 32 and sum(k.bytes for k in single) == sum(k.bytes for k in foreach) \
        == 80 * 212


def test_hsdp_shards_within_a_replica_group_and_all_reduces_across():
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    x = torch.empty(4096, 512, device="meta")
    n = 512 * 512
    with fake_process_group(8):
        model = four_weights()
        # 2 replica groups of 4 ranks: each weight sharded over 4, each shard kept on 2 ranks
        mesh = init_device_mesh("cpu", (2, 4), mesh_dim_names=("replicate", "shard"))
        for layer in model:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        r = fxroof.analyze(model, (x,), train=True, mode="eager")
    assert (r.dp, r.fsdp) == (8, True) and any("HSDP" in note for note in r.notes)
    comm = [(n.op, n.bytes_read, n.comm_steps) for n in r.nodes if n.category == "collective"]
    gathers = [c for c in comm if c[0] == "all_gather_into_tensor"]
    # a quarter of each fp32 weight gathered from the 4 ranks of a replica group (3 ring steps),
    # in the forward and again in the backward
    assert gathers == [("all_gather_into_tensor", 4 * n // 4, 3)] * 8
    # each gradient reduce-scattered over the 4 (a quarter kept), then that quarter all-reduced
    # over the 2 replicas (a ring of 2: 2 steps)
    after = [c for c in comm if c[0] != "all_gather_into_tensor"]
    assert after == [("reduce_scatter_tensor", 4 * n, 3), ("all_reduce", 4 * n // 4, 2)] * 4
    assert r.memory.weights == r.memory.gradients == 4 * 4 * n // 4


def test_dropout_in_a_gpu_step_is_cudas_fused_kernel():
    from torch.fx.experimental.proxy_tensor import make_fx
    # a CPU tensor's F.dropout runs ATen's three-op path (bernoulli_, div_, mul), as a real
    # trace of it on the CPU shows; CUDA's takes native_dropout (Dropout.cpp)
    x = torch.randn(64, 32, requires_grad=True)
    ops = {str(n.target) for n in make_fx(lambda t: torch.nn.functional.dropout(
        t, 0.1, True))(x).graph.nodes if n.op == "call_function"}
    assert "aten.bernoulli_.float" in ops and "aten.native_dropout.default" not in ops
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Dropout(0.1),
                                torch.nn.Linear(32, 4))
    args = (torch.randn(64, 32),)
    gpu = fxroof.analyze(model, args, train=True, chip="a100", optimizer="none")
    cpu = fxroof.analyze(model, args, train=True, chip="cpu", optimizer="none")
    by_op = {n.op: n for n in gpu.nodes}
    assert "bernoulli" not in {n.op.rstrip("_") for n in gpu.nodes}
    assert "bernoulli" in {n.op.rstrip("_") for n in cpu.nodes}
    # fused, by hand: reads 64 x 32 fp32, writes them and a one-byte mask; its backward reads
    # the gradient and the mask and writes the gradient
    fused, back = by_op["native_dropout"], by_op["native_dropout_backward"]
    assert (fused.bytes_read, fused.bytes_written) == (64 * 32 * 4, 64 * 32 * (4 + 1))
    assert (back.bytes_read, back.bytes_written) == (64 * 32 * (4 + 1), 64 * 32 * 4)
    # in place, ATen's dropout_ takes the three ops on a GPU too (Dropout.cpp: no fused path)
    in_place = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Dropout(0.1, inplace=True),
                                   torch.nn.Linear(32, 4))
    assert "bernoulli_" in {n.op for n in fxroof.analyze(in_place, args, train=True, chip="a100",
                                                          optimizer="none").nodes}
    # p = 0 and eval mode launch nothing on either device, as ATen returns the input
    still = torch.nn.Sequential(torch.nn.Linear(32, 4), torch.nn.Dropout(0.0))
    assert not {"native_dropout", "bernoulli_"} & {
        n.op for n in fxroof.analyze(still, args, train=True, chip="a100").nodes}
    assert isinstance(model[1], torch.nn.Dropout) and model.training   # the user's model as it was


def test_attention_dropout_in_a_gpu_step_stays_in_the_fused_kernel():
    import torch.nn.functional as F

    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(32, 96)

        def forward(self, x):      # (2, 64, 32) -> 4 heads of 8 over 64 tokens
            q, k, v = self.qkv(x).view(2, 64, 3, 4, 8).permute(2, 0, 3, 1, 4)
            mask = torch.ones(64, 64, dtype=torch.bool).tril()
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.1)

    x = torch.randn(2, 64, 32)
    gpu = fxroof.analyze(Attention(), (x,), train=True, chip="h100-sxm", optimizer="none")
    cpu = fxroof.analyze(Attention(), (x,), train=True, chip="cpu", optimizer="none")
    gpu_ops = {n.op for n in gpu.nodes}
    # a CPU's flash kernel takes no dropout: its trace runs the math path, scores in memory
    assert {"bmm", "bernoulli_"} <= {n.op for n in cpu.nodes}
    # CUDA's kernels draw the dropout inside: one fused attention each way, no mask in memory
    assert "bmm" not in gpu_ops and "bernoulli_" not in gpu_ops
    (fwd,) = [n for n in gpu.nodes if n.op == "_scaled_dot_product_flash_attention_for_cpu"]
    assert "_scaled_dot_product_flash_attention_for_cpu_backward" in gpu_ops
    # by hand: q, k, v of 2 x 4 x 64 x 8 fp32 and the 64 x 64 mask as fp32 (the bool mask made
    # additive, as ATen's front end does) read; the output written
    assert fwd.bytes_read == 3 * 2 * 4 * 64 * 8 * 4 + 64 * 64 * 4
    assert fwd.bytes_written == 2 * 4 * 64 * 8 * 4
