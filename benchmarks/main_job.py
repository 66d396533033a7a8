"""The main job's cost: ``python -m experiments.train`` (the default recipe: stable by
construction, ``normalization="bias"`` and the rate bound that makes the trained network
an ODE) against the same job trained with the paper's scheme (``--normalization tv
--rate-bound 0``) and against the fine-step alternative (``--step-size 0.5``), each run in
its own process. (The stability penalty on the paper's layer, the default before the rate
bound, is not a candidate: on this project's machine it stops seed 0 on a non-finite
gradient in epoch 4.)

    python benchmarks/main_job.py [--repeats 3] [--tiny] [--candidate "TRAIN OPTIONS" ...]

Runs alternate (shuffled per round) so slow phases of a shared machine hit every
candidate; the table gives the median wall and CPU seconds per whole job, the ratio to
the paper-scheme job (median of per-round ratios) and the test accuracy. The target:
the default job at most 1.3x the CPU time of the paper-scheme job, and under 60 s on 2
cores. Each ``--candidate`` adds a job with those ``experiments.train`` options (e.g.
``--candidate "--random-methods euler,euler,euler,midpoint"``), timed in the same rounds.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import header, interleaved, median, paired_ratio, parser, setup, table

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument(
        "--candidate",
        action="append",
        default=[],
        help="experiments.train options of one more job (repeatable)",
    )
    args = p.parse_args()
    setup(args)
    repeats = args.repeats or (1 if args.tiny else 3)
    header("main job: default recipe against the paper's scheme")
    small = ["--epochs", "1", "--widths", "4,8", "--train-fraction", "0.2"] if args.tiny else []
    paper = ["--normalization", "tv", "--rate-bound", "0"]
    candidates = {
        "default (rate bound)": [],
        "paper scheme": paper,
        "fine step h/2": [*paper, "--step-size", "0.5"],
    }
    for options in args.candidate:
        candidates[options] = shlex.split(options)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    results: dict[str, list[dict]] = {k: [] for k in candidates}
    cpu: dict[str, list[float]] = {k: [] for k in candidates}
    with tempfile.TemporaryDirectory() as tmp:

        def job(name: str, extra: list[str]):
            def run() -> None:
                out = Path(tmp) / str(list(candidates).index(name))
                cmd = [sys.executable, "-m", "experiments.train", *small, *extra, "--out", str(out)]
                t0 = os.times()
                subprocess.run(cmd, env=env, cwd=ROOT, check=True, capture_output=True)
                t1 = os.times()
                cpu[name].append(
                    (t1.children_user - t0.children_user)
                    + (t1.children_system - t0.children_system)
                )
                results[name].append(json.loads((out / "report.json").read_text()))

            return run

        t0 = time.perf_counter()
        times = interleaved(
            {k: job(k, v) for k, v in candidates.items()}, repeats=repeats, warmup=0
        )
        wall = time.perf_counter() - t0
    base = "paper scheme"
    rows = []
    for name in candidates:
        rows.append(
            {
                "job": name,
                "wall s (median)": median(times[name]),
                "CPU s (median)": median(cpu[name]),
                "wall ratio": paired_ratio(times[name], times[base]),
                "CPU ratio": paired_ratio(cpu[name], cpu[base]),
                "test accuracy": median([r["test_accuracy"] for r in results[name]]),
            }
        )
    table(rows)
    print(f"{repeats} round(s), {wall:.0f} s in all; load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
