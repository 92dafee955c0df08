"""The machine fxroof runs on: its names, its caches and memory, its thread count, and a clock.

Calibration (calibrate.py, microbench.py) and measurement (measure.py) share these, so a chip file
and a measured run name the same machine the same way and time it the same way.
"""
from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from pathlib import Path

import torch

__all__ = ["Clock", "cpu_name", "cpu_threads", "device_name", "host_time", "last_level_cache",
           "memory_bytes", "threads_label", "tiny_call_timing", "tiny_call_times"]


class Clock:
    """Seconds per call of a function on the device, calls batched to be timeable."""

    def __init__(self, dev: torch.device, quick: bool):
        self.dev, self.quick = dev, quick
        self.cuda = dev.type == "cuda"
        self.budget_s = 0.15 if quick else 0.6      # per figure: the repeats it gets
        self.batch_s = 2e-3                          # one timed batch: well above timer noise

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.dev)

    def once(self, fn) -> float:
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t0

    def per_call(self, fn, *, budget_s: float | None = None, min_samples: int = 5) -> float:
        """Seconds per call: the best batch mean. Other work on a shared machine only ever adds
        time, so the fastest batch is the device's own figure."""
        fn()                                         # warm: first calls allocate, pick kernels
        first = self.once(fn)
        batch = max(1, min(20000, int(self.batch_s / max(first, 1e-7))))
        samples: list[float] = []
        deadline = time.perf_counter() + (self.budget_s if budget_s is None else budget_s)
        while len(samples) < min_samples or (time.perf_counter() < deadline and len(samples) < 200):
            samples.append(self._batch(fn, batch) / batch)
        return min(samples)

    def _batch(self, fn, n: int) -> float:
        if self.cuda:   # events time the stream, not the host
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(n):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) * 1e-3
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return time.perf_counter() - t0


def host_time(clock: Clock, fn, n: int | None = None, loops: int | None = None) -> float:
    """Seconds per call of a loop of `n` calls then one sync, best of several loops (GPU: the
    host is the limit for tiny ops, so this is the dispatch time)."""
    n = n or (200 if clock.quick else 1000)
    samples = []
    for _ in range(loops or (5 if clock.quick else 9)):
        clock.sync()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        clock.sync()
        samples.append((time.perf_counter() - t0) / n)
    return min(samples)


def tiny_call_times(clock: Clock, calls: list) -> list[float]:
    """Seconds of each tiny call. CPU: each timed on its own as the calls take turns round after
    round, the lower quartile over the rounds: a model calls an op between others, never in a
    tight loop, so its code and data come back from further out (other work on the machine only
    adds time). GPU: `host_time`, a loop of each: there the host's dispatch is the limit."""
    if clock.cuda:
        return [host_time(clock, call) for call in calls]
    for _ in range(3):
        for call in calls:
            call()
    samples: list[list[float]] = [[] for _ in calls]
    for _ in range(40 if clock.quick else 200):
        for i, call in enumerate(calls):
            t0 = time.perf_counter()
            call()
            samples[i].append(time.perf_counter() - t0)
    return [statistics.quantiles(ts, n=4)[0] for ts in samples]


def tiny_call_timing(clock: Clock) -> str:
    """How `tiny_call_times` timed, for a chip file's sources."""
    if clock.cuda:
        return "best loop of many"
    return ("each timed on its own as the probes take turns, the lower quartile of many rounds: a "
            "model calls an op between others, never in a tight loop, so its code and data come "
            "back from further out (an 8x8 oneDNN convolution: 57 us in a loop, 116 us in a "
            "model)")


def last_level_cache() -> int:
    """Bytes of this CPU's largest data cache, as the system reports it (0: unknown)."""
    best = 0
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in base.glob("index*"):
        try:
            kind = (index / "type").read_text().strip()
            text = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        if kind == "Instruction" or not text:
            continue
        factor = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1], 1)
        try:
            best = max(best, int(text.rstrip("KMG")) * factor)
        except ValueError:
            continue
    return best


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def threads_label() -> str:
    n = torch.get_num_threads()
    return f"{n} thread" + ("s" if n != 1 else "")


def device_name(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name()


def memory_bytes(dev: torch.device) -> float:
    if dev.type == "cuda":
        return float(torch.cuda.get_device_properties(dev).total_memory)
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8e9    # unknown: capacity is not used by the time model


@contextlib.contextmanager
def cpu_threads(threads: int | None):
    """torch's intra-op thread count set to `threads` inside, restored after (None: unchanged)."""
    if threads is None:
        yield
        return
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
