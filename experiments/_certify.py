"""Certified accuracy of a trained network: radii from its Lipschitz bound, in pixel units."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import torch

import neuralpde
import solvers

from ._data import EpochBatches, batch_loader, load_data

# The budgets of the literature: ℓ2 radii in pixel units of [0, 1] images (36/255 is
# CIFAR-10's, Prach et al. CVPR 2024); the digits' 8×8 images get radii of their size.
DEFAULT_EPS = (36 / 255, 72 / 255, 108 / 255)
DIGITS_EPS = (0.1, 0.25, 0.5)
CERTIFY_FIELDS = ("eps", "certified_accuracy", "clean_accuracy", "lipschitz", "images")


def default_eps(dataset: str) -> tuple[float, ...]:
    """The ε list reported for ``dataset`` (pixel units)."""
    return DIGITS_EPS if dataset == "digits" else DEFAULT_EPS


def pixel_scale(ds) -> float:
    """The factor from normalized input units to pixel units (images in [0, 1]).

    The data path normalizes per channel, ``x' = (x - μ_c) / σ_c``, so a pixel-space
    perturbation ``Δx`` has ``‖Δx'‖ <= ‖Δx‖ / min_c σ_c``: a radius ``R'`` certified in
    normalized units certifies every pixel-space perturbation of norm below ``R' min_c σ_c``.
    """
    std = getattr(ds, "std", None)
    if std is None:
        raise ValueError(
            f"certify: the split {type(ds).__name__} does not say its normalization (std)"
        )
    return float(torch.as_tensor(std).min())


@torch.no_grad()
def radii(net, ds, device="cpu", batch_size: int = 500, images: int | None = None):
    """``(radius (n,) in pixel units, 0 where wrong; correct (n,) bool; L)`` of ``net`` on
    the first ``images`` items of ``ds``."""
    n = len(ds) if images is None else min(images, len(ds))
    sampler = EpochBatches(n, batch_size, seed=0, shuffle=False)
    dtype = next(net.parameters()).dtype
    net.eval()
    bound = None
    out, ok = [], []
    for x, y in batch_loader(ds, sampler):
        x, y = x.to(device, dtype), y.to(device)
        if bound is None:
            bound = neuralpde.lipschitz_bound(net, tuple(x.shape))
        r = neuralpde.certify(net, x, y, bound=bound)
        out.append(r.cpu())
        ok.append((net(x).argmax(1) == y).cpu())
    scale = pixel_scale(ds)
    return torch.cat(out) * scale, torch.cat(ok), bound


def certified_accuracy(
    net, ds, eps, device="cpu", batch_size: int = 500, images: int | None = None
) -> list[dict[str, Any]]:
    """One row per ε (pixel units): the fraction of items classified correctly with a
    certified radius above ε, the clean accuracy, the Lipschitz bound ``L``."""
    return _rows(*radii(net, ds, device, batch_size, images), eps)


def _rows(r, ok, bound, eps) -> list[dict[str, Any]]:
    return [
        {
            "eps": float(e),
            "certified_accuracy": float((r > e).double().mean()),
            "clean_accuracy": float(ok.double().mean()),
            "lipschitz": bound.total,
            "images": len(r),
        }
        for e in eps
    ]


def _write(rows: list[dict[str, Any]], fields, out: Path, stem: str, title: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in fields})

    def fmt(v):
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.4g}"
        return str(v)

    lines = [f"# {title}", "", "| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in fields) + " |" for r in rows]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")


def plot_certified(radius: torch.Tensor, eps, path: Path, title: str) -> None:
    """Certified accuracy against ε (pixel units), with the reported ε marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = max(max(eps) * 1.5, float(radius.max()) if len(radius) else 1.0)
    grid = torch.linspace(0, top, 200, dtype=torch.float64)
    acc = (radius[None, :] > grid[:, None]).double().mean(1)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(grid, acc * 100)
    for e in eps:
        ax.plot([e], [float((radius > e).double().mean()) * 100], "o", color="C3")
    ax.set_xlabel("ℓ2 radius ε (pixel units, images in [0, 1])")
    ax.set_ylabel("certified accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def certify_table(
    checkpoint: str | Path,
    eps=None,
    *,
    data=None,
    data_root: str | None = None,
    device: str = "cpu",
    images: int | None = None,
    out: str | Path | None = None,
    swap: bool = False,
    log=print,
) -> dict[str, Any]:
    """Certified accuracy of the network of ``checkpoint`` on its test set at each ε.

    Radii are :func:`neuralpde.certify`'s (margin over ``sqrt(2) L``, ``L`` from
    :func:`neuralpde.lipschitz_bound`), converted to pixel units of images in [0, 1] with
    :func:`pixel_scale`. With ``swap``, also one row per discretization of
    :func:`experiments.swap_plan` (the weights unchanged): its Lipschitz bound, its clean
    accuracy and certified accuracy at each ε; a row without a finite bound has NaN
    certified accuracies and its ``bound`` column names the layers without one.

    Args:
        checkpoint: a ``best.pt`` or ``last.pt`` of :func:`experiments.fit`.
        eps: ℓ2 radii in pixel units (default: 0.1, 0.25, 0.5 on digits; 36/255, 72/255,
            108/255 otherwise).
        data, data_root: the splits (default: loaded as the checkpoint's config says).
        images: ``images`` test images spread evenly over the test set (every class
            represented, as :func:`experiments.swap_table`'s; default: all).
        out: where ``certify.csv``/``.md``/``.png`` (and ``certify_swap.csv``/``.md``)
            go (default: nothing is written).

    Returns:
        ``{"rows": [...], "swap": [...] or None, "radius": (n,) pixel radii}``; each row has
        ``eps``, ``certified_accuracy``, ``clean_accuracy``, ``lipschitz``, ``images``.

    Raises:
        ValueError: ``images`` below 1.
        experiments.CheckpointError: an unreadable or foreign checkpoint, or one of a
            dynamics not registered in this process (``neuralpde.register_arch`` it first).
        experiments.DatasetNotFoundError: the data set is not where the config says.
    """
    from ._swap import load_trained, spread_test_images, swap_plan

    if images is not None and (
        isinstance(images, bool) or not isinstance(images, int) or images < 1
    ):
        raise ValueError(
            f"certify_table: images must be a positive int (or None: all), got {images!r}"
        )
    net, cfg = load_trained(checkpoint, device)
    if data is None:
        if data_root is not None:
            cfg.data_root = data_root
        data = load_data(cfg)
    data = spread_test_images(data, images)
    eps = tuple(default_eps(cfg.dataset) if eps is None else eps)
    r, ok, bound = radii(net, data.test, device)
    rows = _rows(r, ok, bound, eps)
    if not bound.finite:
        log("no finite Lipschitz bound: " + "; ".join(bound.unbounded))
    swap_rows = None
    if swap:
        swap_rows = []
        own = net.stages[0]
        own_step = None if own.kind == "adaptive" else own.step_size
        for item in swap_plan(cfg.arch, own_step, cfg.solver):
            opts = {k: v for k, v in item.items() if k not in ("label", "method", "step_size")}
            method, step = item["method"], item.get("step_size")
            net.reset_solver()
            if method is not None and solvers.methods()[method] == "adaptive":
                step = None
            net.set_solver(method, step, **opts)
            rr, okk, b = radii(net, data.test, device)
            row = {
                "solver": item["label"],
                "lipschitz": b.total,
                "clean_accuracy": float(okk.double().mean()),
            }
            for e in eps:
                row[f"certified@{e:.4g}"] = (
                    float((rr > e).double().mean()) if b.finite else math.nan
                )
            kind = solvers.methods()[net.stages[0].method]
            row["bound"] = (
                "; ".join(b.unbounded)
                if not b.finite
                else ("exact flow" if kind == "adaptive" else "the computed map")
            )
            swap_rows.append(row)
            log(f"{row['solver']:<22} L {b.total:.4g}  clean {row['clean_accuracy']:.4f}")
    if out is not None:
        out = Path(out)
        title = f"certified accuracy: {checkpoint}"
        _write(rows, CERTIFY_FIELDS, out, "certify", title)
        plot_certified(r, eps, out / "certify.png", title)
        if swap_rows:
            fields = list(swap_rows[0])
            _write(
                swap_rows,
                fields,
                out,
                "certify_swap",
                f"certificates under the solver swap: {checkpoint}",
            )
    return {"rows": rows, "swap": swap_rows, "radius": r}
