"""``python -m experiments.solver_swap --checkpoint DIR/best.pt``: one trained network,
evaluated unchanged under many solvers (accuracy, NFE, time; a table, a CSV and a plot).

A row that could run for long (dopri5 at a tight tolerance on a network that is no ODE)
can be given a budget: ``--row-seconds S`` stops a row between batches once it has run
S seconds, ``--max-steps N`` stops an adaptive solve after N steps; such a row is reported
"did not finish within ..." and the table goes on. ``--images N`` evaluates on N test images
spread over the test set (every class represented), for a quick look. ``--recalibrate-bn N``
re-estimates the BatchNorm statistics under each row's solver on N training images before
the row (the weights stay; the table then says how far a row's loss is the statistics'
shift rather than the dynamics').
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import neuralpde.stability

from ._checkpoint import CheckpointError
from ._data import DatasetNotFoundError
from ._swap import load_trained, swap_table, swap_verdict, write_swap


def _positive(kind):
    def parse(text: str):
        what = "whole number" if kind is int else "number"
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {what}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m experiments.solver_swap", description=__doc__.split("\n\n")[0],
        allow_abbrev=False,
    )  # fmt: skip
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt of a training run")
    p.add_argument(
        "--out", help="where solver_swap.csv/.md/.png go (default: the checkpoint's dir)"
    )
    p.add_argument("--data-root", help="override the data root saved in the checkpoint")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=_positive(int), default=500)
    p.add_argument(
        "--threads", type=_positive(int), metavar="N",
        help="torch.set_num_threads(N) for the CPU (default: torch's choice)",
    )  # fmt: skip
    p.add_argument(
        "--images",
        type=_positive(int),
        help="evaluate on N test images spread over the test set, every class represented (default: all)",
    )
    p.add_argument(
        "--row-seconds", type=_positive(float), metavar="S",
        help="budget per row, checked between batches: a row still running after S seconds "
        "stops and is reported 'did not finish within S s' (default: none)",
    )  # fmt: skip
    p.add_argument(
        "--max-steps", type=_positive(int), metavar="N",
        help="step limit of each adaptive solve (per stage and batch; default 10,000): a row "
        "that needs more is reported 'did not finish within N steps'",
    )  # fmt: skip
    p.add_argument(
        "--recalibrate-bn", type=_positive(int), metavar="N",
        help="re-estimate the BatchNorm statistics under each row's solver on N training "
        "images before evaluating it (weights unchanged; default: the trained statistics)",
    )  # fmt: skip
    p.add_argument(
        "--no-progress", action="store_true",
        help="no progress within a row (default: a bar on a terminal, else a line every 30 s)",
    )  # fmt: skip
    args = p.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.recalibrate_bn is not None:
        print(
            f"re-estimating the BatchNorm statistics after each stage under each row's solver "
            f"on {args.recalibrate_bn:,} training images before the row"
        )
    try:
        rows = swap_table(
            args.checkpoint,
            data_root=args.data_root,
            device=args.device,
            batch_size=args.batch_size,
            images=args.images,
            row_seconds=args.row_seconds,
            max_steps=args.max_steps,
            recalibrate_bn=args.recalibrate_bn,
            progress=not args.no_progress,
        )
    except (CheckpointError, DatasetNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    title = f"solver swap: {args.checkpoint}"
    if args.images is not None:
        title += f" ({args.images:,} test images spread over the test set)"
    note = ""
    if args.recalibrate_bn is not None:
        note = (
            f"BatchNorm statistics re-estimated per row on {args.recalibrate_bn:,} training "
            "images (not the saved network's)"
        )
        title += f", {note}"
    write_swap(rows, out, title)
    print(f"\nwrote {out}/solver_swap.csv, {out}/solver_swap.md and {out}/solver_swap.png")
    finite = [r for r in rows if r["accuracy"] == r["accuracy"]]
    if finite:
        worst = min(finite, key=lambda r: r["accuracy"])
        print(
            f"worst row: {worst['solver']} at {worst['accuracy']:.2%}"
            + (f" ({note})" if note else "")
        )
    for r in rows:
        if r["status"] != "ok":
            print(f"no accuracy: {r['solver']}: {r['status']}")
    net, cfg = load_trained(args.checkpoint)
    # The bound constrain applied (none to the ResNet control); 0: trained without one.
    bound = neuralpde.stability.rate_fraction(net)
    if bound is None and not cfg.rate_bound:
        bound = 0.0
    try:
        verdict = swap_verdict(
            rows,
            method=net.stages[0].method,
            rate_bound=bound,
            shared=tuple(cfg.random_methods),
        )
        print(f"\nverdict{' (' + note + ')' if note else ''}: {verdict}")
    except ValueError as err:
        print(f"\nno verdict: {err}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
