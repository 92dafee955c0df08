"""Small shared helpers for tests: capture + annotate a model and read back per-op costs."""
from __future__ import annotations

import pytest
import torch
import torch._inductor.config as inductor_config
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from fxroof.cost.annotate import annotate
from fxroof.cost.record import COST_KEY
from fxroof.graph.capture import capture
from fxroof.report.build import op_name


# the cross-check with Inductor reads its fused nodes through a hook older releases lack (2.5)
needs_inductor_hook = pytest.mark.skipif(
    not hasattr(inductor_config, "_post_fusion_custom_pass"),
    reason=f"torch {torch.__version__}'s Inductor has no _post_fusion_custom_pass")


def op_costs(model, *args, **kwargs):
    """[(op name, Cost)] for every node that is not a view, in graph order."""
    gm = annotate(capture(model, args, kwargs).gm)
    return [(op_name(n), n.meta[COST_KEY]) for n in gm.graph.nodes
            if n.op == "call_function" and n.meta[COST_KEY].category != "view"]


def cost_of(model, op: str, *args):
    """The Cost of the one node running `op`."""
    found = [c for name, c in op_costs(model, *args) if name == op]
    assert len(found) == 1, f"expected one {op}, got {len(found)}: {op_costs(model, *args)}"
    return found[0]


def flop_counter_total(model, *args, **kwargs) -> int:
    """PyTorch's own count, run on the meta device so that scaled_dot_product_attention goes
    through its math path (bmm) and is counted (on CPU tensors PyTorch counts it as 0)."""
    def meta(x):
        return x.to("meta") if isinstance(x, torch.Tensor) else x
    if isinstance(model, torch.nn.Module):
        model = model.to("meta")
    with FlopCounterMode(display=False) as counter:
        model(*[meta(a) for a in args], **{k: meta(v) for k, v in kwargs.items()})
    return counter.get_total_flops()


def fn_module(fn):
    class Fn(torch.nn.Module):
        def forward(self, *args):
            return fn(*args)
    return Fn()


def assert_fused_gradients_match(model, ids, rtol: float = 1e-4, atol: float = 1e-6):
    """A transformers language model's parameter gradients over `ids` are the same through
    fxroof's fused recurrences (fxroof.graph.fused_recurrences) as through transformers' own
    loops."""
    import contextlib

    from fxroof.graph.fused_recurrences import fused_recurrences

    def grads(fused: bool) -> dict:
        model.zero_grad()
        with fused_recurrences() if fused else contextlib.nullcontext():
            model(ids, labels=ids, use_cache=False).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()
                if p.grad is not None}
    loop, fused = grads(False), grads(True)
    assert loop.keys() == fused.keys() and len(loop) > 10
    for name in loop:
        torch.testing.assert_close(fused[name], loop[name], rtol=rtol, atol=atol)


def meta_training_step(model_class, config, batch: int, seq: int):
    """fxroof's report of one training step of a transformers language model built on the meta
    device from `config`, on `batch` x `seq` tokens, on an H100."""
    import fxroof
    with torch.device("meta"):
        model = model_class(config)
    ids = torch.zeros(batch, seq, dtype=torch.long, device="meta")
    return fxroof.analyze(model, (ids,), {"labels": ids, "use_cache": False}, train=True,
                          chip="h100-sxm")


class Ops(TorchDispatchMode):
    """The ops a block runs, by name (`ops`, in order)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))
