"""The paper's Table 1 on an image folder: four networks, one budget, the paper's figures."""

from __future__ import annotations

import csv
import json
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

import torch

from ._checkpoint import load_checkpoint
from ._config import NON_MATH_KEYS, PAPER_RECIPES, ConfigError, resolve_config
from ._data import load_data
from ._report import plot_confusion_grid, plot_probability_grid, plot_validation_curves
from ._trainer import build_model, evaluate, fit

TABLE1_ARCHS = ("parabolic", "hamiltonian", "second_order", "resnet")

# Table 1 of Ruthotto & Haber (2020), CIFAR-10: test accuracy (%) and test cross-entropy of
# the best-validation weights. The ResNet control is not in the paper.
PAPER_CIFAR10 = {
    "parabolic": {"accuracy": 88.5, "loss": 0.333, "params": 502_570},
    "hamiltonian": {"accuracy": 89.3, "loss": 0.349, "params": 264_106},
    "second_order": {"accuracy": 89.2, "loss": 0.333, "params": 502_570},
}

# The budgets: resolve_config options shared by the four networks.
# paper: the full CIFAR-10 recipe (SPEC.md): Table 1 widths 32-64-112-112, 40,000 training
#   images, 100 epochs at lr 0.1 / 0.02 / 0.004, α1 = α2 = 2e-4, flip-pad-crop, clipping,
#   BatchNorm ε 1e-4. Meant for a GPU.
# cpu: the paper's recipe reduced to fit 2 CPU cores in an hour: widths 16-32-64-64 (0.27
#   instead of 0.98 GFLOP per training image), all 40,000 training images, 4 epochs with
#   the first rate (0.1) annealed to 0 along a cosine batch by batch (four epochs are too
#   few for the paper's 60/20/20 steps), no augmentation (four epochs do not overfit),
#   torch.compile. Everything else is the paper's: batch 125, momentum 0.9, alpha1 = alpha2
#   = 2e-4, clipping, BatchNorm eps 1e-4, h = 1. Measured on this project's 2-core CPU, idle,
#   2 threads: one epoch of the parabolic network's training steps takes 196 s eager and
#   167 s compiled (after a one-time compilation of about a minute).
CPU_EPOCHS = 4
BUDGETS: dict[str, dict[str, Any]] = {
    "paper": {"preset": "paper", "recipe": "cifar10"},
    "cpu": {
        "widths": [16, 32, 64, 64],
        "batch_size": 125,
        "momentum": 0.9,
        "smoothness": PAPER_RECIPES["cifar10"]["smoothness"],
        "weight_decay": PAPER_RECIPES["cifar10"]["weight_decay"],
        "bn_eps": PAPER_RECIPES["cifar10"]["bn_eps"],
        "clip_weights": True,
        "augment": False,
        "train_fraction": 1.0,
        "threads": 2,
        "lr_decay": "cosine",
        "compile": True,
        # The paper's scheme (h = 1, no stability penalty), whatever the quick recipe's.
        "stability_penalty": 0.0,
    },
}


def budget_options(budget: str, epochs: int | None = None, **overrides: Any) -> dict[str, Any]:
    """The :func:`resolve_config` options of ``budget`` (``"cpu"`` or ``"paper"``), with
    ``epochs`` stretching its schedule and ``overrides`` (``widths``, ``train_fraction``,
    ``threads``, ``device``, ``seed``...) on top.

    Raises:
        ConfigError: an unknown budget.
    """
    if budget not in BUDGETS:
        raise ConfigError(f"--budget must be one of {sorted(BUDGETS)}, got {budget!r}")
    opts = dict(BUDGETS[budget])
    if budget == "cpu":
        first_rate = PAPER_RECIPES["cifar10"]["lr_schedule"][0][1]
        opts["lr_schedule"] = [[epochs or CPU_EPOCHS, first_rate]]
    elif epochs is not None:
        opts["epochs"] = epochs
    opts.update({k: v for k, v in overrides.items() if v is not None})
    return opts


class _LoadSampler:
    """The 1-minute load average, sampled every ``every`` seconds in a daemon thread."""

    def __init__(self, every: float = 30.0):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._every = every
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append(round(os.getloadavg()[0], 2))
            if self._stop.wait(self._every):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        s = self.samples or [round(os.getloadavg()[0], 2)]
        return {"min": min(s), "mean": round(sum(s) / len(s), 2), "max": max(s), "samples": len(s)}


def _finished(cfg, run: Path) -> bool:
    """Whether ``run`` holds a finished run of ``cfg`` (raises if it holds another run)."""
    if not (run / "report.json").is_file() or not (run / "best.pt").is_file():
        return False
    saved = json.loads((run / "config.json").read_text())
    now = cfg.to_dict()
    diff = [
        f"{k}: run has {saved.get(k)!r}, now {now[k]!r}"
        for k in now
        if k not in NON_MATH_KEYS and saved.get(k, now[k]) != now[k]
    ]
    if diff:
        raise ConfigError(
            f"--resume: {run} holds a finished run with other options ({'; '.join(diff)}); "
            "use the options it was started with, or a new --out"
        )
    return True


def _predictions(cfg, run: Path, data) -> dict[str, torch.Tensor]:
    pred = run / "predictions.pt"
    if pred.is_file():
        return torch.load(pred, map_location="cpu", weights_only=True)
    # A run finished before predictions were saved: evaluate its best weights again.
    state = load_checkpoint(run / "best.pt")
    net = build_model(
        cfg,
        data.in_channels,
        data.num_classes,
        level=state.get("level", 0),
        image_size=data.image_size,
    )
    net.load_state_dict(state["model"])
    test = evaluate(net.to(cfg.device), data.test, cfg.device, outputs=True)
    return {"probs": test["probs"], "labels": test["labels"]}


ROW_KEYS = ("test_accuracy", "test_loss", "best_val_accuracy", "best_epoch", "params")
ROW_KEYS += ("train_seconds", "images_per_second")


def _unfinished(cfg, run: Path, data) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The row and test predictions of a network still training: its best weights so far."""
    state = load_checkpoint(run / "best.pt")
    net = build_model(cfg, data.in_channels, data.num_classes, image_size=data.image_size)
    net.load_state_dict(state["model"])
    test = evaluate(net.to(cfg.device), data.test, cfg.device, outputs=True)
    rows = _metrics(run)
    best = max(rows, key=lambda r: (r["val_accuracy"], -r["val_loss"]))
    seconds = sum(r["seconds"] for r in rows)
    row = {
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "best_val_accuracy": best["val_accuracy"],
        "best_epoch": int(best["epoch"]),
        "params": sum(p.numel() for p in net.parameters() if p.requires_grad),
        "train_seconds": round(seconds, 2),
        "images_per_second": round(len(data.train) * len(rows) / max(seconds, 1e-9), 1),
        "epochs_done": len(rows),
    }
    return row, {"probs": test["probs"], "labels": test["labels"]}


def _metrics(run: Path) -> list[dict[str, float]]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def pick_examples(probs: torch.Tensor, labels: torch.Tensor, per_kind: int = 2) -> list[dict]:
    """Test images for the class-probability figure (the paper's Fig. 1): the ``per_kind``
    most confident correct ones, the most uncertain ones (lowest top probability) and the
    most confidently misclassified ones, by the probabilities ``probs (n, classes)``.

    Returns ``[{"index": i, "kind": "confident" | "uncertain" | "misclassified"}, ...]``.
    """
    top, pred = probs.max(1)
    correct = pred == labels
    chosen: list[dict] = []
    taken: set[int] = set()

    def take(order: torch.Tensor, mask: torch.Tensor, kind: str) -> None:
        k = 0
        for i in order.tolist():
            if k == per_kind:
                break
            if mask[i] and i not in taken:
                chosen.append({"index": i, "kind": kind})
                taken.add(i)
                k += 1

    take(top.argsort(descending=True), correct, "confident")
    take(top.argsort(), torch.ones_like(correct), "uncertain")
    take(top.argsort(descending=True), ~correct, "misclassified")
    return chosen


def table1(
    data_root: str,
    budget: str = "cpu",
    out: str | Path = "runs/table1",
    *,
    resume: bool = False,
    report_only: bool = False,
    archs=TABLE1_ARCHS,
    epochs: int | None = None,
    command: str | None = None,
    log=print,
    **overrides: Any,
) -> dict[str, Any]:
    """Train the networks of Table 1 with one budget on the image folder ``data_root`` and
    write ``results.json``, ``results.md`` and the paper's Figs. 1, 3 and 4 to ``out``.

    Each network trains through :func:`experiments.fit` in ``out/<arch>``; with
    ``resume`` a finished network is kept (not retrained), a half-done one continues from
    its ``last.pt`` and one never started starts.

    Args:
        data_root: an image folder with the CIFAR-10 classes (see :func:`load_data`).
        budget: ``"cpu"`` (reduced, see ``BUDGETS``) or ``"paper"`` (the full recipe).
        out: output directory.
        resume: continue a half-done table.
        report_only: train nothing; write the results of what ``out`` holds (a network
            still training is reported with its best weights so far, marked unfinished).
        archs: the networks, in training order.
        epochs: stretch the budget's schedule to this many epochs.
        command: the command line to record in the results.
        log: where progress lines go.
        overrides: further :func:`resolve_config` options (``widths``, ``train_fraction``,
            ``threads``, ``device``, ``seed``). The paper budget trains on ``cuda`` when
            no device is given and CUDA is available.

    Returns:
        ``results.json``'s contents.

    Raises:
        ConfigError: an unknown budget or arch, or options that differ from the runs
            being resumed.
        DatasetNotFoundError: ``data_root`` is not an image folder.
    """
    unknown = [a for a in archs if a not in TABLE1_ARCHS]
    if unknown or not archs:
        raise ConfigError(f"--archs must be taken from {list(TABLE1_ARCHS)}, got {list(archs)}")
    out = Path(out)
    if budget == "paper" and overrides.get("device") is None and torch.cuda.is_available():
        overrides["device"] = "cuda"  # the paper budget is meant for a GPU
    opts = budget_options(budget, epochs, **overrides)
    cfgs = {
        a: resolve_config(
            arch=a, dataset="imagefolder", data_root=str(data_root), out=str(out / a), **opts
        )
        for a in archs
    }
    first = cfgs[archs[0]]
    if first.threads:
        torch.set_num_threads(first.threads)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = load_data(first)
    log(
        f"table 1 ({budget} budget): {len(data.train)} training / {len(data.val)} validation "
        f"/ {len(data.test)} test images of {data_root}; networks {', '.join(archs)} in {out}/"
    )
    if data.layout:
        log(f"splits: {data.layout}")
    runs: dict[str, dict[str, Any]] = {}
    with _LoadSampler() as load:
        for k, arch in enumerate([] if report_only else archs, 1):
            cfg, run = cfgs[arch], out / arch
            if resume and _finished(cfg, run):
                log(f"[{k}/{len(archs)}] {arch}: finished earlier, kept ({run}/report.json)")
                runs[arch] = {"resumed": False, "kept": True}
                continue
            half_done = resume and (run / "last.pt").is_file()
            log(f"[{k}/{len(archs)}] {arch}: {'resuming' if half_done else 'training'} in {run}")
            fit(cfg, data, resume=half_done, log=log)
            runs[arch] = {"resumed": half_done, "kept": False}
        load_summary = load.summary()
    return write_table1(
        cfgs,
        data,
        out,
        budget=budget,
        runs=runs,
        seconds=time.perf_counter() - t0,
        load=load_summary,
        command=command,
    )


def _machine(threads: int | None) -> str:
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (
        f"{os.cpu_count()} CPU cores ({cpu}, {platform.system()}), {gpu}; torch "
        f"{torch.__version__}, {threads or torch.get_num_threads()} thread(s)"
    )


def write_table1(cfgs, data, out: Path, *, budget, runs, seconds, load, command) -> dict:
    """``results.json``, ``results.md`` and the figures of finished runs in ``out``."""
    archs = list(cfgs)
    first = cfgs[archs[0]]
    rows, preds, curves, missing = {}, {}, {}, []
    for arch in archs:
        run = out / arch
        if (run / "report.json").is_file():
            report = json.loads((run / "report.json").read_text())
            preds[arch] = _predictions(cfgs[arch], run, data)
            row = {k: report[k] for k in ROW_KEYS}
            row["epochs_done"] = first.epochs
        elif (run / "best.pt").is_file() and (run / "metrics.csv").is_file():
            row, preds[arch] = _unfinished(cfgs[arch], run, data)
        else:
            missing.append(arch)
            continue
        paper = PAPER_CIFAR10.get(arch)
        rows[arch] = {
            **row,
            "finished": row["epochs_done"] == first.epochs,
            "paper_accuracy": None if paper is None else paper["accuracy"] / 100,
            "paper_loss": None if paper is None else paper["loss"],
            **runs.get(arch, {}),
        }
        curves[arch] = _metrics(run)
    if not rows:
        raise ConfigError(f"{out} holds no trained network of {archs}; nothing to report")
    archs = list(rows)
    control = rows.get("resnet", {}).get("test_accuracy")
    pde = [a for a in archs if a != "resnet"]
    results = {
        "budget": budget,
        "command": command,
        "protocol": {
            "dataset": first.data_root,
            "recipe": first.recipe or "reduced paper recipe (see budget)",
            "widths": first.widths,
            "train_images": len(data.train),
            "val_images": len(data.val),
            "test_images": len(data.test),
            "splits": data.layout,
            "image_size": data.image_size,
            "epochs": first.epochs,
            "lr_schedule": first.lr_schedule,
            "lr_decay": first.lr_decay,
            "compile": first.compile,
            "batch_size": first.batch_size,
            "smoothness": first.smoothness,
            "weight_decay": first.weight_decay,
            "augment": first.augment,
            "clip_weights": first.clip_weights,
            "bn_eps": first.bn_eps,
            "seed": first.seed,
        },
        "machine": _machine(first.threads),
        "device": first.device,
        "seconds": round(seconds, 1),
        "load_average": load,
        "networks": rows,
        "not_started": missing,
        "min_pde_accuracy": min(rows[a]["test_accuracy"] for a in pde) if pde else None,
        "max_gap_to_resnet": (
            None
            if control is None or not pde
            else max(control - rows[a]["test_accuracy"] for a in pde)
        ),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    classes = list(data.classes)
    plot_validation_curves(curves, out / "fig4_validation.png")
    plot_confusion_grid(
        {a: (p["labels"], p["probs"].argmax(1)) for a, p in preds.items()},
        classes,
        out / "fig3_confusion.png",
    )
    ref = pde[0] if pde else archs[0]
    picks = pick_examples(preds[ref]["probs"], preds[ref]["labels"])
    idx = [p["index"] for p in picks]
    test = data.test
    images = torch.stack([test[i][0].float().cpu() for i in idx])
    mean = getattr(test, "mean", torch.zeros(1, 1, 1)).float().cpu()
    std = getattr(test, "std", torch.ones(1, 1, 1)).float().cpu()
    plot_probability_grid(
        images * std + mean,
        {a: preds[a]["probs"][idx] for a in archs},
        preds[ref]["labels"][idx].tolist(),
        [p["kind"] for p in picks],
        classes,
        out / "fig1_probabilities.png",
    )
    (out / "results.md").write_text(_markdown(results, ref))
    return results


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _markdown(r: dict[str, Any], ref: str) -> str:
    p = r["protocol"]
    load = r["load_average"]
    size, splits = p.get("image_size"), p.get("splits") or "the data set's own"
    lines = [
        f"# Table 1 on CIFAR-10 images ({r['budget']} budget)",
        "",
        f"- command: `{r['command']}`" if r["command"] else "- command: (called from Python)",
        f"- data: {p['dataset']}: {p['train_images']:,} training / {p['val_images']:,} "
        f"validation / {p['test_images']:,} test images of {size}×{size} pixels (splits: "
        f"{splits})",
        f"- recipe: {p['recipe']}; widths {p['widths']}, {p['epochs']} epochs, lr schedule "
        f"{p['lr_schedule']} ([epochs, lr] phases"
        f"{', cosine-annealed to 0 per batch' if p.get('lr_decay') == 'cosine' else ''}), "
        f"{'torch.compile, ' if p.get('compile') else ''}batch {p['batch_size']}, α1 "
        f"{p['smoothness']:g}, α2 {p['weight_decay']:g}, augmentation "
        f"{'on' if p['augment'] else 'off'}, weight clipping "
        f"{'on' if p['clip_weights'] else 'off'}, BatchNorm ε {p['bn_eps']:g}, seed {p['seed']}",
        f"- machine: {r['machine']}, device {r['device']}",
        f"- wall time of this call's training {r['seconds'] / 60:.1f} min; 1-minute load average "
        f"during it {load['min']}–{load['max']} (mean {load['mean']}, {load['samples']} samples)",
        "",
        "Test accuracy and test cross-entropy of the best-validation weights; the paper's "
        "Table 1 (CIFAR-10, 32-64-112-112, 100 epochs, original PNG-exact images) beside it.",
        "",
        "| network | parameters | test accuracy | test cross-entropy | paper accuracy | "
        "paper cross-entropy | best epoch | training time | images/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for arch, n in r["networks"].items():
        paper_loss = "–" if n["paper_loss"] is None else f"{n['paper_loss']:.3f}"
        name = (
            arch if n["finished"] else f"{arch} (after {n['epochs_done']} of {p['epochs']} epochs)"
        )
        lines.append(
            f"| {name} | {n['params']:,} | {_pct(n['test_accuracy'])} | {n['test_loss']:.3f} | "
            f"{_pct(n['paper_accuracy'])} | {paper_loss} | {n['best_epoch']} | "
            f"{n['train_seconds'] / 60:.1f} min | {n['images_per_second']:.0f} |"
        )
    lines += [""]
    if not all(n["finished"] for n in r["networks"].values()) or r["not_started"]:
        lines += [
            "**Unfinished table**: a network marked *after k of n epochs* was still training; "
            "its row is the test accuracy of its best weights so far. Not started: "
            f"{', '.join(r['not_started']) or 'none'}. `--resume` continues the table.",
            "",
        ]
    if r["min_pde_accuracy"] is not None:
        lines.append(f"Lowest PDE-network test accuracy: {_pct(r['min_pde_accuracy'])}.")
    if r["max_gap_to_resnet"] is not None:
        lines.append(
            f"Largest gap of a PDE network below the ResNet control: "
            f"{100 * r['max_gap_to_resnet']:.1f} points."
        )
    lines += [
        "",
        "![validation accuracy per epoch (Fig. 4)](fig4_validation.png)",
        "",
        "![confusion matrices (Fig. 3)](fig3_confusion.png)",
        "",
        f"![class probabilities of test images chosen by the {ref} network: confident, "
        "uncertain and misclassified (Fig. 1)](fig1_probabilities.png)",
        "",
    ]
    return "\n".join(lines)
