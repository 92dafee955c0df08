"""Measured truth: a small model run for real, node by node, beside fxroof's eager prediction.

Of measured times only that each node was timed is asserted; the arithmetic of the error is checked
by hand on a Measurement built in the test.
"""
import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

import fxroof
from fxroof.chips import Chip
from fxroof.measure import runs
from fxroof.measure.runs import MeasureError, Measurement, NodeTiming, measure, relative_error
from fxroof.measure.runner import check_values, program

# A fixed chip: no calibration needed to check the plumbing.
CHIP = Chip(name="test-cpu", title="test CPU", kind="cpu", peak_flops={"fp32": 1e11},
            vector_flops=3e9, mem_bw=2.5e10, mem_bytes=1.6e10, link_bw=1.25e10,
            link_latency_s=2e-5, launch_s=7e-6, dispatch_s=7e-6)


def mlp():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 32),
                                torch.nn.LayerNorm(32)).eval()
    return model, torch.randn(4, 32)


@pytest.fixture(scope="module")
def measured():
    model, x = mlp()
    return measure(model, (x,), chip=CHIP, warmup=1, repeat=5)


def test_one_row_per_node_that_is_not_a_view(measured):
    model, x = mlp()
    report = fxroof.analyze(model, (x,), chip=CHIP, mode="eager")
    assert [r.name for r in measured.rows] == [n.name for n in report.nodes]
    assert measured.predicted_s == pytest.approx(report.time_s, rel=1e-9)
    assert {r.op for r in measured.rows} >= {"linear", "gelu", "layer_norm"}
    assert measured.capture == "torch.export" and measured.model == "Sequential"


def test_every_node_is_timed_and_predicted(measured):
    m = measured
    assert all(r.measured_s > 0 and r.predicted_s > 0 for r in m.rows)
    # every kernel of the eager prediction has its row
    assert m.predicted_s == pytest.approx(sum(r.predicted_s for r in m.rows))
    assert m.report is not None and m.report.mode == "eager"
    # every node's regime is one the regime table knows
    assert sum(g["nodes"] for g in m.by_regime().values()) == len(m.rows)


def test_report_forms(measured):
    d = measured.to_dict()
    assert d["schema"] == "fxroof.measurement/1"
    assert len(d["nodes"]) == len(measured.rows) and "error" in d["nodes"][0]
    text = str(measured)
    assert "predicted" in text and "By predicted regime" in text


def test_error_arithmetic_by_hand():
    rows = (NodeTiming("mm", "mm", "", "matmul", "compute", 3e-6, 2e-6),
            NodeTiming("add", "add", "", "pointwise", "overhead", 1e-6, 2e-6),
            NodeTiming("mul", "mul", "", "pointwise", "overhead", 2e-6, 2e-6))
    m = Measurement(model="M", capture="torch.export", chip=CHIP, device="cpu", warmup=0,
                    repeat=1, rows=rows, predicted_s=6e-6, measured_s=8e-6, nodes_s=6e-6,
                    views_s=0.0)
    # (6 - 8) / 8 = -0.25: predicted 25% fast
    assert m.error == pytest.approx(-0.25)
    # mm: (3 - 2) / 2 = +0.5; add: (1 - 2) / 2 = -0.5
    assert rows[0].error == pytest.approx(0.5) and rows[1].error == pytest.approx(-0.5)
    regimes = m.by_regime()
    # overhead: predicted 1 + 2 = 3 us, measured 2 + 2 = 4 us, (3 - 4) / 4 = -0.25
    assert regimes["overhead"]["nodes"] == 2
    assert regimes["overhead"]["error"] == pytest.approx(-0.25)
    assert regimes["compute"]["error"] == pytest.approx(0.5)
    assert set(regimes) == {"compute", "overhead"}
    assert m.by_category()["pointwise"]["predicted_s"] == pytest.approx(3e-6)
    assert relative_error(0.0, 0.0) == 0.0 and relative_error(1.0, 0.0) == float("inf")


def test_an_exported_program_is_measured_with_its_own_weights():
    model, x = mlp()
    ep = torch.export.export(model, (x,))
    m = measure(ep, (x,), chip=CHIP, warmup=0, repeat=2)
    assert m.capture == "torch.export" and len(m.rows) >= 4


def test_an_aten_graph_module_runs_with_its_attributes():
    model, x = mlp()
    gm = make_fx(model)(x)                  # weights as get_attr, the input as the placeholder
    m = measure(gm, (x,), chip=CHIP, warmup=0, repeat=2)
    assert m.capture == "graph" and all(r.measured_s > 0 for r in m.rows)


def test_make_fx_fallback_maps_parameters_in_order(monkeypatch):
    def no_export(*args, **kwargs):
        raise RuntimeError("export disabled for this test")
    monkeypatch.setattr(torch.export, "export", no_export)
    model, x = mlp()
    captured, values = program(model, (x,), {})
    assert captured.strategy == "make_fx" and len(captured.weights) == len(list(model.parameters()))
    params = list(model.parameters())
    assert all(v is p for v, p in zip(values, params)) and values[-1] is x
    m = measure(model, (x,), chip=CHIP, warmup=0, repeat=2)
    assert m.capture == "make_fx" and len(m.rows) >= 4


class SizedByItsInput(torch.nn.Module):
    """A size read from a tensor's value (Reformer's hash buckets, a router's counts)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x):
        n = int(x.sum().item())
        return self.fc(x.new_ones(n, 8)).cumsum(0)


def test_a_graph_sized_by_its_inputs_values_runs_on_those_inputs():
    # torch.export leaves the size a symbol no pass can size, so the graph is traced on the
    # example's values, as analyze traces it: the same inputs run it, node by node
    model, x = SizedByItsInput().eval(), torch.full((3,), 2.0)
    m = measure(model, (x,), chip=CHIP, warmup=0, repeat=2)
    assert m.capture.startswith("make_fx on example values")
    assert {r.op for r in m.rows} >= {"addmm", "cumsum"}      # make_fx records linear so
    assert all(r.measured_s > 0 for r in m.rows)


def test_a_plain_function_is_measured():
    def scaled_sum(a, b):
        return torch.relu(a @ b).sum(dim=-1)
    m = measure(scaled_sum, (torch.randn(8, 16), torch.randn(16, 4)), chip=CHIP, warmup=0,
                repeat=2)
    assert m.model == "scaled_sum" and {r.op for r in m.rows} >= {"matmul", "relu", "sum"}


def test_a_value_that_does_not_fit_its_placeholder_is_named():
    model, x = mlp()
    captured, values = program(model, (x,), {})
    with pytest.raises(MeasureError, match="placeholder"):
        check_values(captured.gm, values[:-1] + [torch.randn(5, 32)])


def test_default_chip_is_calibrated_on_this_machine(monkeypatch):
    calls = []

    def fake_local_chip(device, threads=None):
        calls.append((device, threads))
        return CHIP
    monkeypatch.setattr(runs, "local_chip", fake_local_chip)
    model, x = mlp()
    m = measure(model, (x,), warmup=0, repeat=1, threads=1)
    assert m.chip is CHIP and calls == [("cpu", 1)]
    assert "1 thread" in m.device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_measurement_times_with_events():
    model, x = mlp()
    m = measure(model.cuda(), (x.cuda(),), chip="h100-sxm", warmup=1, repeat=3)
    assert all(r.measured_s > 0 for r in m.rows) and m.measured_s > 0


def test_a_chip_calibrated_on_other_threads_is_pointed_out():
    note = runs._thread_mismatch("AMD EPYC, 2 threads", "AMD EPYC, 1 thread (calibrated)")
    assert "calibrated on 1 thread and this ran on 2 threads" in note and "--threads 1" in note
    assert runs._thread_mismatch("AMD EPYC, 1 thread", "AMD EPYC, 1 thread (calibrated)") == ""
    assert runs._thread_mismatch("NVIDIA H100", "NVIDIA H100 SXM5 80GB") == ""


def test_compiled_mode_times_torch_compile_against_the_compiled_prediction():
    from fxroof.measure.runs import measure_compiled
    model, x = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    m = measure_compiled(model, (x,), chip=CHIP, warmup=1, repeat=3)
    expected = fxroof.analyze(model, (x,), chip=CHIP, mode="compiled")
    assert m.predicted_s == pytest.approx(expected.time_s, rel=1e-9)
    assert m.report.mode == "compiled" and len(m.report.kernels) == len(expected.kernels)
    assert m.measured_s > 0 and m.compile_s > 0
    d = m.to_dict()
    assert d["schema"] == "fxroof.measurement.compiled/1" and d["kernels"] == len(m.report.kernels)
    assert "(compiled)" in str(m).splitlines()[0]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())   # untouched


def test_page_faults_of_each_forward_are_counted_and_named(monkeypatch):
    # first touches of memory the allocator handed back cost 1-3 us each on a CPU, time no
    # prediction holds: the measurement counts them around each forward and says so
    from fxroof.measure import runner
    counter = iter(range(0, 10**6, 150))          # each reading 150 more than the last
    monkeypatch.setattr(runner, "minor_faults", lambda: next(counter))
    model, x = mlp()
    m = measure(model, (x,), chip=CHIP, warmup=1, repeat=3)
    assert m.page_faults == 150 and m.to_dict()["page_faults"] == 150
    assert "note: 150 page faults a forward" in str(m)
    monkeypatch.setattr(runner, "minor_faults", lambda: None)    # a platform that counts none
    m = measure(model, (x,), chip=CHIP, warmup=1, repeat=3)
    assert m.page_faults == 0 and "page faults" not in str(m)
