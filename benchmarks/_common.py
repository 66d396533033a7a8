"""Shared helpers of the benchmark scripts: machine description, interleaved timing, tables.

Timings on a shared machine are noisy: every comparison here runs its candidates
alternately (A, B, A, B, ...) so slow phases hit both, and reports medians.

glibc's allocator is a second source of noise on CPU. By default it serves allocations
above a threshold it keeps adjusting with fresh ``mmap``s and returns freed memory at the
top of the heap to the kernel, so whether a multi-MiB activation costs a page fault per
4 KiB depends on the order of earlier allocations: two loops of the same operations
differed by up to 1.5x, by a different amount in every process. :func:`setup` pins the
allocator (no ``mmap``, no trimming) unless ``--system-malloc`` is given; the header
says which.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import datetime
import os
import platform
import random
import shlex
import statistics
import sys
import time
from collections.abc import Callable

import torch


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--tiny", action="store_true", help="tiny sizes (CI: checks that it runs)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per candidate")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument(
        "--system-malloc",
        action="store_true",
        help="leave glibc's allocator as it is (default: pin it, see benchmarks/_common.py)",
    )
    return p


_ALLOCATOR = "system default"


def setup(args: argparse.Namespace) -> None:
    """Apply ``--threads`` and, unless ``--system-malloc``, pin glibc's allocator."""
    global _ALLOCATOR
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.system_malloc:
        _ALLOCATOR = steady_allocator()


def steady_allocator() -> str:
    """Make glibc serve every block from its heap and never give memory back, so that
    timings do not depend on which earlier allocation left which hole (``mallopt``)."""
    name = ctypes.util.find_library("c")
    if sys.platform != "linux" or name is None:
        return "system default (not glibc)"
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt"):
        return "system default (not glibc)"
    m_trim_threshold, m_mmap_max = -1, -4
    ok = libc.mallopt(m_mmap_max, 0) == 1 and libc.mallopt(m_trim_threshold, 2**31 - 1) == 1
    return "glibc, pinned (M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GiB)" if ok else "system default"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    out = (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, allocator: {_ALLOCATOR}"
    )
    if torch.cuda.is_available():
        out += f", GPU {torch.cuda.get_device_name()}"
    return out


def header(title: str) -> None:
    print(f"# {title}")
    print(f"date:    {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {machine()}")
    print(f"command: python {shlex.join(sys.argv)}")  # quoted: pasted back, it reruns
    print()


def sync(device: torch.device | str | None = None) -> None:
    if torch.cuda.is_available() and str(device).startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(
    candidates: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    device: str = "cpu",
) -> dict[str, list[float]]:
    """Seconds per call of each candidate, run in turn ``repeats`` times after warm-up.

    The order within a round is shuffled (fixed seed): a candidate that always ran right
    after the one that left the heap or the caches in some state would carry that state's
    cost in every round.
    """
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in candidates}
    order = list(candidates.items())
    rng = random.Random(0)
    for _ in range(repeats):
        rng.shuffle(order)
        for name, fn in order:
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median of the per-round ratios a_i / b_i (robust to slow phases of a shared machine)."""
    return statistics.median(x / y for x, y in zip(a, b))


def table(rows: list[dict[str, object]]) -> None:
    """Print ``rows`` as a Markdown table (first row's keys are the columns)."""
    cols = list(rows[0])
    cells = [[_fmt(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(x.ljust(w) for x, w in zip(row, widths)) + " |")
    print()


def _fmt(x: object) -> str:
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"
    return str(x)
