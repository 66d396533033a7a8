"""``python -m experiments.ode_study``: which training makes a trained θ(t) a good ODE.

Trains every architecture with every strategy (the paper's scheme, fine steps,
multilevel refinement in time, random steps, a stability penalty), evaluates each under
the whole solver-swap table and writes ``study.md``, ``study.json`` and ``study.png``::

    python -m experiments.ode_study                       # digits, 4 archs x 6 strategies
    python -m experiments.ode_study --archs parabolic --strategies paper,multilevel
    python -m experiments.ode_study --out runs/ode-study --resume
    python -m experiments.ode_study --dataset imagefolder --data-root ../shared/data/cifar10-jpeg \
        --budget cpu --archs parabolic --strategies paper,"rate bound 1/4" --images 2000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._config import ARCHS, ConfigError, resolve_config
from ._ode_study import STRATEGIES, study
from ._table1 import budget_options


def _names(choices):
    def parse(text: str) -> list[str]:
        names = [s.strip() for s in text.split(",") if s.strip()]
        bad = [n for n in names if n not in choices]
        if bad or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(map(repr, bad))}; " * bool(bad)
                + f"expected comma-separated names from {list(choices)}, got {text!r}"
            )
        return names

    return parse


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m experiments.ode_study",
        description="Train each architecture with each strategy and measure how well the "
        "trained network survives a solver swap (worst accuracy, NFE to convergence, "
        "training time as a ratio to the paper's scheme).",
        allow_abbrev=False,
    )
    p.add_argument(
        "--archs", type=_names(ARCHS), default=list(ARCHS),
        help=f"comma-separated, from {', '.join(ARCHS)} (default: all)",
    )  # fmt: skip
    p.add_argument(
        "--strategies", type=_names(list(STRATEGIES)), default=list(STRATEGIES),
        help=f"comma-separated, from: {'; '.join(STRATEGIES)} (default: all)",
    )  # fmt: skip
    p.add_argument("--dataset", default="digits", help="digits (default) or imagefolder")
    p.add_argument("--data-root", help="for --dataset imagefolder")
    p.add_argument("--widths", help="stage widths, e.g. 16,32,64 (default: the recipe's)")
    p.add_argument("--epochs", type=int, help="epochs of every run (default: the recipe's)")
    p.add_argument("--train-fraction", type=float, help="share of the training split")
    p.add_argument("--threads", type=int, help="CPU threads")
    p.add_argument(
        "--budget",
        choices=("cpu",),
        help="the options of experiments.table1's budget (cpu: widths 16-32-64-64, 4 "
        "epochs, lr 0.1 cosine-annealed, batch 125, compiled) instead of the quick recipe's",
    )
    p.add_argument(
        "--images",
        type=int,
        help="evaluate each swap on N test images spread over the test set (all)",
    )
    p.add_argument(
        "--nfe-sweep",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also sweep RK4 and dopri5 to the NFE that reaches the converged accuracy",
    )
    p.add_argument(
        "--row-seconds", type=float, metavar="S",
        help="budget per swap row: a row still running after S seconds is reported 'did "
        "not finish' (default: none)",
    )  # fmt: skip
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="runs/ode-study")
    p.add_argument("--resume", action="store_true", help="keep the pairs already done")
    a = p.parse_args(argv)
    base: dict = {"dataset": a.dataset}
    if a.budget:
        base.update(budget_options(a.budget))
    if a.data_root:
        base["data_root"] = a.data_root
    if a.widths:
        base["widths"] = [int(w) for w in a.widths.split(",")]
    for k in ("epochs", "train_fraction", "threads"):
        if getattr(a, k) is not None:
            base[k] = getattr(a, k)
    out = Path(a.out)
    try:
        resolve_config(**base)  # a bad option is a usage error, before any training
    except ConfigError as err:
        p.error(str(err))
    results = study(
        a.archs,
        a.strategies,
        out,
        base=base,
        device=a.device,
        resume=a.resume,
        images=a.images,
        nfe_sweep=a.nfe_sweep,
        row_seconds=a.row_seconds,
    )
    print((out / "study.md").read_text())
    print(f"results in {out}/: study.md, study.json, study.png, and one run per pair")
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
