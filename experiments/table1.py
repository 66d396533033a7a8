"""``python -m experiments.table1``: the paper's Table 1 and Figs. 1, 3, 4 on CIFAR-10 images.

Trains the parabolic, Hamiltonian and second-order networks and the ResNet control with
one budget on an image folder and writes ``results.md``, ``results.json`` and the figures:

    python -m experiments.table1 --data-root ../shared/data/cifar10-jpeg --budget cpu

``--budget cpu`` is a reduced recipe for 2 CPU cores (widths 16-32-64-64, 4 epochs);
``--budget paper`` is the paper's full recipe (for a GPU). ``--config paper|stable|both``
(default both) trains the paper's scheme (TV normalization, no rate bound, no penalty),
the quick recipe's stable configuration, or each in turn, in ``<out>/paper/<arch>`` and
``<out>/stable/<arch>``; the ResNet control trains once, in ``<out>/paper/resnet``. Each
network's best weights then go through the solver swap on ``--swap-images`` test images
spread over the test set, each row within ``--swap-row-seconds`` (``--no-swap`` skips
it): the results carry its worst row and the converged flow (dopri5, rtol 1e-4) beside
the test accuracy. ``--resume`` continues a half-done table: finished networks are kept,
a half-done one resumes from its ``last.pt``;
``--report-only`` writes the results of a table still training (best weights so far).
"""

from __future__ import annotations

import argparse
import shlex
import sys

from ._checkpoint import CheckpointError
from ._config import ConfigError, _widths
from ._data import DatasetNotFoundError
from ._table1 import (
    BUDGETS,
    CONFIG_CHOICES,
    SWAP_IMAGES,
    SWAP_ROW_SECONDS,
    TABLE1_ARCHS,
    table1,
)
from ._trainer import NonFiniteLossError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.table1",
        description="Train the networks of the paper's Table 1 on CIFAR-10 images in class "
        "folders with one budget; write results.md, results.json and Figs. 1, 3 and 4.",
        allow_abbrev=False,
    )
    a = p.add_argument
    a("--data-root", required=True, help="image folder: train/<class>/*, test/<class>/*")
    a("--budget", choices=sorted(BUDGETS), default="cpu", help="cpu (reduced) or paper (GPU)")
    a(
        "--config",
        choices=CONFIG_CHOICES,
        default="both",
        help="paper (TV normalization, no rate bound, no penalty), stable (the quick "
        "recipe's default) or both (default); the ResNet control trains once (paper)",
    )
    a("--out", default="runs/table1", help="output directory (default: runs/table1)")
    a("--resume", action="store_true", help="continue a half-done table in --out")
    a("--report-only", action="store_true", help="train nothing: report what --out holds")
    a("--archs", default=",".join(TABLE1_ARCHS), help="networks, in training order")
    a("--epochs", type=int, help="stretch the budget's schedule to this many epochs")
    a("--widths", type=_widths, help="cpu budget: other stage and final widths")
    a("--train-fraction", type=float, help="use this fraction of the 40,000 training images")
    a("--threads", type=int, help="CPU threads (cpu budget: 2)")
    a(
        "--compile",
        action=argparse.BooleanOptionalAction,
        help="torch.compile each network (cpu budget: on; --no-compile for short runs)",
    )
    a("--device", help="cpu, cuda, cuda:N (default: cuda for --budget paper if available)")
    a("--seed", type=int, help="seed of initialization and data order (default 0)")
    a(
        "--swap-images",
        type=int,
        default=SWAP_IMAGES,
        help=f"solver swap on N test images spread over the test set (default {SWAP_IMAGES}; "
        "0: all)",
    )
    a(
        "--swap-row-seconds",
        type=float,
        default=SWAP_ROW_SECONDS,
        help=f"budget of each swap row (default {SWAP_ROW_SECONDS:g}; 0: none); a row over it "
        "is reported 'did not finish within ...'",
    )
    a("--no-swap", action="store_true", help="skip the solver swap (no worst-swap columns)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = "python -m experiments.table1 " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        r = table1(
            args.data_root,
            args.budget,
            args.out,
            config=args.config,
            resume=args.resume,
            report_only=args.report_only,
            archs=tuple(args.archs.split(",")),
            epochs=args.epochs,
            swap=not args.no_swap,
            swap_images=args.swap_images,
            swap_row_seconds=args.swap_row_seconds,
            command=command,
            widths=args.widths,
            train_fraction=args.train_fraction,
            threads=args.threads,
            compile=args.compile,
            device=args.device,
            seed=args.seed,
        )
    except (ConfigError, DatasetNotFoundError, CheckpointError, NonFiniteLossError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1
    print()
    for name, n in r["networks"].items():
        line = f"{name:<20} test accuracy {n['test_accuracy']:.2%}"
        if r["swap"] is not None:
            worst, flow = n["worst_swap_accuracy"], n["converged_flow_accuracy"]
            line += "  worst swap " + ("–" if worst is None else f"{worst:.2%}")
            line += f" ({n['worst_swap_solver']})" if worst is not None else ""
            line += "  converged flow " + ("–" if flow is None else f"{flow:.2%}")
        print(f"{line}  ({n['params']:,} parameters)")
    print(f"\nresults in {args.out}/: results.md, results.json, fig1_probabilities.png, "
          "fig3_confusion.png, fig4_validation.png")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
