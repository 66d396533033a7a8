"""Forward stability against depth: how much a stage amplifies an input perturbation.

``python -m experiments.stability --out runs/stability``

For each architecture (parabolic, Hamiltonian, second order and the ResNet control) and
each depth ``n`` (steps per stage), a two-stage network (widths ``w, 2w``; 8×8 then 4×4)
is trained on scikit-learn's 8×8 digits with the step ``h`` fixed, so each stage integrates
over ``T = n h``: deeper means a
longer time, which is what the stability theorems are about (growth bounded independently
of ``T``). Re-discretizing one trained network with more, smaller steps would instead
converge to a single ODE over a fixed ``T`` and say nothing about long times.

For test images ``x`` and perturbations ``δ`` the growth is the per-image ratio

    ‖Y(T) − Ỹ(T)‖ / ‖Y(0) − Ỹ(0)‖,  Y(0) = opening(x),  Ỹ(0) = opening(x + δ),

measured across the first PDE stage alone (the opening, connector and classifier are ordinary
layers), with ``δ`` either the FGSM perturbation ``ε sign(∇ₓ loss)`` of the trained
network or a Gaussian one of the same norm. The table has the median and the maximum
over the test set, clean and FGSM accuracy, and the share of steps that satisfy the
linear step limit of :func:`neuralpde.stability.report`. Written to ``--out``:
``stability.csv`` and ``stability.png``.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import neuralpde
from neuralpde import stability

# The default: the paper's three dynamics and the ResNet control (any registered arch runs).
ARCHS = ("parabolic", "hamiltonian", "second_order", "resnet")
FIELDS = (
    "arch",
    "steps",
    "h",
    "T",
    "clean_acc",
    "fgsm_acc",
    "growth_random_median",
    "growth_random_max",
    "growth_fgsm_median",
    "growth_fgsm_max",
    "steps_within_limit",
    "train_seconds",
)


def load_digits(n_train: int | None = None, seed: int = 0) -> tuple[Tensor, ...]:
    """scikit-learn's digits as ``(x_train, y_train, x_test, y_test)``.

    ``x``: ``(n, 1, 8, 8)`` in ``[0, 1]`` (torch's default dtype, as the networks); a
    fixed 75/25 split by ``seed``;
    ``n_train`` keeps only the first training images (for quick runs).
    """
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.tensor(d.images, dtype=torch.get_default_dtype()).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(0.75 * len(y))
    tr, te = perm[:cut], perm[cut:]
    if n_train is not None:
        tr = tr[:n_train]
    return x[tr], y[tr], x[te], y[te]


def train(
    net: torch.nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int = 8,
    lr: float = 5e-3,
    batch_size: int = 64,
    seed: int = 0,
) -> torch.nn.Module:
    """Adam with cross-entropy, a few epochs: enough to make the digits networks accurate.

    Args:
        net: maps ``(batch, 1, 8, 8)`` to logits ``(batch, 10)``.
        x, y: ``(n, 1, 8, 8)`` images and ``(n,)`` labels.

    Returns:
        ``net`` in eval mode.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(batch_size):
            opt.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    return net.eval()


def fgsm(net: torch.nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """The fast-gradient-sign perturbation ``ε sign(∇ₓ CE(net(x), y))``, shape of ``x``."""
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(net(x), y), x)
    return eps * grad.sign()


def growth(stage: torch.nn.Module, y0: Tensor, y0_tilde: Tensor) -> Tensor:
    """Per-sample ``‖stage(y0) − stage(ỹ0)‖ / ‖y0 − ỹ0‖``: ``(batch,)``."""
    with torch.no_grad():
        out = (stage(y0) - stage(y0_tilde)).flatten(1).norm(dim=1)
    return out / (y0 - y0_tilde).flatten(1).norm(dim=1)


def measure(
    net: neuralpde.PDECNN, x: Tensor, y: Tensor, eps: float, seed: int = 0
) -> dict[str, float]:
    """Accuracy, FGSM accuracy and the growth across the first stage (see module doc)."""
    with torch.no_grad():
        clean = (net(x).argmax(1) == y).float().mean().item()
    delta = fgsm(net, x, y, eps)
    with torch.no_grad():
        adv = (net(x + delta).argmax(1) == y).float().mean().item()
        gen = torch.Generator().manual_seed(seed)
        rand = torch.randn(x.shape, generator=gen)
        # Same per-image norm as the FGSM perturbation, so only the direction differs.
        rand = rand * (delta.flatten(1).norm(dim=1) / rand.flatten(1).norm(dim=1)).view(-1, 1, 1, 1)
        y0 = net.opening(x)
        g_fgsm = growth(net.stages[0], y0, net.opening(x + delta))
        g_rand = growth(net.stages[0], y0, net.opening(x + rand))
    return {
        "clean_acc": clean,
        "fgsm_acc": adv,
        "growth_random_median": g_rand.median().item(),
        "growth_random_max": g_rand.max().item(),
        "growth_fgsm_median": g_fgsm.median().item(),
        "growth_fgsm_max": g_fgsm.max().item(),
    }


def run(
    archs: Sequence[str] = ARCHS,
    depths: Sequence[int] = (1, 2, 4, 8, 16, 32),
    *,
    step_size: float = 0.1,
    width: int = 8,
    epochs: int = 8,
    eps: float = 0.1,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    log=print,
) -> list[dict[str, Any]]:
    """The whole experiment; returns one row per (arch, depth) with the keys of FIELDS."""
    x_tr, y_tr, x_te, y_te = load_digits(n_train, seed)
    if n_test is not None:
        x_te, y_te = x_te[:n_test], y_te[:n_test]
    rows = []
    for arch in archs:
        for n in depths:
            torch.manual_seed(seed)
            widths = (width, 2 * width, 4 * width)
            net = neuralpde.PDECNN(arch, 1, 10, widths, steps=n, step_size=step_size)
            t0 = time.perf_counter()
            train(net, x_tr, y_tr, epochs=epochs, seed=seed)
            seconds = time.perf_counter() - t0
            rep = stability.report(net, tuple(x_tr.shape[1:]))
            verdicts = [r["ok"] for r in rep.rows if r["ok"] is not None]
            within = sum(verdicts) / len(verdicts) if verdicts else math.nan
            row = {"arch": arch, "steps": n, "h": step_size, "T": n * step_size}
            row.update(measure(net, x_te, y_te, eps, seed))
            row.update({"steps_within_limit": within, "train_seconds": seconds})
            rows.append(row)
            log(
                f"{arch:>12} n={n:<3} acc={row['clean_acc']:.3f} fgsm={row['fgsm_acc']:.3f} "
                f"growth rand={row['growth_random_median']:.3g} "
                f"fgsm={row['growth_fgsm_median']:.3g} ({seconds:.1f}s)"
            )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as an aligned text table."""

    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    cells = [list(FIELDS)] + [[fmt(r[f]) for f in FIELDS] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(FIELDS))]
    lines = ["  ".join(s.rjust(w) for s, w in zip(c, widths)) for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Growth (median, with the maximum as a dashed line) against depth, per arch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, kind in zip(axes, ("random", "fgsm")):
        for arch in dict.fromkeys(r["arch"] for r in rows):
            rs = [r for r in rows if r["arch"] == arch]
            n = [r["steps"] for r in rs]
            (line,) = ax.plot(n, [r[f"growth_{kind}_median"] for r in rs], "o-", label=arch)
            ax.plot(n, [r[f"growth_{kind}_max"] for r in rs], "--", color=line.get_color())
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(f"steps per stage n (h = {rows[0]['h']}, T = n h)")
        ax.set_title(f"{'Gaussian' if kind == 'random' else 'FGSM'} perturbation")
    axes[0].set_ylabel("‖Y(T) − Ỹ(T)‖ / ‖Y(0) − Ỹ(0)‖  (median, -- max)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(
        prog="python -m experiments.stability", description=__doc__.split("\n")[0]
    )
    p.add_argument("--out", default="runs/stability", help="directory for stability.csv/.png")
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=sorted(neuralpde.archs()))
    p.add_argument("--depths", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--step-size", type=float, default=0.1, help="h, fixed for every depth")
    p.add_argument("--width", type=int, default=8, help="channels of the first stage (even)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--eps", type=float, default=0.1, help="FGSM size, pixels in [0, 1]")
    p.add_argument("--n-train", type=int, default=None, help="use only this many train images")
    p.add_argument("--n-test", type=int, default=None, help="use only this many test images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if any(d < 1 for d in a.depths):
        p.error(f"--depths must be positive, got {a.depths}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = run(
        a.archs,
        a.depths,
        step_size=a.step_size,
        width=a.width,
        epochs=a.epochs,
        eps=a.eps,
        n_train=a.n_train,
        n_test=a.n_test,
        seed=a.seed,
    )
    print(format_table(rows))
    write_csv(rows, out / "stability.csv")
    plot(rows, out / "stability.png")
    print(f"wrote {out / 'stability.csv'} and {out / 'stability.png'}")
    return rows


if __name__ == "__main__":
    main()
