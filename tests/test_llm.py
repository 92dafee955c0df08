"""LLM phases: generation totals against explicit per-step analyses, decode intensity and the
critical batch against hand arithmetic."""
import pytest
import torch

import fxroof
from fxroof.studies.llm import critical_batch, generation
from fxroof.studies.workload import load

LLAMA = "models/llama.py"


def test_decode_linear_intensity_is_about_the_batch():
    # One 4096 x 4096 bf16 linear at batch B: 2*B*K*N FLOPs over 2*K*N (weights) + 2*B*K (input)
    # + 2*B*N (output) bytes. At B=1: 33,554,432 / 33,570,816 = 0.9995 FLOP/byte.
    k = n = 4096
    with torch.device("meta"):
        lin = torch.nn.Linear(k, n, bias=False).to(torch.bfloat16)
    for b in (1, 8, 64):
        r = fxroof.analyze(lin, (torch.empty(b, k, dtype=torch.bfloat16, device="meta"),))
        (kern,) = r.kernels
        expected = 2 * b * k * n / (2 * k * n + 2 * b * k + 2 * b * n)
        assert kern.intensity == pytest.approx(expected, rel=1e-12)
        assert kern.intensity == pytest.approx(b, rel=0.04)   # B(1 - 2B/4096) ~ B while B << K


def test_generation_total_is_prefill_plus_every_decode_step():
    # Tiny Llama, 1 layer, batch 64 over a 2000-token prompt: the KV cache read grows 1 key a
    # step, enough to make attention memory-bound and the steps measurably different (replayed
    # as a CUDA graph, as decode is served: launched from Python, the host would bound them).
    options = dict(preset="tiny", layers=1)
    prompt, n, batch = 2000, 5, 64
    g = generation(LLAMA, prompt=prompt, new_tokens=n, batch=batch, chip="a100-80gb",
                   options=options, mode="cudagraphs", prompt_logits="all")
    assert g.method.startswith("each kernel's")       # affinity held: 3 decode steps evaluated

    def analyze(**kw):
        model, args, kwargs = load(LLAMA, dict(options, batch=batch, **kw))
        return fxroof.analyze(model, args, kwargs, chip="a100-80gb", mode="cudagraphs")

    prefill = analyze(phase="prefill", seq=prompt)
    steps = [analyze(phase="decode", ctx=prompt + j).time_s for j in range(n)]
    assert g.prefill_s == pytest.approx(prefill.time_s, rel=1e-9)
    assert list(g.step_s) == pytest.approx(steps, rel=1e-9)
    assert steps[-1] > steps[0]                       # the context did grow
    assert g.last.memory.kv_cache > g.first.memory.kv_cache
    text = str(g)
    assert max(len(line) for line in text.splitlines()) <= 100
    d = g.to_dict()
    assert d["schema"] == "fxroof.generation/1" and len(d["step_s"]) == n


def test_a_long_generation_schedules_some_steps_and_draws_the_rest_between_them(monkeypatch):
    # 1,000 decode steps: 257 scheduled (every 999/256 ~ 3.9 steps), the rest on lines between.
    # A tiny Llama's step is memory-bound, its time a line in ctx: every step matches the one
    # scheduled itself, which a report of every step would take 1,000 schedules to give
    import fxroof.studies.llm as llm
    options = dict(preset="tiny", layers=1)
    prompt, n, batch = 200, 1000, 8

    def run():
        return generation(LLAMA, prompt=prompt, new_tokens=n, batch=batch, chip="h100-sxm",
                          options=options, mode="cudagraphs")
    g = run()
    assert len(g.step_s) == n and llm.AFFINE_SAMPLES < n
    assert f"{llm.AFFINE_SAMPLES} steps scheduled, those between interpolated" in g.method
    monkeypatch.setattr(llm, "AFFINE_SAMPLES", n)
    every = run()
    assert "interpolated" not in every.method
    assert list(g.step_s) == pytest.approx(list(every.step_s), rel=1e-9)
    # and a step between the scheduled ones against its own analysis: within what the affine
    # rule itself gives (0.04% at this step)
    model, args, kwargs = load(LLAMA, dict(options, batch=batch, phase="decode", ctx=prompt + 777))
    step = fxroof.analyze(model, args, kwargs, chip="h100-sxm", mode="cudagraphs").time_s
    assert g.step_s[777] == pytest.approx(step, rel=2e-3)
    # each step's time is reported, so a generation has a bound, said in one line
    with pytest.raises(ValueError, match=f"up to {llm.MAX_NEW_TOKENS:,} of them"):
        generation(LLAMA, prompt=8, new_tokens=llm.MAX_NEW_TOKENS + 1, chip="h100-sxm",
                   options=options)


def test_seconds_read_in_three_figures_whatever_their_size():
    from fxroof.report.units import seconds
    assert [seconds(s) for s in (110_000.2, 1523.4, 999.6, 5.87, 0.9996, 6.37e-3, 9.9996e-4)] \
        == ["110,000 s", "1,520 s", "1,000 s", "5.87 s", "1 s", "6.37 ms", "1 ms"]


def test_a_stated_step_cost_is_paid_once_per_forward_pass():
    # A serving engine's work between passes is not in the graph: the report says so, and a
    # stated cost of 300 us is added to prefill and each of the 4 decode steps: 5 x 300 us.
    options = dict(preset="tiny", layers=1)
    plain = generation(LLAMA, prompt=32, new_tokens=4, chip="h100-sxm", options=options)
    served = generation(LLAMA, prompt=32, new_tokens=4, chip="h100-sxm", options=options,
                        step_cost_s=300e-6)
    assert served.total_s - plain.total_s == pytest.approx(1.5e-3, rel=1e-9)
    assert served.per_token_s - plain.per_token_s == pytest.approx(300e-6, rel=1e-9)
    assert "scheduling, sampling" in str(plain) and "stated step cost of 300 µs" in str(served)
    assert served.to_dict()["step_cost_s"] == 300e-6
    with pytest.raises(ValueError, match="step_cost_s must be a number of seconds >= 0"):
        generation(LLAMA, prompt=32, new_tokens=4, options=options, step_cost_s=float("nan"))


def test_prefill_is_compute_bound_and_decode_memory_bound():
    # Llama-2-7B shapes, 1 layer: prefill of 2048 tokens vs one decode step, on an A100
    g = generation(LLAMA, prompt=2048, new_tokens=1, batch=1, chip="a100-80gb",
                   options=dict(layers=1))
    assert g.prefill.regime == "compute" and g.first.regime == "memory"
    assert g.method == "every step reported"


def test_critical_batch_by_hand():
    # A100 bf16 ridge: 312e12 / 2.039e12 = 153.02 FLOP/byte. A decode linear (K, N) turns
    # compute-bound when B*K*N / (K*N + B*K + B*N) >= R, i.e. B >= R / (1 - R*(1/K + 1/N)):
    #   wq, wk, wv, wo  4096 x 4096:   153.02 / (1 - 153.02*2/4096)            = 165.4 -> 166
    #   w1, w3, w2      4096 x 11008:  153.02 / (1 - 153.02*(1/4096 + 1/11008)) = 161.3 -> 162
    #   output head     4096 x 32000:  153.02 / (1 - 153.02*(1/4096 + 1/32000)) = 159.7 -> 160
    # so every linear is compute-bound from batch 166.
    c = critical_batch(LLAMA, chip="a100-80gb", ctx=64, options=dict(layers=1), max_batch=512)
    assert c.ridge == pytest.approx(153.016, rel=1e-4)
    assert c.linear_batch == 166
    values = [p.value for p in c.sweep.points]
    assert 165 in values and 166 in values            # the bisection looked either side
    assert c.sweep.method == "symbolic"
    assert max(len(line) for line in str(c).splitlines()) <= 100


def test_generation_with_tensor_parallelism_reports_one_rank():
    options = dict(preset="tiny")
    # replayed as a CUDA graph: launched from Python, the host would hide the all-reduces
    g = generation(LLAMA, prompt=16, new_tokens=2, chip="l40s", options=options, tp=2,
                   mode="cudagraphs")

    def rank(**kw):
        model, args, kwargs = load(LLAMA, dict(options, **kw))
        if kw["phase"] == "prefill":     # the prompt's step computes its last logits only
            model.output.register_forward_pre_hook(lambda m, a: (a[0][:, -1:],))
        return fxroof.analyze(model, args, kwargs, chip="l40s", tp=2, mode="cudagraphs")

    assert g.prefill_s == pytest.approx(rank(phase="prefill", seq=16).time_s, rel=1e-9)
    assert list(g.step_s) == pytest.approx(
        [rank(phase="decode", ctx=c).time_s for c in (16, 17)], rel=1e-9)
    assert g.prefill.tp == 2 and "one rank of tp=2" in str(g).splitlines()[0]
    assert g.prefill.regime_share["communication"] > 0      # its all-reduces cross PCIe


def test_a_prompt_whose_step_computes_every_positions_logits_says_what_its_head_costs():
    options = dict(preset="tiny")
    g = generation(LLAMA, prompt=64, new_tokens=2, chip="h100-sxm", options=options,
                   prompt_logits="all")
    (note,) = [n for n in g.notes if "output head" in n]
    # the head: the tiny preset's output layer over all 64 positions, its share of the prompt's
    heads = [k for k in g.prefill.kernels if k.module == "output"]
    share = sum(k.time_s for k in heads) / g.prefill.time_s
    assert "all 64 positions" in note and f"{share:.0%} of its time" in note and share > 0
    assert "as asked (prompt_logits='all')" in note
    # a prompt of one position computes only the logits it needs
    one = generation(LLAMA, prompt=1, new_tokens=2, chip="h100-sxm", options=options,
                     prompt_logits="all")
    assert not any("output head" in n for n in one.notes)
    with pytest.raises(ValueError, match="prompt_logits='first': choose last or all"):
        generation(LLAMA, prompt=4, new_tokens=2, options=options, prompt_logits="first")


def test_a_prompt_computes_its_last_logits_only_as_engines_and_generate_do():
    # Llama-2-7B's shapes, 1 layer, 4 sequences of 512 tokens on an A100. The output head reads
    # each sequence's last hidden state: 2 x 4 x 4,096 x 32,000 FLOPs, not 512 times as many;
    # and the logits it keeps are 4 x 32,000 bf16 values, not 4 x 512 x 32,000 (131 MB)
    options = dict(layers=1)
    kw = dict(prompt=512, new_tokens=2, batch=4, chip="a100-80gb", options=options)
    last, every = generation(LLAMA, **kw), generation(LLAMA, prompt_logits="all", **kw)
    head = lambda g: [k for k in g.prefill.kernels if k.module.endswith("output")]  # noqa: E731
    assert sum(k.flops for k in head(last)) == 2 * 4 * 4096 * 32000
    assert sum(k.flops for k in head(every)) == 2 * 4 * 512 * 4096 * 32000
    assert every.prefill.flops - last.prefill.flops == 2 * 4 * 511 * 4096 * 32000
    assert every.prefill_s > last.prefill_s and every.first.time_s == last.first.time_s
    # the same as the model run with its head reading the last position, hooked by hand
    model, args, kwargs = load(LLAMA, dict(options, batch=4, phase="prefill", seq=512))
    model.output.register_forward_pre_hook(lambda m, a: (a[0][:, -1:],))
    hooked = fxroof.analyze(model, args, kwargs, chip="a100-80gb")
    assert last.prefill_s == pytest.approx(hooked.time_s, rel=1e-9)
    assert last.prefill.flops == hooked.flops
    assert any("last logits only" in n for n in last.notes)
    assert str(last).startswith("fxroof generation · Llama on")    # the model's name, not a wrapper's
    assert last.to_dict()["prompt_logits"] == "last"


class FlatLogits(torch.nn.Module):
    """A toy decoder whose code after its head needs every position: it flattens the logits by
    the prompt's length."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(64, 16)
        self.lm_head = torch.nn.Linear(16, 64, bias=False)

    def forward(self, tokens):
        batch, length = tokens.shape
        return self.lm_head(self.embed(tokens)).view(batch * length, 64)


def flat_logits(batch=1, phase="prefill", seq=None, ctx=None):
    return FlatLogits(), (torch.zeros(batch, seq or 1, dtype=torch.long),)


def test_a_head_that_cannot_read_the_last_position_alone_is_priced_whole_saying_why():
    g = generation(flat_logits, prompt=8, new_tokens=2, chip="h100-sxm")
    (head,) = [n for n in g.prefill.nodes if n.module.endswith("lm_head")]
    assert head.flops == 2 * 8 * 16 * 64                  # every position's, as written
    assert any("could not read the last position alone" in n for n in g.notes)
    assert g.to_dict()["prompt_logits"] == "all"
