"""How fast fxroof's fusion simulation is next to the compiler it simulates, and how close it lands.

For each model: the time of capture + annotate + fuse, the time of torch.compile (Inductor, CPU)
compiling it (first call, fresh dynamo state, no compiled-graph cache; "cold": the C++ kernels
built too, "warm": found in the kernel cache the cold compile filled), the speedups, and fused
bytes from fxroof and from Inductor's scheduler (fxroof.measure.inductor).

    python bench/bench_fusion.py
"""
from __future__ import annotations

import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fxroof.cost.annotate import annotate  # noqa: E402
from fxroof.fuse.fuser import fuse  # noqa: E402
from fxroof.graph.capture import capture  # noqa: E402
from fxroof.measure.inductor import inductor_kernels  # noqa: E402


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "models" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gpt2_block():
    """One GPT-2 block at CPU size: 64 wide, 4 heads, 64 tokens."""
    gpt2 = load("gpt2")
    cfg = gpt2.GPT2Config(n_embd=64, n_head=4, n_layer=1)
    return gpt2.Block(cfg).eval(), (torch.randn(1, 64, cfg.n_embd),), None


def workload(name: str, **options):
    def build():
        model, args, *rest = load(name).workload(device="cpu", **options)
        return model, args, (rest[0] if rest else None)
    return build


MODELS = {
    "gpt2 block (64 wide, 64 tokens)": gpt2_block,
    "mlp tiny": workload("mlp", preset="tiny", batch=4),
    "gpt2 tiny (2 layers, 16 tokens)": workload("gpt2", size="tiny", seq=16),
    "llama tiny (16 tokens)": workload("llama", preset="tiny", seq=16),
}


def time_fxroof(model, args, kwargs, repeat: int = 5):
    """Median seconds of capture + annotate + fuse, of capture alone, and the last kernels."""
    total, captures = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        gm = capture(model, args, kwargs).gm
        captured = time.perf_counter()
        kernels = fuse(annotate(gm), backend="cpp")   # Inductor compiles for the CPU here
        total.append(time.perf_counter() - start)
        captures.append(captured - start)
    return statistics.median(total), statistics.median(captures), kernels


def time_compile(model, args, kwargs, cache: str) -> float:
    """Seconds for torch.compile's first call (compile + one run): fresh dynamo state and no
    compiled-graph cache, so Inductor lowers, fuses and generates code every time; `cache` holds
    the compiled C++ kernels (empty: they are built too)."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config
    from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

    torch._dynamo.reset()
    with temporary_cache_dir(cache), torch.no_grad(), \
            inductor_config.patch(fx_graph_cache=False, fx_graph_remote_cache=False), \
            functorch_config.patch(enable_autograd_cache=False):
        compiled = torch.compile(model, backend="inductor", fullgraph=True, dynamic=False)
        start = time.perf_counter()
        compiled(*args, **(kwargs or {}))
        elapsed = time.perf_counter() - start
    torch._dynamo.reset()
    return elapsed


def warm_up() -> None:
    """Pay the once-per-process costs (imports, compiler probing) before timing anything."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    with tempfile.TemporaryDirectory() as cache:
        time_compile(model, (torch.randn(2, 4),), None, cache)
    fuse(annotate(capture(model, (torch.randn(2, 4),)).gm))


def main() -> None:
    torch.manual_seed(0)
    warm_up()
    rows = []
    for name, build in MODELS.items():
        model, args, kwargs = build()
        ours_s, capture_s, ours = time_fxroof(model, args, kwargs)
        with tempfile.TemporaryDirectory() as cache:
            cold_s = time_compile(model, args, kwargs, cache)
            warm_s = time_compile(model, args, kwargs, cache)
        theirs = inductor_kernels(model, args, kwargs)
        ours_b, theirs_b = sum(k.bytes for k in ours), sum(k.bytes for k in theirs)
        rows.append([name, f"{ours_s * 1e3:.0f}", f"{capture_s * 1e3:.0f}", f"{cold_s:.2f}",
                     f"{warm_s:.2f}", f"{cold_s / ours_s:.0f}x", f"{warm_s / ours_s:.0f}x",
                     f"{len(ours)}/{len(theirs)}", ours_b, theirs_b,
                     f"{(ours_b - theirs_b) / theirs_b:+.1%}"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    print(tabulate(rows, headers=["model", "fxroof ms", "of which capture", "compile cold s",
                                  "compile warm s", "speedup cold", "speedup warm",
                                  "kernels fx/ind", "fxroof bytes", "inductor bytes", "diff"]))


if __name__ == "__main__":
    main()
