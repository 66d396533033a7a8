"""``python -m experiments.certify --checkpoint DIR/best.pt --eps 36/255,72/255,108/255``:
certified accuracy of a trained network at each ℓ2 radius ε (pixel units, images in
[0, 1]), from its rigorous Lipschitz bound; a table (``certify.md``, ``certify.csv``) and a
certified-accuracy-against-ε figure (``certify.png``) beside the checkpoint.

``--swap`` adds the certificates under every discretization of the solver swap
(``certify_swap.md``/``.csv``): rows where a bound exists, and which have none.
"""

from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from pathlib import Path

from ._certify import certify_table
from ._checkpoint import CheckpointError
from ._data import DatasetNotFoundError


def _eps(text: str) -> list[float]:
    try:
        values = [float(Fraction(x.strip())) for x in text.split(",")]
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated radii such as 36/255,0.5, got {text!r}"
        ) from None
    if not all(v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"radii must be >= 0, got {text!r}")
    return values


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of images, got {text!r}")
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m experiments.certify", description=__doc__.split("\n\n")[0],
        allow_abbrev=False,
    )  # fmt: skip
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt of a training run")
    p.add_argument(
        "--eps", type=_eps,
        help="l2 radii in pixel units, e.g. 36/255,72/255,108/255 (default: 0.1,0.25,0.5 "
        "on digits, those three otherwise)",
    )  # fmt: skip
    p.add_argument("--out", help="where certify.csv/.md/.png go (default: the checkpoint's dir)")
    p.add_argument("--data-root", help="override the data root saved in the checkpoint")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--images", type=_positive,
        help="N test images spread over the test set (default: all)",
    )  # fmt: skip
    p.add_argument("--swap", action="store_true", help="also certify every solver-swap row")
    args = p.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent
    try:
        result = certify_table(
            args.checkpoint,
            args.eps,
            data_root=args.data_root,
            device=args.device,
            images=args.images,
            out=out,
            swap=args.swap,
        )
    except (CheckpointError, DatasetNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    rows = result["rows"]
    print(
        f"Lipschitz bound {rows[0]['lipschitz']:.4g}, clean accuracy {rows[0]['clean_accuracy']:.2%}"
    )
    for r in rows:
        print(f"certified accuracy at l2 radius {r['eps']:.4g}: {r['certified_accuracy']:.2%}")
    written = "certify.csv, certify.md, certify.png" + (
        ", certify_swap.csv/.md" if args.swap else ""
    )
    print(f"wrote {written} in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
