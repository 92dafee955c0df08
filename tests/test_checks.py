"""Pre-deployment checks from Python, and the memory footprint they rest on, by hand."""
import json

import pytest
import torch
from helpers import fn_module

import fxroof
from fxroof.report.tables import top_kernels
from fxroof.report.units import share


def test_footprint_by_hand():
    model = torch.nn.Sequential(torch.nn.Linear(100, 200), torch.nn.ReLU(), torch.nn.Linear(200, 10))
    r = fxroof.analyze(model, (torch.randn(8, 100),))
    m = r.memory
    assert m.weights == (100 * 200 + 200 + 200 * 10 + 10) * 4       # 88,840 B of fp32
    assert m.inputs == 8 * 100 * 4
    # peak: the Linear output (8x200) and the ReLU output (8x200) are alive together
    assert m.activations == 2 * 8 * 200 * 4
    assert m.kv_cache == 0


def test_kv_cache_is_the_input_written_in_place():
    def step(cache, new):
        cache.index_copy_(1, torch.tensor([3]), new)
        return cache.sum()
    r = fxroof.analyze(fn_module(step), (torch.zeros(2, 16, 8), torch.randn(2, 1, 8)))
    assert r.memory.kv_cache == 2 * 16 * 8 * 4 and r.memory.inputs == 2 * 1 * 8 * 4


def chip_file(tmp_path, mem_gb):
    spec = fxroof.chip("h100-sxm").to_dict()
    data = {"name": "small", "title": "A small test chip", "kind": "gpu",
            "peak_TFLOPS": {k: v / 1e12 for k, v in spec["peak_flops"].items()},
            "vector_TFLOPS": 67, "mem_bw_GBps": 3350, "mem_GB": mem_gb, "link_bw_GBps": 450,
            "link_latency_us": 5, "launch_us": 2, "dispatch_us": 10}
    path = tmp_path / "small.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_memory_fit_against_a_chip_file(tmp_path):
    model = torch.nn.Linear(1000, 1000)                # 4,004,000 B of weights
    x = torch.randn(1, 1000)
    tight = fxroof.analyze(model, (x,), chip=chip_file(tmp_path, 0.004))   # 4,000,000 B
    result = tight.check()
    # weights 4,004,000 + input 4,000 + output 4,000 = 4.012 MB against 4.000 MB
    assert not result.ok and "4.01 MB > 4 MB on small" in str(result)
    roomy = fxroof.analyze(model, (x,), chip=chip_file(tmp_path, 0.005))
    assert roomy.check().ok


def test_budgets_and_lint_levels():
    model = torch.nn.Linear(64, 64)
    r = fxroof.analyze(model, (torch.randn(1, 64),))
    assert r.check(max_time_ms=1).ok
    assert not r.check(max_time_ms=1e-6).ok
    assert not r.check(max_regime_share={"overhead": 0.5}).ok      # a tiny linear: all overhead
    assert r.check(lint="warn").ok and not r.check(lint="fail").ok  # fp32 matmul on an H100
    assert r.check(lint="off").checks[-1].name == "memory fit"
    with pytest.raises(ValueError, match="unknown regime"):
        r.check(max_regime_share={"overhed": 0.1})


@pytest.mark.parametrize("budget, message", [
    ({"min_coverage": 95}, "min_coverage must be a share from 0 to 1, got 95"),   # 95 meant 95%?
    ({"max_time_ms": -1.0}, "max_time_ms must be a number >= 0"),
    ({"max_time_ms": float("nan")}, "max_time_ms must be a number >= 0"),
    ({"max_regime_share": {"overhead": 1.5}}, "the overhead share must be a share from 0 to 1"),
])
def test_a_budget_that_cannot_be_meant_is_a_usage_error(budget, message):
    r = fxroof.analyze(fn_module(torch.cos), (torch.randn(8),))
    with pytest.raises(ValueError, match=message):
        r.check(**budget)


def test_every_budget_at_once():
    r = fxroof.analyze(fn_module(torch.cos), (torch.randn(8),))
    result = r.check(max_time_ms=1, min_coverage=1, max_regime_share={"overhead": 1.0}, lint="fail")
    assert [c.name for c in result.checks] == ["time", "coverage", "memory fit", "overhead share",
                                               "dtype: fp32 matmuls", "dtype: upcasts"]
    assert result.ok          # a 2 us cos of 8 fp32 numbers on an H100: within every budget


def test_coverage_just_short_of_full_never_prints_as_100_percent():
    assert share(0.9973) == "99.7%" and share(0.99999) == "99.9%" and share(1.0) == "100%"
    assert share(0.00001) == "0.1%" and share(0.0) == "0%" and share(0.25) == "25%"


def test_the_header_says_when_the_model_does_not_fit():
    # two 65536^2 bf16 operands and the product: 3 x 8.59 GB = 25.8 GB on a 16 GB T4
    big = torch.empty(65536, 65536, dtype=torch.bfloat16, device="meta")
    r = fxroof.analyze(fn_module(torch.mm), (big, big), chip="t4")
    assert "needs 25.8 GB, more than t4's 16 GB" in " ".join(str(r).split())   # lines wrap
    fits = fxroof.analyze(fn_module(torch.mm), (big, big), chip="h200")
    assert "more than" not in str(fits)


def test_top_kernels_keep_different_shapes_apart():
    class TwoShapes(torch.nn.Module):       # one module, two linears of other shapes
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Parameter(torch.randn(64, 32)), torch.nn.Parameter(torch.randn(8, 64))

        def forward(self, x):
            return torch.nn.functional.linear(torch.nn.functional.linear(x, self.a), self.b)

    r = fxroof.analyze(TwoShapes(), (torch.randn(4, 32),), mode="eager")
    rows = [line for line in top_kernels(r).splitlines() if line.startswith("linear")]
    # 2*4*32*64 = 16,384 and 2*4*64*8 = 4,096 FLOPs: two rows, not one "x2"
    assert len(rows) == 2 and "16.4 kF" in rows[0] and "4.1 kF" in rows[1]
