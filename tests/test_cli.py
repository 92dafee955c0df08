"""The command line, in-process through main([...]) and once as a real subprocess."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fxroof.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
MLP = str(ROOT / "models" / "mlp.py")


@pytest.fixture
def workload(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(
        "import torch\n"
        "def workload(width=16, batch=1):\n"
        "    model = torch.nn.Sequential(torch.nn.Linear(width, 4 * width), torch.nn.ReLU(),\n"
        "                                torch.nn.Linear(4 * width, width))\n"
        "    return model, (torch.randn(batch, width),)\n"
        "def broken():\n"
        "    raise RuntimeError('checkpoint missing')\n"
        "def not_a_model():\n"
        "    return 42\n")
    return str(path)


def test_analyze_prints_tables_and_writes_the_json_schema(workload, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["analyze", workload, "--set", "width=32", "--chip", "a100-80gb",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "NVIDIA A100" in text and "Top kernels" in text
    data = json.loads(out.read_text())
    assert data["schema"] == "fxroof.report/1" and data["chip"]["name"] == "a100-80gb"
    # the --set reached the workload: first Linear is 2 * 1 * 128 * 32 = 8192 FLOPs
    assert max(n["flops"] for n in data["nodes"]) == 2 * 1 * 128 * 32


def test_json_to_stdout_is_only_json(workload, capsys):
    assert main(["analyze", workload, "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["schema"] == "fxroof.report/1"


@pytest.mark.parametrize("argv,needle", [
    (["analyze", "no/such/file.py"], "no workload file"),
    (["analyze", "{w}:nothing"], "has no function 'nothing'"),
    (["analyze", "{w}:broken"], "checkpoint missing"),
    (["analyze", "{w}:not_a_model"], "must return (model, args)"),
    (["analyze", "{w}", "--chip", "h100sxm"], "did you mean: h100-sxm"),
    (["analyze", "{w}", "--set", "width"], "KEY=VALUE"),
    (["analyze", "{w}", "--set", "depth=3"], "unexpected keyword argument 'depth'"),
    (["check", "{w}", "--max-regime-share", "overhed=0.2"], "REGIME=SHARE"),
    (["diff", "no.json", "other.json"], "No such file"),
])
def test_errors_are_one_line_and_exit_2(workload, argv, needle, capsys):
    argv = [a.replace("{w}", workload) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_invalid_chip_file_is_one_line(workload, tmp_path, capsys):
    bad = tmp_path / "chip.json"
    bad.write_text('{"name": "x", "mem_bw_GBps": -1}')
    assert main(["analyze", workload, "--chip", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "chip.json" in err and len(err.strip().splitlines()) == 1


def test_debug_shows_the_traceback(workload):
    with pytest.raises(Exception):
        main(["analyze", workload + ":broken", "--debug"])


def test_check_exit_codes(workload, capsys):
    assert main(["check", workload, "--max-time-ms", "1000"]) == 0
    assert main(["check", workload, "--max-regime-share", "overhead=0.1"]) == 1
    out = capsys.readouterr().out
    assert "FAIL overhead share" in out and "ok   memory fit" in out


def test_dtype_lint_warns_by_default_and_fails_when_asked(workload, capsys):
    # fp32 Linear layers on an H100: fp32 runs at 67 TFLOP/s against 989 in bf16
    assert main(["check", workload]) == 0
    assert "warn dtype: fp32 matmuls" in capsys.readouterr().out
    assert main(["check", workload, "--lint", "fail"]) == 1


def test_memory_fit_fails_for_70b_on_one_a100(capsys):
    spec = str(ROOT / "models" / "llama.py")
    assert main(["check", spec, "--set", "preset=llama3-70b", "--set", "layers=2",
                 "--set", "seq=16", "--chip", "a100-80gb"]) == 0   # 2 of 80 layers fit
    code = main(["check", spec, "--set", "preset=llama3-70b", "--set", "seq=16",
                 "--chip", "a100-80gb"])
    out = capsys.readouterr().out
    assert code == 1 and "FAIL memory fit" in out and "> 80 GB on a100-80gb" in out


def test_compare_and_diff(workload, tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["compare", workload, "--json", str(a)]) == 0
    assert "Eager (one kernel per op) vs compiled" in capsys.readouterr().out
    assert main(["analyze", workload, "--set", "batch=64", "--json", str(b)]) == 0
    capsys.readouterr()
    assert main(["diff", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "FLOPs" in out and "+6300.0%" in out          # 64x the FLOPs: +6300%


def test_chips_lists_the_table(capsys):
    assert main(["chips"]) == 0
    out = capsys.readouterr().out
    assert "h100-sxm" in out and "mi300x" in out
    assert max(len(line) for line in out.splitlines()) <= 100


def test_real_subprocess_and_quiet_when_not_a_tty():
    done = subprocess.run([sys.executable, "-m", "fxroof.cli", "analyze", MLP, "--set",
                           "preset=tiny", "--chip", "l4"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "NVIDIA L4" in done.stdout
    assert "capturing" not in done.stderr        # progress only on a terminal
    assert max(len(line) for line in done.stdout.splitlines()) <= 100


def test_calibrate_then_measure_with_the_written_chip(tmp_path, capsys):
    out = tmp_path / "here.json"
    assert main(["calibrate", "--quick", "--threads", "1", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["name"] == "calibrated-cpu"
    assert main(["measure", MLP, "--set", "preset=tiny", "--set", "device=cpu",
                 "--chip", str(out), "--repeat", "3", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "predicted" in text.lower() and "measured" in text.lower()


LLAMA = str(ROOT / "models" / "llama.py")


def test_sweep_generate_and_critical_batch_commands(tmp_path, capsys):
    tiny = ["--set", "preset=tiny", "--chip", "a100-80gb"]
    out = tmp_path / "sweep.json"
    assert main(["sweep", LLAMA, *tiny, "--set", "phase=decode", "--over", "batch=1,4",
                 "--json", str(out)]) == 0
    assert [p["value"] for p in json.loads(out.read_text())["points"]] == [1, 4]
    assert main(["generate", LLAMA, *tiny, "--prompt", "32", "--new-tokens", "4",
                 "--quantize", "w4"]) == 0
    assert "what-if int4 weights" in capsys.readouterr().out
    assert main(["critical-batch", LLAMA, *tiny, "--ctx", "64", "--max-batch", "64"]) == 0
    assert "whole step" in capsys.readouterr().out
    assert main(["sweep", LLAMA, "--over", "batch"]) == 2            # no values: one-line error
    assert main(["analyze", LLAMA, *tiny, "--quantize", "w3"]) == 2   # unknown what-if


def test_analyze_can_draw_the_roofline(workload, tmp_path):
    pytest.importorskip("matplotlib")
    assert main(["analyze", workload, "--plot", str(tmp_path / "r.svg")]) == 0
    assert "<svg" in (tmp_path / "r.svg").read_text()


def test_tensor_parallel_report_and_scaling(capsys):
    assert main(["analyze", LLAMA, "--set", "preset=tiny", "--tp", "2", "--tp-scaling",
                 "--chip", "l40s"]) == 0
    out = capsys.readouterr().out
    assert "Tensor parallelism: one rank at each degree" in out and "all_reduce" in out
    assert main(["analyze", LLAMA, "--set", "preset=tiny", "--tp-scaling"]) == 2


def test_check_json_holds_the_verdict_each_check_and_the_report(workload, capsys):
    assert main(["check", workload, "--max-regime-share", "overhead=0.1", "--json", "-"]) == 1
    out = json.loads(capsys.readouterr().out)              # stdout is the JSON alone
    assert out["schema"] == "fxroof.check/1" and out["ok"] is False
    by_name = {c["name"]: c for c in out["checks"]}
    assert by_name["overhead share"]["failed"] is True and by_name["memory fit"]["ok"] is True
    assert out["report"]["schema"] == "fxroof.report/1"


def test_debug_before_the_command_shows_the_traceback_too(workload):
    from fxroof.studies.workload import WorkloadError
    with pytest.raises(WorkloadError, match="checkpoint missing"):     # raised, not printed
        main(["--debug", "analyze", workload + ":broken"])
