"""The predicted step as a Chrome trace, and a real torch.profiler trace beside the prediction."""
import json

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

import fxroof
from fxroof.cli.main import main


class Block(nn.Module):
    def __init__(self, d=64):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        return self.norm(x + self.fc2(self.act(self.fc1(x))))


MODULES = ["0.fc1", "0.act", "0.fc2", "0", "0.norm", "1.fc1", "1.act", "1.fc2", "1", "1.norm"]
ATEN = ["aten::linear", "aten::gelu", "aten::linear", "aten::add", "aten::layer_norm"] * 2


def model():
    torch.manual_seed(0)
    return nn.Sequential(Block(), Block())


def slices(path, tid=None):
    events = json.loads(path.read_text())["traceEvents"]
    return [e for e in events if e["ph"] == "X" and (tid is None or e["tid"] == tid)]


def track(path, name):
    events = json.loads(path.read_text())["traceEvents"]
    return next((e["tid"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"
                 and e["args"]["name"] == name), None)


# -- the predicted trace ---------------------------------------------------------------------

def test_eager_trace_kernels_modules_and_host(tmp_path):
    r = fxroof.analyze(model(), (torch.randn(8, 64),), chip="a100-80gb", mode="eager")
    path = r.to_trace(tmp_path / "step.json")
    compute, host = track(path, "compute stream"), track(path, "host: dispatch")
    assert track(path, "communication") is None               # no collectives: no track
    kernels = [e for e in slices(path, compute) if "nodes" in e.get("args", {})]
    assert [e["args"]["module"] for e in kernels] == MODULES
    for e, k in zip(kernels, r.kernels):
        assert e["dur"] == pytest.approx(k.expected.device_s * 1e6, abs=1e-3)   # µs, to the ns
        assert e["name"] == f"{k.op} ({k.module})"
        assert e["args"]["flops"] == k.flops and e["args"]["regime"] == k.regime
    # tiny kernels, 10 µs dispatches: the host is behind, each kernel starts as its dispatch
    # ends (its launch overlapping the kernel before), the chip idle in between
    dispatch = slices(path, host)
    assert [e["dur"] for e in dispatch] == pytest.approx(
        [k.expected.overhead_s * 1e6 for k in r.kernels], abs=1e-3)
    assert [e["ts"] for e in dispatch] == pytest.approx(
        [sum(k.expected.overhead_s for k in r.kernels[:i]) * 1e6
         for i in range(len(r.kernels))], abs=1e-3)
    assert [e["ts"] for e in kernels] == pytest.approx([e["ts"] for e in dispatch], abs=1e-3)
    modules = {e["name"]: e for e in slices(path, compute) if "nodes" not in e.get("args", {})}
    assert set(modules) == {"0", "1"} | set(MODULES)
    first, second = modules["0"], modules["1"]
    assert first["ts"] == 0 and second["ts"] == pytest.approx(kernels[5]["ts"], abs=1e-3)
    # the step: every dispatch, the last kernel hidden behind the next step's first dispatch
    assert r.time_s == pytest.approx(sum(k.expected.overhead_s for k in r.kernels))
    for e in kernels:          # inside every enclosing module slice
        for prefix in ("0", "1"):
            if e["args"]["module"].split(".")[0] == prefix:
                m = modules[prefix]
                assert m["ts"] <= e["ts"] and e["ts"] + e["dur"] <= m["ts"] + m["dur"] + 1e-9


def test_mode_option_and_collectives_on_their_own_track(tmp_path):
    with torch.device("meta"):
        mlp = nn.Sequential(nn.Linear(1024, 4096, bias=False), nn.GELU(),
                            nn.Linear(4096, 1024, bias=False)).to(torch.bfloat16)
    r = fxroof.analyze(mlp, (torch.empty(512, 1024, device="meta", dtype=torch.bfloat16),),
                       chip="h100-sxm", tp=2)
    path = r.to_trace(tmp_path / "tp.json", mode="eager")
    comm = track(path, "communication")
    assert comm is not None
    assert [e["name"].split(" ")[0] for e in slices(path, comm)] == [
        k.op for k in r.eager.kernels if k.category == "collective"] == ["all_reduce"]
    compiled = r.to_trace(tmp_path / "compiled.json")          # the report's own mode
    assert json.loads(compiled.read_text())["otherData"]["kernels"] == len(r.compiled.kernels)
    with pytest.raises(ValueError, match="unknown mode"):
        r.to_trace(tmp_path / "x.json", mode="fast")


def test_gradient_all_reduces_overlap_the_backward_on_their_track(tmp_path):
    with torch.device("meta"):
        mlp = nn.Sequential(nn.Linear(512, 512, bias=False), nn.ReLU(),
                            nn.Linear(512, 512, bias=False))
    r = fxroof.analyze(mlp, (torch.empty(4096, 512, device="meta"),), train=True, dp=8,
                       chip="h100-sxm", mode="eager")
    path = r.to_trace(tmp_path / "ddp.json")
    comm = slices(path, track(path, "communication"))
    compute = slices(path, track(path, "compute stream"))
    kernels = [e for e in compute if "nodes" in e.get("args", {})]
    assert [e["name"] for e in comm] == ["all_reduce"] * 2
    first = comm[0]
    # bucket 1 starts as the kernel before it ends, and the next backward kernel starts with it
    before = max((e for e in kernels if e["ts"] < first["ts"]), key=lambda e: e["ts"])
    after = min((e for e in kernels if e["ts"] >= first["ts"]), key=lambda e: e["ts"])
    assert before["ts"] + before["dur"] == pytest.approx(first["ts"]) == after["ts"]
    assert after["args"]["phase"] == "backward"
    # the update of a bucket's gradients starts after that bucket's all-reduce ends
    waiting = [e for e in kernels if first["args"]["nodes"][0] in e["args"].get("waits", ())]
    assert waiting and min(e["ts"] for e in waiting) >= first["ts"] + first["dur"] - 1e-3
    # the step ends when the chip, the link and the host issuing the last kernels are all done
    host = slices(path, track(path, "host: dispatch"))
    end = max(e["ts"] + e["dur"] for e in comm + kernels + host)
    assert end == pytest.approx(r.time_s * 1e6, abs=1e-3)


def test_a_tensor_parallel_all_reduce_hides_nothing():
    with torch.device("meta"):
        mlp = nn.Sequential(nn.Linear(1024, 4096, bias=False), nn.GELU(),
                            nn.Linear(4096, 1024, bias=False), nn.LayerNorm(1024))
    r = fxroof.analyze(mlp, (torch.empty(512, 1024, device="meta"),), chip="h100-sxm", tp=2)
    for m in (r.eager, r.compiled):
        assert any(k.category == "collective" for k in m.kernels)
        assert m.schedule.exposed_s == pytest.approx(m.schedule.comm_s)


# -- a real torch.profiler trace beside the prediction ---------------------------------------

@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A torch.profiler trace of one eager forward of the model on this CPU."""
    m, x = model().eval(), torch.randn(8, 64)
    with torch.no_grad():
        m(x)                                            # first-call costs out of the trace
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            m(x)
    path = tmp_path_factory.mktemp("profile") / "trace.json"
    prof.export_chrome_trace(str(path))
    return m, x, path


def independent_reading(path):
    """The durations (s) of the model's own ops, read straight from the file by name, and the
    span of all ops."""
    events = [e for e in slices(path) if e.get("cat") == "cpu_op"]
    ops = sorted((e for e in events if e["name"] in set(ATEN)), key=lambda e: e["ts"])
    span = max(e["ts"] + e["dur"] for e in events) - min(e["ts"] for e in events)
    return ops, span / 1e6


def test_compare_trace_matches_the_eager_ops(recorded):
    m, x, path = recorded
    r = fxroof.analyze(m, (x,), chip="a100-80gb", mode="eager")
    ops, span = independent_reading(path)
    assert [e["name"] for e in ops] == ATEN              # each of the model's calls, once
    c = fxroof.compare_trace(r, path)
    assert c.device == "cpu" and not c.unmatched_kernels and not c.unmatched_ops
    assert [row.module for row in c.rows] == MODULES
    assert [row.measured_s for row in c.rows] == pytest.approx([e["dur"] / 1e6 for e in ops])
    assert c.measured_s == pytest.approx(span)
    assert c.error == pytest.approx((r.time_s - span) / span)
    assert c.by_module()["0.fc1"]["measured_s"] == pytest.approx(ops[0]["dur"] / 1e6)
    assert c.by_regime()["overhead"]["predicted_s"] == pytest.approx(r.time_s)
    text = str(c)
    assert "matched 10 of 10 kernels" in text and "Largest misses" in text


def test_an_eager_trace_serves_a_compiled_report(recorded):
    """A fused kernel's measured time is that of the eager ops it fuses."""
    m, x, path = recorded
    r = fxroof.analyze(m, (x,), chip="a100-80gb", mode="compiled")
    ops, _ = independent_reading(path)
    c = fxroof.compare_trace(r, path)
    fused = [row for row in c.rows if len(row.matched) > 1]
    assert [row.matched for row in fused] == [("aten::add", "aten::layer_norm")] * 2
    add_norm = [(a["dur"] + b["dur"]) / 1e6 for a, b in zip(ops, ops[1:])
                if (a["name"], b["name"]) == ("aten::add", "aten::layer_norm")]
    assert [row.measured_s for row in fused] == pytest.approx(add_norm)


def test_a_compiled_cpu_trace_matches_its_library_calls(recorded, tmp_path):
    """Under torch.compile on a CPU the trace records the library calls (addmm) a compiled graph
    makes and not its generated C++ kernels: the linears match, the rest is said unmatched."""
    m, x, _ = recorded
    compiled = torch.compile(m)
    with torch.no_grad():
        compiled(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            compiled(x)
    path = tmp_path / "compiled.json"
    prof.export_chrome_trace(str(path))
    graph = [e for e in slices(path) if e["name"].startswith("## Call CompiledFxGraph")]
    calls = sorted((e for e in slices(path) if e.get("cat") == "cpu_op"
                    and e["name"] in ("aten::addmm", "aten::mm")
                    and any(g["ts"] <= e["ts"] <= g["ts"] + g["dur"] for g in graph)),
                   key=lambda e: e["ts"])
    r = fxroof.analyze(m, (x,), chip="a100-80gb", mode="compiled")
    c = fxroof.compare_trace(r, path)
    assert [(row.op, row.module) for row in c.rows] == [
        ("linear", mod) for mod in MODULES if mod.endswith(("fc1", "fc2"))]
    assert [row.measured_s for row in c.rows] == pytest.approx([e["dur"] / 1e6 for e in calls])
    assert len(c.unmatched_kernels) == len(r.kernels) - 4 and "gelu (0.act)" in c.unmatched_kernels


def _event(name, ts, dur, cat="cpu_op", **args):
    return {"ph": "X", "cat": cat, "name": name, "pid": 1, "tid": 1, "ts": ts, "dur": dur,
            "args": args}


def test_gpu_trace_joins_kernels_to_their_ops_by_correlation(tmp_path):
    """A hand-written CUDA trace: kernels count on the device, launched inside their aten op or,
    for Inductor's generated kernels, standing for the ops their names list."""
    gpu = {"pid": 0, "tid": 7}
    events = [
        _event("aten::linear", 0, 20), _event("aten::addmm", 2, 15),
        _event("cudaLaunchKernel", 4, 3, cat="cuda_runtime", correlation=1),
        _event("aten::gelu", 30, 10),
        _event("cudaLaunchKernel", 31, 3, cat="cuda_runtime", correlation=2),
        _event("cuLaunchKernel", 50, 3, cat="cuda_driver", correlation=3),
        {**_event("sm90_xmma_gemm", 10, 40, cat="kernel", correlation=1), **gpu},
        {**_event("vectorized_elementwise_kernel", 52, 6, cat="kernel", correlation=2), **gpu},
        {**_event("triton_per_fused_add_native_layer_norm_0", 60, 9, cat="kernel",
                  correlation=3), **gpu}]
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps({"traceEvents": events}))
    block = Block()
    r = fxroof.analyze(block, (torch.randn(8, 64),), chip="h100-sxm", mode="compiled")
    c = fxroof.compare_trace(r, path)
    assert c.device == "gpu" and c.measured_s == pytest.approx(59e-6)     # 10 .. 69 µs
    assert {row.op: row.measured_s for row in c.rows} == pytest.approx(
        {"linear": 40e-6, "gelu": 6e-6, "layer_norm +1": 9e-6})
    assert c.unmatched_kernels == ("linear (fc2)",)
    # device rows sit beside the kernels' device time, not their host dispatch (10 µs an op)
    kernels = {(k.op, k.module): k for k in r.kernels}
    assert [row.predicted_s for row in c.rows] == pytest.approx(
        [kernels[row.op, row.module].expected.device_s for row in c.rows])
    assert all(row.predicted_s < kernels[row.op, row.module].time_s for row in c.rows)


def test_a_trace_of_several_steps_is_read_at_its_last(tmp_path):
    events = [_event("ProfilerStep#1", 0, 100, cat="user_annotation"),
              _event("aten::linear", 10, 20), _event("aten::gelu", 30, 4),
              _event("ProfilerStep#2", 100, 100, cat="user_annotation"),
              _event("aten::linear", 110, 40), _event("aten::addmm", 112, 30),
              _event("aten::gelu", 150, 5)]
    path = tmp_path / "steps.json"
    path.write_text(json.dumps({"traceEvents": events}))
    r = fxroof.analyze(nn.Sequential(nn.Linear(8, 8), nn.GELU()), (torch.randn(2, 8),),
                       mode="eager")
    c = fxroof.compare_trace(r, path)
    assert [(row.op, row.measured_s) for row in c.rows] == [("linear", pytest.approx(40e-6)),
                                                            ("gelu", pytest.approx(5e-6))]
    assert c.measured_s == pytest.approx(45e-6) and not c.unmatched_ops


def test_bad_traces_are_one_clear_error(tmp_path):
    r = fxroof.analyze(Block(), (torch.randn(8, 64),))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON trace"):
        fxroof.compare_trace(r, bad)
    bad.write_text('{"schema": "fxroof.report/1"}')
    with pytest.raises(ValueError, match="not a Chrome trace"):
        fxroof.compare_trace(r, bad)
    bad.write_text(json.dumps({"traceEvents": [_event("Python function", 0, 5)]}))
    with pytest.raises(ValueError, match="no aten ops"):
        fxroof.compare_trace(r, bad)


def test_cli_trace_and_compare_trace(recorded, tmp_path, capsys):
    path = recorded[2]
    spec = tmp_path / "block.py"
    spec.write_text("import torch\nfrom test_trace import model\n"
                    "def workload():\n    torch.manual_seed(0)\n"
                    "    return model().eval(), (torch.randn(8, 64),)\n")
    out = tmp_path / "predicted.json"
    assert main(["analyze", str(spec), "--mode", "eager", "--trace", str(out)]) == 0
    assert len([e for e in slices(out) if "nodes" in e.get("args", {})]) == 10
    capsys.readouterr()
    assert main(["compare-trace", str(path), str(spec), "--mode", "eager", "--json", "-"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schema"] == "fxroof.trace-comparison/1" and len(data["kernels"]) == 10
    assert main(["compare-trace", str(tmp_path / "missing.json"), str(spec)]) == 2
