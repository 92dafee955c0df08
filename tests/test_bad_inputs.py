"""Misuse gets one line naming the cause (exit 2 on the command line, a ValueError, TypeError or
CaptureError from the API), never a number that looks right, and the user's model is left as it
was: state, requires_grad, training mode, hooks and device."""
import copy
import dataclasses
import json
import types
from pathlib import Path

import pytest
import torch

import fxroof
from fxroof.chips import chip as find_chip
from fxroof.cli.main import main
from fxroof.graph.capture import capture
from fxroof.measure import calibrate
from fxroof.measure.runs import MeasureError, measure

ROOT = Path(__file__).resolve().parent.parent
MLP = str(ROOT / "models" / "mlp.py")


def snapshot(model: torch.nn.Module) -> tuple:
    """What a user would notice changed: state, requires_grad, modes, hooks, device."""
    modules = list(model.modules())
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [p.requires_grad for p in model.parameters()], [m.training for m in modules],
            [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
             for m in modules], [t.device for t in model.state_dict().values()])


def same(a: tuple, b: tuple) -> bool:
    # devices first: torch.equal cannot read a meta tensor
    return a[1:] == b[1:] and a[0].keys() == b[0].keys() and all(
        torch.equal(a[0][k], b[0][k]) for k in a[0])


@pytest.fixture
def model():
    """A model in training mode, one weight frozen, hooks on it: all things capture could touch."""
    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    m.train()
    m[0].weight.requires_grad_(False)
    m.register_forward_hook(lambda *_: None)
    m[2].register_forward_pre_hook(lambda *_: None)
    return m


class Branches(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:          # the line the message names
            return x * 2
        return x


class SizedByValue(torch.nn.Module):
    def forward(self, x):
        return torch.zeros(int(x.sum().item()))


def fails_in_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fxroof") and message in err and err.count("\n") == 1, err
    assert "Traceback" not in err


# -- the command line ------------------------------------------------------------------------

@pytest.fixture
def files(tmp_path, monkeypatch, model):
    """Workload files built on the `model` fixture (reached through a module the test puts in
    sys.modules), and broken JSON files."""
    monkeypatch.setitem(__import__("sys").modules, "bad_inputs_model",
                        types.SimpleNamespace(model=model))
    (tmp_path / "user.py").write_text(
        "import torch\nimport bad_inputs_model\n"
        "def workload(batch=2, dtype='float32'):\n"
        "    x = torch.ones(batch, 8, dtype=getattr(torch, dtype))\n"
        "    return bad_inputs_model.model, (x,)\n"
        "def branches():\n"
        "    from test_bad_inputs import Branches\n"
        "    return Branches(), (torch.randn(4, device='meta'),)\n")
    (tmp_path / "broken.json").write_text('{"model_type": "llama"')
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "notype.json").write_text('{"hidden_size": 8}')
    (tmp_path / "llama.json").write_text('{"model_type": "llama", "hidden_size": 16, '
                                         '"num_hidden_layers": 1, "vocab_size": 32}')
    (tmp_path / "chip.json").write_text('{"name": "x"}')
    return tmp_path


@pytest.mark.parametrize("argv, message", [
    # what-ifs
    (["analyze", "{w}", "--quantize", "w4+w8"], "'w4+w8' sets the weights twice; give one"),
    (["analyze", "{w}", "--quantize", "kv8+kv-fp8"], "sets the kv cache twice"),
    (["analyze", "{w}", "--quantize", "w3"], "unknown quantization 'w3'"),
    # workloads and inputs
    (["analyze", "{w}", "--hf", "config.json"], "give a workload file or --hf CONFIG, not both"),
    (["analyze", "{w}", "--set", "batch=0"], "shape (0, 8) is empty (batch=0?)"),
    (["analyze", "{w}", "--set", "dtype=int64"], "dtype mismatch: linear (module '0') gets "
                                                 "float32 and int64 tensors"),
    (["analyze", "{w}:branches"], "forward branches on a tensor value at test_bad_inputs.py:"),
    (["sweep", "{w}", "--over", "batch=0,1"], "is empty (batch=0?)"),
    # an option a workload annotates as an int, given a fraction, a word or a negative count
    (["analyze", MLP, "--set", "batch=1.5"], "mlp.py:workload: batch takes a whole number, got 1.5"),
    (["analyze", MLP, "--set", "layers=two"], "layers takes a whole number, got 'two'"),
    (["sweep", MLP, "--over", "batch=-1,2"], "mlp.py:workload: batch must be 0 or more, got -1"),
    (["generate", MLP, "--prompt", "4", "--new-tokens", "2"],
     "has no option 'phase'; it takes preset, batch, dim, hidden, layers, dtype, device; a "
     "generation calls its workload with batch, phase ('prefill' or 'decode'), seq (the "
     "prompt's tokens) and ctx (the cached ones), the options models/llama.py's takes"),
    (["critical-batch", MLP], "the critical batch calls its workload with batch, phase"),
    (["sweep", MLP, "--over", "width=1,2"], "mlp.py:workload has no option 'width'; it takes "
                                             "preset, batch, dim, hidden, layers, dtype, device"),
    # options and parallel degrees
    (["analyze", "{w}", "--mode", "fused"], "unknown mode 'fused'"),
    (["measure", "{w}", "--mode", "fused"], "unknown mode 'fused'"),
    (["analyze", "{w}", "--tp", "0"], "tp must be a whole number >= 1, got 0"),
    (["analyze", "{w}", "--tp", "3"], "out_features=16 does not divide by tp=3"),
    (["analyze", "{w}", "--tp", "two"], "argument --tp: invalid int value: 'two'"),
    (["sweep", "{w}", "--over", "batch"], "--over expects NAME=V1,V2,..."),
    (["generate", "{w}", "--prompt", "0"], "prompt, new_tokens and batch must be >= 1"),
    # budgets
    (["check", "{w}", "--min-coverage", "95"], "min_coverage must be a share from 0 to 1, got 95"),
    (["check", "{w}", "--max-time-ms", "-5"], "max_time_ms must be a number >= 0"),
    (["check", "{w}", "--max-time-ms", "nan"], "max_time_ms must be a number >= 0, got nan"),
    (["check", "{w}", "--max-regime-share", "overhead=1.5"], "the overhead share must be a share"),
    (["check", "{w}", "--lint", "loud"], "lint must be one of off, warn, fail, got 'loud'"),
    # chips
    (["analyze", "{w}", "--chip", "{d}/none.json"], "not found"),
    (["analyze", "{w}", "--chip", "{d}/broken.json"], "invalid JSON at line 1"),
    (["analyze", "{w}", "--chip", "{d}/list.json"], "a chip must be a JSON object, got list"),
    (["analyze", "{w}", "--chip", "{d}/chip.json"], "missing required figure(s) title, kind"),
    # JSON files
    (["diff", "{d}/broken.json", "{d}/list.json"], "broken.json is not JSON"),
    (["diff", "{d}/list.json", "{d}/list.json"], "list.json is not an fxroof report"),
    (["analyze", "{w}", "--json", "{d}"], "Is a directory"),
    (["analyze", "--hf", "{d}/none.json"], "none.json' does not exist"),
    (["analyze", "--hf", "{d}/notype.json"], "has no \"model_type\" key"),
    (["analyze", "--hf", "{d}/broken.json"], "is not valid JSON"),
    (["analyze", "--hf", "{d}/llama.json", "--set", "seq=abc"],
     "option seq=abc: seq takes a whole number of 1 or more"),
    (["sweep", "--hf", "{d}/llama.json", "--over", "batch=0,1"],
     "option batch=0: batch takes a whole number of 1 or more"),
    # a length the phase does not read, which it would ignore
    (["analyze", "--hf", "{d}/llama.json", "--set", "phase=decode", "--set", "seq=100"],
     "option seq=100: phase=decode reads ctx (the tokens cached), not seq"),
    (["analyze", "--hf", "{d}/llama.json", "--set", "ctx=100"],
     "option ctx=100: phase=prefill reads seq (the prompt's tokens), not ctx"),
    (["generate", "--set", "batch=8"],
     "a generation sets batch itself: give it as --batch (batch=), not as an option"),
    (["analyze", "--hf", "{d}/llama.json", "--set", "layers=2"],
     "option 'layers': a config's model takes batch, seq, dtype"),
    (["analyze", "{d}/notype.json"], "a workload is a Python file (.py); a transformers config "
                                     "goes to --hf"),
    # the machine
    (["measure", MLP], "on the meta device: there is nothing to run"),   # bundled: meta default
    (["calibrate", "--device", "tpu", "--out", "{d}/x.json"], "a 'cpu' or 'cuda' device, not"),
])
def test_the_command_line_refuses_in_one_line(capsys, files, model, argv, message):
    before = snapshot(model)
    argv = [a.replace("{w}", str(files / "user.py")).replace("{d}", str(files)) for a in argv]
    fails_in_one_line(capsys, argv, message)
    assert same(before, snapshot(model))
    assert not (files / "x.json").exists()


def quiet(view_again=None, **figures):
    """A calibration's result, as a fake _measure gives it: a chip and a view call re-timed."""
    chip = dataclasses.replace(find_chip("h100-sxm"),
                               **{"dispatch_s": 5e-6, "view_dispatch_s": 1e-6, **figures})
    return chip, view_again or chip.view_dispatch_s


def test_a_noisy_calibration_is_measured_again_then_refused_without_a_file(
        capsys, tmp_path, monkeypatch):
    noisy = [quiet(dispatch_s=70e-6), quiet(view_again=3e-6)]        # each attempt its doubt
    monkeypatch.setattr(calibrate, "_measure", lambda *_: noisy.pop(0))
    out = tmp_path / "here.json"
    fails_in_one_line(capsys, ["calibrate", "--out", str(out)],
                      "calibration not written: the machine was noisy on each of 2 attempts")
    assert not out.exists() and not noisy


def test_a_calibration_noisy_once_keeps_the_quiet_second_run(monkeypatch):
    runs = [quiet(view_again=2.5e-6), quiet()]
    monkeypatch.setattr(calibrate, "_measure", lambda *_: runs.pop(0))
    said = []
    chip = calibrate.calibrate("cpu", log=said.append)
    assert chip.dispatch_s == 5e-6 and not runs
    assert said == ["the machine looks noisy (a view call took 1 µs at the start, 2.5 µs at the "
                    "end); measuring again ..."]


@pytest.mark.parametrize("figures, view_again, doubt", [
    ({}, None, None),
    ({"dispatch_s": 70e-6}, None, "an eager op's dispatch 70 µs is 70x a view call's 1 µs"),
    ({}, 2.5e-6, "a view call took 1 µs at the start, 2.5 µs at the end"),
    ({}, 0.4e-6, "a view call took 1 µs at the start, 0.4 µs at the end"),
])
def test_doubts_name_what_a_quiet_machine_would_not_give(figures, view_again, doubt):
    assert calibrate.doubts(*quiet(view_again, **figures)) == ([doubt] if doubt else [])


# -- the API ---------------------------------------------------------------------------------

X = torch.randn(2, 8)


@pytest.mark.parametrize("inputs, options, error, message", [
    # what-ifs, options, chips and parallel degrees: refused before capturing
    ((X,), {"quantize": "w4+w8"}, ValueError, "sets the weights twice"),
    ((X,), {"quantize": "w4", "matmul_epilogues": True}, ValueError,
     "quantization what-ifs need matmul_epilogues=False"),
    ((X,), {"mode": "fused"}, ValueError, "unknown mode 'fused'"),
    ((X,), {"chip": "h100-sxn"}, ValueError, "did you mean: h100-sxm"),
    ((X,), {"chip": "no/such/chip.json"}, ValueError, "not found"),
    ((X,), {"tp": 0}, ValueError, "tp must be a whole number >= 1"),
    ((X,), {"tp": True}, ValueError, "tp must be a whole number >= 1, got True"),
    ((X,), {"tp": 3}, ValueError, "out_features=16 does not divide by tp=3"),
    ((X,), {"target": fxroof.Target(), "chip": "l4"}, TypeError, "give target= or its fields"),
    # inputs
    ((torch.ones(2, 8, dtype=torch.long),), {}, TypeError,
     r"dtype mismatch: linear \(module '0'\) gets float32 and int64 tensors"),
    ((torch.randn(0, 8),), {}, ValueError, r"shape \(0, 8\) is empty \(batch=0\?\)"),
    ((torch.randn(2, 9),), {}, fxroof.CaptureError,
     r"a and b must have same reduction dim, but got \[2, 9\] X \[8, 16\]"),
    (("text",), {}, fxroof.CaptureError, "must be Tensor, not str"),
    ((X, X), {}, fxroof.CaptureError, "takes 2 positional arguments but 3 were given"),
])
def test_the_api_refuses_and_leaves_the_model_alone(model, inputs, options, error, message):
    before = snapshot(model)
    with pytest.raises(error, match=message) as caught:
        fxroof.analyze(model, inputs, **options)
    # one line, a CaptureError's too where every strategy stopped on the same call
    assert "\n" not in str(caught.value)
    assert same(before, snapshot(model))


@pytest.mark.parametrize("culprit, message", [
    (Branches(), r"could not capture Branches: forward branches on a tensor value at "
                 r"test_bad_inputs.py:\d+ \(if x.sum\(\) > 0:"),
    (SizedByValue(), r"forward uses a tensor value as a size or number \(.item\(\)\) at "
                     r"test_bad_inputs.py:\d+ \(return torch.zeros\(int\(x.sum\(\).item\(\)\)\)\)"),
    (torch.nn.Sequential(), "Sequential runs no ops on these inputs: nothing to analyze"),
    (42, "expected an nn.Module, an fx.GraphModule, an ExportedProgram or a callable"),
])
def test_models_that_no_graph_stands_for_are_named_in_one_line(culprit, message, capfd):
    with pytest.raises((fxroof.CaptureError, ValueError), match=message) as caught:
        fxroof.analyze(culprit, (torch.randn(4, device="meta"),))    # no values to follow
    assert "\n" not in str(caught.value)
    assert "def forward" not in capfd.readouterr().err      # torch's partial graph: not shown


@pytest.mark.parametrize("x, doubled", [(torch.ones(4), True), (-torch.ones(4), False)])
def test_a_branch_on_real_inputs_follows_them_and_the_capture_line_names_it(x, doubled):
    before = x.clone()
    captured = capture(Branches(), (x,))
    line = Branches.forward.__code__.co_firstlineno + 1     # `if x.sum() > 0:`
    assert captured.strategy == (f"make_fx on example values: branches and sizes at "
                                 f"test_bad_inputs.py:{line} follow the example inputs")
    ops = [n.target for n in captured.gm.graph.nodes if n.op == "call_function"]
    assert (torch.ops.aten.mul.Tensor in ops) is doubled     # the branch this input takes
    assert torch.equal(x, before)


@pytest.mark.parametrize("study, message", [
    (lambda w: fxroof.sweep(w, {"batch": [1], "width": [2]}), "sweep one option at a time"),
    (lambda w: fxroof.sweep(w, {"batch": []}), "no values to sweep batch over"),
    (lambda w: fxroof.sweep(w, {"batch": [0, 1]}), r"is empty \(batch=0\?\)"),
    (lambda w: fxroof.generation(w, prompt=0, new_tokens=4), "must be >= 1"),
    # an option the study sets itself would be overridden unseen (--set batch=8 had reported
    # a generation at batch 1)
    (lambda w: fxroof.sweep(w, {"batch": [1, 2]}, options={"batch": 8}),
     r"batch is the swept option, not also a fixed one \(--set batch=8\)"),
    (lambda w: fxroof.generation(w, prompt=4, new_tokens=4, options={"batch": 8}),
     r"a generation sets batch itself: give it as --batch \(batch=\)"),
    (lambda w: fxroof.critical_batch(w, options={"ctx": 8}),
     r"the critical batch sets ctx itself: give it as --ctx"),
])
def test_studies_refuse_and_leave_the_model_alone(model, study, message):
    before = snapshot(model)
    with pytest.raises(ValueError, match=message):
        study(lambda batch=2, **_: (model, (torch.randn(batch, 8),)))
    assert same(before, snapshot(model))


@pytest.mark.parametrize("budgets, message", [
    ({"min_coverage": 95}, "min_coverage must be a share from 0 to 1, got 95"),
    ({"max_time_ms": float("nan")}, "max_time_ms must be a number >= 0"),
    ({"max_regime_share": {"overheads": 0.2}}, "unknown regime 'overheads'"),
    ({"lint": "loud"}, "lint must be one of off, warn, fail"),
])
def test_budgets_that_cannot_be_meant_are_refused(model, budgets, message):
    report = fxroof.analyze(model, (X,))
    before = snapshot(model)
    with pytest.raises(ValueError, match=message):
        report.check(**budgets)
    assert same(before, snapshot(model))


def test_measuring_meta_tensors_is_refused_and_the_model_untouched(model):
    meta = copy.deepcopy(model).to("meta")
    before = snapshot(model)
    with pytest.raises(MeasureError, match="meta device"):
        measure(meta, (torch.randn(2, 8),), chip="cpu")
    with pytest.raises(MeasureError, match="meta device"):
        measure(model, (torch.empty(2, 8, device="meta"),), chip="cpu")
    assert same(before, snapshot(model))


def test_the_snapshot_sees_each_kind_of_change(model):
    """The guard itself: every change a capture could leave behind is caught."""
    before = snapshot(model)
    for change in (lambda m: m[0].bias.data.add_(1), lambda m: m[0].weight.requires_grad_(True),
                   lambda m: m[1].eval(), lambda m: m[1].register_forward_hook(lambda *_: None),
                   lambda m: m.to("meta")):
        changed = copy.deepcopy(model)
        change(changed)
        assert not same(before, snapshot(changed))


def test_fp8_on_a_chip_without_fp8_units_says_where_it_runs(model):
    r = fxroof.analyze(model, (torch.randn(2, 8),), chip="a100-80gb", quantize="fp8")
    assert "a100-80gb has no fp8 matrix units: fp8 matmuls run at its bf16 peak" in r.notes
    text = str(r)
    assert "bf16 ridge 153" in text and "fp8 ridge" not in text and "note: a100-80gb" in text


def test_bf16_on_a_chip_without_bf16_units_says_where_it_runs(model):
    # V100 (Volta) and T4 (Turing) tensor cores take fp16 only (their datasheets list no bf16):
    # a bf16 matmul runs at the fp32 rate, 15.7 TFLOP/s on a V100 against 125 for fp16; the
    # emulation reaches less: 10.65 of 15.7 on a V100, 6.95 of 14.2 on an RTX 2080 Ti
    # (zzc0721/torch-performance-test-data #140 and #181)
    half = copy.deepcopy(model).to(torch.bfloat16)
    x = (torch.randn(2, 8, dtype=torch.bfloat16),)
    r = fxroof.analyze(half, x, chip="v100")
    assert r.notes == ("v100 has no bf16 matrix units: bf16 matmuls run at its fp32 peak, "
                       "15.7 TFLOP/s (fp16: 125 TFLOP/s); measured GPUs emulate bf16 at about "
                       "half to two thirds of that peak",)
    assert "note: v100 has no bf16" in str(r)
    assert not fxroof.analyze(half, x, chip="a100-80gb").notes            # bf16 tensor cores
    fp16 = (copy.deepcopy(model).half(), (torch.randn(2, 8, dtype=torch.float16),))
    assert not fxroof.analyze(*fp16, chip="v100").notes


def test_a_gpu_without_a_measured_matmul_share_says_its_matmuls_run_at_the_peak(model):
    # every GPU of the table has an achievable-matmul figure; a user's chip file may not (here
    # the A10's without its own). The table's measured GPUs reach from the A10's 56 of 125
    # TFLOPS (a 150 W card; chsasank/device-benchmarks) to the A10G's 69.7 of 70 (0.996)
    x = (torch.randn(2, 8),)
    bare = dataclasses.replace(fxroof.chip("a10"), name="my-a10", matmul_efficiency=0.0)
    note = ("my-a10 has no measured achievable-matmul share: its matrix kernels are priced at "
            "the whole dense peak, where the GPUs measured reach 45%-100% of theirs (`fxroof "
            "chips` gives each chip's figures)")
    assert fxroof.analyze(model, x, chip=bare).notes == (note,)
    assert not fxroof.analyze(model, x, chip="a10").notes               # 56 of 125 measured
    # no matrix work, nothing to say; a calibrated chip's peak is itself a measured rate
    relu = torch.nn.ReLU()
    assert not fxroof.analyze(relu, x, chip=bare).notes
    calibrated = dataclasses.replace(bare, sources={
        **bare.sources, "peak_flops": "measured by fxroof calibrate on X: ..."})
    assert not fxroof.analyze(model, x, chip=calibrated).notes


def test_a_chip_whose_roofline_figures_are_estimates_says_so(model):
    # the RTX 4080's bandwidth is worked out from its memory's data rate (chips.json says
    # "estimate:"), the A100's figures are its datasheet's: only the first report carries a note
    x = (torch.randn(2, 8),)
    note = ("rtx-4080's memory bandwidth is an estimate, not a published or measured figure "
            "(`fxroof chips rtx-4080` says how it was made)")
    assert fxroof.analyze(model, x, chip="rtx-4080").notes == (note,)
    assert not fxroof.analyze(model, x, chip="a100-80gb").notes
    both = dataclasses.replace(fxroof.chip("a100-80gb"), sources={
        **fxroof.chip("a100-80gb").sources, "peak_flops": "estimate: x", "mem_bw": "Estimate: y"})
    assert fxroof.analyze(model, x, chip=both).notes[0].startswith(
        "a100-80gb's peak FLOP/s and memory bandwidth are estimates")


def test_tf32_puts_fp32_matmuls_on_the_tensor_cores_and_is_recorded(files, tmp_path, capsys):
    # --tf32 is PyTorch's allow_tf32 for the analysis: the report says where the fp32 products
    # ran and records the flag; the process's own flag is left as it was
    out = tmp_path / "r.json"
    was = torch.backends.cuda.matmul.allow_tf32
    assert main(["analyze", str(files / "user.py"), "--chip", "a100-80gb", "--tf32",
                 "--json", str(out)]) == 0
    assert torch.backends.cuda.matmul.allow_tf32 == was
    data = json.loads(out.read_text())
    assert data["provenance"]["tf32"] is True
    assert any("fp32 matmul FLOPs run on a100-80gb's TF32 tensor cores" in n
               for n in data["notes"])
    assert main(["analyze", str(files / "user.py"), "--chip", "a100-80gb", "--json",
                 str(out)]) == 0
    data = json.loads(out.read_text())
    assert "tf32" not in data["provenance"]
    assert not any("TF32 tensor cores," in n and "run on a100" in n for n in data["notes"])


def test_a_report_records_what_was_analyzed(files, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["analyze", str(files / "user.py"), "--set", "batch=3", "--quantize", "w8",
                 "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    given = data["provenance"]
    assert given["workload"] == str(files / "user.py") and given["options"] == {"batch": 3}
    assert given["inputs"] == [{"shape": [3, 8], "dtype": "fp32"}]
    assert given["torch"] == torch.__version__ and given["fxroof"]
    assert data["whatif"] and data["tp"] == 1
