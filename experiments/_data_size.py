"""The paper's Fig. 2: test accuracy against the fraction of training data."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ._config import resolve_config
from ._trainer import fit

DATA_SIZE_ARCHS = ("parabolic", "hamiltonian", "second_order")
DATA_SIZE_FIELDS = ("arch", "fraction", "train_images", "test_accuracy", "test_loss", "seconds")


def data_size(
    fractions=(0.1, 0.2, 0.4, 0.8),
    archs=DATA_SIZE_ARCHS,
    out: str | Path = "runs/data_size",
    log=print,
    **options: Any,
) -> list[dict[str, Any]]:
    """Train each of ``archs`` on each fraction of the training split (no augmentation, as
    in the paper) and evaluate it on the full test set.

    ``options`` are :func:`resolve_config` options (``dataset``, ``epochs``, ``widths``...);
    each run writes its own directory under ``out``.
    """
    out = Path(out)
    rows = []
    for arch in archs:
        for f in fractions:
            run = out / f"{arch}-{f:g}"
            cfg = resolve_config(
                arch=arch, train_fraction=f, augment=False, out=str(run), **options
            )
            r = fit(cfg, log=lambda *_: None)
            row = {
                "arch": arch,
                "fraction": f,
                "train_images": r["train_images"],
                "test_accuracy": r["test_accuracy"],
                "test_loss": r["test_loss"],
                "seconds": r["seconds"],
            }
            rows.append(row)
            log(
                f"{arch:<13} {f:>6.1%} of training data ({row['train_images']:>5} images): "
                f"test accuracy {row['test_accuracy']:.4f}  ({row['seconds']:.1f}s)"
            )
    write_data_size(rows, out)
    return rows


def write_data_size(rows: list[dict[str, Any]], out: Path) -> None:
    """``data_size.csv`` and ``data_size.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "data_size.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=DATA_SIZE_FIELDS)
        w.writeheader()
        w.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for arch in dict.fromkeys(r["arch"] for r in rows):
        rs = [r for r in rows if r["arch"] == arch]
        ax.plot([r["fraction"] for r in rs], [r["test_accuracy"] for r in rs], "o-", label=arch)
    ax.set(xlabel="fraction of the training data", ylabel="test accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "data_size.png", dpi=110)
    plt.close(fig)
