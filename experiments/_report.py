"""Reports and figures of a finished run: report.json, report.md and PNGs."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch

import neuralpde
from experiments._config import raw_scale_in_words


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, k: int) -> torch.Tensor:
    """``(k, k)`` counts: row = true class, column = predicted class."""
    cm = torch.zeros(k, k, dtype=torch.long)
    cm.index_put_((labels.long(), preds.long()), torch.ones_like(labels, dtype=torch.long), True)
    return cm


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """Training and validation loss and accuracy per epoch."""
    plt = _plt()
    ep = [r["epoch"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(ep, [r["train_loss"] for r in rows], "o-", label="training")
    a.plot(ep, [r["val_loss"] for r in rows], "s-", label="validation")
    a.set(xlabel="epoch", ylabel="cross-entropy", yscale="log")
    b.plot(ep, [r["train_accuracy"] for r in rows], "o-", label="training")
    b.plot(ep, [r["val_accuracy"] for r in rows], "s-", label="validation")
    b.set(xlabel="epoch", ylabel="accuracy")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(cm: torch.Tensor, classes: list[str], path: Path) -> None:
    plt = _plt()
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * k, 1.0 + 0.45 * k))
    ax.imshow(cm.numpy(), cmap="Blues")
    ticks = range(k)
    ax.set_xticks(ticks, classes, rotation=90 if k > 10 else 0)
    ax.set_yticks(ticks, classes)
    ax.set(xlabel="predicted", ylabel="true", title="test confusion matrix")
    if k <= 20:
        top = cm.max().item()
        for i in range(k):
            for j in range(k):
                v = cm[i, j].item()
                if v:
                    color = "white" if v > top / 2 else "black"
                    ax.text(j, i, v, ha="center", va="center", fontsize=7, color=color)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_probabilities(images, probs, labels, classes, mean, std, path: Path, n: int = 6):
    """Sample test images with bars of their class probabilities (the paper's Fig. 1)."""
    plt = _plt()
    n = min(n, len(images))
    fig, axes = plt.subplots(2, n, figsize=(2.0 * n, 4.2), squeeze=False)
    k = probs.shape[1]
    for c in range(n):
        x = images[c] * std + mean
        if x.min() < 0 or x.max() > 1:  # not an image in [0, 1]: stretch for display
            x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-12)
        ax = axes[0, c]
        if x.shape[0] == 1:
            ax.imshow(x[0].numpy(), cmap="gray_r")
        else:
            ax.imshow(x.permute(1, 2, 0).numpy())
        ax.set_title(f"true: {classes[labels[c]]}", fontsize=8)
        ax.axis("off")
        ax = axes[1, c]
        colors = ["tab:green" if j == labels[c] else "tab:gray" for j in range(k)]
        ax.barh(range(k), probs[c].numpy(), color=colors)
        ax.set_yticks(range(k), classes if k <= 20 else [""] * k, fontsize=6)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.tick_params(axis="x", labelsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_validation_curves(curves: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Validation accuracy per epoch of several networks in one plot (the paper's Fig. 4).

    ``curves`` maps a network's name to its ``metrics.csv`` rows.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for name, rows in curves.items():
        ep = [r["epoch"] for r in rows]
        ax.plot(ep, [100 * r["val_accuracy"] for r in rows], "o-", ms=3, label=name)
    ax.set(xlabel="epoch", ylabel="validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion_grid(results: dict[str, tuple], classes: list[str], path: Path) -> None:
    """Test confusion matrices of several networks side by side (the paper's Fig. 3).

    ``results`` maps a network's name to ``(labels (n,), predictions (n,))``; entries are
    percentages of each true class (rows sum to 100).
    """
    plt = _plt()
    k, m = len(classes), len(results)
    cols = min(m, 2)
    rows_ = (m + cols - 1) // cols
    fig, axes = plt.subplots(rows_, cols, figsize=(5.0 * cols, 4.6 * rows_), squeeze=False)
    for ax, (name, (labels, preds)) in zip(axes.flat, results.items()):
        cm = confusion_matrix(labels, preds, k).double()
        pct = 100 * cm / cm.sum(1, keepdim=True).clamp_min(1)
        ax.imshow(pct.numpy(), cmap="Blues", vmin=0, vmax=100)
        ax.set_xticks(range(k), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(k), classes, fontsize=7)
        acc = (labels == preds).double().mean().item()
        ax.set(xlabel="predicted", ylabel="true", title=f"{name} ({acc:.1%})")
        if k <= 20:
            for i in range(k):
                for j in range(k):
                    v = pct[i, j].item()
                    if v >= 0.5:
                        color = "white" if v > 50 else "black"
                        ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=6, color=color)
    for ax in list(axes.flat)[m:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_probability_grid(images, probs, labels, kinds, classes, path: Path) -> None:
    """Test images with every network's class probabilities (the paper's Fig. 1).

    Args:
        images: ``(n, channels, height, width)`` in [0, 1] (clipped for display).
        probs: network name -> ``(n, classes)`` probabilities.
        labels: the ``n`` true classes.
        kinds: the ``n`` reasons each image was chosen (shown in its title).
        classes: class names.
    """
    plt = _plt()
    n, k = len(labels), len(classes)
    names = list(probs)
    fig, axes = plt.subplots(
        1 + len(names), n, figsize=(1.9 * n, 1.9 + 1.6 * len(names)), squeeze=False
    )
    for c in range(n):
        x = images[c].clamp(0, 1)
        ax = axes[0, c]
        ax.imshow(x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy(), cmap="gray")
        ax.set_title(f"{kinds[c]}\ntrue: {classes[labels[c]]}", fontsize=8)
        ax.axis("off")
        for r, name in enumerate(names, 1):
            ax = axes[r, c]
            p = probs[name][c]
            pred = int(p.argmax())
            colors = [
                "tab:green" if j == labels[c] else "tab:red" if j == pred else "tab:gray"
                for j in range(k)
            ]
            ax.barh(range(k), p.numpy(), color=colors)
            ax.set_yticks(range(k), classes if c == 0 and k <= 20 else [""] * k, fontsize=6)
            ax.invert_yaxis()
            ax.set_xlim(0, 1)
            ax.tick_params(axis="x", labelsize=6)
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def recipe_name(cfg) -> str:
    """Which recipe a config trains with, in words (``report.json``'s ``recipe``)."""
    if cfg.preset == "paper":
        return f"paper {cfg.recipe or cfg.dataset}"
    return "quick, with the options of config.json"


def _stability(net, data) -> dict[str, Any]:
    """The stability report's verdict on the trained weights (rigorous bounds, at the
    training image size): ``stability_proven`` and the words for it."""
    rep = neuralpde.stability.report(
        net, (data.in_channels, data.image_size, data.image_size), iters=50
    )
    limited = [r for r in rep.rows if r["max_step"] is not None]
    if rep.proven:
        words = "every stage proven stable (rigorous bound of the whole linearization)"
    elif not limited:
        words = "no step limit declared (nothing to prove)"
    elif not rep.ok:
        bad = sorted({r["stage"] for r in limited if r["ok"] is False})
        words = f"stages {bad} outside their step limit (neuralpde.stability.report)"
    else:
        words = "within the step limit of K, not proven: " + limited[0]["leaves_out"]
    return {"stability_proven": rep.proven, "stability": words}


def write_report(cfg, net, data, rows, test, best, out: Path, *, seconds, cpu_seconds, world):
    """Write report.json, report.md and the figures; return the report dict."""
    preds = test["probs"].argmax(1)
    cm = confusion_matrix(test["labels"], preds, data.num_classes)
    train_seconds = sum(r["seconds"] for r in rows)
    n_train = len(data.train)
    report = {
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "params": neuralpde.count_parameters(net),
        "arch": cfg.arch,
        "dataset": cfg.dataset,
        "preset": cfg.preset,
        "recipe": recipe_name(cfg),
        "bn_eps": cfg.bn_eps,
        "widths": list(net.widths),
        "epochs": cfg.epochs,
        "best_epoch": best["epoch"],
        "best_val_accuracy": best["val_accuracy"],
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "train_seconds": round(train_seconds, 2),
        "seconds_per_epoch": round(train_seconds / max(len(rows), 1), 3),
        "images_per_second": round(n_train * len(rows) / max(train_seconds, 1e-9), 1),
        "train_images": n_train,
        "val_images": len(data.val),
        "test_images": len(data.test),
        "image_size": data.image_size,
        "layout": getattr(data, "layout", ""),
        "skipped_batches": sum(r["skipped_batches"] for r in rows),
        "processes": world,
        "device": str(cfg.device),
        "threads": torch.get_num_threads(),
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "seed": cfg.seed,
        # How the steps were held stable (config.json has them too; a reader comparing
        # reports should not need it).
        "interpolation": cfg.interpolation,
        "normalization": cfg.normalization,
        "rate_bound": cfg.rate_bound,
        "raw_scale": cfg.raw_scale,
        "stability_penalty": cfg.stability_penalty,
        **_stability(net, data),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    # The best weights' test probabilities, for figures that compare runs (Table 1).
    torch.save({"probs": test["probs"].float(), "labels": test["labels"]}, out / "predictions.pt")

    plot_curves(rows, out / "curves.png")
    plot_confusion(cm, data.classes, out / "confusion.png")
    idx = list(range(min(6, len(data.test))))
    imgs = torch.stack([data.test[i][0] for i in idx])
    test_split = data.test
    mean = getattr(test_split, "mean", torch.zeros(1, 1, 1))
    std = getattr(test_split, "std", torch.ones(1, 1, 1))
    plot_probabilities(
        imgs,
        test["probs"][idx],
        test["labels"][idx].tolist(),
        data.classes,
        mean,
        std,
        out / "probabilities.png",
    )
    layout = f" (splits: {report['layout']})" if report["layout"] else ""
    lines = [
        f"# {cfg.arch} PDECNN on {cfg.dataset}",
        "",
        f"- test accuracy **{report['test_accuracy']:.2%}**, test cross-entropy "
        f"{report['test_loss']:.4f} (best validation epoch {best['epoch']} of {cfg.epochs})",
        f"- recipe: {report['recipe']}; BatchNorm ε {cfg.bn_eps:g}, α1 {cfg.smoothness:g}, "
        f"α2 {cfg.weight_decay:g}, augmentation {'on' if cfg.augment else 'off'}, weight "
        f"clipping {'on' if cfg.clip_weights else 'off'}",
        f"- {report['params']:,} parameters, widths {report['widths']}, "
        f"{theta_in_words(net)}, trained with {cfg.solver or _own_scheme(cfg.arch)}"
        f"{_training_mix(cfg)}; {_bound(cfg)}",
        f"- {report['train_images']} training / {report['val_images']} validation / "
        f"{report['test_images']} test images of {data.image_size}×{data.image_size} pixels"
        f"{layout}; batch {cfg.batch_size}, lr schedule "
        f"{cfg.lr_schedule}{' cosine-annealed to 0 per batch' if cfg.lr_decay == 'cosine' else ''}"
        f"{', torch.compile' if cfg.compile else ''}",
        f"- stability: {report['stability']}",
        f"- {report['seconds']} s wall ({report['cpu_seconds']} s CPU), "
        f"{report['seconds_per_epoch']} s/epoch, {report['images_per_second']} images/s on "
        f"{report['device']} ({report['processes']} process(es), {report['threads']} thread(s))",
        "",
        "| epoch | lr | train loss | train acc | val loss | val acc |",
        "| --- | --- | --- | --- | --- | --- |",
        *(
            f"| {r['epoch']} | {r['lr']:.4g} | {r['train_loss']:.4f} | "
            f"{r['train_accuracy']:.4f} | {r['val_loss']:.4f} | {r['val_accuracy']:.4f} |"
            for r in rows
        ),
        "",
        "![curves](curves.png)",
        "",
        "![confusion matrix](confusion.png)",
        "",
        "![class probabilities](probabilities.png)",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    return report


def theta_in_words(net) -> str:
    """θ(t) of a network's first stage and its steps, in words (after any prolongation)."""
    stage = net.stages[0]
    theta = stage.rhs.thetas()[0]
    if theta.interpolation == "linear":
        words = f"{theta.n} knots per stage, θ(t) linear between them"
    else:
        words = f"{theta.n} parameter sets per stage, θ(t) constant on each cell"
    h = stage.step_size
    return words + ("" if h is None else f", training step h = {h:g}")


def _training_mix(cfg) -> str:
    """How random steps and methods shared each batch (experiments._trainer.training_mix)."""
    parts = [
        f"the {name} {', '.join(f'{v:g}' if isinstance(v, float) else str(v) for v in values)}"
        for name, values in (("methods", cfg.random_methods), ("steps", cfg.random_steps))
        if values
    ]
    if not parts:
        return ""
    pairs = " (every pair)" if len(parts) == 2 else ""
    return (
        f"; each training batch split evenly among {' and '.join(parts)}{pairs}, "
        "validation and test with the training method alone"
    )


def _bound(cfg) -> str:
    """How the run held its steps stable: normalization, rate bound, raw scale, penalty
    (``config.json`` has them too, but the report is what a reader opens)."""
    words = f"normalization {cfg.normalization}, "
    if cfg.rate_bound:
        words += f"rate bound {cfg.rate_bound:g} of the method's stability limit"
        if cfg.raw_scale != 1:
            words += f", {raw_scale_in_words(cfg)}"
    else:
        words += "no rate bound"
    if cfg.stability_penalty:
        words += f", stability penalty {cfg.stability_penalty:g}"
    return words


def _own_scheme(arch: str) -> str:
    """The method a stage trains with when none is given: its dynamics' own (the paper's)."""
    cls = neuralpde.archs().get(arch)
    return f"{cls.default_method} (the dynamics' own scheme)" if cls else "the dynamics' own scheme"
