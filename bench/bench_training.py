"""Training steps: fxroof's counts beside PyTorch's own, what an analysis costs, and a published
anchor. Prints four tables:

    FLOPs     matrix, convolution and attention FLOPs of one step (forward, loss.backward())
              from fxroof's graph beside FlopCounterMode around a real step on the same model:
              an MLP, GPT-2, Llama and BERT from transformers configs, a CNN, SDPA attention
    memory    fxroof's peak (weights, gradients, AdamW state, activations) beside PyTorch's
              MemTracker around a real CPU step of an MLP, AdamW
    cost      wall time and peak RSS of analysing a GPT-2 124M step (batch 8 x 1024) and a
              Llama-3-70B-shaped step as one rank of FSDP over 64 (meta device), each in a fresh
              process; goal: under a minute and 1 GB each
    anchor    nanoGPT's GPT-2 124M step (12 x 1024 tokens, bf16 autocast, AdamW, A100 40GB;
              README, Dec 2022: ~250 ms eager, 135 ms with torch.compile) beside fxroof's
              prediction with the attention written out, as nanoGPT then ran it, fp32 weights
              under autocast as it ran them and, for comparison, bf16 weights (docs/training.md)

    .venv/bin/python bench/bench_training.py            # about three minutes
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import transformers
from tabulate import tabulate
from torch.distributed._tools.mem_tracker import MemTracker
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop, sdpa_flop

from _child import run_child

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import fxroof  # noqa: E402
from fxroof.cost.record import MATRIX_CATEGORIES  # noqa: E402

aten = torch.ops.aten
# A CPU build runs its own fused attention, which FlopCounterMode leaves uncounted: give it the
# counter's own formulas.
CPU_ATTENTION = {aten._scaled_dot_product_flash_attention_for_cpu: sdpa_flop.__wrapped__,
                 aten._scaled_dot_product_flash_attention_for_cpu_backward:
                     sdpa_backward_flop.__wrapped__}


def counted(model, args, kwargs=None) -> int:
    model = copy.deepcopy(model).train()
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        out = model(*args, **(kwargs or {}))
        loss = getattr(out, "loss", None)
        first = out[0] if isinstance(out, tuple) else out     # fxroof's default loss too
        (first.mean() if loss is None else loss).backward()
    return counter.get_total_flops()


def models():
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    ids = torch.randint(0, 128, (2, 32))
    small = dict(vocab_size=128, max_position_embeddings=64)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=64, bos_token_id=0,
        eos_token_id=0, attn_implementation="sdpa"))
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, attn_implementation="sdpa", **small))
    bert = transformers.BertForMaskedLM(transformers.BertConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        attn_implementation="sdpa", **small))
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16),
                              torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, stride=2),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(32, 10))
    attention = torch.nn.MultiheadAttention(64, 4, batch_first=True)
    x = torch.randn(2, 32, 64)
    return [("MLP", mlp, (torch.randn(16, 64),), {}),
            ("GPT-2 (2 layers)", gpt2, (ids,), {"labels": ids}),
            ("Llama (2 layers, GQA)", llama, (ids,), {"labels": ids}),
            ("BERT (2 layers)", bert, (ids,), {"labels": ids}),
            ("CNN (conv, batch norm)", cnn, (torch.randn(4, 3, 32, 32),), {}),
            ("SDPA attention", attention, (x, x, x), {"need_weights": False})]


def flops_table() -> list:
    rows = []
    for name, model, args, kwargs in models():
        # counted on this CPU, whose attention with dropout takes the math path: as a CPU runs it
        r = fxroof.analyze(model, args, kwargs, train=True, chip="cpu")
        ours = sum(n.flops for n in r.nodes if n.category in MATRIX_CATEGORIES)
        theirs = counted(model, args, kwargs)
        rows.append((name, f"{ours:,}", f"{theirs:,}", f"{ours / theirs:.4f}"))
    return rows


def memory_table() -> list:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 2048), torch.nn.ReLU(),
                                torch.nn.Linear(2048, 2048), torch.nn.ReLU(),
                                torch.nn.Linear(2048, 512))
    x = torch.randn(2048, 512)
    memory = fxroof.analyze(model, (x,), train=True).memory
    real = copy.deepcopy(model)
    opt = torch.optim.AdamW(real.parameters(), foreach=False)

    def step():
        opt.zero_grad()
        real(x).mean().backward()
        opt.step()
    step()          # AdamW makes its state on the first step; the second is the steady one
    tracker = MemTracker()
    tracker.track_external(real, opt)
    with tracker:
        step()
    peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    # the input was made before tracking, so MemTracker does not see it
    predicted = memory.total - memory.inputs
    return [("MLP 512-2048-2048-512, batch 2048, AdamW", f"{predicted:,}", f"{peak:,}",
             f"{predicted / peak:.4f}")]


COST = r"""
import json, sys, time
sys.path.insert(0, {root!r})
import torch, transformers as tf
import fxroof
if {which!r} == "gpt2":
    with torch.device("meta"):
        m = tf.GPT2LMHeadModel(tf.GPT2Config())
    ids, fields = torch.zeros(8, 1024, dtype=torch.long, device="meta"), {{}}
else:
    c = tf.LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                       num_attention_heads=64, num_key_value_heads=8, vocab_size=128256,
                       max_position_embeddings=8192, attn_implementation="sdpa")
    with torch.device("meta"):
        m = tf.LlamaForCausalLM(c).to(torch.bfloat16)
    ids, fields = torch.zeros(1, 4096, dtype=torch.long, device="meta"), dict(dp=64, fsdp=True)
start = time.perf_counter()
r = fxroof.analyze(m, (ids,), {{"labels": ids}}, train=True, chip="h100-sxm", **fields)
print(json.dumps(dict(s=time.perf_counter() - start, ops=len(r.nodes), kernels=len(r.kernels),
                      step_s=r.time_s, mfu=r.mfu, comm_s=r.summary.schedule.comm_s,
                      exposed_s=r.summary.schedule.exposed_s,
                      rss=peak_rss_bytes())))
"""


def cost_table() -> list:
    rows = []
    for which, label in (("gpt2", "GPT-2 124M, 8 x 1024, AdamW"),
                         ("llama70", "Llama-3-70B shape, 1 x 4096, bf16, FSDP over 64")):
        got = run_child(COST.format(root=str(ROOT), which=which))
        rows.append((label, f"{got['ops']:,}", f"{got['kernels']:,}", f"{got['s']:.1f}",
                     f"{got['rss'] / 1e6:,.0f}", f"{got['step_s'] * 1e3:,.0f}",
                     f"{got['mfu']:.0%}", f"{got['comm_s'] * 1e3:,.0f}",
                     f"{got['exposed_s'] * 1e3:,.0f}"))
    return rows


class Autocast(torch.nn.Module):
    """nanoGPT's training step: fp32 weights, the forward under CUDA's bf16 autocast (traced as
    CPU autocast with CUDA's policy: softmax, norms and the loss in fp32)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids, labels):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return self.model(ids, labels=labels)


def anchor_table() -> list:
    rows = []
    # nanoGPT's README: "~250ms / iter" eager, "135ms / iter" with torch.compile
    published = ((250, "~250"), (135, "135"))
    for label, attention, amp in (("written out, fp32 weights, bf16 autocast", "eager", True),
                                  ("written out, bf16 weights", "eager", False),
                                  ("fused (SDPA), bf16 weights", "sdpa", False)):
        config = transformers.GPT2Config(attn_implementation=attention, resid_pdrop=0.0,
                                         embd_pdrop=0.0, attn_pdrop=0.0)
        with torch.device("meta"):
            model = transformers.GPT2LMHeadModel(config)
        ids = torch.zeros(12, 1024, dtype=torch.long, device="meta")
        step = (Autocast(model), (ids, ids), {}) if amp else (
            model.to(torch.bfloat16), (ids,), {"labels": ids})
        r = fxroof.analyze(*step, train=True, chip="a100-40gb")
        for mode, summary, (measured, said) in (("eager", r.eager, published[0]),
                                                ("compiled", r.compiled, published[1])):
            ratio = f"{summary.time_s * 1e3 / measured:.2f}x" if attention == "eager" else "-"
            rows.append((label, mode, f"{summary.time_s * 1e3:.0f}",
                         said if attention == "eager" else "-", ratio))
    return rows


def main() -> int:
    print("FLOPs of one training step (matrix, convolution, attention)")
    print(tabulate(flops_table(), headers=("model", "fxroof", "FlopCounterMode", "ratio"),
                   colalign=("left", "right", "right", "right"), disable_numparse=True))
    print("\nPeak memory of one real CPU step, bytes")
    print(tabulate(memory_table(), headers=("step", "fxroof", "MemTracker", "ratio"),
                   colalign=("left", "right", "right", "right"), disable_numparse=True))
    print("\nCost of the analysis (fresh process each, meta device, H100)")
    print(tabulate(cost_table(), headers=("step", "ops", "kernels", "seconds", "peak RSS MB",
                                          "predicted ms", "MFU", "comm ms", "exposed ms"),
                   colalign=("left",) + ("right",) * 8, disable_numparse=True))
    print("\nnanoGPT GPT-2 124M, 12 x 1024, AdamW, A100 40GB (predicted / measured)")
    print(tabulate(anchor_table(), headers=("attention, weights", "mode", "fxroof ms",
                                            "measured ms", "ratio"),
                   colalign=("left", "left", "right", "right", "right"), disable_numparse=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
