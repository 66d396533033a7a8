"""``python -m experiments.data_size``: the paper's Fig. 2 — test accuracy against the
fraction of training data for the parabolic, Hamiltonian and second-order networks, with
no augmentation (as in the paper).

Digits and the quick recipe by default (a few minutes on 2 CPU cores). On an image folder
(``--dataset imagefolder --data-root ../shared/data/cifar10-jpeg``) it uses Table 1's cpu
recipe (``python -m experiments.table1 --budget cpu``: widths 16-32-64-64, batch 125,
α1 = α2 = 2e-4, clipping, BatchNorm ε 1e-4, lr 0.1 cosine-annealed to 0) at a smaller
budget: 2 epochs on 10 %, 20 %, 40 % and 80 % of the 40,000 training images, 120,000
training images per network in all (Table 1's: 160,000), and no torch.compile (its
minute of compilation per run would cost more than it saves in runs this short): about
40 minutes of an idle 2-core CPU for the three networks.
"""

from __future__ import annotations

import argparse
import sys

from ._config import DATASETS, ConfigError, _widths
from ._data import DatasetNotFoundError
from ._data_size import DATA_SIZE_ARCHS, data_size
from ._table1 import budget_options

# Fig. 2 on an image folder: fewer epochs than Table 1's cpu budget (12 runs instead of 4).
IMAGEFOLDER_EPOCHS = 2


def _fractions(text: str) -> list[float]:
    try:
        fs = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.1,0.5,1, got {text!r}") from None
    if not all(0 < f <= 1 for f in fs):
        raise argparse.ArgumentTypeError(f"fractions must lie in (0, 1], got {fs}")
    return fs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m experiments.data_size",
        description="The paper's Fig. 2: test accuracy against the fraction of training data "
        "for the PDE networks, no augmentation. Digits and the quick recipe by default; on an "
        "image folder, Table 1's cpu recipe for 2 epochs per fraction.",
        allow_abbrev=False,
    )
    a = p.add_argument
    a("--dataset", choices=DATASETS, default="digits", help="data set (default: digits)")
    a("--data-root", help="where the data set lives (imagefolder: its root)")
    a("--fractions", type=_fractions, default=[0.1, 0.2, 0.4, 0.8],
      help="fractions of the training split, e.g. 0.1,0.2,0.4,0.8 (the default)")  # fmt: skip
    a("--archs", default=",".join(DATA_SIZE_ARCHS), help="networks, comma-separated")
    a("--epochs", type=int, help="epochs per run (imagefolder default: 2)")
    a("--widths", type=_widths,
      help="stage and final widths (default 16,32,64; imagefolder: 16,32,64,64)")  # fmt: skip
    a("--seed", type=int, default=0, help="seed of initialization and data order (0)")
    a("--threads", type=int, help="CPU threads (imagefolder default: 2)")
    a("--out", default="runs/data_size", help="output directory (default: runs/data_size)")
    args = p.parse_args(argv)
    opts = {
        "dataset": args.dataset,
        "data_root": args.data_root,
        "epochs": args.epochs,
        "widths": args.widths,
        "seed": args.seed,
        "threads": args.threads,
    }
    try:
        if args.dataset == "imagefolder":
            recipe = budget_options("cpu", args.epochs or IMAGEFOLDER_EPOCHS)
            recipe.pop("train_fraction")
            recipe.pop("augment")
            recipe["compile"] = False
            opts.pop("epochs")
            opts = {**recipe, **{k: v for k, v in opts.items() if v is not None}}
        data_size(args.fractions, args.archs.split(","), args.out, **opts)
    except (ConfigError, DatasetNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"\nwrote {args.out}/data_size.csv and {args.out}/data_size.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
