"""Pre-deployment checks from Python, and the memory footprint they rest on, by hand."""
import json

import pytest
import torch

import fxroof
from helpers import fn_module


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
