"""Sweeps: captured once, each value must equal an independent fxroof.analyze at that value."""
import pytest
import torch

import fxroof
from fxroof.studies.sweep import parse_over, sweep
from fxroof.studies.workload import load

LLAMA, MLP = "models/llama.py", "models/mlp.py"


def same(point, report):
    """The sweep's report at a value against analyze's: every total, both modes, the memory."""
    a = point.report
    assert a.flops == report.flops
    assert a.bytes == report.bytes
    for mode in ("eager", "compiled"):
        x, y = getattr(a, mode), getattr(report, mode)
        assert len(x.kernels) == len(y.kernels)
        assert [k.bytes for k in x.kernels] == [k.bytes for k in y.kernels]
        assert [k.module for k in x.kernels] == [k.module for k in y.kernels]
        assert x.time_s == pytest.approx(y.time_s, rel=1e-9)
        assert x.regime == y.regime
    assert a.memory == report.memory


def independent(spec, options, variable, value, **kw):
    model, args, *rest = load(spec, {**options, variable: value})
    return fxroof.analyze(model, args, *rest, **kw)


@pytest.mark.parametrize("variable, values, options", [
    ("batch", [1, 2, 3, 8], dict(phase="decode", ctx=31)),
    ("ctx", [1, 6, 40], dict(phase="decode", batch=3)),
    ("seq", [1, 3, 16], dict(phase="prefill", batch=2)),
])
def test_tiny_llama_sweep_equals_analyze_at_each_value(variable, values, options):
    options = dict(options, preset="tiny")
    s = sweep(LLAMA, {variable: values}, options=options, chip="a100-80gb")
    assert s.method == "symbolic" and s.values == tuple(values)
    assert not any(p.note for p in s.points)
    for p in s.points:
        same(p, independent(LLAMA, options, variable, p.value, chip="a100-80gb"))


def test_mlp_sweep_equals_analyze_in_both_modes():
    options = dict(preset="base", dtype="bf16")
    for mode in ("compiled", "eager"):
        s = sweep(MLP, "batch=1,7,4096", options=options, chip="h100-sxm", mode=mode)
        assert s.method == "symbolic" and s.unit == "samples"
        for p in s.points:
            same(p, independent(MLP, options, "batch", p.value, chip="h100-sxm", mode=mode))
    # 512 -> 2048 -> 2048 -> 512 bf16 at batch 1: 2*(1M + 4M + 1M) FLOPs over ~2*(6.3M weights)
    # bytes, intensity ~1 = batch; at batch 4096 the matmuls pass H100's ridge (295): compute
    assert s.points[0].report.intensity == pytest.approx(1, rel=0.01)
    assert s.points[-1].regime == "compute"


def test_a_branch_on_the_value_is_captured_on_its_own():
    class Branchy(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.shape[0] > 4 else torch.relu(x) + 1

    def workload(batch):
        return Branchy(), (torch.randn(batch, 8),)

    s = sweep(workload, {"batch": [2, 3, 8, 16]})
    assert s.method == "symbolic"
    traced = [p for p in s.points if not p.note]   # traced at the middle value, 8: batch > 4
    assert [p.value for p in traced] == [8, 16]
    assert all("captured on its own" in p.note for p in s.points if p.value <= 4)
    for p in s.points:
        same(p, fxroof.analyze(*workload(p.value)))


def test_a_model_that_changes_with_the_value_is_captured_at_each():
    def workload(hidden):
        return torch.nn.Linear(8, hidden), (torch.randn(2, 8),)

    s = sweep(workload, {"hidden": [4, 16]})
    assert s.method == "per-point" and "each value captured alone" in s.notes[0]
    for p in s.points:
        same(p, fxroof.analyze(*workload(p.value)))


def test_symbolic_false_captures_each_value_on_its_own():
    options = dict(preset="tiny")
    s = sweep(MLP, "batch=1,4", options=options, symbolic=False)
    assert s.method == "per-point" and s.notes == () and not any(p.note for p in s.points)
    for p in s.points:
        same(p, independent(MLP, options, "batch", p.value))


def test_an_amp_sweep_runs_each_value_under_autocast():
    options = dict(preset="tiny")
    s = sweep(MLP, "batch=1,4", options=options, amp="bf16")
    # the symbolic tracer does not run the forward under autocast: each value is analyzed
    assert s.method == "per-point" and "amp=bf16: each value captured on its own" in s.notes
    for p in s.points:
        same(p, independent(MLP, options, "batch", p.value, amp="bf16"))
        assert {n.dtype for n in p.report.nodes if n.category == "matmul"} == {"bf16"}


def test_throughput_counts_tokens_and_the_table_fits():
    s = sweep(LLAMA, "batch=1,4", options=dict(preset="tiny", phase="decode", ctx=15))
    assert s.unit == "tokens"
    assert s.points[1].items == 4                     # batch 4, one new token each: 4 tokens
    text = str(s)
    assert max(len(line) for line in text.splitlines()) <= 100
    d = s.to_dict()
    assert d["schema"] == "fxroof.sweep/1" and [q["value"] for q in d["points"]] == [1, 4]


def test_parse_over():
    assert parse_over("batch=1,2,4") == ("batch", (1, 2, 4))
    assert parse_over({"ctx": [8, 16]}) == ("ctx", (8, 16))
    assert parse_over(("seq", range(1, 3))) == ("seq", (1, 2))
    for bad in ("batch", "batch=", "1x=2", {"a": [1], "b": [2]}):
        with pytest.raises(ValueError):
            parse_over(bad)


def test_a_what_if_applies_at_every_value():
    options = dict(preset="tiny", phase="decode", ctx=31)
    s = sweep(LLAMA, "batch=1,3,8", options=options, quantize="w4+kv8")
    assert s.whatif == "int4 weights (g128) + int8 KV cache"
    for p in s.points:
        same(p, independent(LLAMA, options, "batch", p.value, quantize="w4+kv8"))
    assert max(len(line) for line in str(s).splitlines()) <= 100


def test_points_that_do_not_fit_are_flagged():
    from pathlib import Path
    spec = str(Path(__file__).resolve().parent.parent / "models" / "llama.py")
    # Llama-2-7B decode, ctx 2048: 13.5 GB of weights + 1.07 GB of KV cache per sequence
    # (32 layers * 2 * 2048 * 4096 * 2 B): batch 1 fits in 80 GB, batch 64 (68.7 GB of KV) does not
    s = sweep(spec, "batch=1,64", options={"phase": "decode", "ctx": 2048}, chip="a100-80gb")
    rows = [line for line in str(s).splitlines() if line.strip().startswith(("1 ", "64 "))]
    assert not rows[0].rstrip().endswith("!") and rows[1].rstrip().endswith("!")
    assert "needs more than a100-80gb's 80 GB" in str(s)


def test_a_tensor_parallel_sweep_is_one_rank_at_each_value():
    options = dict(preset="tiny", phase="decode", ctx=16)
    s = sweep(LLAMA, {"batch": [1, 4]}, options=options, chip="l40s", tp=2)
    assert s.method == "per-point" and "tensor parallel (tp=2)" in s.notes[0]
    for p in s.points:
        assert p.report.tp == 2
        same(p, independent(LLAMA, options, "batch", p.value, chip="l40s", tp=2))
    # one rank holds half the split weights: less than the whole model's, more than half
    whole = independent(LLAMA, options, "batch", 1, chip="l40s")
    assert whole.memory.weights / 2 < s.points[0].report.memory.weights < whole.memory.weights
    assert "one rank of tp=2" in str(s).splitlines()[0]
