"""The paper's Table 1 on an image folder: four networks, one budget, two configurations
(the paper's scheme and the stable one), the solver swap of each and the paper's figures."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

import torch

from ._checkpoint import load_checkpoint
from ._config import (
    IMAGES_ARCH_OPTIONS,
    NON_MATH_KEYS,
    PAPER_RECIPES,
    QUICK_ARCH_OPTIONS,
    QUICK_RECIPE,
    ConfigError,
    resolve_config,
    takes_normalization,
)
from ._data import load_data
from ._report import plot_confusion_grid, plot_probability_grid, plot_validation_curves
from ._swap import spread_test_images, swap_table, write_swap
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
# paper: the full CIFAR-10 recipe (Ruthotto & Haber 2020, Sec. 4): Table 1 widths
#   32-64-112-112, 40,000 training images, 100 epochs at lr 0.1 / 0.02 / 0.004,
#   α1 = α2 = 2e-4, flip-pad-crop, clipping, BatchNorm ε 1e-4. Meant for a GPU.
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
        # The paper's scheme (h = 1, TV normalization, no rate bound, no stability penalty),
        # whatever the quick recipe's (Fig. 2 of experiments.data_size reads this too);
        # table1 sets the whole configuration (CONFIGS) on top.
        "stability_penalty": 0.0,
        "normalization": "tv",
        "rate_bound": 0.0,
    },
}

# The configurations each budget trains, set explicitly so that neither inherits the
# quick recipe's defaults. paper: the paper's scheme (TV normalization, no rate bound, no
# penalty). stable: the quick recipe's default, stable by construction (see QUICK_RECIPE),
# with what it changes per arch (QUICK_ARCH_OPTIONS; config_options).
CONFIG_KEYS = ("normalization", "rate_bound", "stability_penalty")
CONFIGS: dict[str, dict[str, Any]] = {
    "paper": {"normalization": "tv", "rate_bound": 0.0, "stability_penalty": 0.0},
    "stable": {k: QUICK_RECIPE[k] for k in CONFIG_KEYS},
}
CONFIG_CHOICES = ("paper", "stable", "both")
# The solver swap of each network runs on part of the test images only (dopri5 at rtol
# 1e-4 on all 10,000 would take longer than the training).
SWAP_IMAGES = 2000
# A budget per swap row, so that a row that would not end (dopri5 at a tight tolerance on
# a stiff network: hours on 2 cores) is reported "did not finish within ..." instead.
SWAP_ROW_SECONDS = 300.0


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


def config_options(config: str, arch: str) -> dict[str, Any]:
    """The :func:`resolve_config` options of configuration ``config`` (``"paper"`` or
    ``"stable"``) for ``arch``: ``CONFIGS[config]``, and for ``"stable"`` what the quick
    recipe changes for that arch on photographs (``QUICK_ARCH_OPTIONS``: Verlet for the
    hyperbolic networks; ``IMAGES_ARCH_OPTIONS``: forward Euler at 8/10 of its limit with
    three shares of each batch to midpoint's one for the parabolic one, Verlet at its
    whole limit (Hamiltonian) and 7/10 (second-order) with the symplectic methods sharing
    each batch, the raw kernels of both at twice the bound), as ``experiments.train
    --dataset imagefolder`` trains it."""
    if config == "paper":
        return dict(CONFIGS["paper"])
    return {
        **CONFIGS["stable"],
        **QUICK_ARCH_OPTIONS.get(arch, {}),
        **IMAGES_ARCH_OPTIONS.get(arch, {}),
    }


def _runs(archs, config: str) -> list[tuple[str, str]]:
    """The ``(configuration, arch)`` pairs ``config`` trains, in training order: per arch the
    paper configuration, then the stable one. An arch without a choice of normalization
    (the ResNet control, which also has no step limit to bound) trains once, in the paper
    configuration, whatever ``config`` says."""
    if config not in CONFIG_CHOICES:
        raise ConfigError(f"--config must be one of {list(CONFIG_CHOICES)}, got {config!r}")
    names = ("paper", "stable") if config == "both" else (config,)
    return [(c, a) for a in archs for c in (names if takes_normalization(a) else ("paper",))]


def _refuse_old_layout(out: Path) -> None:
    old = [a for a in TABLE1_ARCHS if (out / a / "config.json").is_file()]
    if old:
        raise ConfigError(
            f"{out} holds runs in the layout before configurations ({out}/<arch>: "
            f"{', '.join(old)}); move each to {out}/paper/<arch> to continue it as the paper "
            "configuration (a run trained otherwise is refused), or use a new --out"
        )


def table1(
    data_root: str,
    budget: str = "cpu",
    out: str | Path = "runs/table1",
    *,
    config: str = "both",
    resume: bool = False,
    report_only: bool = False,
    archs=TABLE1_ARCHS,
    epochs: int | None = None,
    swap: bool = True,
    swap_images: int | None = SWAP_IMAGES,
    swap_row_seconds: float | None = SWAP_ROW_SECONDS,
    command: str | None = None,
    log=print,
    **overrides: Any,
) -> dict[str, Any]:
    """Train the networks of Table 1 with one budget on the image folder ``data_root`` in
    the paper's configuration, the stable one or both, and write ``results.json``,
    ``results.md`` and the paper's Figs. 1, 3 and 4 to ``out``.

    Each network trains through :func:`experiments.fit` in ``out/<configuration>/<arch>``;
    with ``resume`` a finished network is kept (not retrained), a half-done one continues
    from its ``last.pt`` and one never started starts. The ResNet control trains once, in
    ``out/paper/resnet``. Unless ``swap`` is off, the best weights of each network go
    through :func:`experiments.swap_table` (its default plan) on ``swap_images`` test images
    spread evenly over the test set: its results carry the worst row and the converged flow
    (dopri5, rtol 1e-4).

    Args:
        data_root: an image folder with the CIFAR-10 classes (see :func:`load_data`).
        budget: ``"cpu"`` (reduced, see ``BUDGETS``) or ``"paper"`` (the full recipe).
        out: output directory.
        config: ``"paper"`` (TV normalization, no rate bound, no stability penalty: the
            paper's scheme), ``"stable"`` (the quick recipe's normalization, rate bound and
            penalty for each arch, :func:`config_options`) or ``"both"``.
        resume: continue a half-done table.
        report_only: train nothing; write the results of what ``out`` holds (a network
            still training is reported with its best weights so far, marked unfinished).
        archs: the networks, in training order.
        epochs: stretch the budget's schedule to this many epochs.
        swap: run the solver swap of each network.
        swap_images: how many test images the swap uses (:func:`spread_test_images`);
            ``None`` or 0: all.
        swap_row_seconds: the budget of each swap row (``None`` or 0: none); a row over
            it is reported "did not finish within ..." and left out of the worst row.
        command: the command line to record in the results.
        log: where progress lines go.
        overrides: further :func:`resolve_config` options (``widths``, ``train_fraction``,
            ``threads``, ``device``, ``seed``); the configuration's options win over them.
            The paper budget trains on ``cuda`` when no device is given and CUDA is
            available.

    Returns:
        ``results.json``'s contents.

    Raises:
        ConfigError: an unknown budget, configuration or arch, a negative swap option,
            options that differ from the runs being resumed, or runs of the layout before
            configurations in ``out``.
        DatasetNotFoundError: ``data_root`` is not an image folder.
    """
    unknown = [a for a in archs if a not in TABLE1_ARCHS]
    if unknown or not archs:
        raise ConfigError(f"--archs must be taken from {list(TABLE1_ARCHS)}, got {list(archs)}")
    pairs = _runs(archs, config)
    if isinstance(swap_images, bool) or not (swap_images is None or swap_images >= 0):
        raise ConfigError(f"--swap-images must be a count >= 0 (0: all), got {swap_images!r}")
    if swap_row_seconds is not None and not swap_row_seconds >= 0:
        raise ConfigError(f"--swap-row-seconds must be >= 0 (0: none), got {swap_row_seconds}")
    out = Path(out)
    if resume or report_only:
        _refuse_old_layout(out)
    if budget == "paper" and overrides.get("device") is None and torch.cuda.is_available():
        overrides["device"] = "cuda"  # the paper budget is meant for a GPU
    opts = budget_options(budget, epochs, **overrides)
    cfgs = {
        f"{c}/{a}": resolve_config(
            arch=a,
            dataset="imagefolder",
            data_root=str(data_root),
            out=str(out / c / a),
            **{**opts, **config_options(c, a)},
        )
        for c, a in pairs
    }
    first = next(iter(cfgs.values()))
    if first.threads:
        torch.set_num_threads(first.threads)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = load_data(first)
    log(
        f"table 1 ({budget} budget, {config} configuration{'s' if config == 'both' else ''}): "
        f"{len(data.train)} training / {len(data.val)} validation / {len(data.test)} test "
        f"images of {data_root}; networks {', '.join(cfgs)} in {out}/"
    )
    if data.layout:
        log(f"splits: {data.layout}")
    runs: dict[str, dict[str, Any]] = {}
    with _LoadSampler() as load:
        for k, name in enumerate([] if report_only else cfgs, 1):
            cfg, run = cfgs[name], out / name
            if resume and _finished(cfg, run):
                log(f"[{k}/{len(cfgs)}] {name}: finished earlier, kept ({run}/report.json)")
                runs[name] = {"resumed": False, "kept": True}
                continue
            half_done = resume and (run / "last.pt").is_file()
            log(f"[{k}/{len(cfgs)}] {name}: {'resuming' if half_done else 'training'} in {run}")
            fit(cfg, data, resume=half_done, log=log)
            runs[name] = {"resumed": half_done, "kept": False}
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
        swap_images=swap_images if swap else None,
        swap=swap,
        swap_row_seconds=swap_row_seconds or None,
        log=log,
    )


def _machine(threads: int | None) -> str:
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (
        f"{os.cpu_count()} CPU cores ({cpu}, {platform.system()}), {gpu}; torch "
        f"{torch.__version__}, {threads or torch.get_num_threads()} thread(s)"
    )


def swap_columns(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What Table 1 reports of a :func:`experiments.swap_table` table ``rows``: the
    training scheme's accuracy (the first row), the worst row over the rows that finished
    (``worst_swap_accuracy``, ``worst_swap_solver``), the converged flow's accuracy
    (dopri5 at rtol 1e-4; ``None`` if it did not finish), the rows' names (``swap_rows``)
    and, for each row without an accuracy, why (``swap_failed``: name -> status)."""

    def finite(r: dict[str, Any]) -> bool:
        return math.isfinite(r["accuracy"])

    done = [r for r in rows if finite(r)]
    worst = min(done, key=lambda r: r["accuracy"]) if done else None
    flow = [r for r in done if r["method"] == "dopri5" and r["rtol"] == 1e-4]
    return {
        "swap_training_scheme": rows[0]["solver"] if rows else None,
        "swap_training_scheme_accuracy": rows[0]["accuracy"] if done and finite(rows[0]) else None,
        "worst_swap_accuracy": None if worst is None else worst["accuracy"],
        "worst_swap_solver": None if worst is None else worst["solver"],
        "converged_flow_accuracy": flow[0]["accuracy"] if flow else None,
        "swap_rows": [r["solver"] for r in rows],
        "swap_failed": {r["solver"]: r.get("status") or "failed" for r in rows if not finite(r)},
    }


def _swap(name: str, run: Path, data, device: str, row_seconds, log) -> dict[str, Any]:
    """:func:`swap_columns` of the best weights in ``run`` on ``data.test``; the swap's
    rows are kept in ``run/table1_swap.json`` (and ``solver_swap.csv``/``.md``/``.png``)
    and reused while the weights, the number of images and the row budget are the same."""
    best = run / "best.pt"
    key = {"weights_sha256": hashlib.sha256(best.read_bytes()).hexdigest()}
    key.update(images=len(data.test), row_seconds=row_seconds)
    cache = run / "table1_swap.json"
    saved = json.loads(cache.read_text()) if cache.is_file() else {}
    if all(saved.get(k) == v for k, v in key.items()):
        rows = saved["rows"]
    else:
        log(f"{name}: solver swap of the best weights on {len(data.test)} test images")
        rows = swap_table(
            best, data=data, device=device, plan=None, row_seconds=row_seconds, log=log
        )
        write_swap(rows, run, f"{name}: the best weights under other solvers")
        cache.write_text(json.dumps({**key, "rows": rows}, indent=2) + "\n")
    return {"swap_images": len(data.test), **swap_columns(rows)}


def write_table1(
    cfgs,
    data,
    out: Path,
    *,
    budget,
    runs,
    seconds,
    load,
    command,
    swap_images: int | None = None,
    swap: bool = False,
    swap_row_seconds: float | None = None,
    log=print,
) -> dict:
    """``results.json``, ``results.md`` and the figures of finished runs in ``out``;
    ``cfgs`` maps ``"<configuration>/<arch>"`` to the run's config."""
    names = list(cfgs)
    first = cfgs[names[0]]
    swap_data = spread_test_images(data, swap_images) if swap else None
    t_swap = time.perf_counter()
    rows, preds, curves, missing = {}, {}, {}, []
    for name in names:
        run = out / name
        if (run / "report.json").is_file():
            report = json.loads((run / "report.json").read_text())
            preds[name] = _predictions(cfgs[name], run, data)
            row = {k: report[k] for k in ROW_KEYS}
            row["epochs_done"] = first.epochs
        elif (run / "best.pt").is_file() and (run / "metrics.csv").is_file():
            row, preds[name] = _unfinished(cfgs[name], run, data)
        else:
            missing.append(name)
            continue
        config, arch = name.split("/")
        paper = PAPER_CIFAR10.get(arch)
        rows[name] = {
            "config": config,
            "arch": arch,
            "options": config_options(config, arch),
            **row,
            "finished": row["epochs_done"] == first.epochs,
            "paper_accuracy": None if paper is None else paper["accuracy"] / 100,
            "paper_loss": None if paper is None else paper["loss"],
            **runs.get(name, {}),
        }
        if swap_data is not None:
            device = cfgs[name].device
            rows[name].update(_swap(name, run, swap_data, device, swap_row_seconds, log))
        curves[name] = _metrics(run)
    if not rows:
        raise ConfigError(f"{out} holds no trained network of {names}; nothing to report")
    for r in rows.values():
        ref = rows.get(f"paper/{r['arch']}")
        r["time_ratio_to_paper"] = (
            None if ref is None else round(r["train_seconds"] / max(ref["train_seconds"], 1e-9), 3)
        )
    control = rows.get("paper/resnet", {}).get("test_accuracy")
    configs = {}
    for c in dict.fromkeys(n.split("/")[0] for n in names):
        pde_accs = [
            r["test_accuracy"] for r in rows.values() if r["config"] == c and r["arch"] != "resnet"
        ]
        configs[c] = {
            **CONFIGS[c],
            "networks": [n for n in rows if rows[n]["config"] == c],
            "min_pde_accuracy": min(pde_accs) if pde_accs else None,
            "max_gap_to_resnet": (
                None if control is None or not pde_accs else max(control - a for a in pde_accs)
            ),
        }
    pde = [n for n in rows if rows[n]["arch"] != "resnet"]
    results = {
        "budget": budget,
        "command": command,
        "configs": configs,
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
        "swap": (
            None
            if swap_data is None
            else {
                "images": len(swap_data.test),
                "plan": "experiments.swap_plan (swap_table's default)",
                "row_seconds": swap_row_seconds,
                "converged_flow": "dopri5 rtol=0.0001",
                "seconds": round(time.perf_counter() - t_swap, 1),
            }
        ),
        "machine": _machine(first.threads),
        "device": first.device,
        "seconds": round(seconds, 1),
        "load_average": load,
        "networks": rows,
        "not_started": missing,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    classes = list(data.classes)
    plot_validation_curves(curves, out / "fig4_validation.png")
    plot_confusion_grid(
        {n: (p["labels"], p["probs"].argmax(1)) for n, p in preds.items()},
        classes,
        out / "fig3_confusion.png",
    )
    ref = pde[0] if pde else next(iter(rows))
    picks = pick_examples(preds[ref]["probs"], preds[ref]["labels"])
    idx = [p["index"] for p in picks]
    test = data.test
    images = torch.stack([test[i][0].float().cpu() for i in idx])
    mean = getattr(test, "mean", torch.zeros(1, 1, 1)).float().cpu()
    std = getattr(test, "std", torch.ones(1, 1, 1)).float().cpu()
    plot_probability_grid(
        images * std + mean,
        {n: preds[n]["probs"][idx] for n in rows},
        preds[ref]["labels"][idx].tolist(),
        [p["kind"] for p in picks],
        classes,
        out / "fig1_probabilities.png",
    )
    (out / "results.md").write_text(_markdown(results, ref))
    return results


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _config_words(name: str, c: dict[str, Any]) -> str:
    bound = f"rate bound {c['rate_bound']:g} of the limit" if c["rate_bound"] else "no rate bound"
    penalty = (
        f"stability penalty {c['stability_penalty']:g}"
        if c["stability_penalty"]
        else ("no stability penalty")
    )
    if name == "stable":
        # Each network's own method, bound and methods sharing a batch (IMAGES_ARCH_OPTIONS).
        return (
            f"{name} = the quick recipe's default on photographs (normalization "
            f"{c['normalization']}, {penalty}; each network's method, rate bound and random "
            "steps and methods as its row says)"
        )
    return f"{name} = the paper's scheme (normalization {c['normalization']}, {bound}, {penalty})"


def _markdown(r: dict[str, Any], ref: str) -> str:
    p = r["protocol"]
    load = r["load_average"]
    swap = r["swap"]
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
        "- configurations: "
        + "; ".join(_config_words(name, c) for name, c in r["configs"].items())
        + ". The ResNet control has no normalization to choose and no step limit: it trains "
        "once, in the paper configuration.",
        f"- machine: {r['machine']}, device {r['device']}",
        f"- wall time of this call's training {r['seconds'] / 60:.1f} min; 1-minute load average "
        f"during it {load['min']}–{load['max']} (mean {load['mean']}, {load['samples']} samples)",
    ]
    if swap is not None:
        budget = "" if swap["row_seconds"] is None else f"at most {swap['row_seconds']:g} s a row, "
        lines.append(
            f"- solver swap: the best weights of each network, unchanged, under every "
            f"discretization of {swap['plan']} on {swap['images']:,} test images spread "
            f"evenly over the test set, {budget}{swap['seconds'] / 60:.1f} min in this call: "
            "*scheme* is the training scheme on those images, *worst swap* the lowest "
            "accuracy over the rows that finished (all rows listed below), *converged flow* "
            "dopri5 at rtol 1e-4"
        )
    lines += [
        "",
        "Test accuracy and test cross-entropy of the best-validation weights; the paper's "
        "Table 1 (CIFAR-10, 32-64-112-112, 100 epochs, original PNG-exact images) beside it. "
        "*× paper time*: training time over the paper configuration's, same network.",
        "",
    ]
    head = ["network", "configuration", "parameters", "test accuracy", "test cross-entropy"]
    head += ["paper accuracy", "paper cross-entropy"]
    if swap is not None:
        head += ["scheme (swap images)", "worst swap", "converged flow"]
    head += ["best epoch", "training time", "× paper time", "images/s"]
    lines += [
        "| " + " | ".join(head) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in head[2:]) + " |",
    ]
    for n in r["networks"].values():
        paper_loss = "–" if n["paper_loss"] is None else f"{n['paper_loss']:.3f}"
        arch = n["arch"]
        name = (
            arch if n["finished"] else f"{arch} (after {n['epochs_done']} of {p['epochs']} epochs)"
        )
        shared = r["configs"][n["config"]]
        own = [f"{k.replace('_', ' ')} {v}" for k, v in n["options"].items() if shared.get(k) != v]
        config = n["config"] + (f" ({', '.join(own)})" if own else "")
        cells = [name, config, f"{n['params']:,}", _pct(n["test_accuracy"])]
        cells += [f"{n['test_loss']:.3f}", _pct(n["paper_accuracy"]), paper_loss]
        if swap is not None:
            worst = _pct(n["worst_swap_accuracy"])
            if n["worst_swap_solver"] is not None:
                worst += f" ({n['worst_swap_solver']})"
            cells += [_pct(n["swap_training_scheme_accuracy"]), worst]
            cells += [_pct(n["converged_flow_accuracy"])]
        ratio = n["time_ratio_to_paper"]
        cells += [str(n["best_epoch"]), f"{n['train_seconds'] / 60:.1f} min"]
        cells += ["–" if ratio is None else f"{ratio:.2f}", f"{n['images_per_second']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""]
    if not all(n["finished"] for n in r["networks"].values()) or r["not_started"]:
        lines += [
            "**Unfinished table**: a network marked *after k of n epochs* was still training; "
            "its row is the test accuracy of its best weights so far. Not started: "
            f"{', '.join(r['not_started']) or 'none'}. `--resume` continues the table.",
            "",
        ]
    for name, c in r["configs"].items():
        said = []
        if c["min_pde_accuracy"] is not None:
            said.append(f"lowest PDE-network test accuracy {_pct(c['min_pde_accuracy'])}")
        if c["max_gap_to_resnet"] is not None:
            said.append(
                f"largest gap of a PDE network below the ResNet control "
                f"{100 * c['max_gap_to_resnet']:.1f} points"
            )
        if said:
            lines.append(f"- {name} configuration: {'; '.join(said)}.")
    if swap is not None:
        lines += ["", "Rows of each network's solver swap (without an accuracy in italics):", ""]
        for key, n in r["networks"].items():
            failed = n["swap_failed"]
            rows = [f"*{s}* ({failed[s]})" if s in failed else s for s in n["swap_rows"]]
            lines.append(f"- {key}: {', '.join(rows)}")
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
