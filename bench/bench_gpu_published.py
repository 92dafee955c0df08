"""fxroof's GPU times against published measurements: the roofline floor and the expected time.

Nothing is timed here: each published case is rebuilt in fxroof on the meta device and predicted
for the GPU it was measured on, and the prediction is set beside the published figure. Sources,
read from ../shared/reference/measured/ (relative to the repository root; skipped with a message
when absent; their README says how each was measured):

    timm <GPU> eager, compiled (RTX 3090 eager, RTX 5090 eager and compiled in ../shared)
        whole-model inference (timm's benchmark.py: AMP fp16, NCHW, batch 256-1024), for a
        subset of models timm builds on meta; needs `pip install timm` (skipped without it).
        Every timm-*.csv in the data folder is a source, named from its file name (GPU,
        -dynamo for torch.compile, amp / amp_bf16 / bf16, nchw / nhwc; a GPU the bench does not
        map to a chip is named and skipped). Predicted: the report's time (eager or compiled)
        of the model as benchmark.py runs it, batch and size as published: under AMP the fp32
        model and input within CUDA autocast of the file's 16-bit dtype (fxroof's amp=, traced on
        the CPU with CUDA's policy), a bf16 model in bf16; channels-last costs
        as NCHW. Every published size of each model in the subset is a case. A file whose
        parameter count for a model is below timm's ran it fused (benchmark.py --reparam: the
        RTX 5090 files' MobileOne, RepViT, FastViT, LeViT, EfficientViT): the bench fuses it
        the same way. --timm-models every:N takes every N-th of the models the files share
        instead (none of them in the subset): a sample of models fxroof was not built on.
    Vidur A100 linear, other ops; Vidur H100 linear, other ops (and A40, where the data has it)
        one transformer layer's non-attention ops, fp16, as Vidur's profiler runs them
        (vidur/profiling/mlp/mlp_impl.py, over sarathi-serve's layers), each timed as the sum of
        the CUDA kernels in its range (launch gaps excluded): predicted as the sum of the
        kernels' times on the chip, host dispatch left out. The linear layers (cuBLAS GEMMs),
        the residual add, the embedding gather and phi-2's LayerNorm and GELU are PyTorch ops,
        built eager, one kernel each; phi-2 has no post-attention norm and its add sums three
        tensors (two kernels). SiLU-and-multiply, RMSNorm and rotary are sarathi-serve's own
        CUDA kernels, one each (csrc/activation_kernels.cu, layernorm_kernels.cu,
        pos_encoding_kernels.cu): fxroof's compiled mode builds each as one kernel of the same
        bytes, and the bench gives it the launch sarathi-serve's source states (one thread block
        per token, up to 1,024 threads, 512 for rotary, each thread walking its row one element
        a step; RMSNorm twice over), whose memory latency fxroof's model then prices
        (fxroof/chips/launch.py). The embedding is PyTorch's index_select, whose launch fxroof
        knows, as torch 2.3 ran it (sarathi-serve's pin; 2.8 changed it). Sampled: each (model,
        tensor-parallel degree) at num_tokens 1, 16, 128, 512, 2048 and 8192; rows measured more
        than once give their median. The four linear layers are
        one source, the other ops another.
    Vidur all-reduce
        fxroof's ring all-reduce formula (cost/formulas/collective.py) at the published size and
        group, fp16, on the chip's links. Only groups whose links the chip's one link figure
        describes: DGX A100 within one server (NVSwitch), and the NVLink pairs (2 GPUs, NVLink
        bridge 600 GB/s both ways: 300 GB/s each way on A100 and H100 alike; an A40's 112.5 GB/s);
        groups spanning servers or NVLink pairs joined over PCIe are counted out. The paired
        systems are PCIe cards (Vidur's docs/profiling.md: 4 A100 80GB PCIe with pair-wise NVLink,
        Azure Standard_NC96ads_A100_v4; 4 H100 NVL): a100-80gb-pcie, and h100-sxm's figures for
        the H100 NVL, which fxroof has no entry for (a collective's time reads only the links and
        NCCL's latencies). Measured as Vidur's collectives profiler takes it
        (vidur/profiling/collectives/collectives_wrapper.py): the median duration of the NCCL
        kernel in a Kineto trace of 11 eager all_reduce calls issued back to back on rank 0. A
        kernel that starts before the other ranks' launches waits for them inside its duration,
        so the small sizes carry the launch skew between processes (neighbouring sizes of one
        group range 7-60 us); fxroof prices ranks in step. Every vidur-*-all_reduce.csv in the
        data folder is read; a system the bench has no links for is named and skipped.
        Sampled: 12 sizes per group, evenly spaced in log size.

    nccl-tests H200 all-reduce
        bus bandwidth of all_reduce_perf from 32 KiB to 16 GiB on one 8 x H200 node with NCCL
        2.30.7, NVLink SHARP on (Stas Bekman, Machine Learning Engineering,
        network/benchmarks/README.md, commit 0cc3de5): time = size x 2(n-1)/n / busbw, beside
        fxroof's all-reduce at that size over 8 ranks: the faster of its rings and NVLS (the
        switch reduces; the H200's nvls_efficiency, NCCL's). These figures are quoted below with
        their source. (The H200's collective_efficiency is the same author's 8 GiB ring with
        SHARP off, 365.6 GB/s: another run.)

    PyTorch SDPA flash
        scaled_dot_product_attention's flash backend (FlashAttention-2), forward, no mask: three
        A100 shapes from pytorch/pytorch#126122 and one H100 shape from #142132 (the SDPA
        constant above says how each was read), beside fxroof's attention kernel at that shape
        in bf16. The chips' attention_efficiency comes from the FlashAttention-2 and -3 papers,
        not from these.

    FlashAttention-2 benchmark
        the forward of FlashAttention-2's own benchmark script (fp16, width 2,048, 16,384
        tokens a batch) as a user posted it for an RTX A5000 at head size 64, 512 to 8,192
        tokens (the FA2_BENCHMARK constant says where), beside fxroof's attention kernel at
        that shape: a chip with no attention share, priced by its GEMMs' share and its
        exponentials (the softmax part), none of it taken from these runs.

    torch.mm by size
        30 back-to-back torch.mm calls of two n x n fp16 or bf16 matrices, n = 1,024 to 10,240,
        between two CUDA events (zzc0721/torch-performance-test-data, test.py at commit 9d82827;
        community runs filed as issues, the issue beside each case), on the GPUs of fxroof's
        table: the eager report of one torch.mm, host dispatch included (back to back, a call
        costs the longer of its kernel and its dispatch). Quoted below with their source.
        Runs filed with their best TFLOPS a dtype only (the issues' summary rows, and held out,
        the repository's own summary table) are set beside the best of fxroof's five sizes.

    device-benchmarks matmul, copy
        chsasank/device-benchmarks' table: the best torch.matmul of two n x n fp16 or bf16
        matrices (n up to 6,888, each call alone on the host clock) beside the best of fxroof's
        eager reports at the same sizes, and one copy_ of 380 MB beside its eager report. Its
        fp32 column is the source of the table's fp32_matmul_efficiency, so not compared.

    MI300X all-reduce by group size
        the same author's all_reduce_bench.py (torch.distributed) at 4 GiB over 2 and over 8
        GPUs of one 8 x MI300X node (network/README.md, "Peer-to-peer bandwidth", commit
        744d01e), whose GPUs are wired all to all, a 64 GB/s link to each peer: a group of n
        has n-1 links (the chip's peer_links). The 8-GPU figure is the MI300X's
        collective_efficiency; the 2-GPU one checks the links a pair has.

    NVLS by group size
        the same author's 8 GiB all-reduce over 4 to 8 GPUs of one 8 x H200 node (NCCL 2.27.7)
        and of one 8 x B200 node (p6-b200.48xlarge, NCCL 2.27.7), NCCL left to pick its
        algorithm (network/README.md, "SHARP", commit 744d01e): NCCL picks NVLS from 5 GPUs on
        the H200s and from 6 on the B200s, the ring below. Beside fxroof's all-reduce at 8 GiB
        over that many ranks. The rings' collective_efficiency is the H200's 8-GPU ring with
        NVLS off in this same table (365.6 GB/s) and the B200's (682.2 GB/s), so the ring rows
        check little; NVLS's share is NCCL's, not these figures.

    gpt-fast A100 decode
        tokens/s of whole generations, batch 1, a 5-token prompt, 100 new tokens, torch.compile
        with CUDA graphs, bf16 weights or int8/int4 weight-only (pytorch-labs/gpt-fast README,
        "Benchmarks", commit 32971d3; 8xA100-80GB power-limited to 330 W). Predicted: fxroof's
        generation of models/llama.py at the same shapes (prefill + 99 decode steps; the steps
        replayed as CUDA graphs, the prefill eager, as generate.py runs them by default),
        int8 per output row as `w8`, int4 in groups of 32 as `w4g32`; and Mixtral 8x7B in int8
        on one GPU (mixtral-moe/README.md), as models/moe.py's cached decoder. These figures are
        not in ../shared: they are quoted below with their source. The Llama-2-7B int8 and int4
        rows' bandwidths, beside bf16's, are fxroof's dequantizing share (DEQUANT_SOURCE_ROWS).

    gpt-fast A100 tensor parallel (--tp)
        the same README's tensor-parallel rows (2, 4 and 8 GPUs; bf16, and int8/int4 at 8), and
        as a source of its own Mixtral's (bf16 and int8 on 2, 4 and 8),
        predicted as one rank of fxroof's tensor-parallel generation (`tp=`), its all-reduces
        priced as NCCL rings over the A100's NVLink (300 GB/s each way). gpt-fast ran them with
        PyTorch's intra-node all-reduce (ENABLE_INTRA_NODE_COMM=1) over a hybrid cube mesh,
        which neither the ring formula nor the chip's one link figure describes: the collectives
        are the part of these predictions with the weakest footing.

    torchao A100 decode; torchao H100 decode; torchao H100 float8 dynamic
        tokens/s of whole generations by torchao's copy of gpt-fast's generate.py (pytorch/ao
        torchao/quantization/README.md, commit 9e5059e2c; quoted below): batch 1, 200 new
        tokens, decode as a CUDA graph. Llama-2-7B and Llama-3-8B on an A100 80GB, Llama-3.1-8B
        on an "H100" (the variant unsaid: priced as the SXM), in bf16 and with int8, int4
        (groups of 64) and fp8 weights; and, a source of its own, fp8 matmuls with activations
        quantized at every call (float8dq, per tensor and per row). Predicted as gpt-fast's
        rows are. Held out, added after the model; one change came of them: the fp8 weight-only
        row showed fp8 weights priced as a plain 16-bit GEMM, now a dequantizing kernel.

    TensorRT-LLM static batches; TensorRT-LLM first token
        NVIDIA/TensorRT-LLM docs/source/performance.md (commit 138f96d; quoted below): whole
        static batches as gptSessionBenchmark runs them (batch sequences of the input length,
        each generating the output length; TensorRT-LLM 0.6.1, the L40S's 0.5), and the first
        token's latency at batch 1 (0.5). A100 in fp16; H100 and L40S in fp8 (built with
        --enable_fp8 --fp8_kv_cache: fp8 matmuls and an fp8 KV cache, fxroof's "fp8+kv-fp8").
        Predicted: fxroof's generation at the same shapes in compiled mode (TensorRT's fused
        kernels, no CUDA graph), Llama-2 as models/llama.py, GPT-J 6B from its transformers
        config (EleutherAI/gpt-j-6b's config.json; skipped without transformers): the batch's
        prefill, then output - 1 decode steps; a first token is the prefill. fxroof's models
        compute logits for every prompt token, TensorRT-LLM for the last only (2% of a
        2,048-token prefill). Rows the table gives per GPU are per GPU; the A100 and L40S
        tables give "out tok/s" without saying, so their tensor-parallel rows are left out.
        Llama-2-70B's rows (tensor-parallel, on H100 per GPU, and first tokens at 4 GPUs) come
        with --tp.

    --trt-0.9: TensorRT-LLM 0.9.0 static batches; TensorRT-LLM 0.9.0 first token
        the same page as of release v0.9.0 (its tables: "All data was generated using version
        0.9.0"): an H200 table beside the H100, L40S and A100 ones, Mistral 7B beside GPT-J 6B
        and the Llamas, each table's throughput per GPU; engines built with trtllm-build from
        checkpoint configs (fp8 weights and KV cache on H200, H100, L40S; fp16 on the A100).
        Predicted as the rows above; Mistral 7B as models/llama.py's mistral-7b. One-GPU rows by
        default; Llama-2-70B's tensor-parallel ones with --tp too. Left out: Falcon 180B (no
        model of its shape here) and Mixtral 8x7B (the engine's one MoE plugin against
        models/moe.py's loops of kernels launched from Python).

    nccl-tests all-reduce across servers
        an all-reduce over 24 A100s in 3 servers whose network the poster states (4 HDR NICs a
        server; NVIDIA/nccl-tests#119): fxroof's ring and tree across servers (docs/time-model.md,
        "Across servers") at the largest size, against the peak bus bandwidth published.

    --training: torchtitan FSDP training, 64 A100s
        torchtitan's published tokens per second per GPU (docs/performance.md, 2024-04) of
        Llama 2 13B and 70B and Llama 3 8B and 70B training steps, FSDP2 over 64 A100 80GB,
        bf16 compute over fp32 weights, eager, without, with full and with selective (op, and
        layer: every second block, the option's default, as the page does not say) activation
        checkpointing. Predicted: one rank's eager step of a Hugging Face Llama of
        the same shapes (fxroof's train=True, dp=64, fsdp=True, recompute=...), priced as the
        A100 SXM. Differences fxroof does not model: torchtitan's fused Triton RMSNorm in the 8B
        and 13B runs (fxroof prices PyTorch's eager norm), its complex-number rotary, gradient
        clipping, the fp32 reduce-scatter (fxroof reduces the bf16 gradients), and the network
        between the 8 servers, which the page does not name (fxroof prices the DGX A100's).

    --lambda: Lambda training, ResNet-50 (AMP, NCHW); Lambda training, BERT SQuAD (fp16)
        held out: Lambda's single-GPU training throughputs of NVIDIA's DeepLearningExamples
        (lambdal/deeplearning-benchmark, pytorch/pytorch-train-throughput-fp16.csv at commit
        0551cb7) on 15 GPU rows, V100 to H100 SXM, each at the batch its card's memory ran
        (pytorch/scripts/config_v1/config_pytorch_<N>GB.sh): ResNet-50 v1.5 with --amp
        (torch.cuda.amp, NCHW, synthetic data, SGD), and BERT-base and -large SQuAD fine-tuning
        at 384 tokens with --fp16 (run_squad.py's apex amp O2: the model in fp16, FusedAdam over
        fp32 master weights; its attention unfused, dropout on). Predicted as fxroof's eager
        training step of models/resnet.py (optimizer="sgd") and of transformers'
        BertForQuestionAnswering in fp16 with its eager attention (optimizer="adamw", fp32
        master weights). Measured step = batch / throughput. The Quadro RTX 8000 row is left
        out (no Turing workstation card in the chip table).
        Also: torchvision ResNet-50 training, V100, AMP and fp32, both layouts: a community run
        (sandeepkumar-skb/pytorch_experiments, torchvision_exp/README.md, commit 0e13d7f) of one
        SGD step at batch 128 on a V100-SXM2, under autocast or in fp32, channels-first and
        channels-last, as fxroof's eager step of models/resnet.py in each.

    --timm RESULTS
        the results/ folder of a pytorch-image-models checkout adds, each as a source of its
        own, the benchmark-infer-*.csv files the data folder does not hold: at commit aa4b585
        the RTX 4090 (torch 2.4 and 2.9, eager and compiled), the RTX PRO 6000 Blackwell Max-Q
        (eager, compiled; compiled in bf16 under AMP and as a bf16 model), the RTX 3090 under
        torch 1.13 and 2.1 and in NHWC; and its training files (RTX 3090, torch 1.12, NCHW and
        NHWC: one step of SGD with momentum on a model in train mode, fp32 weights under float16
        autocast, cross-entropy), predicted as fxroof's eager training step (train=True,
        optimizer="sgd": plain SGD, a few element-wise passes over the weights fewer than
        timm's momentum and Nesterov). NHWC files are built as timm's --channels-last runs
        them: model and input channels-last. Every file's attention is traced as its torch
        ran it (attention_of): timm's own q @ k^T and softmax before torch 2.0, which had no
        scaled_dot_product_attention; PyTorch's math path in 16 bits before 2.5 where the
        fused kernels do not apply. Never fitted on; CPU result files are named and skipped.
    --vidur CHECKOUT
        a checkout of microsoft/vidur adds what its data/profiling holds and the data folder
        does not, each as a source of its own, never fitted on: at commit 7d47513, the A40's
        per-operation profiles (Vidur A40 linear, other ops; an 8 x A40 node in NVLink pairs) and
        the DGX H100's all-reduce (Vidur all-reduce h100_dgx), and every system's send_recv
        within one server (Vidur send/recv <system>: fxroof's isend at that size, timed as
        the all-reduces are). A file that is not a profile (a Git LFS pointer) is named and
        skipped.
    --liger CHECKOUT
        a checkout of linkedin/Liger-Kernel adds Liger-Kernel's PyTorch baselines, held out:
        its benchmark/data/all_benchmark_data.csv's median times (triton.testing.do_bench) of
        PyTorch's own kernels beside its Triton ones, forward: torch.nn.LayerNorm in fp32 over
        4,096 rows of 1,024-16,384 on an A100 80GB SXM and an H100 SXM, torch.softmax in fp32
        and bf16 over 2,048 rows of 128-4,096 on an RTX 3090; predicted as fxroof's eager
        kernels' time on the chip.

Prints per source: cases, median |error|, share within +-25%, geometric-mean ratio
predicted/measured, for the floor and for the expected time, and the worst expected case with
what its time is made of. Error = (predicted - measured) / measured. About a minute.

    .venv/bin/python bench/bench_gpu_published.py              # every source
    .venv/bin/python bench/bench_gpu_published.py --only Vidur # sources whose name holds 'Vidur'
    .venv/bin/python bench/bench_gpu_published.py --cases      # every case, one line each
    .venv/bin/python bench/bench_gpu_published.py --vidur ../vidur   # with a Vidur checkout
    .venv/bin/python bench/bench_gpu_published.py --timm ../pytorch-image-models/results
"""
from __future__ import annotations

import argparse
from contextlib import contextmanager
import csv
import dataclasses
import functools
import importlib.util
import json
import math
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from tabulate import tabulate
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import fxroof  # noqa: E402
from fxroof.chips import chip as find_chip, table_chip  # noqa: E402
from fxroof.chips.expected import expected  # noqa: E402
from fxroof.chips.launch import Launch, gather, priced_as, row_per_block  # noqa: E402
from fxroof.chips.timing import kernel_timing, matmul_tf32  # noqa: E402
from fxroof.cost.formulas.registry import FORMULAS, OpCall  # noqa: E402
from fxroof.graph.autocast import with_amp  # noqa: E402
from fxroof.graph.capture import FunctionModule, capture  # noqa: E402
from fxroof.graph.tensors import dtype_name  # noqa: E402
from fxroof.pipeline import Target, report_of  # noqa: E402

DATA = ROOT.parent / "shared" / "reference" / "measured"

# timm's result files, timm-<precision>-<layout>-pt<torch>-cu<cuda>-<gpu>[-dynamo].csv: the GPU
# each names, and how it is labelled; every such file in the data folder is a source
# Result files name their GPU by a tag ("rtx3090", "5090", "a100"): fxroof's chip table reads it
# (gpu_chip), so a file for any GPU the table holds is compared; these are the sources' labels.
GPU_LABELS = {"rtx-3090": "RTX 3090", "rtx-4090": "RTX 4090", "rtx-5090": "RTX 5090",
              "pro6000-maxq": "RTX PRO 6000 Max-Q"}
# precision: AMP (autocast over fp32 weights) in fp16 or bf16, or a bf16 model
TIMM_PRECISIONS = {"amp": (torch.float16, True, ""), "amp_bf16": (torch.bfloat16, True, " bf16"),
                   "bf16": (torch.bfloat16, False, " bf16 model")}
# Families timm's tables hold at several sizes: residual CNNs, ConvNeXt, vision transformers,
# EfficientNet/MobileNet (depthwise convs), RegNet, DenseNet, MLP-Mixer, Swin, VGG, Inception.
TIMM_MODELS = ("resnet18", "resnet50", "resnet101", "resnext50_32x4d", "wide_resnet50_2",
               "convnext_tiny", "convnext_base", "vit_small_patch16_224", "vit_base_patch16_224",
               "vit_large_patch16_224", "beit_base_patch16_224", "efficientnet_b0",
               "efficientnet_b3", "mobilenetv3_large_100", "mobilenetv2_100", "regnety_040",
               "densenet121", "mixer_b16_224", "swin_tiny_patch4_window7_224", "vgg16",
               "inception_v3")
VIDUR_TOKENS = (1, 16, 128, 512, 2048, 8192)
# The PyTorch Vidur's profiler ran on: sarathi-serve's requirements.txt pins torch == 2.3
# (microsoft/sarathi-serve, commit 042f067), and the profiles date from 2024. Its embedding ran
# index_select's own grid-stride kernel, which PyTorch 2.8 replaced (fxroof/chips/launch.py).
VIDUR_TORCH = (2, 3)
VIDUR_OPS = ("emb", "input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj",
             "post_attention_layernorm", "mlp_up_proj", "mlp_act", "mlp_down_proj", "add")
NVLINK_BRIDGE = 300e9     # bytes/s each way: NVLink bridge pairs, 600 GB/s both ways
A40_BRIDGE = 56.25e9      # the A40's NVLink bridge: 112.5 GB/s both ways (A40 datasheet)
SIZES_PER_GROUP = 12


@dataclasses.dataclass
class Case:
    source: str
    label: str
    measured_s: float
    floor_s: float
    expected_s: float
    why: str              # what the expected time is made of


def read_csv(name) -> list[dict]:
    """A file of the data folder by name, or any file by path; '#' lines are its provenance."""
    with open(DATA / name) as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


# A checkout of microsoft/vidur (--vidur) adds what the data folder lacks: the GPUs of its
# data/profiling/compute/<gpu>/<org>/<model>/mlp.csv and the systems of
# data/profiling/network/<system>/all_reduce.csv that the folder has no rows or file for.
VIDUR_CHECKOUT: list = []
VIDUR_CONFIG = ("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "vocab_size", "use_gated_mlp",
                "num_tokens", "num_tensor_parallel_workers")


def gpu_chip(tag: str) -> tuple[str, str] | None:
    """(fxroof's chip, a label) for the GPU tag a result file names: the chip table's names and
    aliases ("a100" is the SXM 80GB, as Vidur's and NVIDIA's own tables mean it), then the same
    with "rtx-" before it (timm's "4090"); None where the table has no such GPU."""
    for name in (tag, f"rtx-{tag}"):
        found = table_chip(name)
        if found is not None and found.kind == "gpu":
            return found.name, GPU_LABELS.get(found.name, tag.upper())
    return None


def vidur_rows() -> list[dict]:
    """Rows in the data folder's vidur-mlp-medians.csv schema: its own, then a checkout's for
    the GPUs it has no rows for (each op's median column, in milliseconds)."""
    rows = read_csv("vidur-mlp-medians.csv")
    have = {r["gpu"] for r in rows}
    for root in VIDUR_CHECKOUT:
        for path in sorted((root / "data" / "profiling" / "compute").glob("*/*/*/mlp.csv")):
            gpu, org, model = path.parts[-4:-1]
            if gpu in have:
                continue
            found = read_csv(path)
            if found and "num_tokens" not in found[0]:
                print(f"skipped {path}: not a profile (a Git LFS pointer?)")
                continue
            for r in found:
                row = {"gpu": gpu, "model": f"{org}/{model}", **{k: r[k] for k in VIDUR_CONFIG}}
                row.update({f"{op}_ms": r.get(f"time_stats.{op}.median", "") for op in VIDUR_OPS})
                rows.append(row)
    return rows


def device_regime(e) -> str:
    """The largest part of a kernel's time on the chip, host dispatch left out."""
    memory = "memory latency" if e.memory_s > e.streamed_s else "memory"
    parts = {"compute": e.compute_s, memory: e.memory_s, "communication": e.comm_s,
             "kernel floor": e.latency_s}
    return max(parts, key=parts.get)


def made_of(kernels, device_only: bool = False) -> str:
    """Where the expected time goes: regime shares and the op taking most of it."""
    times = [(k.expected.device_s if device_only else k.time_s, k) for k in kernels]
    total = sum(t for t, _ in times) or 1.0
    share: dict = defaultdict(float)
    by_op: dict = defaultdict(float)
    for t, k in times:
        share[device_regime(k.expected) if device_only else k.regime] += t / total
        by_op[k.op.split(" ")[0]] += t / total
    regimes = ", ".join(f"{r} {s:.0%}" for r, s in sorted(share.items(), key=lambda x: -x[1])[:2])
    op, s = max(by_op.items(), key=lambda x: x[1])
    return f"{regimes}; {op} {s:.0%}"


# -- timm ----------------------------------------------------------------------------------------

# The results/ folder of a pytorch-image-models checkout (--timm): its benchmark-infer-*.csv
# files, named as the data folder's timm-*.csv are, add the GPUs, torch versions and layouts
# the data folder lacks (the files it holds are left to it).
TIMM_RESULTS: list = []
TIMM_PICKED: list = []      # --timm-models: the models to compare instead of TIMM_MODELS


def timm_files() -> list:
    """(path, name stem as timm-<precision>-<layout>-pt<torch>-cu<cuda>-<gpu>[-dynamo]) of every
    timm result file: the data folder's, then a checkout's that the folder does not hold."""
    files = [(p, p.stem) for p in sorted(DATA.glob("timm-*.csv"))]
    have = {stem for _, stem in files}
    for results in TIMM_RESULTS:
        for p in sorted(results.glob("benchmark-infer-*.csv")):
            stem = "timm-" + p.stem.removeprefix("benchmark-infer-")
            if stem not in have:
                files.append((p, stem))
    return files


def timm_sources() -> dict:
    """{source name: (file, chip, mode, dtype, fp32 norms)} for each timm result file whose GPU
    and precision fxroof knows; the others are named and skipped."""
    sources: dict = {}
    for path, stem in timm_files():
        parts = stem.split("-")
        compiled = parts[-1] == "dynamo"
        gpu = parts[-2] if compiled else parts[-1]
        if len(parts) < 5 or gpu_chip(gpu) is None or parts[1] not in TIMM_PRECISIONS:
            print(f"skipped {path.name}: its GPU or precision is not one the bench knows")
            continue
        chip_name, label = gpu_chip(gpu)
        dtype, amp, what = TIMM_PRECISIONS[parts[1]]
        mode = "compiled" if compiled else "eager"
        name = f"timm {label} {mode}{what}" + (" NHWC" if parts[2] == "nhwc" else "")
        if name in sources:      # the same GPU under another torch: name the torch
            name += f" ({parts[3]})"
        sources[name] = (path, chip_name, mode, dtype, amp, parts[2] == "nhwc",
                         torch_version(parts[3]))
    return sources


def timm_cases(only: str) -> list[Case]:
    sources = {s: v for s, v in timm_sources().items() if only in s}
    if not sources:
        return []
    try:
        import timm
    except Exception as e:     # timm itself, or torchvision under it
        print(f"skipped timm sources: timm cannot be imported ({type(e).__name__}: {e})")
        return []
    captured: dict = {}
    cases = []
    for source, (file, chip_name, mode, dtype, amp, nhwc, version) in sources.items():
        target = Target(chip=chip_name, mode=mode)
        models = set(TIMM_PICKED or TIMM_MODELS)
        for r in (r for r in read_csv(file) if r["model"] in models):
            # some files print them as floats ("1024.0")
            size, batch = int(float(r["infer_img_size"])), int(float(r["infer_batch_size"]))
            key = (r["model"], size, batch, dtype, amp, nhwc, r["param_count"],
                   attention_of(version))
            if key not in captured:
                with as_torch(timm, version):
                    captured[key] = timm_capture(timm, r["model"], size, batch, dtype, amp,
                                                 nhwc, float(r["param_count"]))
            if isinstance(captured[key], str):
                continue
            try:
                with priced_as(version):    # its eager kernels as the file's torch launched them
                    report = report_of(captured[key], target)
            except Exception as e:     # fxroof's failure on a model: said, never a case
                print(f"{source}: fxroof fails on {r['model']}: {type(e).__name__}: {e}")
                continue
            cases.append(Case(source, f"{r['model']} {size}px b{batch}",
                              float(r["infer_step_time"]) / 1e3, report.summary.floor_s,
                              report.time_s, made_of(report.kernels)))
    return cases


def torch_version(tag: str) -> tuple:
    """The torch of a timm file's tag: pt112 1.12, pt113 1.13, pt210 2.1, pt291 2.9."""
    digits = tag.removeprefix("pt")
    return (1, int(digits[1:])) if digits[0] == "1" else (int(digits[0]), int(digits[1]))


def attention_of(version: tuple) -> str:
    """How a file's torch ran timm's attention: before 2.0 PyTorch had no
    scaled_dot_product_attention, so timm computed q @ k^T, softmax and @ v itself (its
    use_fused_attn is false without it); from 2.0 the fused kernels, and PyTorch's math path
    where they do not apply, in the inputs' precision until 2.5 and in fp32 since (pytorch
    #128922, #135964; fxroof/graph/attention_path.py)."""
    return "unfused" if version < (2, 0) else "math in 16 bits" if version < (2, 5) else ""


@contextmanager
def as_torch(timm, version: tuple):
    """timm's models built, and PyTorch's math attention traced, as under the file's torch."""
    from timm.layers import set_fused_attn, use_fused_attn
    fused, reduced = use_fused_attn(), torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()
    set_fused_attn(attention_of(version) != "unfused")
    torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(version < (2, 5))
    try:
        yield
    finally:
        set_fused_attn(fused)
        torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(reduced)


def timm_capture(timm, name, size, batch, dtype, amp, nhwc, params_m):
    """The captured graph of timm's `name` as its benchmark runs it, or why there is none (a
    model this timm does not have is skipped; fxroof's own failure to capture is said).
    params_m: the file's parameter count in millions. benchmark.py --reparam fuses a model's
    training-time branches (MobileOne, RepViT, FastViT, LeViT...) before timing, which shows
    as fewer parameters; such a model is built and fused the same way."""
    try:
        with torch.device("meta"):
            model = timm.create_model(name).eval()
        if not same_count(model, params_m):
            model = reparameterized(timm, name)
            if not same_count(model, params_m):
                return f"{name}: the file's {params_m}M parameters are not timm's model"
        # AMP: the fp32 model within CUDA autocast, as fxroof's amp= runs it
        model = with_amp(model, "cuda", dtype_name(dtype)) if amp else model.to(dtype)
    except Exception as e:
        return f"timm cannot build {name}: {type(e).__name__}"
    # AMP's input is fp32, as its weights (the first convolution casts it)
    x = torch.empty(batch, 3, size, size, dtype=torch.float32 if amp else dtype, device="meta")
    model, x = channels_last(model, x) if nhwc else (model, x)
    try:
        return capture(model, (x,))
    except Exception as e:
        why = f"fxroof fails to capture {name}: {type(e).__name__}: {str(e)[:200]}"
        print(why)
        return why


def same_count(model, params_m: float) -> bool:
    """Whether the model has the parameter count a timm file prints (millions, two decimals)."""
    return abs(sum(p.numel() for p in model.parameters()) / 1e6 - params_m) < 0.006


def reparameterized(timm, name):
    """timm's model with its branches fused as benchmark.py --reparam fuses them, on the meta
    device. The fusion computes weights, so it runs on real (random) weights on the CPU; the
    models it applies to are small."""
    from timm.utils.model import reparameterize_model
    return reparameterize_model(timm.create_model(name).eval()).to("meta")


def models_in(path) -> set:
    """The model names a timm result file holds."""
    return {r["model"] for r in read_csv(path)}


def pick_timm_models(spec: str) -> list:
    """--timm-models: names separated by commas, or `every:N`: every N-th model, in name order,
    of those the data folder's timm files share that the default subset leaves out (a sample
    nothing in fxroof was built on)."""
    if not spec.startswith("every:"):
        files = [models_in(path) for path, _ in timm_files()]
        names = [m for m in spec.split(",") if m]
        unknown = [m for m in names if not any(m in f for f in files)]
        if unknown:
            raise ValueError(f"--timm-models: in no timm result file: {', '.join(unknown)}")
        return names
    step = spec.removeprefix("every:")
    if not step.isdigit() or int(step) < 1:
        raise ValueError(f"--timm-models every:N takes a whole number N >= 1, not {step!r}")
    files = [models_in(path) for path in sorted(DATA.glob("timm-*.csv"))]
    shared = set.intersection(*files) if files else set()
    return sorted(shared - set(TIMM_MODELS))[::int(step)]


def channels_last(model, x):
    """The model and its input as timm's benchmark.py --channels-last makes them (NHWC)."""
    return (model.to(memory_format=torch.channels_last),
            x.contiguous(memory_format=torch.channels_last))


class AmpTrainStep(nn.Module):
    """timm's training benchmark step up to the backward: the forward and the cross-entropy loss
    under CUDA autocast in float16 (fxroof traces CUDA autocast as CPU autocast of the same dtype
    where there is no GPU); `enabled=False`, in fp32, as autocast(enabled=False) leaves it."""

    def __init__(self, model, enabled: bool = True):
        super().__init__()
        self.model, self.enabled = model, enabled

    def forward(self, x, target):
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.enabled):
            return F.cross_entropy(self.model(x), target)


def timm_train_cases(only: str) -> list[Case]:
    """timm's training benchmark files in a checkout's results/ (--timm): one SGD step of a
    model in train mode under AMP (fp32 weights, float16 autocast, cross-entropy), eager."""
    files = [p for results in TIMM_RESULTS for p in sorted(results.glob("benchmark-train-*.csv"))]
    wanted = []
    for path in files:
        parts = path.stem.removeprefix("benchmark-train-").split("-")   # amp, nchw, pt, cu, gpu
        gpu = parts[-1]
        if len(parts) != 5 or gpu_chip(gpu) is None or parts[0] != "amp":
            print(f"skipped {path.name}: its GPU or precision is not one the bench knows")
            continue
        chip_name, label = gpu_chip(gpu)
        source = f"timm {label} train" + (" NHWC" if parts[1] == "nhwc" else "") + f" ({parts[2]})"
        if only in source:
            wanted.append((path, source, chip_name, parts[1] == "nhwc",
                           torch_version(parts[2])))
    if not wanted:
        return []
    try:
        import timm
    except Exception as e:
        print(f"skipped timm training sources: timm cannot be imported ({type(e).__name__}: {e})")
        return []
    reports: dict = {}
    cases = []
    for path, source, chip_name, nhwc, version in wanted:
        for r in (r for r in read_csv(path) if r["model"] in TIMM_MODELS):
            size, batch = int(float(r["train_img_size"])), int(float(r["train_batch_size"]))
            key = (r["model"], size, batch, chip_name, nhwc, attention_of(version))
            if key not in reports:
                with as_torch(timm, version), priced_as(version):
                    with torch.device("meta"):
                        model = AmpTrainStep(timm.create_model(r["model"]).train())
                    x = torch.empty(batch, 3, size, size, device="meta")
                    model, x = channels_last(model, x) if nhwc else (model, x)
                    target = torch.zeros(batch, dtype=torch.long, device="meta")
                    reports[key] = fxroof.analyze(model, (x, target), chip=chip_name,
                                                  mode="eager", train=True, optimizer="sgd")
            report = reports[key]
            cases.append(Case(source, f"{r['model']} {size}px b{batch}",
                              float(r["train_step_time"]) / 1e3, report.summary.floor_s,
                              report.time_s, made_of(report.kernels)))
    return cases


# -- Lambda's single-GPU training throughputs ----------------------------------------------------

# lambdal/deeplearning-benchmark, pytorch/pytorch-train-throughput-fp16.csv at commit 0551cb7: one
# GPU's training throughput (images or sequences a second) of NVIDIA's DeepLearningExamples under
# AMP, as (the file's name_gpu, chip, its memory, ResNet-50, BERT-base SQuAD, BERT-large SQuAD).
# The Quadro RTX 8000 row is left out: the chip table has no Turing workstation card.
LAMBDA_TRAIN = (("LambdaCloud V100 16GB", "v100", 16, 833, 189, 57),
                ("RTX 3090", "rtx-3090", 24, 905, 172, 52),
                ("LambdaCloud A10", "a10", 24, 638, 135, 42),
                ("LambdaCloud A100 40GB PCIe", "a100-40gb-pcie", 40, 1396, 368, 117),
                ("A100 80GB PCIe", "a100-80gb-pcie", 80, 1527, 415, 140),
                ("A100 80GB SXM4", "a100-80gb", 80, 1582, 443, 152),
                ("RTX 6000 Ada", "rtx-6000-ada", 48, 1146, 255, 79),
                ("RTX A6000", "rtx-a6000", 48, 916, 198, 68),
                ("RTX 4090", "rtx-4090", 24, 1301, 297, 93),
                ("H100 80GB PCIe Gen5", "h100-pcie", 80, 1866, 567, 203),
                ("LambdaCloud H100 80GB PCIe Gen5", "h100-pcie", 80, 1851, 558, 200),
                ("H100 80GB SXM5", "h100-sxm", 80, 2616, 812, 301),
                ("Dell H100 80GB SXM5", "h100-sxm", 80, 2776, 867, 307),
                ("SMC H100 80GB SXM5", "h100-sxm", 80, 2787, 870, 309),
                ("1CC H100 80GB SXM5", "h100-sxm", 80, 2791, 877, 311))
# The batch each memory size ran (pytorch/scripts/config_v1/config_pytorch_<N>GB.sh: resnet50 AMP,
# bert_base and bert_large SQuAD fp16), as (ResNet-50, BERT-base, BERT-large).
LAMBDA_BATCH = {16: (256, 48, 16), 24: (448, 96, 28), 40: (720, 88, 32), 48: (928, 192, 64),
                80: (1280, 320, 112)}
SQUAD_TOKENS = 384      # DeepLearningExamples' run_squad.py max_seq_length


class SquadStep(nn.Module):
    """BERT's SQuAD fine-tuning step up to the backward: the forward and its start/end
    cross-entropy."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids, types, mask, start, end):
        return self.model(input_ids=ids, token_type_ids=types, attention_mask=mask,
                          start_positions=start, end_positions=end).loss


def lambda_step(model_name: str, batch: int):
    """(module, args, optimizer) of one training step as DeepLearningExamples runs it: ResNet-50
    (v1.5, as torchvision's) under float16 autocast with SGD (its --amp: torch.cuda.amp); BERT
    as its run_squad.py's --fp16 runs it, apex's amp O2: the model in fp16, its optimizer's
    Adam over fp32 master weights (fxroof's adamw on half-precision parameters)."""
    if model_name == "resnet50":
        from fxroof.studies.workload import load
        model, *_ = load(str(ROOT / "models" / "resnet.py"), {"depth": 50, "batch": 1})
        x = torch.empty(batch, 3, 224, 224, device="meta")
        y = torch.zeros(batch, dtype=torch.long, device="meta")
        return AmpTrainStep(model.train()), (x, y), "sgd"
    from transformers import BertConfig, BertForQuestionAnswering
    large = model_name == "bert_large_squad"
    config = BertConfig(hidden_size=1024 if large else 768, num_hidden_layers=24 if large else 12,
                        num_attention_heads=16 if large else 12,
                        intermediate_size=4096 if large else 3072, vocab_size=30522,
                        attn_implementation="eager")
    with torch.device("meta"):
        model = BertForQuestionAnswering(config).half().train()
    ids = torch.zeros(batch, SQUAD_TOKENS, dtype=torch.long, device="meta")
    pos = torch.zeros(batch, dtype=torch.long, device="meta")
    return SquadStep(model), (ids, ids, torch.ones_like(ids), pos, pos), "adamw"


def lambda_cases(only: str, wanted: bool) -> list[Case]:
    """Lambda's single-GPU training throughputs (--lambda): ResNet-50 (SGD, float16 autocast,
    NCHW) and BERT-base and -large SQuAD fine-tuning (fp16, Adam over fp32 master weights),
    eager, each at the batch its GPU's memory ran (lambda_step)."""
    sources = {"resnet50": "Lambda training, ResNet-50 (AMP, NCHW)",
               "bert_base_squad": "Lambda training, BERT SQuAD (fp16)",
               "bert_large_squad": "Lambda training, BERT SQuAD (fp16)"}
    if not wanted or not any(only in source for source in sources.values()):
        return []
    if importlib.util.find_spec("transformers") is None:
        print("Lambda training: skipped (BERT is built with transformers, which is not installed)")
        return []
    cases, reports = [], {}
    for gpu, chip_name, memory, *throughputs in LAMBDA_TRAIN:
        for i, model_name in enumerate(sources):
            if only not in sources[model_name]:
                continue
            batch = LAMBDA_BATCH[memory][i]
            key = (model_name, batch, chip_name)
            if key not in reports:
                model, args, optimizer = lambda_step(model_name, batch)
                reports[key] = fxroof.analyze(model, args, chip=chip_name, mode="eager",
                                              train=True, optimizer=optimizer)
            report = reports[key]
            cases.append(Case(sources[model_name], f"{gpu} {model_name} b{batch}",
                              batch / throughputs[i],
                              report.summary.floor_s, report.time_s, made_of(report.kernels)))
    return cases


# -- a community run: torchvision's ResNet-50 training in both layouts ---------------------------

# sandeepkumar-skb/pytorch_experiments, torchvision_exp/README.md (commit 0e13d7f) and its
# run_train_infer.py: torchvision's ResNet-50 at batch 128 on a Tesla V100-SXM2, one step of SGD
# (momentum 0.9, weight decay) on cross-entropy, cudnn.benchmark on, under torch.cuda.amp's
# autocast or in fp32, channels-first or channels-last (model and input); milliseconds a step.
# Its AMP rows were set beside fxroof's layouts before (docs/time-model.md), its fp32 rows not.
TORCHVISION_V100 = {("amp", "nhwc"): 110.93, ("amp", "nchw"): 152.20,
                    ("fp32", "nhwc"): 412.84, ("fp32", "nchw"): 342.37}
TORCHVISION_BATCH = 128


def torchvision_train_cases(only: str, wanted: bool) -> list[Case]:
    """The community V100 run above (--lambda): fxroof's eager SGD step of models/resnet.py
    (torchvision's ResNet-50 v1.5) in each precision and layout."""
    source = "torchvision ResNet-50 training, V100, AMP and fp32, both layouts"
    if not wanted or only not in source:
        return []
    from fxroof.studies.workload import load
    cases = []
    for (precision, layout), measured_ms in TORCHVISION_V100.items():
        model, *_ = load(str(ROOT / "models" / "resnet.py"), {"depth": 50, "batch": 1})
        step = AmpTrainStep(model.train(), enabled=precision == "amp")
        x = torch.empty(TORCHVISION_BATCH, 3, 224, 224, device="meta")
        if layout == "nhwc":
            step, x = channels_last(step, x)
        target = torch.zeros(TORCHVISION_BATCH, dtype=torch.long, device="meta")
        report = fxroof.analyze(step, (x, target), chip="v100", mode="eager", train=True,
                                optimizer="sgd")
        cases.append(Case(source, f"v100 resnet50 b{TORCHVISION_BATCH} {precision} {layout}",
                          measured_ms * 1e-3, report.summary.floor_s, report.time_s,
                          made_of(report.kernels)))
    return cases


# -- torchtitan training steps ------------------------------------------------------------------

# pytorch/torchtitan docs/performance.md at commit 157a12c (2024-04-24): FSDP2 over 64 A100 80GB
# (1-D, every rank a shard), bf16 compute over fp32 weights (MixedPrecisionPolicy(param_dtype=
# bfloat16, reduce_dtype=float32)), AdamW (foreach), no torch.compile, attention by
# F.scaled_dot_product_attention (is_causal), tokens per second per GPU ("WPS"). (label, shape,
# local batch, sequence, activation checkpointing, published tokens/s). The "selective layer"
# rows do not give their interval: taken as the option's default, 2 ("2 = checkpoint every other
# layer", torchtitan/config_manager.py at the same commit), the train configs naming "op".
TORCHTITAN_SHAPES = {   # torchtitan/models/llama/__init__.py's flavors (Llama 2's vocabulary 32,000)
    "Llama 3 8B": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
    "Llama 3 70B": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                        num_attention_heads=64, num_key_value_heads=8, vocab_size=128256),
    "Llama 2 13B": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                        num_attention_heads=40, num_key_value_heads=40, vocab_size=32000),
    "Llama 2 70B": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                        num_attention_heads=64, num_key_value_heads=8, vocab_size=32000)}
TORCHTITAN = (("Llama 3 8B", 1, 8192, 2, 2904),
              ("Llama 3 8B", 1, 8192, "selective", 2973),
              ("Llama 3 70B", 1, 8192, True, 331),
              ("Llama 2 13B", 2, 4096, False, 2162),
              ("Llama 2 13B", 2, 4096, 2, 1914),
              ("Llama 2 13B", 2, 4096, "selective", 1904),
              ("Llama 2 70B", 1, 4096, "selective", 355),
              ("Llama 2 70B", 2, 4096, True, 353))
TORCHTITAN_RANKS = 64
CHECKPOINTING = {False: "no AC", True: "full AC", "selective": "selective op AC",
                 2: "selective layer AC (every 2nd)"}


def torchtitan_cases(only: str, training: bool) -> list[Case]:
    """torchtitan's FSDP training steps (--training): one rank's eager step of a Hugging Face
    Llama of the same shapes on the meta device, bf16 weights (FSDP2's param_dtype; AdamW then
    keeps fp32 master weights and moments), FSDP over 64, as published. Each step takes 20 s
    to 2 minutes to analyze."""
    source = "torchtitan FSDP training, 64 A100s"
    if not training or only not in source:
        return []
    try:
        import transformers
    except Exception as e:
        print(f"skipped {source}: transformers cannot be imported ({type(e).__name__}: {e})")
        return []
    cases = []
    for name, batch, tokens, recompute, tokens_per_s in TORCHTITAN:
        config = transformers.LlamaConfig(**TORCHTITAN_SHAPES[name], max_position_embeddings=tokens,
                                          attn_implementation="sdpa", tie_word_embeddings=False)
        with torch.device("meta"):
            model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
        ids = torch.zeros(batch, tokens, dtype=torch.long, device="meta")
        r = fxroof.analyze(model, (ids,), {"labels": ids}, train=True, chip="a100-80gb",
                           mode="eager", dp=TORCHTITAN_RANKS, fsdp=True, recompute=recompute)
        exposed = r.summary.schedule.exposed_s / r.time_s
        cases.append(Case(source, f"{name} b{batch} x {tokens}, {CHECKPOINTING[recompute]}: "
                          f"{tokens_per_s} tokens/s a GPU", batch * tokens / tokens_per_s,
                          r.summary.floor_s, r.time_s,
                          f"{made_of(r.kernels)}; MFU {r.mfu:.0%}, communication exposed "
                          f"{exposed:.0%}"))
    return cases


# -- Vidur per-op profiles -----------------------------------------------------------------------

def rms_norm(x, w):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype) * w


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope(q, k, cos, sin):
    # cos/sin: (T, 1, d), gathered from the cache by position, as sarathi-serve's kernel does
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def vidur_op(op: str, cfg: dict, t: int):
    """(module, inputs, mode) of one profiled op at t tokens."""
    h, tp, nh, nkv = cfg["h"], cfg["tp"], cfg["n_head"], cfg["n_kv_head"]
    d, ff = h // nh, cfg["ff"]
    half = dict(dtype=torch.float16, device="meta")

    def linear(n_in, n_out):
        with torch.device("meta"):
            return nn.Linear(n_in, n_out, bias=False).half(), (torch.empty(t, n_in, **half),), "eager"
    if op == "attn_pre_proj":
        return linear(h, (nh + 2 * nkv) * d // tp)
    if op == "attn_post_proj":
        return linear(nh * d // tp, h)
    if op == "mlp_up_proj":
        return linear(h, (2 if cfg["gated"] else 1) * ff // tp)
    if op == "mlp_down_proj":
        return linear(ff // tp, h)
    if op == "mlp_act":
        n = ff // tp
        if cfg["gated"]:
            return (FunctionModule(lambda x: F.silu(x[:, :n]) * x[:, n:]),
                    (torch.empty(t, 2 * n, **half),), "compiled")
        return FunctionModule(F.gelu), (torch.empty(t, n, **half),), "eager"  # nn.GELU()
    if op in ("input_layernorm", "post_attention_layernorm"):
        x, w = torch.empty(t, h, **half), torch.empty(h, **half)
        if cfg["layer_norm"]:       # nn.LayerNorm: PyTorch's kernel
            return FunctionModule(lambda x, w: F.layer_norm(x, (h,), w, w)), (x, w), "eager"
        return FunctionModule(rms_norm), (x, w), "compiled"
    if op == "attn_rope":
        return (FunctionModule(rope), (torch.empty(t, nh // tp, d, **half),
                                       torch.empty(t, max(nkv // tp, 1), d, **half),
                                       torch.empty(t, 1, d, **half), torch.empty(t, 1, d, **half)),
                "compiled")
    if op == "add":
        if cfg["post_attn_norm"]:
            return FunctionModule(torch.add), (torch.empty(t, h, **half),) * 2, "eager"
        # without a post-attention norm: attention out + MLP out + residual, two adds
        return FunctionModule(lambda a, b, c: a + b + c), (torch.empty(t, h, **half),) * 3, "eager"
    if op == "emb":
        with torch.device("meta"):
            table = nn.Embedding(cfg["vocab"] // tp, h).half()
        return table, (torch.empty(t, dtype=torch.int64, device="meta"),), "eager"
    raise ValueError(op)


def device_times(kernels) -> tuple[float, float]:
    """(floor, expected) time on the chip of a report's kernels, host dispatch left out."""
    floor = sum(max(k.timing.compute_s, k.timing.memory_s, k.timing.comm_s) for k in kernels)
    return floor, sum(k.expected.device_s for k in kernels)


def sarathi_launch(op: str, cfg: dict, t: int) -> Launch:
    """How sarathi-serve launches its kernel for `op` at t tokens, read from its source (the
    docstring names the files): one block per token, its threads walking the row."""
    h, tp, d = cfg["h"], cfg["tp"], cfg["h"] // cfg["n_head"]
    if op == "mlp_act":                # silu_and_mul_kernel: block min(d, 1024), x and y together
        return row_per_block(t, cfg["ff"] // tp, 1024)
    if op == "attn_rope":              # block min(heads x d / 2, 512); q's heads, then k's, each
        q, k = cfg["n_head"] // tp * d // 2, max(cfg["n_kv_head"] // tp, 1) * d // 2
        block = min(q, 512)            # step loading x, y, cos and sin together, after the
        return Launch(t, block, math.ceil(q / block) + math.ceil(k / block) + 1)   # position
    return row_per_block(t, h, 1024, passes=2)   # rms_norm_kernel: sum of squares, then scale


# sarathi-serve's silu_and_mul_kernel (csrc/activation_kernels.cu), a thread's loop step over one
# output: two scalar 16-bit loads, the SiLU in fp32 (an exponential and an IEEE division), the
# product in 16 bits, a store and the loop's indexing: 43 instructions in fp16 (44 in bf16),
# compiled by nvcc 13.0 -O3 for sm_80 and sm_90 alike, its SASS counted, the division's slow
# path left out (as fxroof/cost/formulas/pointwise_instructions.py counts PyTorch's kernels)
SARATHI_SILU_AND_MUL = 43


def with_launch(kernels, chip, launch: Launch, issued: int = 0):
    """The kernels, their expected time taken with the launch that ran them (and the thread
    instructions it issues, where given)."""
    return [dataclasses.replace(k, expected=expected(chip, k.timing, k.category, launch=launch,
                                                     issued=issued))
            for k in kernels]


def as_one_kernel(kernels, chip, launch: Launch, issued: int = 0):
    """The kernels as the one kernel sarathi-serve launches for them (its rotary embedding
    rotates q's heads, then k's, in one launch, where Inductor writes a kernel for each output
    of another shape): their work together, one fixed time, one launch's waits."""
    if len(kernels) < 2:
        return with_launch(kernels, chip, launch, issued)
    first = kernels[0]
    timing = dataclasses.replace(first.timing,
                                 compute_s=sum(k.timing.compute_s for k in kernels),
                                 memory_s=sum(k.timing.memory_s for k in kernels))
    return [dataclasses.replace(first, timing=timing,
                                expected=expected(chip, timing, first.category, launch=launch,
                                                  issued=issued))]


def vidur_source(gpu: str, op: str) -> str:
    """Library GEMMs apart from the other ops: they miss for different reasons."""
    return f"Vidur {gpu.upper()} " + ("linear" if op.endswith("proj") else "other ops")


def vidur_cases(only: str) -> list[Case]:
    rows = vidur_rows()
    gpus = sorted({r["gpu"] for r in rows})
    for gpu in (g for g in gpus if gpu_chip(g) is None):
        print(f"skipped Vidur's {gpu} rows: fxroof's chip table has no such GPU")
    sources = {g for g in gpus for op in ("proj", "")
               if gpu_chip(g) is not None and only in vidur_source(g, op)}
    if not sources:
        return []
    groups: dict = defaultdict(list)
    for r in rows:
        if r["gpu"] in sources and int(r["num_tokens"]) in VIDUR_TOKENS:
            groups[(r["gpu"], r["model"], int(r["num_tensor_parallel_workers"]),
                    int(r["num_tokens"]))].append(r)
    captured: dict = {}
    cases = []
    for (gpu, model, tp, t), rows in sorted(groups.items()):
        r0 = rows[0]
        cfg = {"h": int(r0["n_embd"]), "n_head": int(r0["n_head"]), "tp": tp,
               "n_kv_head": int(r0["n_kv_head"]), "ff": int(r0["n_expanded_embd"]),
               "vocab": int(r0["vocab_size"]), "gated": r0["use_gated_mlp"] == "True",
               "layer_norm": "phi" in model,
               # a model without one has no profiled post-attention norm
               "post_attn_norm": any(r["post_attention_layernorm_ms"] for r in rows)}
        for op in (op for op in VIDUR_OPS if only in vidur_source(gpu, op)):
            values = [float(r[f"{op}_ms"]) for r in rows if r[f"{op}_ms"]]
            if not values:      # not profiled for this model (e.g. no rotary)
                continue
            measured = statistics.median(values) / 1e3
            module, inputs, mode = vidur_op(op, cfg, t)
            key = (op, cfg["gated"], cfg["layer_norm"], *(tuple(x.shape) for x in inputs),
                   *(tuple(p.shape) for p in module.parameters()))
            if key not in captured:
                captured[key] = capture(module, inputs)
            with priced_as(VIDUR_TORCH):     # its eager kernels as the profiler's PyTorch ran them
                report = report_of(captured[key], Target(chip=gpu_chip(gpu)[0], mode=mode))
                kernels = report.kernels
            if mode == "compiled":     # sarathi-serve's own kernel, as it launches
                issued = t * cfg["ff"] // tp * SARATHI_SILU_AND_MUL if op == "mlp_act" else 0
                kernels = as_one_kernel(kernels, report.chip, sarathi_launch(op, cfg, t), issued)
            if op == "emb":            # index_select as the profiler's PyTorch ran it
                kernels = with_launch(kernels, report.chip,
                                      gather(report.chip, t, cfg["h"], 2, VIDUR_TORCH))
            floor, exp = device_times(kernels)
            why = made_of(kernels, device_only=True)
            cases.append(Case(vidur_source(gpu, op), f"{model.split('/')[-1]} tp{tp} T={t} {op}",
                              measured, floor, exp, why))
    return cases


# -- all-reduce bus bandwidth on an 8 x H200 node ------------------------------------------------

# (payload bytes, nccl-tests bus bandwidth in GB/s): Stas Bekman, Machine Learning Engineering,
# network/benchmarks/README.md at commit 0cc3de5, "How the calls are timed": one 8 x H200 node,
# torch 2.14.0+cu130, NCCL 2.30.7, nccl-tests' all_reduce_perf built against it (back-to-back
# calls), NVLink SHARP on (its default; 482 GB/s at 16 GiB is above the 450 GB/s link).
NCCL_TESTS_H200 = tuple((2 ** e, bw) for e, bw in zip(range(15, 35), (
    3.20, 6.26, 12.40, 24.63, 48.30, 72.45, 91.48, 139.97, 182.03, 242.45, 298.44, 369.82,
    411.21, 442.27, 455.82, 464.00, 468.31, 473.10, 475.16, 480.70)))


def busbw_seconds(size: int, n: int, busbw_gbps: float) -> float:
    """An all-reduce's time from the bus bandwidth nccl-tests (and all_reduce_bench.py) report:
    busbw = algbw x 2(n-1)/n, algbw = size / time."""
    return size * 2 * (n - 1) / n / (busbw_gbps * 1e9)


def nccl_tests_cases(only: str) -> list[Case]:
    source = "nccl-tests H200 all-reduce"
    if only not in source:
        return []
    chip, n = find_chip("h200"), 8
    cases = []
    for size, busbw in NCCL_TESTS_H200:
        measured = busbw_seconds(size, n, busbw)
        floor, exp, algorithm = all_reduce_time(chip, size, n)
        cases.append(Case(source, f"n=8 {size:,} B", measured, floor, exp, algorithm))
    return cases


# An all-reduce across servers (NVIDIA/nccl-tests#119, 2022-11): 3 servers of 8 A100 SXM4 40GB
# and 4 HDR InfiniBand NICs each (200 Gb/s: 100 GB/s a server, the poster's own figure),
# all_reduce_perf over 24 ranks from 8 B to 128 MiB in 1 MiB steps: bus bandwidth "about 84.8GB/s"
# on average and "about 96GB/s" at its peak, compared at the largest size. The servers' network
# is the system's, stated in the chip (a DGX A100 has eight such NICs).
ACROSS_SERVERS = (("a100-40gb", 24, 100e9, 2 ** 27, 96.0),)


def across_servers_cases(only: str) -> list[Case]:
    source = "nccl-tests all-reduce across servers"
    if only not in source:
        return []
    cases = []
    for name, n, network, size, busbw in ACROSS_SERVERS:
        chip = dataclasses.replace(find_chip(name), network_bw=network)
        floor, exp, algorithm = all_reduce_time(chip, size, n)
        cases.append(Case(source, f"{name} x {n}, {chip.nodes(n)} servers of "
                          f"{network / 1e9:g} GB/s, {size:,} B", busbw_seconds(size, n, busbw),
                          floor, exp, algorithm))
    return cases


# (chip, GPUs, nccl-tests bus bandwidth in GB/s of an 8 GiB all-reduce, NCCL picking its
# algorithm): Stas Bekman, Machine Learning Engineering, network/README.md at commit 744d01e,
# "SHARP": one 8 x H200 node and one 8 x B200 node (AWS p6-b200.48xlarge), NCCL 2.27.7.
NVLS_BY_GROUP = (("h200", 4, 363.3), ("h200", 5, 414.2), ("h200", 6, 435.6), ("h200", 7, 460.0),
                 ("h200", 8, 473.1), ("b200", 4, 673.2), ("b200", 5, 677.8), ("b200", 6, 778.2),
                 ("b200", 7, 811.2), ("b200", 8, 838.0))


# (GPUs, bus bandwidth in GB/s of a 4 GiB all-reduce): Bekman, network/README.md at commit 744d01e,
# "Peer-to-peer bandwidth": all_reduce_bench.py on one 8 x MI300X node, whose GPUs are wired all to
# all, one 64 GB/s link (each way) to each peer.
XGMI_BY_GROUP = ((2, 47.671), (8, 312.912))


def xgmi_group_cases(only: str) -> list[Case]:
    source = "MI300X all-reduce by group size"
    if only not in source:
        return []
    size, chip, cases = 4 * 2 ** 30, find_chip("mi300x"), []
    for n, busbw in XGMI_BY_GROUP:
        measured = busbw_seconds(size, n, busbw)
        floor, exp, algorithm = all_reduce_time(chip, size, n)
        cases.append(Case(source, f"n={n} 4 GiB", measured, floor, exp,
                          f"{algorithm}, {n - 1} of 7 links"
                          + (" (the collective_efficiency's source)" if n == 8 else "")))
    return cases


def nvls_group_cases(only: str) -> list[Case]:
    source = "NVLS by group size"
    if only not in source:
        return []
    size, cases = 8 * 2 ** 30, []
    for name, n, busbw in NVLS_BY_GROUP:
        measured = busbw_seconds(size, n, busbw)
        floor, exp, algorithm = all_reduce_time(find_chip(name), size, n)
        cases.append(Case(source, f"{name} n={n} 8 GiB", measured, floor, exp, algorithm))
    return cases


# -- PyTorch's fused attention ---------------------------------------------------------------------

# (chip, (batch, heads, sequence, head size), measured microseconds, where): bf16/fp16
# scaled_dot_product_attention on its flash backend (FlashAttention-2), no mask, the forward pass.
# pytorch/pytorch#126122 ("Update context manager for cudnn", "A100 Numbers", Flash Time): the
# times fit only a forward pass without a causal mask (causal would put the kernel at 27% of the
# peak, a backward above it). pytorch/pytorch#142132: tritonbench's flash_attention, default SDPA
# on an H100, 329.483 TFLOPS at (1, 24, 4608, 128).
SDPA = (("a100-80gb", (1, 32, 4096, 64), 799.391, "pytorch#126122"),
        ("a100-80gb", (1, 16, 4096, 128), 750.131, "pytorch#126122"),
        ("a100-80gb", (1, 32, 8192, 64), 3211.84, "pytorch#126122"),
        ("h100-sxm", (1, 24, 4608, 128), 4 * 4608 ** 2 * 24 * 128 / 329.483e6, "pytorch#142132"))


def sdpa_cases(only: str) -> list[Case]:
    source = "PyTorch SDPA flash"
    if only not in source:
        return []
    cases = []
    for chip_name, (b, h, s, d), us, where in SDPA:
        floor, exp, why = attention_times(chip_name, (b, h, s, d), torch.bfloat16)
        cases.append(Case(source, f"{chip_name} {(b, h, s, d)} ({where})", us * 1e-6, floor, exp,
                          why))
    return cases


def attention_times(chip_name: str, shape: tuple, dtype) -> tuple:
    """(floor, expected, what the time is) of fxroof's fused attention over q = k = v of
    `shape` (batch, heads, tokens, head size) on the chip, device time only."""
    q = torch.empty(*shape, dtype=dtype, device="meta")
    report = report_of(capture(FunctionModule(F.scaled_dot_product_attention), (q, q, q)),
                       Target(chip=find_chip(chip_name)))
    floor, exp = device_times(report.kernels)
    return floor, exp, made_of(report.kernels, device_only=True)


# FlashAttention-2's own benchmark (benchmarks/benchmark_flash_attention.py, Dao-AILab/
# flash-attention at commit 0469c72): fp16, model width 2,048 (heads = 2,048 / head size),
# batch x tokens = 16,384, no dropout, forward TFLOPS = 4 x batch x tokens^2 x heads x head size
# / time (mean of 30 calls), as users post it: (chip, head size, ((batch, tokens, TFLOPS), ...),
# where). gpu-mode/ring-attention#10: "results from the dual RTX A5000 system", non-causal rows.
FA2_BENCHMARK = (("rtx-a5000", 64, ((32, 512, 84.08), (16, 1024, 81.02), (8, 2048, 81.31),
                                    (4, 4096, 81.69), (2, 8192, 81.86)),
                  "gpu-mode/ring-attention#10"),)
FA2_WIDTH = 2048


def fa2_benchmark_cases(only: str) -> list[Case]:
    source = "FlashAttention-2 benchmark"
    if only not in source:
        return []
    cases = []
    for chip_name, d, rows, where in FA2_BENCHMARK:
        for b, s, tflops in rows:
            h = FA2_WIDTH // d
            measured = 4 * b * s ** 2 * h * d / (tflops * 1e12)
            floor, exp, why = attention_times(chip_name, (b, h, s, d), torch.float16)
            cases.append(Case(source, f"{chip_name} {(b, h, s, d)} ({where})", measured, floor,
                              exp, why))
    return cases


# -- Liger-Kernel's timings of PyTorch's own kernels ------------------------------------------------

# A checkout of linkedin/Liger-Kernel (--liger): benchmark/data/all_benchmark_data.csv holds each
# of its benchmarks' median milliseconds (triton.testing.do_bench: CUDA events around each call,
# the L2 flushed between) for its Triton kernels and for the PyTorch ones they replace; the
# PyTorch rows of one kernel each are read here: torch.nn.LayerNorm ("huggingface" provider),
# torch.softmax ("torch"), forward only, on the GPUs of fxroof's table.
LIGER_CHECKOUT: list = []
LIGER_GPUS = {"NVIDIA A100-SXM4-80GB": "a100-80gb", "NVIDIA H100 80GB HBM3": "h100-sxm",
              "NVIDIA GeForce RTX 3090": "rtx-3090"}
LIGER_KERNELS = {
    ("layer_norm", "huggingface"): lambda m, n, dt: (
        lambda x, w: F.layer_norm(x, (x.shape[-1],), w, w, 1e-6),
        (torch.empty(m, n, device="meta", dtype=dt), torch.empty(n, device="meta", dtype=dt))),
    ("softmax", "torch"): lambda m, n, dt: (
        lambda x: torch.softmax(x, -1), (torch.empty(m, n, device="meta", dtype=dt),)),
}


def liger_cases(only: str) -> list[Case]:
    source = "Liger-Kernel's PyTorch baselines"
    if only not in source or not LIGER_CHECKOUT:
        return []
    rows = read_csv(LIGER_CHECKOUT[0] / "benchmark" / "data" / "all_benchmark_data.csv")
    cases = []
    for r in rows:
        build = LIGER_KERNELS.get((r["kernel_name"], r["kernel_provider"]))
        chip_name = LIGER_GPUS.get(r["gpu_name"])
        if not (build and chip_name and r["metric_name"] == "speed"
                and r["kernel_operation_mode"] == "forward"):
            continue
        config = json.loads(r["extra_benchmark_config_str"])
        dt = getattr(torch, config["dtype"].removeprefix("torch."))
        n = int(float(r["x_value"]))
        fn, args = build(config["M"], n, dt)
        report = fxroof.analyze(FunctionModule(fn), args, chip=chip_name, mode="eager")
        kernels = [k for k in report.kernels if k.category != "view"]
        floor, exp = device_times(kernels)
        cases.append(Case(source, f"{r['kernel_name']} {chip_name} {dtype_name(dt)} "
                                  f"{config['M']} x {n}",
                          float(r["y_value_50"]) / 1e3, floor, exp,
                          made_of(kernels, device_only=True)))
    return cases


# -- torch.mm by size, many GPUs ------------------------------------------------------------------

# (chip, issue, dtype, TFLOPS at 1024, 2048, 4096, 8192 and 10240 square): zzc0721/
# torch-performance-test-data (test.py at commit 9d82827), community runs filed as issues with
# their "详细性能数据" (detailed figures): 30 back-to-back torch.mm calls of two n x n matrices
# between two CUDA events, after 10 warm-up calls; TFLOPS = 2 n^3 x 30 / elapsed. Only GPUs in
# fxroof's table, each run as filed (clocks, power limits and hosts unrecorded; one RTX 5090 run,
# #200, sits 20-30% below the others at the same sizes). The V100 run is an SXM2 16 GB (the
# table's V100 is the 32 GB: same SMs, clocks and bandwidth); the RTX 3080 a 10 GB. The RTX PRO
# 6000 Workstation Edition's run, #160, is its matmul_efficiency's source (its best size).
MM_SIZES = (1024, 2048, 4096, 8192, 10240)
MM_RUNS = (("h100-sxm", "#79", "fp16", (179.13, 645.12, 760.04, 736.19, 668.42)),
           ("h100-sxm", "#79", "bf16", (176.62, 676.59, 788.72, 797.51, 719.72)),
           ("h100-pcie", "#95", "fp16", (201.71, 458.03, 457.32, 437.07, 449.65)),
           ("h100-pcie", "#95", "bf16", (217.70, 449.09, 495.93, 492.84, 471.79)),
           ("a40", "#185", "fp16", (85.02, 94.31, 113.51, 108.47, 119.18)),
           ("a40", "#185", "bf16", (82.35, 95.47, 115.16, 110.64, 122.29)),
           ("l4", "#120", "fp16", (54.81, 68.83, 53.02, 53.80, 52.47)),
           ("l4", "#120", "bf16", (54.42, 70.89, 54.91, 59.40, 56.90)),
           ("rtx-4090", "#78", "fp16", (106.10, 159.38, 168.38, 155.50, 156.88)),
           ("rtx-4090", "#78", "bf16", (126.84, 164.81, 151.50, 160.17, 158.54)),
           ("rtx-5090", "#96", "fp16", (93.77, 170.74, 181.21, 233.99, 234.63)),
           ("rtx-5090", "#96", "bf16", (94.16, 170.77, 181.17, 234.89, 240.05)),
           ("rtx-5090", "#124", "fp16", (139.18, 173.86, 217.99, 223.98, 220.03)),
           ("rtx-5090", "#124", "bf16", (93.44, 171.53, 182.19, 234.66, 236.99)),
           ("rtx-5090", "#200", "fp16", (63.67, 131.08, 140.24, 172.79, 179.02)),
           ("rtx-5090", "#200", "bf16", (95.10, 130.68, 134.08, 174.68, 178.86)),
           ("v100", "#140", "fp16", (57.30, 78.23, 95.73, 97.36, 89.37)),
           ("rtx-pro-6000", "#160", "fp16", (49.36, 285.06, 390.92, 331.78, 318.13)),
           ("rtx-pro-6000", "#160", "bf16", (52.41, 288.72, 368.43, 350.31, 333.93)),
           ("rtx-3080", "#114", "fp16", (43.21, 60.20, 61.12, 63.94, 64.10)),
           ("rtx-3080", "#114", "bf16", (50.13, 58.92, 61.51, 63.56, 64.68)))
# Held out: runs of the same test on GPUs whose table entries came after the ones above, each
# built from its vendor's figures and its family's estimates (chips.json), never from these runs:
# A100 PCIe 40GB (#108, torch 2.8), RTX 3060 12GB (#131, 2.7), RTX 4060 (#66, 2.7), RTX 4060 Ti
# (#145, 2.2; 8 or 16 GB unsaid), two RTX 5060s (#128, #147, 2.7), RTX A4000 (#97, 2.8, in a VM).
MM_HELD_OUT = (("a100-40gb-pcie", "#108", "fp16", (83.66, 214.73, 241.49, 197.51, 205.66)),
               ("a100-40gb-pcie", "#108", "bf16", (94.89, 138.46, 234.14, 215.26, 211.72)),
               ("rtx-3060", "#131", "fp16", (16.76, 23.10, 24.11, 24.75, 24.80)),
               ("rtx-3060", "#131", "bf16", (19.04, 23.69, 24.29, 25.42, 25.47)),
               ("rtx-4060", "#66", "fp16", (27.75, 32.64, 31.47, 30.68, 30.24)),
               ("rtx-4060", "#66", "bf16", (27.85, 30.10, 31.21, 30.67, 29.81)),
               ("rtx-4060-ti", "#145", "fp16", (41.34, 44.75, 45.03, 47.58, 47.80)),
               ("rtx-4060-ti", "#145", "bf16", (41.36, 44.75, 45.00, 47.48, 47.78)),
               ("rtx-5060", "#128", "fp16", (15.22, 37.69, 39.75, 41.46, 41.92)),
               ("rtx-5060", "#128", "bf16", (26.88, 38.38, 40.45, 41.57, 41.87)),
               ("rtx-5060", "#147", "fp16", (26.93, 38.03, 40.02, 41.32, 41.26)),
               ("rtx-5060", "#147", "bf16", (26.60, 37.34, 40.35, 41.83, 41.79)),
               ("rtx-a4000", "#97", "fp16", (58.54, 65.44, 57.56, 60.89, 57.80)),
               ("rtx-a4000", "#97", "bf16", (23.19, 62.78, 59.95, 56.10, 55.93)))
# Held out the same way, a second batch: the RTX 3080 Ti (#117, torch 2.6; #132, 2.8; #144, 2.10),
# RTX 4070 Ti SUPER (#70, 2.7), RTX 5070 (#100, 2.7.1, filed again as #101 and #102; #159, 2.7;
# #178, 2.7; #194, 2.7.1), RTX 5070 Ti (#172), H20 (#77) and L20 (#107). The H20's tensor rate
# is capped for export; its share is the one its cuDNN attention reaches (chips.json).
MM_HELD_OUT_2 = (("rtx-3080-ti", "#117", "fp16", (54.66, 67.44, 70.84, 68.06, 77.83)),
                 ("rtx-3080-ti", "#117", "bf16", (54.80, 67.96, 70.82, 72.72, 78.34)),
                 ("rtx-3080-ti", "#132", "fp16", (52.25, 66.03, 69.67, 69.40, 75.75)),
                 ("rtx-3080-ti", "#132", "bf16", (52.47, 67.66, 69.42, 70.34, 76.05)),
                 ("rtx-3080-ti", "#144", "fp16", (56.27, 69.02, 70.68, 70.51, 77.02)),
                 ("rtx-3080-ti", "#144", "bf16", (55.14, 69.27, 71.56, 71.35, 77.72)),
                 ("rtx-4070-ti-super", "#70", "fp16", (72.73, 82.40, 89.64, 90.73, 92.73)),
                 ("rtx-4070-ti-super", "#70", "bf16", (72.82, 79.41, 87.75, 91.00, 92.74)),
                 ("rtx-5070", "#100", "fp16", (40.81, 59.29, 66.02, 67.44, 66.57)),
                 ("rtx-5070", "#100", "bf16", (39.98, 58.98, 66.38, 67.19, 67.08)),
                 ("rtx-5070", "#159", "fp16", (40.81, 56.04, 65.54, 66.28, 66.13)),
                 ("rtx-5070", "#159", "bf16", (41.68, 55.38, 64.07, 67.45, 66.89)),
                 ("rtx-5070", "#178", "fp16", (37.93, 57.88, 64.55, 66.39, 67.27)),
                 ("rtx-5070", "#178", "bf16", (42.62, 54.53, 64.83, 66.74, 65.64)),
                 ("rtx-5070", "#194", "fp16", (40.02, 56.19, 62.17, 65.95, 65.63)),
                 ("rtx-5070", "#194", "bf16", (39.29, 57.51, 64.14, 65.40, 64.85)),
                 ("rtx-5070-ti", "#172", "fp16", (70.73, 68.48, 79.02, 83.95, 83.44)),
                 ("rtx-5070-ti", "#172", "bf16", (65.40, 81.93, 78.11, 84.04, 85.32)),
                 ("h20", "#77", "fp16", (95.47, 119.78, 133.18, 138.52, 142.09)),
                 ("h20", "#77", "bf16", (95.12, 120.27, 133.41, 138.60, 142.25)),
                 ("l20", "#107", "fp16", (88.49, 104.66, 113.26, 108.96, 106.53)),
                 ("l20", "#107", "bf16", (87.87, 103.97, 111.82, 114.14, 107.95)))
# And a third: the RTX 5080 (#104, torch 2.7), RTX 5060 Ti (#85, 2.9; #129, 2.7; #134, 2.7,
# filed again as #135; #136, 2.8; #163, 2.7; 8 or 16 GB unsaid, the same GPU), RTX 3060 Ti
# (#55, 2.8; #133, 2.7) and RTX 4070 SUPER (#54, 2.5; #196, 2.8, its bf16 at 10,240 from the
# issue's summary row). Not taken: #171, an RTX 3070 with its memory modded to 16 GB and its
# core clock set to 2,070 MHz, not the card the entry describes.
MM_HELD_OUT_3 = (("rtx-5080", "#104", "fp16", (74.29, 80.19, 89.17, 102.20, 102.42)),
                 ("rtx-5080", "#104", "bf16", (73.40, 84.49, 91.13, 102.89, 102.32)),
                 ("rtx-5060-ti", "#85", "fp16", (37.96, 46.02, 47.56, 47.82, 47.87)),
                 ("rtx-5060-ti", "#85", "bf16", (37.46, 41.19, 46.78, 48.11, 48.24)),
                 ("rtx-5060-ti", "#129", "fp16", (39.26, 39.08, 44.44, 45.82, 45.89)),
                 ("rtx-5060-ti", "#129", "bf16", (39.21, 41.15, 44.49, 45.88, 46.05)),
                 ("rtx-5060-ti", "#134", "fp16", (38.42, 41.62, 45.58, 46.84, 47.51)),
                 ("rtx-5060-ti", "#134", "bf16", (39.12, 41.19, 45.78, 46.03, 47.41)),
                 ("rtx-5060-ti", "#136", "fp16", (39.37, 47.14, 48.76, 48.68, 48.52)),
                 ("rtx-5060-ti", "#136", "bf16", (38.47, 42.15, 47.70, 48.96, 49.20)),
                 ("rtx-5060-ti", "#163", "fp16", (39.86, 41.19, 48.47, 50.07, 50.24)),
                 ("rtx-5060-ti", "#163", "bf16", (39.87, 43.34, 49.30, 50.09, 50.21)),
                 ("rtx-3060-ti", "#55", "fp16", (27.90, 34.70, 35.03, 36.47, 36.43)),
                 ("rtx-3060-ti", "#55", "bf16", (27.96, 34.68, 34.95, 36.42, 36.50)),
                 ("rtx-3060-ti", "#133", "fp16", (29.03, 31.00, 31.99, 36.54, 31.91)),
                 ("rtx-3060-ti", "#133", "bf16", (28.91, 30.55, 30.88, 31.90, 33.00)),
                 ("rtx-4070-super", "#54", "fp16", (50.26, 66.89, 73.62, 73.51, 73.49)),
                 ("rtx-4070-super", "#54", "bf16", (42.28, 68.02, 74.03, 74.34, 74.49)),
                 ("rtx-4070-super", "#196", "fp16", (49.45, 65.07, 56.90, 59.79, 59.23)),
                 ("rtx-4070-super", "#196", "bf16", (41.63, 59.78, 69.66, 71.61, 72.53)))
# A fourth: AWS's A10G (#126, torch 2.7), whose entry takes its peak and share from other
# sources (public MFU tables' 70 TFLOP/s, mag-/gpu_benchmark's 69.7), and the RTX 2080 Ti
# (#181, 2.7), from the Turing whitepaper and the GeForce share; the runs were found while the
# entries were drafted, and nothing in the entries was taken from them. Not taken: the 2080
# Ti's bf16 (Turing has no bf16 path: 6-7 TFLOP/s, emulated; fxroof prices it at the fp32 peak
# and says so in the report's notes) and #115, a 2080 Ti modded to 22 GB.
MM_HELD_OUT_4 = (("a10g", "#126", "fp16", (49.00, 60.62, 62.46, 65.67, 69.47)),
                 ("a10g", "#126", "bf16", (47.92, 60.57, 62.48, 66.59, 69.47)),
                 ("rtx-2080-ti", "#181", "fp16", (26.01, 56.78, 50.94, 49.61, 47.96)))
# A fifth: Pascal's Tesla P100, the GPU of Kaggle's notebooks, PCIe (#164, torch 2.7; #177,
# 2.7, its contributor's last of four filings, #174-#177) and SXM2 (#180, 2.7): no tensor cores,
# so fp32 products at the share estimated for 64-lane SMs and fp16 ones computed in fp32 at the
# same rate. Read while the entries were drafted; nothing in them was taken from these runs.
# Their bf16 (emulated) is left out, as the RTX 2080 Ti's.
MM_HELD_OUT_5 = (("p100", "#164", "fp32", (3.51, 4.75, 7.81, 8.12, 7.97)),
                 ("p100", "#164", "fp16", (7.20, 7.21, 7.89, 7.20, 7.24)),
                 ("p100", "#177", "fp32", (5.46, 6.65, 8.21, 8.63, 8.56)),
                 ("p100", "#177", "fp16", (6.94, 7.61, 8.39, 7.72, 7.74)),
                 ("p100-sxm2", "#180", "fp32", (5.48, 7.38, 9.04, 9.50, 9.49)),
                 ("p100-sxm2", "#180", "fp16", (7.96, 8.51, 8.82, 7.29, 7.16)))
# Runs filed with the summary table only (each dtype's best TFLOPS over the five sizes), on GPUs
# with no per-size run above: (chip, issue, dtype, best TFLOPS). RTX 3090 #42 (torch 2.5.1),
# RTX A6000 #46 (2.8, in docker), RTX 4090 #41 (2.6) and #50 (2.3). Set against the best of
# fxroof's five sizes, at that size.
MM_BEST = (("rtx-3090", "#42", "fp16", 75.48), ("rtx-3090", "#42", "bf16", 76.58),
           ("rtx-a6000", "#46", "fp16", 120.49), ("rtx-a6000", "#46", "bf16", 123.34),
           ("rtx-4090", "#41", "fp16", 172.39), ("rtx-4090", "#41", "bf16", 167.71),
           ("rtx-4090", "#50", "fp16", 165.94), ("rtx-4090", "#50", "bf16", 165.71))
# Held out: the rows of the repository's own summary table (database.md at commit 9d82827: each
# run's best TFLOPS a dtype over the five sizes, with its contributor) on GPUs in fxroof's table,
# read after every entry above was made and changing none. Left out by rule before any was set
# beside a prediction: rows that repeat a run compared above (its issue's figures), a run
# whose best is a chip's matmul_efficiency (the T4's, pull request #29), runs from another
# harness (the SVCFusion bundle), overclocked cards, China-market variants (RTX 4090 D, RTX
# 5090 D), laptop GPUs, GPUs the table lacks (V100S, H800 PCIe, RTX PRO 6000 Server Edition;
# the A800 SXM, in the table since, came in then; the V100S, RTX 4090 D, RTX 2080 and H800 PCIe
# have entries since, their rows a source of their own, MM_SUMMARY_ADDED),
# a card whose variant is unsaid (an "A100 40GB" in docker), and bf16 on a GPU without bf16
# units (emulated; the report says so). Memory-modded RTX 4090s (48 GB) are kept: the same
# AD102 and clocks. (chip, contributor and setting, dtype, best TFLOPS)
MM_SUMMARY = (("b200", "zzc0208, GCP a4-highgpu-8g", "fp16", 1627.64),
              ("b200", "zzc0208, GCP a4-highgpu-8g", "bf16", 1696.03),
              ("t4", "zzc0208, Colab", "fp16", 41.91),
              ("t4", "zzc0208, Kaggle T4 x2", "fp16", 41.93),
              ("a100-80gb", "Charming, docker", "fp16", 258.74),
              ("a100-80gb", "Charming, docker", "bf16", 264.53),
              ("a800", "Charming, docker", "fp16", 266.04),
              ("a800", "Charming, docker", "bf16", 266.48),
              ("h20", "Charming, docker", "fp16", 141.73),
              ("h20", "Charming, docker", "bf16", 141.86),
              ("rtx-3090", "zzc0208", "fp16", 75.64), ("rtx-3090", "zzc0208", "bf16", 76.34),
              ("rtx-3090", "a-cold-bird, cloud", "fp16", 75.88),
              ("rtx-3090", "a-cold-bird, cloud", "bf16", 76.68),
              ("rtx-4070-super", "zzc0208", "fp16", 75.88),
              ("rtx-4070-super", "zzc0208", "bf16", 76.10),
              ("rtx-4070-super", "RepentStar", "fp16", 74.73),
              ("rtx-4070-super", "RepentStar", "bf16", 73.63),
              ("rtx-4090", "Charming", "fp16", 165.08), ("rtx-4090", "Charming", "bf16", 170.06),
              ("rtx-4090", "sd0ric4", "fp16", 171.06), ("rtx-4090", "sd0ric4", "bf16", 173.31),
              ("rtx-4090", "HuanLin, docker", "fp16", 162.35),
              ("rtx-4090", "HuanLin, docker", "bf16", 162.39),
              ("rtx-4090", "a-cold-bird, cloud", "fp16", 167.80),
              ("rtx-4090", "a-cold-bird, cloud", "bf16", 163.09),
              ("rtx-4090", "Charming, 48 GB, docker", "fp16", 158.93),
              ("rtx-4090", "Charming, 48 GB, docker", "bf16", 160.53),
              ("rtx-4090", "a-cold-bird, 48 GB, cloud", "fp16", 167.27),
              ("rtx-4090", "a-cold-bird, 48 GB, cloud", "bf16", 162.43),
              ("rtx-5090", "HuanLin, cloud", "fp16", 224.41),
              ("rtx-5090", "HuanLin, cloud", "bf16", 236.03),
              ("rtx-5090", "sakmist", "fp16", 237.63), ("rtx-5090", "sakmist", "bf16", 242.18),
              ("h100-sxm", "clow1710", "fp16", 758.14), ("h100-sxm", "clow1710", "bf16", 783.66),
              ("l40s", "Mightlaus, docker", "fp16", 264.02),
              ("l40s", "Mightlaus, docker", "bf16", 269.15),
              ("rtx-pro-6000", "AlfreSama", "fp16", 315.51),
              ("rtx-pro-6000", "AlfreSama", "bf16", 417.98),
              ("h200", "Mightlaus, docker", "fp16", 759.40),
              ("h200", "Mightlaus, docker", "bf16", 790.29),
              ("rtx-4070-ti-super", "RaruseReiji", "fp16", 89.93),
              ("rtx-4070-ti-super", "RaruseReiji", "bf16", 89.36),
              ("rtx-3070", "Nian-Ci", "fp16", 43.02), ("rtx-3070", "Nian-Ci", "bf16", 41.44),
              ("v100", "hhhhhge", "fp16", 94.84),
              ("rtx-3080", "xiaoxi68", "fp16", 53.41), ("rtx-3080", "xiaoxi68", "bf16", 24.94),
              ("rtx-5070-ti", "dayi, WSL2", "fp16", 98.70),
              ("rtx-5070-ti", "dayi, WSL2", "bf16", 99.06),
              ("rtx-5060", "Do1e", "fp16", 39.63), ("rtx-5060", "Do1e", "bf16", 40.12),
              ("rtx-3080", "2048Nemo, 20 GB", "fp16", 63.53),
              ("rtx-3080", "2048Nemo, 20 GB", "bf16", 64.71),
              ("rtx-2080-ti", "yjzxkxdn, 22 GB, cloud", "fp16", 58.58))
# The same table's FP32 column: test.py turns TF32 off for it, so the products run on the CUDA
# cores, whose share (fp32_matmul_efficiency) comes from another repository's runs
# (chsasank/device-benchmarks); none of these went into it. The same rules as above, but for
# repeats: no fp32 figure of these runs was compared before. (chip, contributor, best TFLOPS)
MM_FP32 = (("b200", "zzc0208, GCP a4-highgpu-8g", 66.24), ("t4", "zzc0208, Colab", 4.17),
           ("t4", "sxjeru, Kaggle", 4.43), ("t4", "zzc0208, Kaggle T4 x2", 4.35),
           ("a100-80gb", "Charming, docker", 19.18), ("a800", "Charming, docker", 19.08),
           ("h20", "Charming, docker", 31.95),
           ("h20", "xiaoxi68, cloud", 31.99), ("a100-40gb-pcie", "yjzxkxdn, cloud", 17.56),
           ("h100-sxm", "HaxxorCialtion, docker", 51.88), ("h100-sxm", "clow1710", 52.11),
           ("h100-pcie", "htdxd", 36.95), ("h200", "Mightlaus, docker", 51.34),
           ("l40s", "Mightlaus, docker", 46.88), ("l20", "yjzxkxdn, cloud", 37.27),
           ("l4", "Arcannite", 15.38), ("v100", "hhhhhge", 14.06),
           ("rtx-a6000", "Mightlaus, docker", 23.92), ("rtx-a4000", "kakaru, VM", 11.90),
           ("rtx-pro-6000", "AlfreSama", 77.24), ("rtx-2080-ti", "yjzxkxdn, 22 GB, cloud", 13.04),
           ("rtx-3060-ti", "sjzsd147", 13.83), ("rtx-3070", "Nian-Ci", 13.69),
           ("rtx-3080", "xiaoxi68", 15.56), ("rtx-3080", "2048Nemo, 20 GB", 21.45),
           ("rtx-3080", "yjzxkxdn, cloud", 21.07), ("rtx-3080-ti", "Charming, docker", 24.37),
           ("rtx-3080-ti", "datdanboi25", 24.90), ("rtx-3090", "zzc0208", 24.46),
           ("rtx-3090", "a-cold-bird, cloud", 24.84), ("rtx-3090", "Mightlaus", 24.79),
           ("rtx-4060", "ytinyu", 8.34), ("rtx-4070-super", "zzc0208", 24.52),
           ("rtx-4070-super", "RepentStar", 25.07), ("rtx-4070-ti-super", "RaruseReiji", 30.25),
           ("rtx-4070-ti-super", "Kalt003", 31.25), ("rtx-4090", "Charming", 55.01),
           ("rtx-4090", "sd0ric4", 54.77), ("rtx-4090", "HuanLin, docker", 46.48),
           ("rtx-4090", "a-cold-bird, cloud", 54.67), ("rtx-4090", "CharonlYMY", 51.57),
           ("rtx-4090", "xiaoxi68, cloud", 53.84), ("rtx-4090", "Charming, 48 GB, docker", 54.69),
           ("rtx-4090", "a-cold-bird, 48 GB, cloud", 53.79),
           ("rtx-4090", "Mightlaus, 48 GB", 56.01), ("rtx-5060", "Do1e", 13.33),
           ("rtx-5060-ti", "Alkaid-C", 17.43), ("rtx-5070", "lukezzt8", 24.11),
           ("rtx-5070-ti", "dayi, WSL2", 33.08), ("rtx-5080", "zhoujiahao111", 33.64),
           ("rtx-5090", "HuanLin, cloud", 69.16), ("rtx-5090", "sakmist", 67.57),
           ("rtx-5090", "mfzzf, cloud", 70.47))
# Held out: the same table's rows on four GPUs it had and fxroof's table lacked, entered from
# their vendors' figures and their dies' siblings' shares (Tesla V100S, GeForce RTX 4090 D, GeForce
# RTX 2080; the H800 PCIe as the H100 PCIe), read while the entries were drafted, nothing in
# them taken from these runs. The
# same rules: bf16 on the V100S and the RTX 2080 left out (no bf16 units). (chip, contributor and
# setting, dtype, best TFLOPS)
MM_SUMMARY_ADDED = (("v100s", "zzc0208, docker", "fp16", 88.92),
                    ("v100s", "zzc0208, docker", "fp32", 13.55),
                    ("rtx-4090-d", "colstone, 48 GB, docker", "fp16", 155.50),
                    ("rtx-4090-d", "colstone, 48 GB, docker", "bf16", 151.09),
                    ("rtx-4090-d", "colstone, 48 GB, docker", "fp32", 51.41),
                    ("rtx-4090-d", "a-cold-bird, 48 GB, cloud", "fp16", 149.15),
                    ("rtx-4090-d", "a-cold-bird, 48 GB, cloud", "bf16", 145.77),
                    ("rtx-4090-d", "a-cold-bird, 48 GB, cloud", "fp32", 49.05),
                    ("rtx-4090-d", "a-cold-bird, 24 GB, cloud", "fp16", 152.64),
                    ("rtx-4090-d", "a-cold-bird, 24 GB, cloud", "bf16", 148.91),
                    ("rtx-4090-d", "a-cold-bird, 24 GB, cloud", "fp32", 50.07),
                    ("rtx-2080", "Charming, docker", "fp16", 39.03),
                    ("rtx-2080", "Charming, docker", "fp32", 9.23),
                    ("h800-pcie", "yjzxkxdn, AutoDL", "fp16", 478.23),
                    ("h800-pcie", "yjzxkxdn, AutoDL", "bf16", 503.83),
                    ("h800-pcie", "yjzxkxdn, AutoDL", "fp32", 37.77))
MM_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


# Each table of per-size runs is a source of its own: the first the model was checked on, the
# others held out, their chips entered before their runs were set beside them.
MM_SOURCES = {"torch.mm by size": MM_RUNS, "torch.mm by size, chips added since": MM_HELD_OUT,
              "torch.mm by size, a second batch of chips": MM_HELD_OUT_2,
              "torch.mm by size, a third batch of chips": MM_HELD_OUT_3,
              "torch.mm by size, a fourth batch of chips": MM_HELD_OUT_4,
              "torch.mm by size, a fifth batch: Pascal's P100": MM_HELD_OUT_5}


def square_mm_cases(only: str) -> list[Case]:
    """Back-to-back eager calls: each costs the longer of its kernel and its host dispatch, which
    is the eager report's time of one torch.mm (the dispatch hides behind the kernel before). A
    loop of one op has no model code around its calls: no glue (chips/chip.py, glue_s)."""
    runs = [(source, *r) for source, table in MM_SOURCES.items() for r in table
            if only in source]
    cases = []
    for source, chip_name, issue, dtype, tflops in runs:
        for n, rate in zip(MM_SIZES, tflops):
            report = square_mm_report(chip_name, dtype, n)
            cases.append(Case(source, f"{chip_name} {dtype} {n} ({issue})",
                              2 * n ** 3 / (rate * 1e12), report.summary.floor_s, report.time_s,
                              made_of(report.kernels)))
    best_of = (("torch.mm best of five sizes", MM_BEST),
               ("torch.mm best of five sizes, the summary table's runs", MM_SUMMARY),
               ("torch.mm fp32 (TF32 off), the summary table's runs",
                tuple((chip, run, "fp32", best) for chip, run, best in MM_FP32)),
               ("torch.mm best of five sizes, the summary table's chips entered since",
                MM_SUMMARY_ADDED))
    for source, table in best_of:
        cases += [best_size_case(source, f"{chip_name} {dtype}, best at {{n}} ({run})",
                                 chip_name, dtype, best, MM_SIZES)
                  for chip_name, run, dtype, best in (table if only in source else ())]
    return cases


def square_mm_report(chip_name: str, dtype: str, n: int):
    """The eager report of one n x n torch.mm in a loop of them (no model code: no glue); fp32
    with TF32 off, as the runs' script sets it."""
    a = torch.empty(n, n, dtype=MM_DTYPES[dtype], device="meta")
    loop = dataclasses.replace(find_chip(chip_name), glue_s=0.0)
    with matmul_tf32(False):
        return report_of(capture(FunctionModule(torch.mm), (a, a)),
                         Target(chip=loop, mode="eager"))


def best_size_case(source: str, label: str, chip_name: str, dtype: str, best: float,
                   sizes) -> Case:
    """A run filed with its best rate only: set at the size of `sizes` fxroof runs fastest."""
    n, report = max(((n, square_mm_report(chip_name, dtype, n)) for n in sizes),
                    key=lambda r: r[0] ** 3 / r[1].time_s)
    return Case(source, label.format(n=n), 2 * n ** 3 / (best * 1e12), report.summary.floor_s,
                report.time_s, made_of(report.kernels))



# -- another community table: matmul and copy ------------------------------------------------------

# chsasank/device-benchmarks README (commit 7ccc883), "Matrix Multiplication FLOPS and BW": its
# benchmark.py times one torch.matmul of two n x n matrices at a time (n = 2^8 to 2^12.75 in
# quarter powers, 256 to 6,888; host clock between synchronizes, 10 calls a size, their mean) and
# the table gives each dtype's best; and one copy_ of 2^26.5 fp32 elements (380 MB), twice its
# bytes over its time, the script's last line. Held out but for the figures taken from it:
# every fp32_matmul_efficiency of the table (so its fp32 column is no check here) and the A10's
# matmul_efficiency (so the A10's matmuls are left out). Left out too: the A100 80GB (SXM or
# PCIe unsaid: their shares and bandwidths differ), laptop GPUs and the RTX 2070 SUPER (not in
# the table), bf16 on GPUs without bf16 units (emulated). (chip, dtype, best TFLOPS)
DEVICE_BENCH_MM = (("t4", "fp16", 25), ("l4", "fp16", 65), ("l4", "bf16", 66), ("v100", "fp16", 84),
                   ("h100-pcie", "fp16", 435), ("h100-pcie", "bf16", 449),
                   ("rtx-3060", "fp16", 26), ("rtx-3060", "bf16", 26),
                   ("rtx-4060-ti", "fp16", 42), ("rtx-4060-ti", "bf16", 46),
                   ("rtx-4070-ti-super", "fp16", 91), ("rtx-4070-ti-super", "bf16", 89),
                   ("rtx-5070-ti", "fp16", 98), ("rtx-5070-ti", "bf16", 98),
                   ("rtx-4090", "fp16", 150), ("rtx-4090", "bf16", 168))
DEVICE_BENCH_MM_SIZES = tuple(int(2 ** (8 + k / 4)) for k in range(20))
# (chip, the run's label where there are two, GB/s): the copy's column
DEVICE_BENCH_COPY = (("t4", "", 240), ("l4", "", 235), ("v100", "", 766), ("a10", "", 469),
                     ("h100-pcie", "", 1630), ("rtx-3060", "", 330), ("rtx-3090", "", 831),
                     ("rtx-4060-ti", "", 234), ("rtx-4070-super", "", 411),
                     ("rtx-4070-ti-super", "", 602), ("rtx-5070-ti", "", 762),
                     ("rtx-4090", "", 912), ("rtx-4090", "WSL2", 885))
DEVICE_BENCH_COPY_ELEMENTS = int(2 ** 26.5)


def device_bench_cases(only: str) -> list[Case]:
    """chsasank/device-benchmarks' matmul and copy columns beside fxroof's eager report of the
    same call (one op timed alone: no model code, no glue)."""
    cases = []
    source = "device-benchmarks matmul (held out)"
    cases += [best_size_case(source, f"{chip_name} {dtype}, best at {{n}}", chip_name, dtype,
                             best, DEVICE_BENCH_MM_SIZES)
              for chip_name, dtype, best in (DEVICE_BENCH_MM if only in source else ())]
    source = "device-benchmarks copy (held out)"
    n = DEVICE_BENCH_COPY_ELEMENTS
    a = torch.empty(n, device="meta")
    captured = capture(FunctionModule(torch.Tensor.copy_), (a, a.clone()))
    for chip_name, run, gbps in (DEVICE_BENCH_COPY if only in source else ()):
        alone = dataclasses.replace(find_chip(chip_name), glue_s=0.0)
        report = report_of(captured, Target(chip=alone, mode="eager"))
        cases.append(Case(source, f"{chip_name} copy of {n * 4 / 1e6:.0f} MB"
                          + (f" ({run})" if run else ""), 2 * n * 4 / (gbps * 1e9),
                          report.summary.floor_s, report.time_s, made_of(report.kernels)))
    return cases

# -- gpt-fast decode -----------------------------------------------------------------------------

# (label, models/llama.py preset, what-if, published tokens/s): pytorch-labs/gpt-fast README.md at
# commit 32971d3, "Benchmarks" (A100 80GB, batch 1, prompt 5 tokens, CUDA graphs).
GPT_FAST = (("Llama-2-7B bf16", "llama2-7b", None, 104.9),
            ("Llama-2-7B int8", "llama2-7b", "w8", 155.58),
            ("Llama-2-7B int4 g32", "llama2-7b", "w4g32", 196.80),
            ("Llama-2-70B int8", "llama2-70b", "w8", 19.13),
            ("Llama-2-70B int4 g32", "llama2-70b", "w4g32", 25.25),
            ("Llama-3.1-8B bf16", "llama3-8b", None, 93.89),
            ("Llama-3.1-8B int8", "llama3-8b", "w8", 137.64),
            ("Llama-3.1-70B int8", "llama3-70b", "w8", 18.04))
# The rows whose bandwidths (the README's "Memory Bandwidth (GB/s)", beside bf16's) are
# fxroof's DEQUANT_STREAM_SHARE (chips/expected.py): they check little.
DEQUANT_SOURCE_ROWS = ("Llama-2-7B int8", "Llama-2-7B int4 g32")
# The same README, "Tensor Parallelism" and "Tensor Parallelism + Quantization" (tensor-parallel
# degree after the what-if); the one-GPU rows are the table above.
GPT_FAST_TP = (("Llama-2-7B bf16 tp2", "llama2-7b", None, 2, 168.84),
               ("Llama-2-7B bf16 tp4", "llama2-7b", None, 4, 254.02),
               ("Llama-2-7B bf16 tp8", "llama2-7b", None, 8, 328.43),
               ("Llama-2-70B bf16 tp2", "llama2-70b", None, 2, 21.32),
               ("Llama-2-70B bf16 tp4", "llama2-70b", None, 4, 38.01),
               ("Llama-2-70B bf16 tp8", "llama2-70b", None, 8, 62.50),
               ("Llama-3.1-8B bf16 tp2", "llama3-8b", None, 2, 149.10),
               ("Llama-3.1-8B bf16 tp4", "llama3-8b", None, 4, 217.21),
               ("Llama-3.1-8B bf16 tp8", "llama3-8b", None, 8, 276.01),
               ("Llama-3.1-70B bf16 tp2", "llama3-70b", None, 2, 16.03),
               ("Llama-3.1-70B bf16 tp4", "llama3-70b", None, 4, 37.45),
               ("Llama-3.1-70B bf16 tp8", "llama3-70b", None, 8, 58.78),
               ("Llama-2-70B int8 tp8", "llama2-70b", "w8", 8, 80.44),
               ("Llama-2-70B int4 g32 tp8", "llama2-70b", "w4g32", 8, 90.77),
               ("Llama-3.1-70B int8 tp8", "llama3-70b", "w8", 8, 75.58))
# mixtral-moe/README.md at the same commit (8xA100-80GB, 330 W, batch 1, 5-token prompt): tokens/s
# by GPUs, bf16 (which needs 2) and int8; predicted with models/moe.py's decoder, its experts in
# gpt-fast's layout (GatheredExperts).
MIXTRAL = (("Mixtral-8x7B int8", "w8", 1, 97.92),
           ("Mixtral-8x7B bf16 tp2", None, 2, 96.67),
           ("Mixtral-8x7B bf16 tp4", None, 4, 155.35),
           ("Mixtral-8x7B bf16 tp8", None, 8, 227.82),
           ("Mixtral-8x7B int8 tp2", "w8", 2, 155.03),
           ("Mixtral-8x7B int8 tp4", "w8", 4, 216.87),
           ("Mixtral-8x7B int8 tp8", "w8", 8, 279.35))
GPT_FAST_PROMPT, GPT_FAST_TOKENS = 5, 100


def gpt_fast_cases(only: str, tensor_parallel: bool = False) -> list[Case]:
    """tensor_parallel: the tensor-parallel rows too (a sharded capture is slow: about 25
    minutes for the 21 on two cores)."""
    llama, moe = str(ROOT / "models" / "llama.py"), str(ROOT / "models" / "moe.py") + ":decoder"
    runs = [("gpt-fast A100 decode", llama, label, preset, whatif, 1, rate)
            for label, preset, whatif, rate in GPT_FAST]
    runs += [("gpt-fast A100 decode", moe, label, "mixtral-8x7b", whatif, tp, rate)
             for label, whatif, tp, rate in MIXTRAL if tp == 1]
    if tensor_parallel:
        runs += [("gpt-fast A100 tensor parallel", llama, *row) for row in GPT_FAST_TP]
        runs += [("gpt-fast A100 Mixtral tensor parallel", moe, label, "mixtral-8x7b", whatif, tp,
                  rate) for label, whatif, tp, rate in MIXTRAL if tp > 1]
    runs = [r for r in runs if only in r[0]]
    if not runs:
        return []
    return [decode_case(source, workload, label, preset, whatif, tp, tokens_per_s, "a100-80gb",
                        GPT_FAST_PROMPT, GPT_FAST_TOKENS)
            for source, workload, label, preset, whatif, tp, tokens_per_s in runs]


def decode_case(source, workload, label, preset, whatif, tp, tokens_per_s, chip, prompt,
                tokens) -> Case:
    """A gpt-fast style generation (generate.py, and torchao's copy of it): the prefill yields
    the first of `tokens`, decode steps the rest; with tp > 1 the times are one rank's, its
    all-reduces included. The decode step is compiled with mode="reduce-overhead" (a CUDA
    graph), the prefill left eager (no --compile_prefill). Both generate.py set
    torch._inductor.config.coordinate_descent_tuning, under which Inductor runs products of
    one row as reductions (fxroof.fuse.policy.one_row_product)."""
    import torch._inductor.config as inductor_config

    from fxroof.studies.llm import generation
    options = {"preset": preset}
    if workload.endswith("moe.py:decoder"):    # gpt-fast's Mixtral: its own experts' layout
        options["experts"] = "gathered"
    with inductor_config.patch(coordinate_descent_tuning=True):
        g = generation(workload, prompt=prompt, new_tokens=tokens - 1, options=options,
                       chip=chip, mode="cudagraphs", quantize=whatif, tp=tp,
                       prompt_logits="all")      # generate.py's prefill: the model's forward
    prefill = g.prefill.eager
    # the decode steps' floors from the first and last (the context grows by a few hundred keys)
    floor = prefill.floor_s + g.new_tokens * (g.first.summary.floor_s
                                              + g.last.summary.floor_s) / 2
    why = made_of(g.first.kernels)
    if source.startswith("gpt-fast") and label in DEQUANT_SOURCE_ROWS:
        why += " (the dequantizing share's source)"
    return Case(source, f"{label}: {tokens_per_s} tokens/s", tokens / tokens_per_s, floor,
                g.total_s - g.prefill.time_s + prefill.time_s, why)


# -- torchao decode ------------------------------------------------------------------------------

# (chip, label, models/llama.py preset, what-if, published tokens/s): pytorch/ao
# torchao/quantization/README.md at commit 9e5059e2c, "Benchmarks": generate.py (gpt-fast's, with
# torchao's quantizers), batch 1, prompt "Hello, my name is" (6 tokens with the BOS), 200 new
# tokens, --compile (decode as a CUDA graph). "CUDA backend | NVIDIA-A100-80GB GPU" (rows of
# 2024-09, Llama-2-7B chat and Llama-3-8B) and "NVIDIA-H100 GPU" (2024-10, Llama-3.1-8B; the
# variant unsaid: priced as the SXM). int8wo: int8 weights, a scale per output row (w8);
# int4wo-64: tinygemm's int4 in groups of 64 (w4g64); float8wo: fp8 weights cast up in the
# matmul (wfp8). Not taken: int8dq (int8 matmuls at batch 1, 9 tokens/s: a kernel choice, not
# the hardware), fp6 and the autoquant rows (kernels fxroof has no what-if for), and the float8
# dynamic rows (FLOAT8_DYNAMIC below).
TORCHAO = (("a100-80gb", "Llama-2-7B bf16", "llama2-7b", None, 107.38),
           ("a100-80gb", "Llama-2-7B int8wo", "llama2-7b", "w8", 170.83),
           ("a100-80gb", "Llama-2-7B int4wo-64", "llama2-7b", "w4g64", 201.14),
           ("a100-80gb", "Llama-3-8B bf16", "llama3-8b", None, 95.64),
           ("a100-80gb", "Llama-3-8B int8wo", "llama3-8b", "w8", 153.03),
           ("a100-80gb", "Llama-3-8B int4wo-64", "llama3-8b", "w4g64", 180.80),
           ("h100-sxm", "Llama-3.1-8B bf16", "llama3-8b", None, 126.90),
           ("h100-sxm", "Llama-3.1-8B int8wo", "llama3-8b", "w8", 198.85),
           ("h100-sxm", "Llama-3.1-8B int4wo-64", "llama3-8b", "w4g64", 241.39),
           ("h100-sxm", "Llama-3.1-8B float8wo", "llama3-8b", "wfp8", 178.46))
# The same H100 table's fp8 matmuls with activations quantized at each call (torch._scaled_mm,
# per tensor and per row): a source of their own, as fxroof prices an fp8 GEMV like any other;
# the what-if's dynamic scales (dq-tensor, dq) charge the quantizing kernels before each.
FLOAT8_DYNAMIC = (("h100-sxm", "Llama-3.1-8B float8dq per tensor", "llama3-8b", "fp8+dq-tensor",
                   116.40),
                  ("h100-sxm", "Llama-3.1-8B float8dq per row", "llama3-8b", "fp8+dq", 154.63))
TORCHAO_PROMPT, TORCHAO_TOKENS = 6, 200


def torchao_cases(only: str) -> list[Case]:
    llama = str(ROOT / "models" / "llama.py")
    runs = [("torchao " + ("A100" if r[0].startswith("a100") else "H100") + " decode", r)
            for r in TORCHAO]
    runs += [("torchao H100 float8 dynamic", r) for r in FLOAT8_DYNAMIC]
    return [decode_case(source, llama, label, preset, whatif, 1, rate, chip, TORCHAO_PROMPT,
                        TORCHAO_TOKENS)
            for source, (chip, label, preset, whatif, rate) in runs if only in source]


# -- TensorRT-LLM static batches ----------------------------------------------------------------

# NVIDIA/TensorRT-LLM docs/source/performance.md at commit 138f96d: "Peak Throughput" (0.6.1;
# the L40S table 0.5) as (chip, what-if, model, tp, batch, input, output, output tokens/s per
# GPU) and "Low Latency" (0.5, batch 1) as (chip, what-if, model, tp, input, first-token ms).
# H100 and L40S engines are fp8 with an fp8 KV cache; the A100's fp16.
FP8 = "fp8+kv-fp8"
TRT_BATCHES = (("a100-80gb", None, "gpt-j-6b", 1, 512, 128, 128, 6374),
               ("a100-80gb", None, "gpt-j-6b", 1, 60, 2048, 128, 670),
               ("a100-80gb", None, "llama2-7b", 1, 384, 128, 128, 5586),
               ("a100-80gb", None, "llama2-7b", 1, 60, 128, 2048, 1928),
               ("a100-80gb", None, "llama2-7b", 1, 52, 2048, 128, 591),
               ("h100-sxm", FP8, "gpt-j-6b", 1, 1024, 128, 128, 26150),
               ("h100-sxm", FP8, "gpt-j-6b", 1, 120, 128, 2048, 8011),
               ("h100-sxm", FP8, "gpt-j-6b", 1, 64, 2048, 128, 2551),
               ("h100-sxm", FP8, "gpt-j-6b", 1, 64, 2048, 2048, 3327),
               ("h100-sxm", FP8, "llama2-7b", 1, 768, 128, 128, 19694),
               ("h100-sxm", FP8, "llama2-7b", 1, 112, 128, 2048, 6818),
               ("h100-sxm", FP8, "llama2-7b", 1, 80, 2048, 128, 2244),
               ("h100-sxm", FP8, "llama2-7b", 1, 48, 2048, 2048, 2740),
               ("h100-sxm", FP8, "llama2-70b", 2, 1024, 128, 128, 2657),
               ("h100-sxm", FP8, "llama2-70b", 4, 480, 128, 2048, 1486),
               ("h100-sxm", FP8, "llama2-70b", 2, 96, 2048, 128, 306),
               ("h100-sxm", FP8, "llama2-70b", 2, 64, 2048, 2048, 547),
               ("l40s", FP8, "gpt-j-6b", 1, 64, 128, 128, 3630),
               ("l40s", FP8, "gpt-j-6b", 1, 64, 128, 2048, 1859),
               ("l40s", FP8, "gpt-j-6b", 1, 32, 2048, 128, 616),
               ("l40s", FP8, "gpt-j-6b", 1, 32, 2048, 2048, 757),
               ("l40s", FP8, "llama2-7b", 1, 64, 128, 128, 3240),
               ("l40s", FP8, "llama2-7b", 1, 64, 128, 2048, 1622),
               ("l40s", FP8, "llama2-7b", 1, 32, 2048, 128, 581),
               ("l40s", FP8, "llama2-7b", 1, 16, 2048, 2048, 531))
TRT_FIRST_TOKEN = (("a100-80gb", None, "gpt-j-6b", 1, 128, 12),
                   ("a100-80gb", None, "gpt-j-6b", 1, 2048, 129),
                   ("a100-80gb", None, "llama2-7b", 1, 128, 16),
                   ("a100-80gb", None, "llama2-7b", 1, 2048, 133),
                   ("a100-80gb", None, "llama2-70b", 4, 128, 47),
                   ("a100-80gb", None, "llama2-70b", 4, 2048, 377),
                   ("h100-sxm", FP8, "gpt-j-6b", 1, 128, 7),
                   ("h100-sxm", FP8, "gpt-j-6b", 1, 2048, 29),
                   ("h100-sxm", FP8, "llama2-7b", 1, 128, 7),
                   ("h100-sxm", FP8, "llama2-7b", 1, 2048, 36),
                   ("h100-sxm", FP8, "llama2-70b", 4, 128, 26),
                   ("h100-sxm", FP8, "llama2-70b", 4, 2048, 109),
                   ("l40s", FP8, "gpt-j-6b", 1, 128, 12),
                   ("l40s", FP8, "gpt-j-6b", 1, 2048, 71),
                   ("l40s", FP8, "llama2-7b", 1, 128, 14),
                   ("l40s", FP8, "llama2-7b", 1, 2048, 73))
# The same page at release v0.9.0 (its tables: "All data was generated using version 0.9.0"),
# held out: an H200 table beside the H100, L40S and A100 ones, Mistral 7B beside GPT-J and the
# Llamas, engines built from checkpoint configs with trtllm-build (fp8 with
# an fp8 KV cache on H200, H100 and L40S; fp16 on the A100), and every table's throughput per
# GPU. Left out: Falcon 180B's rows (fxroof has no Falcon model of its shape) and Mixtral 8x7B's
# (TensorRT-LLM runs its experts as one MoE plugin; models/moe.py's layouts are loops or einsums
# of many kernels, launched from Python in compiled mode: not the engine's program). Same columns.
TRT_090_BATCHES = tuple((chip, q, *row) for chip, q, rows in (
    ("h200", FP8, (("gpt-j-6b", 1, 1024, 128, 128, 27304), ("gpt-j-6b", 1, 120, 128, 2048, 8530),
                   ("gpt-j-6b", 1, 64, 2048, 128, 2785), ("gpt-j-6b", 1, 64, 2048, 2048, 3753),
                   ("mistral-7b", 1, 896, 128, 128, 20460),
                   ("mistral-7b", 1, 120, 128, 2048, 8950),
                   ("mistral-7b", 1, 64, 2048, 128, 2423),
                   ("mistral-7b", 1, 56, 2048, 2048, 3867),
                   ("llama2-7b", 1, 896, 128, 128, 20618), ("llama2-7b", 1, 120, 128, 2048, 8348),
                   ("llama2-7b", 1, 64, 2048, 128, 2391), ("llama2-7b", 1, 56, 2048, 2048, 3522),
                   ("llama2-70b", 1, 1024, 128, 128, 3989),
                   ("llama2-70b", 2, 512, 128, 2048, 3963),
                   ("llama2-70b", 1, 64, 2048, 128, 418),
                   ("llama2-70b", 1, 64, 2048, 2048, 1458))),
    ("h100-sxm", FP8, (("gpt-j-6b", 1, 1024, 128, 128, 25860),
                       ("gpt-j-6b", 1, 120, 128, 2048, 7350),
                       ("gpt-j-6b", 1, 64, 2048, 128, 2570),
                       ("gpt-j-6b", 1, 64, 2048, 2048, 3212),
                       ("mistral-7b", 1, 896, 128, 128, 20404),
                       ("mistral-7b", 1, 120, 128, 2048, 8623),
                       ("mistral-7b", 1, 84, 2048, 128, 2405),
                       ("mistral-7b", 1, 56, 2048, 2048, 3731),
                       ("llama2-7b", 1, 896, 128, 128, 19854),
                       ("llama2-7b", 1, 120, 128, 2048, 6944),
                       ("llama2-7b", 1, 84, 2048, 128, 2163),
                       ("llama2-7b", 1, 56, 2048, 2048, 2826),
                       ("llama2-70b", 2, 1024, 128, 128, 3214),
                       ("llama2-70b", 4, 512, 128, 2048, 2725),
                       ("llama2-70b", 2, 96, 2048, 128, 346),
                       ("llama2-70b", 2, 64, 2048, 2048, 1011))),
    ("l40s", FP8, (("gpt-j-6b", 1, 512, 128, 128, 7859), ("gpt-j-6b", 1, 64, 128, 2048, 1904),
                   ("gpt-j-6b", 1, 32, 2048, 128, 684), ("gpt-j-6b", 1, 32, 2048, 2048, 768),
                   ("mistral-7b", 1, 896, 128, 128, 9562),
                   ("mistral-7b", 1, 120, 128, 2048, 4387),
                   ("mistral-7b", 1, 84, 2048, 128, 971),
                   ("mistral-7b", 1, 56, 2048, 2048, 1721),
                   ("llama2-7b", 1, 256, 128, 128, 5885), ("llama2-7b", 1, 64, 128, 2048, 1654),
                   ("llama2-7b", 1, 32, 2048, 128, 574), ("llama2-7b", 1, 16, 2048, 2048, 537),
                   ("llama2-70b", 2, 256, 128, 128, 562), ("llama2-70b", 4, 256, 128, 2048, 478),
                   ("llama2-70b", 2, 16, 2048, 128, 49), ("llama2-70b", 4, 64, 2048, 2048, 185))),
    ("a100-80gb", None, (("gpt-j-6b", 1, 512, 128, 128, 5876),
                         ("gpt-j-6b", 1, 32, 128, 2048, 1549),
                         ("gpt-j-6b", 1, 32, 2048, 128, 545),
                         ("gpt-j-6b", 1, 32, 2048, 2048, 815),
                         ("mistral-7b", 1, 896, 128, 128, 6251),
                         ("mistral-7b", 1, 120, 128, 2048, 3776),
                         ("mistral-7b", 1, 64, 2048, 128, 698),
                         ("mistral-7b", 1, 56, 2048, 2048, 1576),
                         ("llama2-7b", 1, 256, 128, 128, 5390),
                         ("llama2-7b", 1, 32, 128, 2048, 1484),
                         ("llama2-7b", 1, 32, 2048, 128, 533),
                         ("llama2-7b", 1, 16, 2048, 2048, 603),
                         ("llama2-70b", 4, 1024, 128, 128, 686),
                         ("llama2-70b", 8, 512, 128, 2048, 684),
                         ("llama2-70b", 4, 96, 2048, 128, 80),
                         ("llama2-70b", 4, 64, 2048, 2048, 289))))
    for row in rows)
# The same release's first tokens at batch 1: (chip, what-if, model, tp, input, ms).
TRT_090_FIRST_TOKEN = tuple((chip, q, *row) for chip, q, rows in (
    ("h200", FP8, (("gpt-j-6b", 1, 128, 5.0), ("gpt-j-6b", 1, 2048, 23.5),
                   ("mistral-7b", 1, 128, 5.9), ("mistral-7b", 1, 2048, 31.7),
                   ("llama2-7b", 1, 128, 5.7), ("llama2-7b", 1, 2048, 30.2),
                   ("llama2-70b", 4, 128, 17.8), ("llama2-70b", 4, 2048, 103.0))),
    ("h100-sxm", FP8, (("gpt-j-6b", 1, 128, 5.5), ("gpt-j-6b", 1, 2048, 23.8),
                       ("mistral-7b", 1, 128, 6.5), ("mistral-7b", 1, 2048, 32.4),
                       ("llama2-7b", 1, 128, 6.3), ("llama2-7b", 1, 2048, 30.8),
                       ("llama2-70b", 4, 128, 19.6), ("llama2-70b", 8, 2048, 85.1))),
    ("l40s", FP8, (("gpt-j-6b", 1, 128, 12.4), ("gpt-j-6b", 1, 2048, 61.7),
                   ("mistral-7b", 1, 128, 15.4), ("mistral-7b", 1, 2048, 87.3),
                   ("llama2-7b", 1, 128, 14.1), ("llama2-7b", 1, 2048, 80.1),
                   ("llama2-70b", 8, 128, 70.4), ("llama2-70b", 4, 2048, 673.3))),
    ("a100-80gb", None, (("gpt-j-6b", 1, 128, 14.8), ("gpt-j-6b", 1, 2048, 136.4),
                         ("mistral-7b", 1, 128, 16.3), ("mistral-7b", 1, 2048, 139.6),
                         ("llama2-7b", 1, 128, 16.2), ("llama2-7b", 1, 2048, 132.4),
                         ("llama2-70b", 4, 128, 45.6), ("llama2-70b", 8, 2048, 249.2))))
    for row in rows)
# EleutherAI/gpt-j-6b's config.json (the fields that shape the model), in fp16 as the engines
# were built (--dtype float16)
GPT_J_6B = dict(model_type="gptj", architectures=["GPTJForCausalLM"], n_embd=4096, n_layer=28,
                n_head=16, rotary_dim=64, n_positions=2048, vocab_size=50400,
                activation_function="gelu_new", tie_word_embeddings=False, torch_dtype="float16")


def trt_llm_cases(only: str, tensor_parallel: bool = False, release_090: bool = False
                  ) -> list[Case]:
    """tensor_parallel: Llama-2-70B's rows too (sharded captures: about a minute each).
    release_090: the page's 0.9.0 tables too (75 one-GPU rows, about 10 minutes)."""
    runs = []
    editions = [("TensorRT-LLM", TRT_BATCHES, TRT_FIRST_TOKEN)]
    if release_090:
        editions.append(("TensorRT-LLM 0.9.0", TRT_090_BATCHES, TRT_090_FIRST_TOKEN))
    for edition, batches, first in editions:
        runs += [(f"{edition} static batches", *r) for r in batches]
        runs += [(f"{edition} first token", chip, q, model, tp, 1, n, 1, ms)
                 for chip, q, model, tp, n, ms in first]
    runs = [r for r in runs if only in r[0] and (tensor_parallel or r[4] == 1)]
    if runs and importlib.util.find_spec("transformers") is None:
        print("TensorRT-LLM: GPT-J 6B rows skipped (its model is built with transformers, "
              "which is not installed)")
        runs = [r for r in runs if r[3] != "gpt-j-6b"]
    if not runs:
        return []
    from fxroof.cli.hf import from_config
    from fxroof.studies.llm import generation
    cases = []
    for source, chip, whatif, model, tp, batch, prompt, out, figure in runs:
        if model == "gpt-j-6b":
            workload, options = functools.partial(from_config, GPT_J_6B), {}
        else:
            workload, options = str(ROOT / "models" / "llama.py"), {"preset": model}
        g = generation(workload, prompt=prompt, new_tokens=max(out - 1, 1), batch=batch,
                       options=options, chip=chip, mode="compiled", quantize=whatif, tp=tp)
        name = f"{chip} {model}" + (f" tp{tp}" if tp > 1 else "") + (" fp8" if whatif else "")
        if source.endswith("first token"):
            cases.append(Case(source, f"{name} {prompt} tokens: {figure} ms", figure / 1e3,
                              g.prefill.summary.floor_s, g.prefill.time_s,
                              made_of(g.prefill.kernels)))
            continue
        steps = (g.first.summary.floor_s + g.last.summary.floor_s) / 2
        floor = g.prefill.summary.floor_s + (out - 1) * steps
        cases.append(Case(source, f"{name} b{batch} {prompt}/{out}: {figure} tokens/s/GPU",
                          batch * out / (figure * tp), floor, g.total_s,
                          made_of(g.first.kernels)))
    return cases


# -- Vidur all-reduce ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Group:
    """A process group as the collective formula asks it: its size."""
    n: int

    def size(self) -> int:
        return self.n


# Vidur's systems, vidur-<gpu>_<links>-all_reduce.csv: the chip each one's GPUs are and the
# links its groups use, as one link figure (None: the chip's own, NVSwitch within a server);
# other systems are skipped. The paired systems are PCIe cards (Vidur's docs/profiling.md: A100
# 80GB PCIe, H100 NVL), each with the bridge's link.
ALL_REDUCE_SYSTEMS = {"a100_dgx": ("a100-80gb", None), "h100_dgx": ("h100-sxm", None),
                      "a100_pairwise_nvlink": ("a100-80gb-pcie", NVLINK_BRIDGE),
                      "h100_pairwise_nvlink": ("h100-nvl", NVLINK_BRIDGE),
                      "a40_pairwise_nvlink": ("a40", A40_BRIDGE)}
# Over an NVLink bridge a ring pays NVLink's per-step latency and reaches the share of the link
# that NVLink rings reach: the SXM part's figures (a PCIe card's own entry has PCIe's).
BRIDGE_FIGURES_CHIP = "a100-80gb"


def system_chip(chip_name: str, bridge: float | None):
    """The chip as a system's links see it: its own, or joined in pairs by an NVLink bridge."""
    chip = find_chip(chip_name)
    if not bridge:
        return chip
    nvlink = find_chip(BRIDGE_FIGURES_CHIP)
    return dataclasses.replace(chip, link_bw=bridge, link_latency_s=nvlink.link_latency_s,
                               collective_efficiency=(chip.collective_efficiency
                                                      or nvlink.collective_efficiency),
                               nvls_efficiency=0.0)     # a bridge has no switch


def all_reduce_files() -> dict:
    """{system: (file, source, chip, link figure or None)} for each Vidur collective file in the
    data folder, then each a checkout adds (its own source, apart from the folder's)."""
    found = {}
    files = [(p.name.split("-")[1], p, "Vidur all-reduce")
             for p in sorted(DATA.glob("vidur-*-all_reduce.csv"))]
    for root in VIDUR_CHECKOUT:
        network = root / "data" / "profiling" / "network"
        files += [(p.parent.name, p, f"Vidur all-reduce {p.parent.name}")
                  for p in sorted(network.glob("*/all_reduce.csv"))]
    for system, path, source in files:
        if system in found:
            continue
        if system not in ALL_REDUCE_SYSTEMS:
            print(f"skipped {path}: its GPU or links are not ones the bench knows")
            continue
        found[system] = (path, source, *ALL_REDUCE_SYSTEMS[system])
    return found


def collective_time(chip, op, size: int, *args) -> tuple[float, float, str]:
    """(floor, expected, the algorithm the expected time took) of one functional collective
    `op` over `size` bytes of fp16, its arguments after the buffer `args`."""
    buffer = torch.empty(size // 2, dtype=torch.float16, device="meta")
    cost = FORMULAS[op.overloadpacket].fn(OpCall(op, (buffer, *args), {}, buffer))
    comm = {"comm_bytes": cost.comm_bytes, "comm_steps": cost.comm_steps,
            "nvls_bytes": cost.nvls_bytes, "comm_ranks": cost.comm_ranks}
    t = kernel_timing(chip, flops=cost.flops, bytes_moved=cost.bytes, category="collective",
                      dtype="fp16", overhead_s=0.0, **comm)
    e = expected(chip, t, "collective", **comm)
    return max(t.compute_s, t.memory_s, t.comm_s), e.device_s, e.algorithm


def all_reduce_time(chip, size: int, n: int) -> tuple[float, float, str]:
    """(floor, expected, "NVLS all-reduce" or "ring all-reduce") of an all-reduce."""
    floor, exp, algorithm = collective_time(chip, torch.ops._c10d_functional.all_reduce.default,
                                            size, "sum", Group(n))
    return floor, exp, "NVLS all-reduce" if algorithm == "NVLS" else "ring all-reduce"


def send_recv_cases(only: str) -> list[Case]:
    """Vidur's send_recv profiles in a checkout: rank 0 sends to rank 1 in the same server (the
    same links as the all-reduce's pairs and servers), timed as its all-reduces are."""
    source = "Vidur send/recv"
    if only not in source or not VIDUR_CHECKOUT:
        return []
    cases = []
    for root in VIDUR_CHECKOUT:
        for path in sorted((root / "data" / "profiling" / "network").glob("*/send_recv.csv")):
            system = path.parent.name
            if system not in ALL_REDUCE_SYSTEMS:
                print(f"skipped {path}: its GPU or links are not ones the bench knows")
                continue
            chip_name, bridge = ALL_REDUCE_SYSTEMS[system]
            chip = system_chip(chip_name, bridge)
            # both ranks in one server (devices_per_node 2); the rows with one a server cross
            # the network, which the chip's link figure does not describe
            by_size = {int(r["size"]): float(r["time_stats.send_recv.median"]) / 1e3
                       for r in read_csv(path) if int(r["devices_per_node"]) == 2}
            for size in sampled(sorted(by_size)):
                floor, exp, _ = collective_time(chip, torch.ops._c10d_functional.isend.default,
                                                size, 1, Group(2))
                cases.append(Case(f"{source} {system}", f"{size:,} B", by_size[size], floor,
                                  exp, "point to point"))
    return cases


def sampled(sizes: list) -> list:
    """SIZES_PER_GROUP of `sizes`, evenly spaced in log size."""
    lo, hi = math.log(sizes[0]), math.log(sizes[-1])
    return sorted({min(sizes, key=lambda s: abs(math.log(s) - (lo + (hi - lo) * i
                                                               / (SIZES_PER_GROUP - 1))))
                   for i in range(SIZES_PER_GROUP)})


def all_reduce_cases(only: str) -> list[Case]:
    if only not in "Vidur all-reduce" and not any(only in f"Vidur all-reduce {s}"
                                                   for s in ALL_REDUCE_SYSTEMS):
        return []
    cases, out = [], 0
    for system, (path, source, chip_name, bridge) in all_reduce_files().items():
        if only not in source:
            continue
        chip = system_chip(chip_name, bridge)
        groups: dict = defaultdict(dict)
        for r in read_csv(path):
            n, per_node = int(r["num_workers"]), int(r["devices_per_node"])
            # one server of NVSwitch, or one NVLink pair: the links the chip's figure describes
            if (n > per_node) or (bridge and n != 2):
                out += 1
                continue
            groups[n][int(r["size"])] = float(r["time_stats.all_reduce.median"]) / 1e3
        for n, by_size in sorted(groups.items()):
            for size in sampled(sorted(by_size)):
                floor, exp, algorithm = all_reduce_time(chip, size, n)
                cases.append(Case(source, f"{system} n={n} {size:,} B",
                                  by_size[size], floor, exp, algorithm))
    print(f"Vidur all-reduce: {out} rows counted out (groups spanning servers, or NVLink pairs "
          f"joined over PCIe)")
    return cases


# -- summary -------------------------------------------------------------------------------------

def stats(cases: list[Case], attr: str) -> tuple:
    ratios = [getattr(c, attr) / c.measured_s for c in cases]
    errors = [abs(r - 1) for r in ratios]
    geo = math.exp(statistics.fmean(math.log(r) for r in ratios))
    return statistics.median(errors), sum(e <= 0.25 for e in errors) / len(errors), geo


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="sources whose name holds this text")
    ap.add_argument("--cases", action="store_true", help="print every case")
    ap.add_argument("--tp", action="store_true",
                    help="adds gpt-fast's tensor-parallel rows (21 generations, about 25 "
                         "minutes) and TensorRT-LLM's Llama-2-70B rows")
    ap.add_argument("--trt-0.9", dest="trt_090", action="store_true",
                    help="adds TensorRT-LLM's 0.9.0 tables: H200, H100, L40S and A100, GPT-J, "
                         "Llama-2-7B, Mistral 7B (75 one-GPU rows, about 10 minutes; with --tp "
                         "also Llama-2-70B's 21 tensor-parallel ones, about 90 s each)")
    ap.add_argument("--training", action="store_true",
                    help="adds torchtitan's FSDP training steps on 64 A100s (8 steps, about 9 "
                         "minutes)")
    ap.add_argument("--lambda", dest="lambda_", action="store_true",
                    help="adds Lambda's single-GPU training throughputs: ResNet-50 and BERT SQuAD "
                         "fine-tuning on 15 GPUs, and a community V100 run of torchvision's "
                         "ResNet-50 in AMP and fp32, both layouts (about 4 minutes)")
    ap.add_argument("--timm", type=Path, metavar="RESULTS",
                    help="the results/ folder of a pytorch-image-models checkout: adds the GPUs, "
                         "torch versions and layouts its benchmark-infer-*.csv hold")
    ap.add_argument("--vidur", type=Path, metavar="CHECKOUT",
                    help="a checkout of microsoft/vidur: adds the GPUs and collective systems "
                         "its data/profiling holds that the data folder does not")
    ap.add_argument("--liger", type=Path, metavar="CHECKOUT",
                    help="a checkout of linkedin/Liger-Kernel: adds its timings of PyTorch's own "
                         "layer norm and softmax kernels (held out)")
    ap.add_argument("--timm-models", metavar="NAMES",
                    help="timm models to compare instead of the default subset: names separated "
                         "by commas, or every:N for every N-th model the timm files share, in "
                         "name order, leaving out the default subset")
    args = ap.parse_args(argv)
    if args.vidur:
        if not (args.vidur / "data" / "profiling").is_dir():
            print(f"error: {args.vidur} has no data/profiling: not a checkout of microsoft/vidur")
            return 2
        VIDUR_CHECKOUT.append(args.vidur)
    if args.liger:
        if not (args.liger / "benchmark" / "data" / "all_benchmark_data.csv").is_file():
            print(f"error: {args.liger} has no benchmark/data/all_benchmark_data.csv: not a "
                  f"checkout of linkedin/Liger-Kernel")
            return 2
        LIGER_CHECKOUT.append(args.liger)
    if args.timm:
        if not any(args.timm.glob("benchmark-infer-*.csv")):
            print(f"error: {args.timm} holds no benchmark-infer-*.csv: not timm's results/ folder")
            return 2
        TIMM_RESULTS.append(args.timm)
    if not DATA.is_dir():
        print(f"skipped: no published measurements at {DATA} (see shared/reference/measured)")
        return 0
    if args.timm_models:
        try:
            TIMM_PICKED.extend(pick_timm_models(args.timm_models))
        except ValueError as e:
            print(f"error: {e}")
            return 2
        print(f"timm models: {len(TIMM_PICKED)} ({', '.join(TIMM_PICKED[:6])}"
              f"{', ...' if len(TIMM_PICKED) > 6 else ''})")
    start = time.perf_counter()
    # Every source here ran a PyTorch older than 2.11 or attention kernels of its own
    # (TensorRT-LLM's): none ran cuDNN's fused attention, which SDPA puts first on Hopper from
    # 2.11 (expected.runs_cudnn_attention), so they are priced with FlashAttention-2's share.
    torch.backends.cuda.enable_cudnn_sdp(False)
    cases = (timm_cases(args.only) + timm_train_cases(args.only) + vidur_cases(args.only)
             + all_reduce_cases(args.only)
             + send_recv_cases(args.only) + nccl_tests_cases(args.only)
             + across_servers_cases(args.only)
             + nvls_group_cases(args.only) + xgmi_group_cases(args.only) + sdpa_cases(args.only)
             + fa2_benchmark_cases(args.only) + liger_cases(args.only)
             + square_mm_cases(args.only) + device_bench_cases(args.only)
             + gpt_fast_cases(args.only, args.tp) + torchao_cases(args.only)
             + trt_llm_cases(args.only, args.tp, args.trt_090)
             + torchtitan_cases(args.only, args.training)
             + lambda_cases(args.only, args.lambda_)
             + torchvision_train_cases(args.only, args.lambda_))
    if not cases:
        print("no cases to compare")
        return 0
    by_source: dict = defaultdict(list)
    for c in cases:
        by_source[c.source].append(c)
    rows = []
    for source, cs in by_source.items():
        f_med, f_in, f_geo = stats(cs, "floor_s")
        e_med, e_in, e_geo = stats(cs, "expected_s")
        worst = max(cs, key=lambda c: abs(math.log(c.expected_s / c.measured_s)))
        rows.append([source, len(cs), f"{f_med:.0%}", f"{f_in:.0%}", f"{f_geo:.2f}",
                     f"{e_med:.0%}", f"{e_in:.0%}", f"{e_geo:.2f}",
                     f"{worst.label}: {worst.expected_s / worst.measured_s:.2f}x ({worst.why})"])
        if args.cases:
            for c in cs:
                print(f"{source:24s} {c.label:55s} measured {c.measured_s * 1e3:9.3f} ms  floor "
                      f"{c.floor_s / c.measured_s:5.2f}x  expected {c.expected_s / c.measured_s:5.2f}x"
                      f"  {c.why}")
    print(tabulate(rows, headers=["source", "cases", "floor\nmedian|err|", "floor\n±25%",
                                  "floor\ngeomean", "expected\nmedian|err|", "expected\n±25%",
                                  "expected\ngeomean", "worst expected case (what its time is)"],
                   colalign=("left", "right", "right", "right", "right", "right", "right", "right",
                             "left")))
    print(f"ratio = predicted / measured · {len(cases)} cases · {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
