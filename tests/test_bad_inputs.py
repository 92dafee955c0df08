"""Misuse gets one line naming the cause (exit 2 on the command line, a ValueError from the API),
never a number that looks right, and the user's model is left as it was."""
import copy
from pathlib import Path

import pytest
import torch

import fxroof
from fxroof.cli.main import main
from fxroof.measure.runs import MeasureError, measure

ROOT = Path(__file__).resolve().parent.parent
MLP = str(ROOT / "models" / "mlp.py")


def snapshot(model: torch.nn.Module) -> tuple:
    """What a user would notice changed: state, requires_grad, mode, hooks, device."""
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [p.requires_grad for p in model.parameters()], model.training,
            len(model._forward_hooks), [p.device for p in model.parameters()])


def same(a: tuple, b: tuple) -> bool:
    return all(torch.equal(a[0][k], b[0][k]) for k in a[0]) and a[1:] == b[1:]


@pytest.fixture
def model():
    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    m.train()
    return m


def fails_in_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fxroof: ") and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("argv, message", [
    (["analyze", MLP, "--quantize", "w4+w8"], "'w4+w8' sets the weights twice; give one"),
    (["analyze", MLP, "--quantize", "kv8+kv-fp8"], "sets the kv cache twice"),
    (["analyze", MLP, "--hf", "config.json"], "give a workload file or --hf CONFIG, not both"),
    (["check", MLP, "--min-coverage", "95"], "min_coverage must be a share from 0 to 1, got 95"),
    (["check", MLP, "--max-time-ms", "-5"], "max_time_ms must be a number >= 0"),
    (["check", MLP, "--max-regime-share", "overhead=1.5"], "the overhead share must be a share"),
    (["measure", MLP], "on the meta device: there is nothing to run"),   # bundled: meta default
])
def test_the_command_line_refuses_in_one_line(capsys, argv, message):
    fails_in_one_line(capsys, argv, message)


def test_measuring_meta_tensors_is_refused_and_the_model_untouched(model):
    meta = copy.deepcopy(model).to("meta")
    before = snapshot(model)
    with pytest.raises(MeasureError, match="meta device"):
        measure(meta, (torch.randn(2, 8),), chip="cpu")
    with pytest.raises(MeasureError, match="meta device"):
        measure(model, (torch.empty(2, 8, device="meta"),), chip="cpu")
    assert same(before, snapshot(model))


@pytest.mark.parametrize("options, message", [
    ({"quantize": "w4+w8"}, "sets the weights twice"),
    ({"mode": "fused"}, "unknown mode 'fused'"),
    ({"tp": 0}, "tp must be a whole number >= 1"),
    ({"chip": "h100sxm"}, "did you mean: h100-sxm"),
])
def test_the_api_refuses_before_capturing_and_leaves_the_model_alone(model, options, message):
    before = snapshot(model)
    with pytest.raises(ValueError, match=message):
        fxroof.analyze(model, (torch.randn(2, 8),), **options)
    assert same(before, snapshot(model))


def test_fp8_on_a_chip_without_fp8_units_says_where_it_runs(model):
    r = fxroof.analyze(model, (torch.randn(2, 8),), chip="a100-80gb", quantize="fp8")
    assert "a100-80gb has no fp8 matrix units: fp8 matmuls run at its bf16 peak" in r.notes
    text = str(r)
    assert "bf16 ridge 153" in text and "fp8 ridge" not in text and "note: a100-80gb" in text
