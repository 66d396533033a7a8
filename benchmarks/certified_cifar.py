"""Certified robustness on the real CIFAR-10 images at a CPU budget: the certified
parabolic network (``python -m experiments.train --certified``) against a Convex Potential
Layer control (``docs/tutorials/cpl.py``, a user's dynamics) of the same widths and
parameter count, trained with the same recipe (``--certified``'s defaults for photographs),
epochs and seed, one after the other in one
run, then certified on the whole test set.

    python benchmarks/certified_cifar.py [--data-root ../shared/data/cifar10-jpeg]
        [--epochs 5] [--widths 16,32,64,64] [--out DIR] [--tiny]

The table gives per network its parameters, training minutes (wall and CPU) and their
ratio to the parabolic network's, clean test accuracy and certified accuracy at ε = 36/255,
72/255 and 108/255 (ℓ2, pixels in [0, 1]; Prach et al., CVPR 2024). ``--tiny`` runs both
on a slice of the digits (CI: checks that it runs). ``--out`` keeps the runs (default: a
temporary directory).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from _common import header, parser, setup, table

import neuralpde
from experiments import certify_table, fit, load_data, resolve_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "tutorials"))  # the CPL control, as tutorial 08 has it
from cpl import CPL  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg"


def _eps_label(e: float) -> str:
    """36/255 for CIFAR's radii, 0.1 for the digits'."""
    k = round(e * 255)
    return f"{k}/255" if abs(e * 255 - k) < 1e-9 else f"{e:g}"


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--data-root", default=str(DATA), help="CIFAR-10 as JPEG class folders")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--widths", default="16,32,64,64")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="keep the runs here (default: a temporary directory)")
    args = p.parse_args()
    setup(args)
    if "cpl" not in neuralpde.archs():
        neuralpde.register_arch("cpl", CPL)
    options = {
        "certified": True,
        "dataset": "imagefolder",
        "data_root": args.data_root,
        "widths": [int(w) for w in args.widths.split(",")],
        "epochs": args.epochs,
        "batch_size": 125,
        "augment": False,
        "seed": args.seed,
        "threads": args.threads,
    }
    eps = (36 / 255, 72 / 255, 108 / 255)
    if args.tiny:
        options.update(dataset="digits", data_root=None, widths=[4, 8], epochs=1)
        options.update(train_fraction=0.2)
        eps = (0.1, 0.25, 0.5)
    header(f"certified parabolic vs CPL, {options['dataset']}, {options['epochs']} epochs")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="certified-cifar-"))
    rows, data = [], None
    for arch in ("parabolic", "cpl"):
        cfg = resolve_config(**options, arch=arch, out=str(out / arch))
        data = data or load_data(cfg)
        wall, cpu = time.perf_counter(), time.process_time()
        report = fit(cfg, data, log=lambda *a: None)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        cert = certify_table(out / arch / "best.pt", eps, data=data, log=lambda *a: None)
        row = {
            "network": "parabolic (--certified)" if arch == "parabolic" else "CPL control",
            "parameters": report["params"],
            "train min": wall / 60,
            "CPU min": cpu / 60,
        }
        if rows:
            row["time / parabolic"] = wall / (rows[0]["train min"] * 60)
        else:
            row["time / parabolic"] = 1.0
        row["clean"] = cert["rows"][0]["clean_accuracy"]
        for r in cert["rows"]:
            row[f"certified@{_eps_label(r['eps'])}"] = r["certified_accuracy"]
        row["L"] = cert["rows"][0]["lipschitz"]
        rows.append(row)
    table(rows)
    print(f"runs in {out}")


if __name__ == "__main__":
    main()
