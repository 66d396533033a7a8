"""The training loop: the paper's recipe, atomic checkpoints, exact resumption, NaN guard."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
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
from ._config import NON_MATH_KEYS, ConfigError, TrainConfig, discretization_in_words, lr_now
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


# The image size of each data set with a fixed one (an image folder's is cfg.image_size).
DATASET_IMAGE_SIZE = {"digits": 8, "cifar10": 32, "cifar100": 32, "stl10": 96}


def build_model(
    cfg: TrainConfig,
    in_channels: int,
    num_classes: int,
    level: int = 0,
    image_size: int | None = None,
) -> neuralpde.PDECNN:
    """The network a config describes (the paper's Table 1 network under ``preset="paper"``),
    with θ(t) prolongated ``level`` times by 2 (multilevel training, :meth:`PDECNN.refine`).

    ``image_size`` (the input's height and width; default: the data set's, or the image
    folder's ``cfg.image_size``) sets where the rate bound (``cfg.rate_bound``) holds: at
    the stages' image sizes."""
    kw: dict[str, Any] = {"steps": cfg.steps, "bn_eps": cfg.bn_eps}
    if cfg.interpolation != "constant":
        kw["interpolation"] = cfg.interpolation
    if cfg.normalization != "tv":
        kw["rhs_options"] = {"normalization": cfg.normalization}
    if cfg.memory is not None:
        kw["memory"] = cfg.memory
    if cfg.preset == "paper":
        net = neuralpde.PDECNN.from_paper(cfg.recipe or cfg.dataset, cfg.arch, **kw)
    else:
        if cfg.certified:
            kw["lipschitz"] = True
        net = neuralpde.PDECNN(cfg.arch, in_channels, num_classes, tuple(cfg.widths), **kw)
    if cfg.solver is not None or cfg.step_size is not None:
        net.set_solver(cfg.solver, step_size=cfg.step_size)  # keeps the memory mode
    if cfg.rate_bound:
        if image_size is None:
            image_size = cfg.image_size or DATASET_IMAGE_SIZE[cfg.dataset]
        neuralpde.stability.constrain(
            net,
            (in_channels, image_size, image_size),
            fraction=cfg.rate_bound,
            raw_scale=cfg.raw_scale,
        )
    for _ in range(level):
        net.refine(2)
    return net


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


# What --random-methods/--random-steps do, recorded in every training state: each batch
# split among all the discretizations (Stage.training_mix).
RANDOM_OPTIONS = "shares"


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
    if (saved.random_methods or saved.random_steps) and state.get(
        "random_options"
    ) != RANDOM_OPTIONS:
        # Before shares, each batch drew one method and step: the same options would
        # train on other batches from here on, and the run would end elsewhere.
        raise ConfigError(
            f"--resume: {str(last)!r} uses --random-methods/--random-steps and was written "
            "before training states recorded how they train; runs of that time drew them "
            "once per batch, and they now split each batch among the discretizations, so "
            "a resumed run would not end where an uninterrupted one ends. Start it again "
            "with a new --out (or without --resume)"
        )
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


def refinements(cfg: TrainConfig, epoch: int) -> int:
    """How many 2× prolongations of θ(t) are in effect during 0-based ``epoch``
    (``cfg.multilevel`` lists the 1-based epochs at whose start θ(t) is refined)."""
    return sum(1 for e in cfg.multilevel if e - 1 <= epoch)


def training_mix(cfg: TrainConfig, own: solvers.Solver) -> list[solvers.Solver]:
    """The discretizations that share each training batch (:attr:`neuralpde.Stage.
    training_mix`): every pair of a method of ``cfg.random_methods`` (else ``own``'s) and a
    step of ``cfg.random_steps`` (else ``own``'s), in that order (a method listed twice
    takes two shares); empty when there is only one. The same for every batch, epoch and
    process, so a resumed or distributed run trains exactly as an uninterrupted one."""
    methods = cfg.random_methods or [own.method]
    steps = [float(h) for h in cfg.random_steps] or [own.step_size]
    mix = [dataclasses.replace(own, method=m, step_size=h) for m in methods for h in steps]
    return mix if len(mix) > 1 else []


@dataclass
class _Run:
    """What one training run holds between its named steps (see :func:`fit`)."""

    cfg: TrainConfig
    data: DataSplits
    device: torch.device
    rank: int
    world: int
    out: Path
    net: neuralpde.PDECNN
    model: nn.Module = None
    opt: torch.optim.Optimizer = None
    params: list = field(default_factory=list)
    penalty: neuralpde.stability.StabilityPenalty | None = None
    input_shape: tuple = ()
    pixel_scale: float = 1.0
    level: int = 0
    epoch: int = 0
    batch: int = 0
    rows: list = field(default_factory=list)
    best: dict = field(default_factory=dict)
    accum: dict = field(default_factory=dict)

    @property
    def main(self) -> bool:
        return self.rank == 0


def _new_accum() -> dict[str, Any]:
    return {"loss": 0.0, "correct": 0, "seen": 0, "skipped": 0, "seconds": 0.0}


def _no_best() -> dict[str, Any]:
    return {"val_accuracy": -1.0, "val_loss": math.inf, "epoch": 0}


def _setup(cfg: TrainConfig, data: DataSplits | None, resume: bool, log) -> _Run:
    """Devices, processes, data, the network at its refinement level and the optimizer;
    with ``resume``, everything restored from ``last.pt``."""
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {cfg.device}: CUDA is not available on this machine")
    threads = cfg.threads or (1 if cfg.dataset == "digits" else None)
    if threads:
        # 8x8 digits make tiny tensors; splitting them over threads costs more than it gains.
        torch.set_num_threads(threads)
    rank, world = D.setup(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    out = Path(cfg.out)
    state = _resume_state(cfg, out) if resume else None

    seed_everything(cfg.seed)
    data = data if data is not None else load_data(cfg)
    data.to(device)  # resident images: normalization and augmentation run on the device
    # The level the checkpoint was saved at: a run stopped between an epoch's checkpoint
    # and the prolongation due at the next epoch's start has not refined yet (_prolongate
    # does it in the loop, as it would have).
    level = state.get("level", refinements(cfg, state["epoch"])) if state is not None else 0
    net = build_model(
        cfg, data.in_channels, data.num_classes, level=level, image_size=data.image_size
    )
    run = _Run(cfg, data, device, rank, world, out, net, level=level)
    run.input_shape = (data.in_channels, data.image_size, data.image_size)
    if cfg.certified:
        from ._certify import pixel_scale

        run.pixel_scale = pixel_scale(data.train)
        bound = neuralpde.lipschitz_bound(net, run.input_shape)
        if not bound.finite:
            raise ConfigError(
                "--certified: this configuration has no finite Lipschitz bound ("
                + "; ".join(bound.unbounded)
                + "); choose another --solver or --arch"
            )
        loose = [r for r in bound.layers if r["layer"].startswith("stage") and r["bound"] > 1.0]
        if loose and rank == 0 and not resume:
            # Legal (a user may study it) but the certificate divides by this factor.
            log(
                "warning: --certified: "
                + "; ".join(
                    f"{r['layer']} is bounded by {r['bound']:.3g} ({r['note']})" for r in loose
                )
                + ". Only a parabolic-type stage under forward Euler (h·ρ <= 2) or an adaptive "
                "solver is 1-Lipschitz: the certificates of this configuration will be loose"
            )
    if run.main and cfg.dataset == "imagefolder" and data.layout and not resume:
        log(f"splits: {data.layout}")
    if run.main and not resume:
        log(discretization_in_words(cfg))
    if world > 1:
        D.globalize_batchnorm(net)
    net.to(device)
    if cfg.stability_penalty:
        run.penalty = neuralpde.stability.StabilityPenalty(
            net,
            (data.in_channels, data.image_size, data.image_size),
            margin=cfg.stability_margin,
        ).to(device)
    _new_optimizer(run)
    run.best, run.accum = _no_best(), _new_accum()
    if state is not None:
        check_state_dict(net, state["model"], str(out / "last.pt"))
        net.load_state_dict(state["model"])
        run.opt.load_state_dict(state["optimizer"])
        if run.penalty is not None:
            run.penalty.load_state_dict(state["penalty"])
        run.epoch, run.batch, run.rows = state["epoch"], state["batch"], list(state["metrics"])
        run.best, run.accum = dict(state["best"]), dict(state["accum"])
        _set_rng_state(state["rng"])
        if run.main:
            log(f"resuming {out}/last.pt at epoch {run.epoch + 1}, batch {run.batch + 1}")
    elif run.main:
        out.mkdir(parents=True, exist_ok=True)
        # A new run: nothing of an earlier one in the same directory may be resumed or
        # mistaken for this run's results.
        for stale in ("last.pt", "best.pt", "metrics.csv", "report.json", "report.md"):
            (out / stale).unlink(missing_ok=True)
    if run.main:
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    return run


def _new_optimizer(run: _Run) -> None:
    """SGD over the network's current parameters (again after a prolongation, which
    replaces the stages' parameters), and the DDP wrapper around it."""
    cfg, net = run.cfg, run.net
    run.model = net
    if run.world > 1:
        run.model = nn.parallel.DistributedDataParallel(
            net, device_ids=[run.device.index] if run.device.type == "cuda" else None
        )
    if cfg.compile:
        # The wrapper shares net's parameters; checkpoints keep saving net's own state.
        # Static shapes: a short last batch costs one more compilation, not a dynamic graph.
        run.model = torch.compile(run.model, dynamic=False)
    run.params = [p for p in net.parameters() if p.requires_grad]
    lr = lr_now(cfg, run.epoch, 0, 1)  # the epoch's first rate; _train_epoch sets each batch's
    if cfg.optimizer == "adam":
        run.opt = torch.optim.Adam(run.params, lr=lr, weight_decay=cfg.weight_decay)
    else:
        run.opt = torch.optim.SGD(
            run.params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )


def _prolongate(run: _Run, log) -> None:
    """Multilevel training: refine θ(t) 2× for each prolongation due at this epoch. The
    momentum of the old parameters does not carry over (a fresh optimizer), and the best
    weights are chosen anew on the fine level, where the run ends."""
    target = refinements(run.cfg, run.epoch)
    if target == run.level:
        return
    while run.level < target:
        run.net.refine(2)
        run.level += 1
    _new_optimizer(run)
    run.best = _no_best()
    if run.main:
        from ._report import theta_in_words

        log(f"epoch {run.epoch + 1}: θ(t) prolongated to {theta_in_words(run.net)}")


def _payload(run: _Run, kind: str, **extra) -> dict[str, Any]:
    data = run.data
    return {
        "kind": kind,
        "config": run.cfg.to_dict(),
        "model": run.net.state_dict(),
        "level": run.level,
        "classes": list(data.classes),
        "data": {
            "in_channels": data.in_channels,
            "num_classes": data.num_classes,
            "image_size": data.image_size,
        },
        **extra,
    }


def _save_last(run: _Run, epoch: int, batch: int) -> None:
    if run.main:
        extra = {} if run.penalty is None else {"penalty": run.penalty.state_dict()}
        save_checkpoint(
            run.out / "last.pt",
            _payload(
                run,
                "last",
                optimizer=run.opt.state_dict(),
                epoch=epoch,
                batch=batch,
                metrics=run.rows,
                best=run.best,
                accum=run.accum,
                rng=_rng_state(),
                # How --random-methods/--random-steps train (see _resume_state).
                random_options=RANDOM_OPTIONS,
                **extra,
            ),
        )
    D.barrier()


def margin_loss(run: _Run, logits: Tensor, y: Tensor) -> Tensor:
    """The Lipschitz-margin cross-entropy of Tsuzuku, Sato & Sugiyama (NeurIPS 2018).

    With ``L`` the network's rigorous Lipschitz bound (:func:`neuralpde.lipschitz_bound`,
    recomputed every batch, no gradient) the logits in radius units are ``r = z /
    (sqrt(2) L)``: ``r_y - max_{j≠y} r_j`` is the certified radius. The loss is the
    cross-entropy of ``τ (r - ε e_y)`` with ``ε`` the target radius (``cfg.certified_margin``,
    pixel units, in input units here) and ``τ`` the inverse temperature: it asks every
    training image for a certified radius of ``ε``, smoothly. Chosen over the multi-class
    hinge of CPL (Meunier et al., ICML 2022) because its gradient does not vanish once the
    margin is met (images keep pulling their margin up, at a rate set by ``τ``) and it is
    the plain cross-entropy when ``ε = 0``, so the rest of the recipe carries over.
    """
    cfg = run.cfg
    L = neuralpde.lipschitz_bound(run.net, run.input_shape).total
    eps = cfg.certified_margin / run.pixel_scale
    r = logits / (math.sqrt(2.0) * L)
    r = r - eps * F.one_hot(y, r.shape[1]).to(r.dtype)
    return F.cross_entropy(cfg.temperature * r, y)


def _loss(run: _Run, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(loss, cross-entropy, logits)`` of one batch: the cross-entropy plus the
    time-smoothness regularizer and the stability penalty the config asks for."""
    cfg = run.cfg
    logits = run.model(x)
    ce = margin_loss(run, logits, y) if cfg.certified else F.cross_entropy(logits, y)
    loss = ce
    if cfg.smoothness:
        loss = loss + cfg.smoothness * neuralpde.time_smoothness(run.net, cfg.tau)
    if run.penalty is not None:
        loss = loss + cfg.stability_penalty * run.penalty(run.net)
    return loss, ce, logits


def _train_epoch(run: _Run, loader, sampler, progress, log) -> None:
    """One epoch (from ``run.batch`` on): SGD steps, the NaN guard, weight clipping and
    the mid-epoch checkpoints."""
    cfg, device, net = run.cfg, run.device, run.net
    nb = sampler.num_batches()
    dtype = run.params[0].dtype  # torch's default dtype when the network was built
    bn_buffers = list(net.buffers())
    for s in net.stages:
        # Random steps and methods: each batch shared among them (Stage.training_mix).
        s.training_mix = training_mix(cfg, s.solver)
    run.model.train()
    t_epoch = time.perf_counter()
    progress.start(run.epoch + 1, cfg.epochs, nb, run.batch)
    try:
        for b, (x, y) in enumerate(loader, start=run.batch):
            x, y = x.to(device, dtype, non_blocking=True), y.to(device, non_blocking=True)
            if cfg.lr_decay != "step":
                for g in run.opt.param_groups:
                    g["lr"] = lr_now(cfg, run.epoch, b, nb)
            saved = [t.clone() for t in bn_buffers] if cfg.nan == "skip" else None
            what = None
            try:
                loss, ce, logits = _loss(run, x, y)
            except (solvers.NonFiniteError, ValueError) as err:
                # The solvers reject a non-finite stage input (NaN images, or NaN from an
                # earlier layer) with a ValueError, a NaN mid-stage with NonFiniteError.
                nonfinite = isinstance(err, solvers.NonFiniteError) or "NaN or Inf" in str(err)
                if run.world > 1 or not nonfinite:
                    raise
                what, ce = f"non-finite state in the forward pass ({err})", None
            if what is None:
                run.opt.zero_grad(set_to_none=True)
                loss.backward()
                gnorm = torch.nn.utils.clip_grad_norm_(run.params, math.inf)
                bad_loss, bad_grad = not torch.isfinite(ce).item(), not torch.isfinite(gnorm).item()
                if D.any_true(bad_loss or bad_grad, device):
                    what = (
                        f"non-finite loss ({ce.item()})"
                        if bad_loss
                        else f"non-finite gradient (norm {gnorm.item()})"
                    )
            if what is not None:
                where = f"epoch {run.epoch + 1}, batch {b + 1} of {nb}"
                if cfg.nan == "stop":
                    raise NonFiniteLossError(
                        f"{what} at {where}. Training stopped; {run.out}/last.pt still holds the "
                        "last good state (resume with --resume, e.g. with a lower --lr), or "
                        "rerun with --nan skip to skip such batches",
                        epoch=run.epoch + 1,
                        batch=b + 1,
                    )
                # Skip: undo the batch-norm statistics the bad batch already updated.
                with torch.no_grad():
                    for t, s in zip(bn_buffers, saved):
                        t.copy_(s)
                run.opt.zero_grad(set_to_none=True)
                run.accum["skipped"] += 1
                if run.main:
                    log(f"warning: {what} at {where}; batch skipped (--nan skip)")
                progress.update(math.nan, math.nan)
            else:
                run.opt.step()
                if cfg.clip_weights:
                    with torch.no_grad():
                        for p in run.params:
                            p.clamp_(-1.0, 1.0)
                n = len(y)
                run.accum["loss"] += ce.item() * n
                run.accum["correct"] += (logits.argmax(1) == y).sum().item()
                run.accum["seen"] += n
                progress.update(ce.item(), run.accum["correct"] / run.accum["seen"])
            if cfg.checkpoint_every and (b + 1) % cfg.checkpoint_every == 0 and b + 1 < nb:
                run.accum["seconds"] += time.perf_counter() - t_epoch
                t_epoch = time.perf_counter()
                _save_last(run, run.epoch, b + 1)
    finally:
        for s in net.stages:
            s.training_mix = ()  # validation, checkpoints, the report: the own solver
    run.accum["seconds"] += time.perf_counter() - t_epoch


def _end_epoch(run: _Run, lr: float, progress) -> None:
    """Validation, the metrics row, ``best.pt`` when validation improves, ``last.pt``."""
    # One process: the training model (compiled under cfg.compile); several: the bare
    # network, as each process validates the whole split itself.
    val = evaluate(run.model if run.world == 1 else run.net, run.data.val, run.device)
    # Training loss/accuracy are those of this process's share under several processes.
    accum = run.accum
    row = {
        "epoch": run.epoch + 1,
        "lr": lr,
        "train_loss": accum["loss"] / max(accum["seen"], 1),
        "train_accuracy": accum["correct"] / max(accum["seen"], 1),
        "val_loss": val["loss"],
        "val_accuracy": val["accuracy"],
        "skipped_batches": accum["skipped"],
        "seconds": round(accum["seconds"], 3),
    }
    run.rows.append(row)
    progress.end(row, run.cfg.epochs)
    run.epoch, run.batch, run.accum = run.epoch + 1, 0, _new_accum()
    best = run.best
    if (val["accuracy"], -val["loss"]) > (best["val_accuracy"], -best["val_loss"]):
        run.best = {"val_accuracy": val["accuracy"], "val_loss": val["loss"], "epoch": run.epoch}
        if run.main:
            save_checkpoint(
                run.out / "best.pt", _payload(run, "best", epoch=run.epoch, metrics=run.rows)
            )
    _save_last(run, run.epoch, 0)
    if run.main:
        _write_metrics(run.out / "metrics.csv", run.rows)


def _final_report(run: _Run, wall0: float, cpu0: float) -> dict[str, Any]:
    """The best-validation weights on the test set, and the report with its figures."""
    from ._report import write_report

    best_state = load_checkpoint(run.out / "best.pt")
    check_state_dict(run.net, best_state["model"], str(run.out / "best.pt"))
    run.net.load_state_dict(best_state["model"])
    test = evaluate(run.net, run.data.test, run.device, outputs=True)
    return write_report(
        run.cfg,
        run.net,
        run.data,
        run.rows,
        test,
        run.best,
        run.out,
        seconds=time.perf_counter() - wall0,
        cpu_seconds=time.process_time() - cpu0,
        world=run.world,
    )


def _certified_report(run: _Run, report: dict[str, Any]) -> None:
    """Certified accuracy of the best weights on the test set, added to the report."""
    from ._certify import certified_accuracy, default_eps

    rows = certified_accuracy(run.net, run.data.test, default_eps(run.cfg.dataset), run.device)
    report["certified"] = rows
    (run.out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    lines = [
        "",
        "## Certified accuracy",
        "",
        "| ε (ℓ2, pixels) | certified accuracy |",
        "|---|---|",
    ]
    lines += [f"| {r['eps']:.4g} | {r['certified_accuracy']:.2%} |" for r in rows]
    lines.append(f"\nLipschitz bound of the network: {rows[0]['lipschitz']:.4g}\n")
    with open(run.out / "report.md", "a") as f:
        f.write("\n".join(lines))


def fit(cfg: TrainConfig, data: DataSplits | None = None, *, resume: bool = False, log=print):
    """Train, keep the best-validation weights, evaluate them on the test set, write reports.

    The steps, each a function of this module: set up (devices, data, network,
    optimizer, or all of it restored from ``last.pt``); per epoch, prolongate θ(t) when
    ``cfg.multilevel`` says so, train one epoch, validate and checkpoint; finally test
    the best weights and write the report.

    Writes to ``cfg.out``: ``config.json``, ``metrics.csv``, ``last.pt`` (the full training
    state, atomically, every epoch and every ``cfg.checkpoint_every`` batches), ``best.pt``
    (best validation accuracy; under multilevel training, best on the finest level),
    ``report.json``, ``report.md`` and figures.

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
    if cfg.compile:
        # A fresh network: what dynamo compiled for earlier ones in this process (table1
        # and ode_study train several) only uses up its recompilation limit (8 per
        # function), past which a network would run eagerly.
        torch._dynamo.reset()
    run = _setup(cfg, data, resume, log)
    sampler = EpochBatches(len(run.data.train), cfg.batch_size, cfg.seed, run.rank, run.world)
    loader = _loader(run.data.train, sampler, cfg, run.device)
    progress = _Progress(run.main, log)
    while run.epoch < cfg.epochs:
        _prolongate(run, log)
        # The epoch's rate (its first batch's under a per-batch decay, which _train_epoch
        # sets batch by batch): the metrics row reads the same after a mid-epoch resume.
        lr = lr_now(cfg, run.epoch, 0, sampler.num_batches())
        for g in run.opt.param_groups:
            g["lr"] = lr
        sampler.set_epoch(run.epoch, run.batch)
        if hasattr(run.data.train, "set_epoch"):
            run.data.train.set_epoch(run.epoch)
        _train_epoch(run, loader, sampler, progress, log)
        _end_epoch(run, lr, progress)
    report = _final_report(run, wall0, cpu0) if run.main else None
    if report is not None and cfg.certified:
        _certified_report(run, report)
    D.barrier()
    D.teardown()
    return report
