"""Tensor-parallel scaling: one rank's time at each degree, and where it goes."""
from __future__ import annotations

import dataclasses

from fxroof.graph.parallel import tensor_parallel
from fxroof.pipeline import Target, analyze, target_of
from fxroof.report import tables
from fxroof.report.units import percent, seconds, si

__all__ = ["format_tp_scaling", "tp_scaling"]


def tp_scaling(model, args=(), kwargs=None, *, degrees=(1, 2, 4, 8), target: Target | None = None,
               **fields) -> list[dict]:
    """One rank's time at each tensor-parallel degree, and where it goes.

    Every degree, 1 included, is one rank of the same Megatron plan captured the same way, so the
    rows compare like with like (analyze(model) without tp= captures the unsplit model, possibly
    at another level of ops: its time can differ a little from the tp=1 row).

    Per degree: time_s (one rank's time: the sum of its kernels' times, collectives not overlapped
    with compute, as in Megatron's tensor parallelism where each all-reduce is on the critical
    path), speedup against the first degree, the share of that time in kernels bound by compute /
    memory / communication / overhead, the regime, comm_s (the collectives' expected link time),
    comm_bytes (bytes one rank sends), collectives (how many), flops and weights_bytes (one rank's).
    """
    target = dataclasses.replace(target_of(target, **fields), tp=1)
    rows = []
    for tp in degrees:
        with tensor_parallel(model, tp, args, kwargs) as (local, local_args, local_kwargs):
            r = analyze(local, local_args, local_kwargs, target=target)
        share = r.regime_share
        collectives = [k for k in r.kernels if k.category == "collective"]
        rows.append({
            "tp": tp, "time_s": r.time_s, "regime": r.regime,
            "compute_share": share["compute"], "memory_share": share["memory"],
            "comm_share": share["communication"], "overhead_share": share["overhead"],
            "comm_s": sum(k.expected.comm_s for k in collectives),
            "comm_bytes": sum(n.comm_bytes for n in r.nodes),
            "collectives": len(collectives), "flops": r.flops, "weights_bytes": r.weights_bytes,
        })
    for row in rows:
        row["speedup"] = rows[0]["time_s"] / row["time_s"] if row["time_s"] else 0.0
    return rows


def format_tp_scaling(rows: list[dict]) -> str:
    """The rows of tp_scaling as a table that fits 100 columns. time: one rank's; comp ...
    ovhd: shares of that time by the regime that bounds each kernel; link: the collectives' link
    time; sent: bytes one rank sends; weights: one rank's."""
    table = [[r["tp"], seconds(r["time_s"]), f"{r['speedup']:.2f}x", percent(r["compute_share"]),
              percent(r["memory_share"]), percent(r["comm_share"]), percent(r["overhead_share"]),
              r["regime"], seconds(r["comm_s"]), si(r["comm_bytes"], "B"),
              si(r["weights_bytes"], "B")] for r in rows]
    headers = ["tp", "time", "speedup", "comp", "mem", "comm", "ovhd", "regime", "link",
               "sent", "weights"]
    return tables.table(table, headers, ("right",) * 7 + ("left",) + ("right",) * 3)
