"""Training steps: forward, backward and optimizer as one graph, checked against PyTorch's own
FlopCounterMode around a real `loss.backward()` and its MemTracker around a real step."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import transformers
from torch.distributed._tools.mem_tracker import MemTracker
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop, sdpa_flop

import fxroof
from fxroof.cli.main import main
from fxroof.cost.record import MATRIX_CATEGORIES
from fxroof.graph.training import PHASES

aten = torch.ops.aten
# FlopCounterMode counts the fused attention kernels a CUDA build runs; a CPU build runs its own,
# which PyTorch leaves uncounted: the same formulas of PyTorch's counter are given for them.
CPU_ATTENTION = {aten._scaled_dot_product_flash_attention_for_cpu: sdpa_flop.__wrapped__,
                 aten._scaled_dot_product_flash_attention_for_cpu_backward:
                     sdpa_backward_flop.__wrapped__}


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
    r = fxroof.analyze(model, args, kwargs, train=True)
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
    own = fxroof.analyze(model, args, kwargs, train=True, optimizer="none")
    by_fn = fxroof.analyze(model, args, train=True, optimizer="none",
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
    with pytest.raises(ValueError, match="inference"):
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
    with pytest.raises(ValueError, match="tensor-parallel training"):
        fxroof.analyze(mlp(), (torch.randn(3, 8),), train=True, tp=2)


def test_cli_train(tmp_path, capsys):
    spec = tmp_path / "work.py"
    spec.write_text("import torch\n\ndef workload():\n    torch.manual_seed(0)\n"
                    "    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), "
                    "torch.nn.Linear(16, 4))\n    return m, (torch.randn(3, 8),)\n")
    assert main(["analyze", str(spec), "--train", "--optimizer", "sgd", "--dp", "2",
                 "--json", "-"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["training"] == "sgd" and d["dp"] == 2 and set(d["phases"]) == set(PHASES)
    assert main(["analyze", str(spec), "--optimizer", "sgd"]) == 2
    assert "--train" in capsys.readouterr().err
