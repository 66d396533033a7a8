"""Shared helpers of the benchmark scripts: machine description, interleaved timing, tables.

Timings on a shared machine are noisy: every comparison here runs its candidates
alternately (A, B, A, B, ...) so slow phases hit both, and reports medians.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
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
    return p


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
        f"{torch.get_num_threads()} threads"
    )
    if torch.cuda.is_available():
        out += f", GPU {torch.cuda.get_device_name()}"
    return out


def header(title: str) -> None:
    print(f"# {title}")
    print(f"date:    {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {machine()}")
    print(f"command: python {' '.join(sys.argv)}")
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
    """Seconds per call of each candidate, run in turn ``repeats`` times after warm-up."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
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
