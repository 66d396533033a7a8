"""The training loop: the paper's recipe, atomic checkpoints, exact resumption, NaN guard."""

from __future__ import annotations

import csv
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

import neuralpde
import solvers

from . import _distributed as D
from ._checkpoint import CheckpointError, check_state_dict, load_checkpoint, save_checkpoint
from ._config import NON_MATH_KEYS, ConfigError, TrainConfig, lr_at
from ._data import DataSplits, EpochBatches, batch_loader, load_data

METRIC_FIELDS = (
    "epoch",
    "lr",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "skipped_batches",
    "seconds",
)


class NonFiniteLossError(FloatingPointError):
    """Training met a NaN/Inf loss or gradient; ``epoch`` and ``batch`` are 1-based."""

    def __init__(self, message: str, *, epoch: int, batch: int):
        super().__init__(message)
        self.epoch, self.batch = epoch, batch


def build_model(cfg: TrainConfig, in_channels: int, num_classes: int) -> neuralpde.PDECNN:
    """The network a config describes (the paper's Table 1 network under ``preset="paper"``)."""
    kw: dict[str, Any] = {"steps": cfg.steps, "bn_eps": cfg.bn_eps}
    if cfg.memory is not None:
        kw["memory"] = cfg.memory
    if cfg.preset == "paper":
        net = neuralpde.PDECNN.from_paper(cfg.recipe or cfg.dataset, cfg.arch, **kw)
    else:
        net = neuralpde.PDECNN(cfg.arch, in_channels, num_classes, tuple(cfg.widths), **kw)
    if cfg.solver is not None or cfg.step_size is not None:
        # set_solver resets every option it is not given, the memory mode included.
        extra = {} if cfg.memory is None else {"memory": cfg.memory}
        net.set_solver(cfg.solver, step_size=cfg.step_size, **extra)
    return net


def time_smoothness(model: nn.Module, tau: float) -> Tensor:
    """``Σ_j h · sqrt(((θ_{j+1} − θ_j)/h)² + τ)`` summed over every entry of every θ(t).

    A smoothed total variation in time (SPEC.md, α1 term): it favours weights that change
    little from step to step, i.e. a network that is a discretization of a smooth θ(t).
    """
    total = None
    for m in model.modules():
        if not isinstance(m, neuralpde.TimeWeights) or m.n < 2:
            continue
        h = m.T / m.n if m.interpolation == "constant" else m.T / (m.n - 1)
        for p in m.parameters(recurse=False):
            d = (p[1:] - p[:-1]) / h
            term = h * torch.sqrt(d.pow(2) + tau).sum()
            total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return total


def _loader(ds, sampler, cfg: TrainConfig, device) -> DataLoader:
    return batch_loader(ds, sampler, workers=cfg.workers, device=device, seed=cfg.seed)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    ds,
    device,
    batch_size: int = 500,
    *,
    outputs: bool = False,
    nfe: bool = False,
) -> dict[str, Any]:
    """Mean cross-entropy and accuracy of ``model`` (in eval mode) on ``ds``.

    With ``outputs=True`` also ``probs (n, classes)`` and ``labels (n,)`` on the CPU; with
    ``nfe=True`` also ``nfe``, the evaluations per forward pass summed over the stages
    (``model.solver_stats()``) and averaged over batches.
    """
    was = model.training
    model.eval()
    sampler = EpochBatches(len(ds), batch_size, seed=0, shuffle=False)
    loss_sum, correct, n = 0.0, 0, 0
    probs, labels, nfes = [], [], []
    dtype = next(model.parameters()).dtype
    for x, y in batch_loader(ds, sampler):
        x, y = x.to(device, dtype), y.to(device)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
        if outputs:
            probs.append(logits.softmax(1).cpu())
            labels.append(y.cpu())
        if nfe:
            nfes.append(sum(s["nfe"] for s in model.solver_stats()))
    model.train(was)
    out: dict[str, Any] = {"loss": loss_sum / max(n, 1), "accuracy": correct / max(n, 1)}
    if nfe:
        out["nfe"] = sum(nfes) / len(nfes)
    if outputs:
        out["probs"], out["labels"] = torch.cat(probs), torch.cat(labels)
    return out


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": list(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in METRIC_FIELDS})
    os.replace(tmp, path)


def _resume_state(cfg: TrainConfig, out: Path) -> dict[str, Any]:
    last = out / "last.pt"
    if not last.is_file():
        raise ConfigError(
            f"--resume: {str(last)!r} does not exist; start the run without --resume first "
            "(or point --out at the run to continue)"
        )
    state = load_checkpoint(last)
    if state.get("kind") != "last":
        raise CheckpointError(f"{str(last)!r} is not a training state (kind {state.get('kind')!r})")
    saved = TrainConfig.from_dict(state["config"])
    diff = [
        f"{k}: run has {getattr(saved, k)!r}, now {getattr(cfg, k)!r}"
        for k in saved.to_dict()
        if k not in NON_MATH_KEYS and getattr(saved, k) != getattr(cfg, k)
    ]
    if diff:
        raise ConfigError(
            "--resume: the options differ from the run being resumed, so it would not end "
            f"where an uninterrupted run ends: {'; '.join(diff)}. Drop those options, or use "
            "a new --out"
        )
    return state


class _Progress:
    """A tqdm bar on a terminal; plain lines (one per epoch) otherwise."""

    def __init__(self, enabled: bool, log):
        self.enabled, self.log = enabled, log
        self.tty = enabled and sys.stdout.isatty()
        self.bar = None

    def start(self, epoch: int, epochs: int, total: int, initial: int) -> None:
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                initial=initial,
                desc=f"epoch {epoch}/{epochs}",
                file=sys.stdout,
                leave=True,
                dynamic_ncols=True,
            )

    def update(self, loss: float, acc: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.3f}", refresh=False)
            self.bar.update(1)

    def end(self, row: dict[str, Any], epochs: int) -> None:
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{row['train_loss']:.4f}",
                acc=f"{row['train_accuracy']:.3f}",
                val_acc=f"{row['val_accuracy']:.3f}",
            )
            self.bar.close()
            self.bar = None
        elif self.enabled:
            self.log(
                f"epoch {row['epoch']}/{epochs}  lr {row['lr']:.4g}  loss {row['train_loss']:.4f}"
                f"  acc {row['train_accuracy']:.4f}  val_loss {row['val_loss']:.4f}  val_acc "
                f"{row['val_accuracy']:.4f}  ({row['seconds']:.1f}s)"
            )


def train(cfg: TrainConfig, data: DataSplits | None = None, *, resume: bool = False, log=print):
    """Train, keep the best-validation weights, evaluate them on the test set, write reports.

    Writes to ``cfg.out``: ``config.json``, ``metrics.csv``, ``last.pt`` (the full training
    state, atomically, every epoch and every ``cfg.checkpoint_every`` batches), ``best.pt``
    (best validation accuracy), ``report.json``, ``report.md`` and figures.

    Args:
        cfg: a checked :class:`TrainConfig` (see :func:`resolve_config`).
        data: the splits (default: :func:`load_data` of ``cfg``).
        resume: continue from ``cfg.out/last.pt``; the run ends exactly where an
            uninterrupted one would (same seed, same metrics).
        log: where summary lines go.

    Returns:
        The report (``report.json``'s contents).

    Raises:
        NonFiniteLossError: a NaN/Inf loss or gradient under ``cfg.nan == "stop"``; the
            checkpoints on disk are those of the last good state.
    """
    wall0, cpu0 = time.perf_counter(), time.process_time()
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {cfg.device}: CUDA is not available on this machine")
    threads = cfg.threads or (1 if cfg.dataset == "digits" else None)
    if threads:
        # 8x8 digits make tiny tensors; splitting them over threads costs more than it gains.
        torch.set_num_threads(threads)
    rank, world = D.setup(cfg.device)
    main = rank == 0
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    out = Path(cfg.out)
    state = _resume_state(cfg, out) if resume else None

    seed_everything(cfg.seed)
    data = data if data is not None else load_data(cfg)
    data.to(device)  # resident images: normalization and augmentation run on the device
    net = build_model(cfg, data.in_channels, data.num_classes)
    if world > 1:
        D.globalize_batchnorm(net)
    net.to(device)
    model: nn.Module = net
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    params = [p for p in net.parameters() if p.requires_grad]
    dtype = params[0].dtype  # torch's default dtype when the network was built
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sampler = EpochBatches(len(data.train), cfg.batch_size, cfg.seed, rank, world)
    loader = _loader(data.train, sampler, cfg, device)
    nb = sampler.num_batches()

    epoch, batch, rows = 0, 0, []
    best = {"val_accuracy": -1.0, "val_loss": math.inf, "epoch": 0}
    accum = {"loss": 0.0, "correct": 0, "seen": 0, "skipped": 0, "seconds": 0.0}
    if state is not None:
        check_state_dict(net, state["model"], str(out / "last.pt"))
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        epoch, batch, rows = state["epoch"], state["batch"], list(state["metrics"])
        best, accum = dict(state["best"]), dict(state["accum"])
        _set_rng_state(state["rng"])
        if main:
            log(f"resuming {out}/last.pt at epoch {epoch + 1}, batch {batch + 1}")
    elif main:
        out.mkdir(parents=True, exist_ok=True)
        # A new run: nothing of an earlier one in the same directory may be resumed or
        # mistaken for this run's results.
        for stale in ("last.pt", "best.pt", "metrics.csv", "report.json", "report.md"):
            (out / stale).unlink(missing_ok=True)
    if main:
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    def payload(kind: str, **extra) -> dict[str, Any]:
        return {
            "kind": kind,
            "config": cfg.to_dict(),
            "model": net.state_dict(),
            "classes": list(data.classes),
            "data": {
                "in_channels": data.in_channels,
                "num_classes": data.num_classes,
                "image_size": data.image_size,
            },
            **extra,
        }

    def save_last(epoch_: int, batch_: int) -> None:
        if main:
            save_checkpoint(
                out / "last.pt",
                payload(
                    "last",
                    optimizer=opt.state_dict(),
                    epoch=epoch_,
                    batch=batch_,
                    metrics=rows,
                    best=best,
                    accum=accum,
                    rng=_rng_state(),
                ),
            )
        D.barrier()

    progress = _Progress(main, log)
    bn_buffers = [b for b in net.buffers()]
    while epoch < cfg.epochs:
        lr = lr_at(cfg.lr_schedule, epoch)
        for g in opt.param_groups:
            g["lr"] = lr
        sampler.set_epoch(epoch, batch)
        if hasattr(data.train, "set_epoch"):
            data.train.set_epoch(epoch)
        model.train()
        t_epoch = time.perf_counter()
        progress.start(epoch + 1, cfg.epochs, nb, batch)
        for b, (x, y) in enumerate(loader, start=batch):
            x, y = x.to(device, dtype, non_blocking=True), y.to(device, non_blocking=True)
            saved = [t.clone() for t in bn_buffers] if cfg.nan == "skip" else None
            what = None
            try:
                logits = model(x)
                ce = F.cross_entropy(logits, y)
                loss = ce
                if cfg.smoothness:
                    loss = loss + cfg.smoothness * time_smoothness(net, cfg.tau)
            except (solvers.NonFiniteError, ValueError) as err:
                # The solvers reject a non-finite stage input (NaN images, or NaN from an
                # earlier layer) with a ValueError, a NaN mid-stage with NonFiniteError.
                nonfinite = isinstance(err, solvers.NonFiniteError) or "NaN or Inf" in str(err)
                if world > 1 or not nonfinite:
                    raise
                what, ce = f"non-finite state in the forward pass ({err})", None
            if what is None:
                opt.zero_grad(set_to_none=True)
                loss.backward()
                gnorm = torch.nn.utils.clip_grad_norm_(params, math.inf)
                bad_loss, bad_grad = not torch.isfinite(ce).item(), not torch.isfinite(gnorm).item()
                if D.any_true(bad_loss or bad_grad, device):
                    what = (
                        f"non-finite loss ({ce.item()})"
                        if bad_loss
                        else f"non-finite gradient (norm {gnorm.item()})"
                    )
            if what is not None:
                where = f"epoch {epoch + 1}, batch {b + 1} of {nb}"
                if cfg.nan == "stop":
                    raise NonFiniteLossError(
                        f"{what} at {where}. Training stopped; {out}/last.pt still holds the "
                        "last good state (resume with --resume, e.g. with a lower --lr), or "
                        "rerun with --nan skip to skip such batches",
                        epoch=epoch + 1,
                        batch=b + 1,
                    )
                # Skip: undo the batch-norm statistics the bad batch already updated.
                with torch.no_grad():
                    for t, s in zip(bn_buffers, saved):
                        t.copy_(s)
                opt.zero_grad(set_to_none=True)
                accum["skipped"] += 1
                if main:
                    log(f"warning: {what} at {where}; batch skipped (--nan skip)")
                progress.update(math.nan, math.nan)
            else:
                opt.step()
                if cfg.clip_weights:
                    with torch.no_grad():
                        for p in params:
                            p.clamp_(-1.0, 1.0)
                n = len(y)
                accum["loss"] += ce.item() * n
                accum["correct"] += (logits.argmax(1) == y).sum().item()
                accum["seen"] += n
                progress.update(ce.item(), accum["correct"] / accum["seen"])
            if cfg.checkpoint_every and (b + 1) % cfg.checkpoint_every == 0 and b + 1 < nb:
                accum["seconds"] += time.perf_counter() - t_epoch
                t_epoch = time.perf_counter()
                save_last(epoch, b + 1)
        accum["seconds"] += time.perf_counter() - t_epoch
        val = evaluate(net, data.val, device)
        # Training loss/accuracy are those of this process's share under several processes.
        row = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": accum["loss"] / max(accum["seen"], 1),
            "train_accuracy": accum["correct"] / max(accum["seen"], 1),
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "skipped_batches": accum["skipped"],
            "seconds": round(accum["seconds"], 3),
        }
        rows.append(row)
        progress.end(row, cfg.epochs)
        epoch, batch = epoch + 1, 0
        accum = {"loss": 0.0, "correct": 0, "seen": 0, "skipped": 0, "seconds": 0.0}
        improved = (val["accuracy"], -val["loss"]) > (best["val_accuracy"], -best["val_loss"])
        if improved:
            best = {"val_accuracy": val["accuracy"], "val_loss": val["loss"], "epoch": epoch}
            if main:
                save_checkpoint(out / "best.pt", payload("best", epoch=epoch, metrics=rows))
        save_last(epoch, 0)
        if main:
            _write_metrics(out / "metrics.csv", rows)

    report = None
    if main:
        from ._report import write_report

        best_state = load_checkpoint(out / "best.pt")
        check_state_dict(net, best_state["model"], str(out / "best.pt"))
        net.load_state_dict(best_state["model"])
        test = evaluate(net, data.test, device, outputs=True)
        report = write_report(
            cfg,
            net,
            data,
            rows,
            test,
            best,
            out,
            seconds=time.perf_counter() - wall0,
            cpu_seconds=time.process_time() - cpu0,
            world=world,
        )
    D.barrier()
    D.teardown()
    return report
