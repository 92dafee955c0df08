"""The report pass on real chips: the issue's must-holds, the JSON schema, the terminal view."""
import json
from pathlib import Path

import pytest
import torch
from helpers import fn_module

import fxroof
from fxroof.studies.workload import load

MODELS = Path(__file__).resolve().parent.parent / "models"


def meta(*shape, dtype=torch.bfloat16):
    return torch.empty(*shape, dtype=dtype, device="meta")


def test_big_bf16_matmul_is_compute_bound_on_h100():
    n = 8192
    r = fxroof.analyze(fn_module(torch.mm), (meta(n, n), meta(n, n)), chip="h100-sxm")
    assert r.regime == "compute"
    # floor: 2*8192^3 = 1.0995e12 FLOP at 989.4e12 FLOP/s = 1.111 ms
    assert r.summary.floor_s == pytest.approx(2 * n**3 / 989.4e12, rel=1e-6)
    # expected: the GEMM at the share of the peak large GEMMs reach, over whole waves of tiles
    # (64x64: 16,384 tiles, ceil(124.1) = 125 waves of 132 SMs, 1.0071), its
    # 3 x 8192^2 bf16 = 403 MB streamed as a copy of them streams (134.0 us at the chip's share,
    # and 94 waves of 132 x 16 blocks of 128 threads moving 16 bytes each, 354 + 245 ns a wave,
    # as a 2-norm: 145.4 us), overlapping but for 5% of the shorter (XLA's factor), plus the 1 us
    # kernel floor
    c = 2 * n**3 / 989.4e12 * (125 * 132 / 16_384) / r.chip.matmul_efficiency
    m = ((3 * n * n * 2 / 3.35e12 / r.chip.bw_efficiency) ** 2 + (94 * 599e-9) ** 2) ** 0.5
    assert r.time_s == pytest.approx(c + 0.05 * m + 1e-6, rel=1e-4)


def test_compute_that_is_pytorchs_issued_instructions_gets_its_own_advice():
    from fxroof.report.tables import ADVICE, ISSUE_ADVICE, advice, header
    # an eager layer norm over ConvNeXt's 96 channels on an H200: compute-bound by the
    # instructions PyTorch's kernel issues (a faster peak would not help; compiling would)
    ln = torch.nn.LayerNorm(96).to("meta", torch.bfloat16)
    r = fxroof.analyze(ln, (meta(64 * 56 * 56, 96),), chip="h200", mode="eager")
    assert r.regime == "compute" and r.summary.gap["issue"] > 0.5 * r.time_s
    assert advice(r) == ISSUE_ADVICE and "to go faster: fewer instructions" in header(r)
    # a bf16 GELU over 2^26 elements on an H200: its issue (66 us) and its bytes (64 us) add as
    # a 2-norm, the excess credited to their overlap, yet its compute is its issue
    r = fxroof.analyze(fn_module(torch.nn.functional.gelu), (meta(2 ** 26),), chip="h200",
                       mode="eager")
    assert r.regime == "compute" and r.summary.gap["overlap"] > r.summary.gap["issue"]
    assert advice(r) == ISSUE_ADVICE
    # a large GEMM keeps the compute advice
    n = 4096
    r = fxroof.analyze(fn_module(torch.mm), (meta(n, n), meta(n, n)), chip="h200")
    assert r.regime == "compute" and not r.summary.gap.get("issue")
    assert advice(r) == ADVICE["compute"]


def test_large_bf16_add_is_memory_bound():
    n = 1 << 28
    r = fxroof.analyze(fn_module(torch.add), (meta(n), meta(n)), chip="h100-sxm")
    assert r.regime == "memory"
    floor = 3 * n * 2 / 3.35e12                      # 2 reads + 1 write, bf16: 481 us
    assert r.summary.floor_s == pytest.approx(floor, rel=1e-6)
    # expected: the bytes at the chip's streaming share (536.0 us at 0.897) and the waits of 249
    # waves of 132 x 16 blocks, 354 + 245 ns each (149.2 us), as a 2-norm; then 1 us of floor
    streamed, waited = floor / r.chip.bw_efficiency, 249 * (354e-9 + 245e-9)
    assert r.time_s == pytest.approx((streamed ** 2 + waited ** 2) ** 0.5 + 1e-6, rel=1e-3)


def test_roofline_fraction_is_the_floor_over_the_expected_time():
    n = 8192
    big = fxroof.analyze(fn_module(torch.mm), (meta(n, n), meta(n, n)), chip="h100-sxm")
    # the floor over the expected time: a little under the GEMM efficiency (test above)
    assert 0.97 * big.chip.matmul_efficiency < big.to_dict()["roofline_fraction"] \
        < big.chip.matmul_efficiency
    tiny = fxroof.analyze(fn_module(torch.cos), (meta(1024),), chip="h100-sxm")
    # 1024 bf16 in and out: 4096 B / 3.35e12 B/s = 1.22 ns, plus a 1 us kernel floor, hides under
    # the 7 us launch from a compiled program and the 35 us of entering it: floor and expected
    # are both the host's
    assert tiny.to_dict()["roofline_fraction"] == pytest.approx(1.0)
    assert tiny.time_s == pytest.approx(7e-6 + 35e-6) and tiny.regime == "overhead"


def test_tiny_mlp_at_batch_one_is_overhead_bound():
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
    for mode in ("eager", "compiled"):
        r = fxroof.analyze(mlp, (torch.randn(1, 64),), chip="h100-sxm", mode=mode)
        assert r.regime == "overhead", mode
    assert r.regime_share["overhead"] == pytest.approx(1.0)


def llama(**options):
    return load(str(MODELS / "llama.py"), options)


@pytest.fixture(scope="module")
def decode_a100():
    model, args, kwargs = llama(phase="decode", batch=1, ctx=2048)
    return fxroof.analyze(model, args, kwargs, chip="a100-80gb")


def test_llama2_7b_decode_is_memory_bound_near_bytes_over_bandwidth(decode_a100):
    r = decode_a100
    assert r.regime == "memory"
    # weights 6.74e9 * 2 B = 13.5 GB, plus the 2048-token KV cache: 32 layers * 2 * 2048 * 4096 * 2 B
    # = 1.07 GB; 14.55 GB / 2.039e12 B/s = 7.1 ms. Small kernels' launch costs add a little.
    floor = r.fused_bytes / 2.039e12
    assert r.fused_bytes == pytest.approx(6_738_415_616 * 2 + 32 * 2 * 2048 * 4096 * 2, rel=0.03)
    assert floor <= r.summary.floor_s <= 1.15 * floor
    # expected: the same bytes at the share of the bandwidth a copy reaches, plus each kernel's
    # fixed time and first round trip (482 kernels, about 1.4 us each) and the kernels summing
    # split reductions' partials
    real = floor / r.chip.bw_efficiency
    assert real <= r.time_s <= 1.2 * real
    # Split: each layer's q, k, v, o and down projections (one token, 4096 outputs: 32 tiles of
    # 8x128 on 108 SMs, K in 3 parts) and its attention (32 heads of one query, the 2049 keys in
    # 3 parts); gate and up (11008 outputs: 86 tiles, nothing split) and the head (32000) are
    # not. Each sum reads 3 fp32 partials of 4096 outputs and writes them in bf16, 57,344 B:
    # 0.0315 us at 0.894 of 2,039 GB/s, a 390 ns round trip, a 1 us floor. 192 x 1.4215 us
    per_sum = 4096 * (4 * 3 + 2) / (2039e9 * 0.894) + 390e-9 + 1e-6
    assert r.summary.gap["reduction"] == pytest.approx(32 * 6 * per_sum, rel=1e-3)


def test_llama2_7b_prefill_is_compute_bound_near_flops_over_peak():
    model, args, kwargs = llama(phase="prefill", seq=2048)
    r = fxroof.analyze(model, args, kwargs, chip="a100-80gb")
    assert r.regime == "compute"
    # linear layers: 2 * 2048 tokens * 6.48e9 non-embedding weights = 26.6 TFLOP, plus attention
    floor = r.flops / 312e12
    assert floor <= r.summary.floor_s <= 1.15 * floor
    real = floor / r.chip.matmul_efficiency      # the share of the peak large GEMMs reach
    assert real <= r.time_s <= 1.15 * real


def test_small_decode_is_overhead_bound_eager_and_memory_bound_compiled():
    model, args, kwargs = llama(phase="decode", batch=1, ctx=2048)
    eager = fxroof.analyze(model, args, kwargs, chip="h100-sxm", mode="eager")
    assert eager.regime == "overhead"
    assert eager.compare()["compiled"]["regime"] == "memory"


def test_to_dict_is_the_documented_json_schema(decode_a100):
    d = json.loads(json.dumps(decode_a100.to_dict()))
    for key in ("schema", "capture", "chip", "mode", "flops", "bytes", "fused_bytes", "time_s",
                "regime", "regime_share", "coverage", "unknown_ops", "nodes", "kernels"):
        assert key in d
    assert d["schema"] == "fxroof.report/1" and d["mode"] == "compiled"
    assert set(d["regime_share"]) == {"compute", "memory", "communication", "overhead"}
    for key in ("name", "op", "module", "category", "flops", "bytes_read", "bytes_written"):
        assert key in d["nodes"][0]
    for key in ("nodes", "category", "flops", "bytes_read", "bytes_written", "time_s", "regime"):
        assert key in d["kernels"][0]
    assert sum(k["flops"] for k in d["kernels"]) == d["flops"]    # fusion never changes FLOPs
    assert d["fused_bytes"] <= d["bytes"]


def test_unknown_ops_are_rows_counted_in_coverage():
    lib = torch.library.Library("fxroof_report", "DEF")
    lib.define("opaque(Tensor x) -> Tensor")
    lib.impl("opaque", lambda x: x + 1, "CompositeExplicitAutograd")
    lib.impl("opaque", lambda x: torch.empty_like(x), "Meta")
    model = fn_module(lambda x: torch.ops.fxroof_report.opaque(x).relu())
    r = fxroof.analyze(model, (torch.randn(8),))
    assert r.coverage == pytest.approx(0.5)                     # one of two ops has a formula
    assert r.unknown_ops == {"opaque": 1}
    assert "no formula for" in str(r)


def test_terminal_view_fits_100_columns(decode_a100):
    text = str(decode_a100)
    assert max(len(line) for line in text.splitlines()) <= 100
    for heading in ("Where the time goes", "Top kernels", "By module", "Eager"):
        assert heading in text


def test_misspelt_chip_fails_before_capture():
    with pytest.raises(fxroof.ChipError, match="h100-sxm"):
        fxroof.analyze(torch.nn.Linear(2, 2), (torch.randn(1, 2),), chip="h100-sxn")


def test_bad_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="compiled"):
        fxroof.analyze(torch.nn.Linear(2, 2), (torch.randn(1, 2),), mode="fused")


def test_a_gelu_variant_is_named_apart():
    # the tanh approximation is another kernel (on a CPU, 3x the erf one's time per element)
    import torch.nn.functional as F
    r = fxroof.analyze(fn_module(lambda x: F.gelu(x, approximate="tanh") + F.gelu(x)),
                       (torch.randn(4, 4),), mode="eager")
    assert [k.op for k in r.kernels] == ["gelu(tanh)", "gelu", "add"]


def test_a_model_that_runs_no_ops_is_refused_not_reported():
    # an empty Sequential returns its input: no kernel, so no regime can be "compute-bound (0%)"
    with pytest.raises(ValueError, match="Sequential runs no ops on these inputs"):
        fxroof.analyze(torch.nn.Sequential(), (torch.randn(3),))
