"""``python -m experiments.solver_swap --checkpoint DIR/best.pt``: one trained network,
evaluated unchanged under many solvers (accuracy, NFE, time; a table, a CSV and a plot)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._checkpoint import CheckpointError
from ._data import DatasetNotFoundError
from ._swap import swap_table, swap_verdict, write_swap


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.solver_swap", allow_abbrev=False)
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt of a training run")
    p.add_argument("--out", help="where solver_swap.csv/.png go (default: the checkpoint's dir)")
    p.add_argument("--data-root", help="override the data root saved in the checkpoint")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=500)
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error(f"--batch-size must be positive, got {args.batch_size}")
    out = Path(args.out) if args.out else Path(args.checkpoint).parent
    try:
        rows = swap_table(
            args.checkpoint,
            data_root=args.data_root,
            device=args.device,
            batch_size=args.batch_size,
        )
    except (CheckpointError, DatasetNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    write_swap(rows, out, f"solver swap: {args.checkpoint}")
    print(f"\nwrote {out}/solver_swap.csv and {out}/solver_swap.png")
    finite = [r for r in rows if r["accuracy"] == r["accuracy"]]
    if finite:
        worst = min(finite, key=lambda r: r["accuracy"])
        print(f"worst row: {worst['solver']} at {worst['accuracy']:.2%}")
    print(f"\nverdict: {swap_verdict(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
