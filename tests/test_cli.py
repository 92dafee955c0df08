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


def test_amp_runs_the_workload_under_autocast(workload, capsys):
    assert main(["analyze", workload, "--amp", "bf16", "--json", "-"]) == 0
    data = json.loads(capsys.readouterr().out)
    # both Linears in bf16, their fp32 input and weights cast first: the input, then the first
    # layer's weight and bias, then the second's (the ReLU's output is already bf16)
    assert {n["dtype"] for n in data["nodes"] if n["category"] == "matmul"} == {"bf16"}
    assert sum(n["op"] == "_to_copy" for n in data["nodes"]) == 5
    assert any("CUDA autocast (bf16)" in note for note in data["notes"])


def test_json_to_stdout_is_only_json(workload, capsys):
    assert main(["analyze", workload, "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["schema"] == "fxroof.report/1"


@pytest.mark.parametrize("argv,needle", [
    (["analyze", "no/such/file.py"], "no workload file"),
    (["analyze", "{w}:nothing"], "has no function 'nothing'"),
    (["analyze", "{w}:broken"], "checkpoint missing"),
    (["analyze", "{w}:not_a_model"], "must return (model, args)"),
    (["analyze", "{w}", "--chip", "h100-sxn"], "did you mean: h100-sxm"),
    (["analyze", "{w}", "--set", "width"], "KEY=VALUE"),
    (["analyze", "{w}", "--set", "depth=3"], "has no option 'depth'; it takes width, batch"),
    (["check", "{w}", "--max-regime-share", "overhed=0.2"], "REGIME=SHARE"),
    (["diff", "no.json", "other.json"], "No such file"),
    (["analyze", "{w}", "--mode", "cudagraphs", "--chip", "cpu"], "replays CUDA graphs"),
    (["analyze", "{w}", "--mode", "graphs"], "expected one of compiled, cudagraphs, eager"),
    (["analyze", "{w}", "--amp", "fp8"], "unknown amp 'fp8'; expected one of fp16, bf16"),
])
def test_errors_are_one_line_and_exit_2(workload, argv, needle, capsys):
    argv = [a.replace("{w}", workload) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_bug_in_fxroof_is_one_line_too_and_exit_3(workload, monkeypatch, capsys):
    import importlib
    annotate = importlib.import_module("fxroof.cost.annotate")    # the module, not its function

    def failing(call):
        raise ZeroDivisionError("a formula divided by zero")
    monkeypatch.setattr(annotate, "formula_cost", failing)
    assert main(["analyze", workload]) == 3
    err = capsys.readouterr().err
    assert err.startswith("fxroof: internal error (a bug in fxroof; --debug shows the traceback)")
    assert "ZeroDivisionError: a formula divided by zero" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(annotate.AnnotationError):
        main(["analyze", workload, "--debug"])


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


def test_chips_shows_one_chips_figures_with_their_sources(capsys):
    assert main(["chips", "a100"]) == 0
    out = capsys.readouterr().out
    # the A100 datasheet's 312 TFLOP/s and 2,039 GB/s; 550 cycles at 1,410 MHz = 390 ns
    assert out.startswith("a100-80gb: NVIDIA A100 SXM4 80GB (gpu)")
    assert "  bf16 dense peak: 312 TFLOP/s" in out and "  memory bandwidth: 2.04 TB/s" in out
    assert "  memory latency (idle): 0.39 µs" in out and "A100 SXM 550 cycles" in out
    assert "nvidia-a100-datasheet" in out
    assert main(["chips", "v100", "t4", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in listed] == ["v100", "t4"]
    assert listed[0]["peak_flops"] == {"fp32": 15.7e12, "fp16": 125e12}
    assert "V100 460 cycles" in listed[0]["sources"]["memory_latency_s"]


def test_chips_names_an_unknown_chip_in_one_line(capsys):
    assert main(["chips", "a1000"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "unknown chip 'a1000'" in err


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


def test_help_answers_without_loading_torch_and_explains_every_option():
    done = subprocess.run([sys.executable, "-c", "import sys\nfrom fxroof.cli.main import main\n"
                           "main(['analyze', '--help'])\nprint('torch' in sys.modules)"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0 and done.stdout.endswith("False\n"), done.stderr
    assert "(default: h100-sxm;" in " ".join(done.stdout.split())
    assert subprocess.run([sys.executable, "-m", "fxroof", "--help"], capture_output=True,
                          cwd=ROOT, timeout=120).returncode == 0
    from fxroof.cli.main import _parser
    commands = next(a for a in _parser()._actions if a.dest == "command").choices
    silent = [f"{name} {a.option_strings or a.dest}" for name, p in commands.items()
              for a in p._actions if not a.help]
    assert not silent


def small_chip(tmp_path, mem_bytes):
    import dataclasses

    from fxroof.chips import chip
    from fxroof.measure.calibrate import write_chip
    return str(write_chip(dataclasses.replace(chip("a100-80gb"), name="small",
                                              mem_bytes=mem_bytes), tmp_path / "small.json"))


def test_studies_flag_what_does_not_fit_and_the_largest_batch_that_does(tmp_path, capsys):
    from fxroof.pipeline import analyze
    from fxroof.studies.workload import load
    # tiny Llama decode at ctx 64: about 1 MB of weights and 36 kB more per sequence
    small = small_chip(tmp_path, 1_200_000)
    tiny, out = ["--set", "preset=tiny", "--chip", small], tmp_path / "out.json"
    assert main(["critical-batch", LLAMA, *tiny, "--ctx", "64", "--max-batch", "16",
                 "--json", str(out)]) == 0
    fit = json.loads(out.read_text())["fit_batch"]

    def footprint(batch):
        m, a, k = load(LLAMA, {"preset": "tiny", "phase": "decode", "ctx": 64, "batch": batch})
        return analyze(m, a, k).memory.total
    assert footprint(fit) <= 1_200_000 < footprint(fit + 1)
    assert main(["critical-batch", LLAMA, *tiny, "--ctx", "64", "--max-batch", "16"]) == 0
    text = capsys.readouterr().out
    assert f"largest batch that fits in small's 1.2 MB of memory: {fit} (rows marked ! do" in text
    assert main(["sweep", LLAMA, *tiny, "--set", "phase=decode", "--set", "ctx=64",
                 "--over", f"batch=1,{fit + 1}", "--json", str(out)]) == 0
    assert [p["fits"] for p in json.loads(out.read_text())["points"]] == [True, False]
    assert main(["sweep", LLAMA, *tiny, "--set", "phase=decode", "--set", "ctx=64",
                 "--over", f"batch=1,{fit + 1}"]) == 0
    assert "! needs more than small's 1.2 MB of memory" in capsys.readouterr().out
    assert main(["generate", LLAMA, *tiny, "--prompt", "60", "--new-tokens", "4",
                 "--batch", str(fit + 1), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["fits"] is False
    capsys.readouterr()
    assert main(["analyze", LLAMA, *tiny, "--set", "phase=decode", "--set", "ctx=64",
                 "--set", f"batch={fit + 1}"]) == 0
    header = capsys.readouterr().out.split("\n\n")[0]
    assert "more than small's 1.2 MB" in " ".join(header.split())


def test_diff_shows_what_was_analyzed_module_changes_and_other_models(workload, tmp_path,
                                                                      capsys):
    a, b, c = (tmp_path / f"{x}.json" for x in "abc")
    assert main(["analyze", workload, "--json", str(a)]) == 0
    assert main(["analyze", workload, "--set", "batch=64", "--json", str(b)]) == 0
    assert main(["analyze", LLAMA, "--set", "preset=tiny", "--json", str(c)]) == 0
    capsys.readouterr()
    assert main(["diff", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "warning" not in out and "Modules whose time changed most" in out
    options = next(line for line in out.splitlines() if line.startswith("options"))
    inputs = next(line for line in out.splitlines() if line.startswith("inputs"))
    assert options.split()[1:] == ["-", "batch=64", "changed"]
    assert inputs.split()[1:] == ["1x16", "fp32", "64x16", "fp32", "changed"]
    assert main(["diff", str(a), str(c)]) == 0
    assert capsys.readouterr().out.startswith("warning: A and B describe different models "
                                              "(Sequential, Llama)")


def test_hf_config_is_analyzed_in_its_own_dtype(tmp_path, capsys):
    pytest.importorskip("transformers")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "model_type": "llama", "num_hidden_layers": 1, "hidden_size": 64,
        "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 256, "torch_dtype": "bfloat16"}))
    weights = {}
    for dtype in ("", "fp32"):
        out = tmp_path / f"{dtype or 'own'}.json"
        assert main(["analyze", "--hf", str(config), "--set", "seq=16", "--json", str(out),
                     *(["--set", f"dtype={dtype}"] if dtype else [])]) == 0
        data = json.loads(out.read_text())
        weights[dtype] = data["weights_bytes"]
        matmuls = {k["dtype"] for k in data["kernels"] if k["category"] == "matmul"}
        assert matmuls == {"bf16" if not dtype else "fp32"}
    # 69,824 parameters: embedding and head 2 x 256 x 64, attention 64 x (64 + 32 + 32 + 64),
    # MLP 3 x 64 x 128, three norms of 64; bf16 is 2 bytes each, fp32 4
    assert weights[""] == pytest.approx(2 * 69_824, abs=256)
    assert weights["fp32"] == pytest.approx(4 * 69_824, abs=256)


def test_roofline_plot_names_categories_regimes_and_the_costliest_kernels(tmp_path):
    pytest.importorskip("matplotlib")
    from fxroof.pipeline import analyze
    from fxroof.studies.workload import load
    r = analyze(*load(LLAMA, {"preset": "tiny"}))
    text = r.plot_roofline(tmp_path / "r.svg").read_text()
    placed = [k for k in r.kernels if k.flops and k.bytes]
    for category in {k.category for k in placed}:
        assert f"{category} ({sum(k.category == category for k in placed)})" in text
    assert f"{r.regime}-bound (" in text
    top = max(placed, key=lambda k: k.time_s)
    assert f"{top.op} {top.module.rsplit('.', 1)[-1]}" in text      # named beside its point
    assert " 1 kernels" not in text


def test_sweeps_show_each_value_on_a_terminal_only(tmp_path, capsys, monkeypatch):
    import logging
    spec = tmp_path / "mlp.py"
    spec.write_text("import torch\nfrom torch import nn\n"
                    "def workload(batch=2):\n"
                    "    return nn.Linear(8, 8), (torch.randn(batch, 8),)\n")
    log = logging.getLogger("fxroof")
    monkeypatch.setattr(log, "handlers", [])            # leave the global logger as it was
    monkeypatch.setattr(log, "level", log.level)
    assert main(["sweep", str(spec), "--over", "batch=2,4"]) == 0
    assert "batch=4 ..." not in capsys.readouterr().err           # piped: quiet
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["sweep", str(spec), "--over", "batch=2,4"]) == 0
    err = capsys.readouterr().err
    assert "  batch=2 ...\n" in err and "  batch=4 ...\n" in err
