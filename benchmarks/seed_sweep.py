"""The main job over a sweep of seeds and both convolution back ends: does the default
recipe train every time, and is every trained network an ODE?

    python benchmarks/seed_sweep.py [--seeds 0-19] [--onednn on,off] [--out DIR] [--tiny]

Each run is ``python -m experiments.train --seed S`` (plus any ``--`` options) in its own
process, with ``torch.backends.mkldnn.enabled`` set as asked (off: other convolution
kernels, so other rounding, as another CPU would give), followed by
``python -m experiments.solver_swap`` on its best weights. The table gives per run the
test accuracy, the worst row of the swap table and the converged flow (dopri5, rtol
1e-4); a run that stops (a non-finite loss) is a row that says so. The floor row is the
worst of the rows the ODE floors are judged on (FLOOR_ROWS and dopri5). The summary line
counts the runs that reach 98 % and the lowest worst-row accuracy. ``--out`` keeps
``sweep.csv``.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import header, parser, setup, table

ROOT = Path(__file__).resolve().parents[1]
# Runs the module given as argv[1] with oneDNN on or off (argv[2]), the rest as its args.
LAUNCH = (
    "import runpy, sys, torch; torch.backends.mkldnn.enabled = sys.argv[2] == 'on'; "
    "sys.argv = [sys.argv[1]] + sys.argv[3:]; runpy.run_module(sys.argv[0], run_name='__main__')"
)


def _seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


# The rows the ODE floors are judged on (the hyperbolic networks' first-order symplectic
# methods at h = 1, leapfrog and symplectic Euler, and forward Euler at h = 1 and 1/2 are
# not among them): Verlet, Yoshida, RK4, dopri5 at every tolerance, forward Euler x4 and x8.
FLOOR_ROWS = ("verlet", "yoshida4", "rk4", "euler x4", "euler x8")


def _floor(acc: dict[str, float]) -> tuple[str, float]:
    judged = {k: v for k, v in acc.items() if k in FLOOR_ROWS or k.startswith("dopri5")}
    name = min(judged, key=lambda k: judged[k] if judged[k] == judged[k] else -1.0)
    return name, judged[name]


def _swap_rows(path: Path) -> dict[str, float]:
    with open(path, newline="") as f:
        return {r["solver"]: float(r["accuracy"]) for r in csv.DictReader(f)}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=_seeds, help="e.g. 0-19 or 0,3,5 (default 0-19)")
    p.add_argument("--onednn", default="on,off", help="on, off or on,off (default both)")
    p.add_argument("--out", help="write sweep.csv and sweep.md here")
    p.add_argument("train_args", nargs="*", help="options for experiments.train (after --)")
    args = p.parse_args()
    setup(args)
    seeds = args.seeds or ([0] if args.tiny else list(range(20)))
    modes = [m.strip() for m in args.onednn.split(",")]
    if not set(modes) <= {"on", "off"}:
        p.error(f"--onednn takes on, off or on,off, got {args.onednn!r}")
    extra = list(args.train_args)
    if args.tiny:
        extra += ["--epochs", "1", "--widths", "4,8", "--train-fraction", "0.2"]
    header(f"main job over seeds {seeds[0]}..{seeds[-1]}, oneDNN {args.onednn}")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    rows = []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for mode in modes:
            for seed in seeds:
                out = Path(tmp) / f"{mode}-{seed}"
                cmd = [sys.executable, "-c", LAUNCH, "experiments.train", mode]
                cmd += ["--seed", str(seed), "--out", str(out), *extra]
                t0 = time.perf_counter()
                run = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
                row = {"oneDNN": mode, "seed": seed, "train s": time.perf_counter() - t0}
                if run.returncode != 0 or not (out / "best.pt").is_file():
                    last = (run.stderr.strip().splitlines() or ["?"])[-1]
                    rows.append({**row, "test accuracy": float("nan"), "stopped": last[:120]})
                    continue
                report = json.loads((out / "report.json").read_text())
                swap = [sys.executable, "-c", LAUNCH, "experiments.solver_swap", mode]
                swap += ["--checkpoint", str(out / "best.pt"), "--no-progress"]
                subprocess.run(swap, env=env, cwd=ROOT, capture_output=True, text=True)
                acc = _swap_rows(out / "solver_swap.csv")
                worst = min(acc, key=lambda k: acc[k] if acc[k] == acc[k] else -1.0)
                floor_solver, floor = _floor(acc)
                rows.append(
                    {
                        **row,
                        "test accuracy": report["test_accuracy"],
                        "worst swap row": acc[worst],
                        "worst solver": worst,
                        "floor row": floor,
                        "floor solver": floor_solver,
                        "converged flow": acc.get("dopri5 rtol=0.0001", float("nan")),
                        "stopped": "",
                    }
                )
    table(rows)
    ok = [r for r in rows if r["test accuracy"] >= 0.98]
    worst = min((r["worst swap row"] for r in rows if "worst swap row" in r), default=float("nan"))
    floor = min((r["floor row"] for r in rows if "floor row" in r), default=float("nan"))
    print(
        f"{len(ok)} of {len(rows)} runs reach 98 % test accuracy; lowest worst swap row "
        f"{worst:.4f}; lowest floor row (Verlet, Yoshida, RK4, dopri5, Euler x4/x8) "
        f"{floor:.4f}; {time.perf_counter() - t_all:.0f} s in all; load average now "
        f"{os.getloadavg()[0]:.1f}"
    )
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with open(out / "sweep.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
