"""The machine fxroof runs on, and its clock: names, caches, memory, thread count, timing.

Calibration and measured runs share these, so that a chip file and a measured run name the same
machine the same way and time it the same way. Timings keep the fastest batch or a low quantile:
other work on a shared machine only ever adds time. A GPU is timed with CUDA events and
synchronized before a clock stops; that path has not been run by fxroof's tests (CPU only).
"""
from __future__ import annotations

import contextlib
import os
import platform
import random
import statistics
import time
from pathlib import Path

import torch


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def elapsed(fn, dev: torch.device) -> float:
    """Seconds of one call of `fn`, the device synchronized before and after."""
    sync(dev)
    return _once(lambda: (fn(), sync(dev)))


def minor_faults() -> int | None:
    """The process's minor page faults so far (first touches of pages the system hands it),
    None where the platform does not count them."""
    try:
        import resource
    except ImportError:       # Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class Clock:
    """Seconds per call of a function on the device, calls batched to be timeable."""

    def __init__(self, dev: torch.device, quick: bool):
        self.dev, self.quick = dev, quick
        self.cuda = dev.type == "cuda"
        self.mark = marker(dev)
        self.budget_s = 0.15 if quick else 0.6      # per figure: the repeats it gets

    def per_call(self, fn, *, budget_s: float | None = None, min_samples: int = 5) -> float:
        """Seconds per call: the best batch mean."""
        fn()                                         # warm: first calls allocate, pick kernels
        # a batch of 2 ms, well above timer noise
        batch = max(1, min(20000, int(2e-3 / max(elapsed(fn, self.dev), 1e-7))))
        loop = _repeated(fn, batch)
        samples: list[float] = []
        deadline = time.perf_counter() + (self.budget_s if budget_s is None else budget_s)
        while len(samples) < min_samples or (time.perf_counter() < deadline and len(samples) < 200):
            start = self.mark()
            loop()
            samples.append(span(start, self.mark()) / batch)
        return min(samples)


def marker(dev: torch.device):
    """A function that marks the time on `dev`'s clock: perf_counter on a CPU (called directly,
    so a mark adds nothing to what it times); on a GPU one that records a CUDA event on the
    stream, so that the span between two marks is the stream's time, not the host's."""
    return _cuda_event if dev.type == "cuda" else time.perf_counter


def _cuda_event():
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


def span(start, end) -> float:
    """Seconds between two marks (on a GPU, once the end event has happened)."""
    if isinstance(start, float):
        return end - start
    end.synchronize()
    return start.elapsed_time(end) * 1e-3


def host_time(clock: Clock, fn, n: int | None = None, loops: int | None = None) -> float:
    """Seconds per call of a loop of `n` calls then one sync, best of several loops (GPU: the
    host is the limit for tiny ops, so this is the dispatch time)."""
    n = n or (200 if clock.quick else 1000)
    loop = _repeated(fn, n)
    return min(elapsed(loop, clock.dev) for _ in range(loops or (5 if clock.quick else 9))) / n


def _repeated(fn, n: int):
    """`fn` called `n` times over, as one call."""
    def loop():
        for _ in range(n):
            fn()
    return loop


def tiny_call_times(clock: Clock, calls: list, between=None) -> list[float]:
    """Seconds of each tiny call. CPU: each timed on its own as the calls take turns round after
    round, the lower quartile over the rounds, since a model calls an op between others, never
    in a tight loop; `between`, if given, is called before each timed call, untimed (a sweep
    that pushes the call's code and data out of the core's cache). GPU: `host_time`, a loop of
    each: there the host's dispatch is the limit."""
    if clock.cuda:
        return [host_time(clock, call) for call in calls]
    # each round in its own order: in one fixed order the first call always came after the
    # last, an attention whose buffers it paid to replace (a tiny add 4.7 us where sub and mul
    # took 2.5-2.7; moved behind sub, 2.7 and sub 4.6); shuffled, a call follows another each
    # round, and the lower quartile takes it after a light one, as most calls in a model are
    order, rounds = list(range(len(calls))), []
    shuffle = random.Random(0).shuffle
    for _ in range(3 + (40 if clock.quick else 200)):
        shuffle(order)
        times = {i: _once(calls[i], between) for i in order}
        rounds.append([times[i] for i in range(len(calls))])
    return [statistics.quantiles(ts, n=4)[0] for ts in zip(*rounds[3:])]   # 3 rounds warm up


def _once(call, before=None) -> float:
    """Seconds of one call, as the host's clock sees it (`before` run first, untimed)."""
    if before is not None:
        before()
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def tiny_call_timing(clock: Clock) -> str:
    """How `tiny_call_times` timed, for a chip file's sources."""
    return "best loop of many" if clock.cuda else (
        "each timed on its own as the probes take turns, the lower quartile of many rounds: a "
        "model calls an op between others, never in a tight loop, so its code and data come "
        "back from further out")


def _data_caches() -> dict:
    """{level: bytes} of the data (or unified) caches of this CPU's first core, as the system
    reports them; {} where it does not."""
    found = {}
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        with contextlib.suppress(OSError, ValueError):      # unreadable or unparsable: skipped
            if (index / "type").read_text().strip() != "Instruction":
                size = (index / "size").read_text().strip().upper()     # "48K", "32M"
                scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
                found[int((index / "level").read_text())] = int(size.rstrip("KMG")) * scale
    return found


def last_level_cache() -> int:
    """Bytes of this CPU's largest data cache, as the system reports it (0: unknown)."""
    return max(_data_caches().values(), default=0)


def private_cache() -> int:
    """Bytes of one core's own level-2 cache, as the system reports it (0: unknown)."""
    return _data_caches().get(2, 0)


def device_name(dev: torch.device) -> str:
    """The GPU's name, or the CPU's model name."""
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "CPU"


def threads_label() -> str:
    return f"{torch.get_num_threads()} thread" + ("s" if torch.get_num_threads() != 1 else "")


def device_label(dev: torch.device) -> str:
    """device_name and, on a CPU, the thread count torch uses: CPU figures hold for one count."""
    return device_name(dev) + (f", {threads_label()}" if dev.type == "cpu" else "")


def memory_bytes(dev: torch.device) -> float:
    if dev.type == "cuda":
        return float(torch.cuda.get_device_properties(dev).total_memory)
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    return 8e9    # unknown: capacity is not used by the time model


@contextlib.contextmanager
def cpu_threads(threads: int | None):
    """torch's intra-op thread count set to `threads` inside, restored after (None: unchanged)."""
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)
