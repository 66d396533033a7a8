"""Evaluate one trained network, unchanged, under many discretizations of its stages."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import neuralpde
import solvers

from ._checkpoint import CheckpointError, check_state_dict, load_checkpoint
from ._config import TrainConfig
from ._data import EpochBatches, Split, batch_loader, load_data
from ._trainer import build_model

SWAP_FIELDS = (
    "solver", "method", "step_size", "rtol", "accuracy", "loss", "nfe", "seconds", "status",
    "batchnorm",
)  # fmt: skip

# Off a terminal (a log file, CI), a row that is still running says so this often.
PROGRESS_EVERY = 30.0


def swap_plan(
    arch: str, step_size: float | None = None, solver: str | None = None
) -> list[dict[str, Any]]:
    """The discretizations to try: euler at 1×, 2×, 4×, 8× the training steps, midpoint,
    rk4, dopri5 at three tolerances, and for the hyperbolic networks the symplectic
    methods at the training step. Each item: ``label``, ``method`` and solver options.

    ``step_size`` and ``solver`` are those of training (``None``: h = 1 and the paper's
    scheme); "training scheme" and "training scheme x2" (half the step) rows come first
    unless the training scheme is forward Euler ("euler x1" and "euler x2").
    """
    plan: list[dict[str, Any]] = []
    dynamics = neuralpde.archs()[arch]  # what the arch is, asked of neuralpde
    # The training scheme is its own row unless it is the "euler x1" row below.
    own_euler = (solver or dynamics.default_method) == "euler"
    if not own_euler:
        plan.append({"label": "training scheme", "method": solver, "step_size": step_size})
    step_size = 1.0 if step_size is None else step_size
    if not own_euler and (solver is None or solvers.methods()[solver] != "adaptive"):
        # Half the training step with the training method: the row the verdict reads.
        plan.append({"label": "training scheme x2", "method": solver, "step_size": step_size / 2})
    for k in (1, 2, 4, 8):
        plan.append({"label": f"euler x{k}", "method": "euler", "step_size": step_size / k})
    plan.append({"label": "midpoint", "method": "midpoint", "step_size": step_size})
    plan.append({"label": "rk4", "method": "rk4", "step_size": step_size})
    for rtol in (1e-2, 1e-3, 1e-4):
        plan.append(
            {"label": f"dopri5 rtol={rtol:g}", "method": "dopri5", "rtol": rtol, "atol": rtol / 10}
        )
    if dynamics.state != "single":
        kinds = solvers.methods()
        for m in sorted(k for k, v in kinds.items() if v == "symplectic"):
            plan.append({"label": m, "method": m, "step_size": step_size})
    return plan


def load_trained(checkpoint: str | Path, device="cpu"):
    """``(network, config)`` from a ``best.pt``/``last.pt`` of :func:`experiments.fit`;
    the network is in eval mode with the checkpoint's weights, verified before loading.

    Raises:
        experiments.CheckpointError: an unreadable, foreign or mismatched checkpoint, or
            one trained with a dynamics not registered in this process
            (:func:`neuralpde.register_arch` it first).
    """
    state = load_checkpoint(checkpoint)
    cfg = TrainConfig.from_dict(state["config"])
    if cfg.arch not in neuralpde.archs():
        raise CheckpointError(
            f"{checkpoint}: trained with the dynamics {cfg.arch!r}, which is not registered "
            f"in this process (known: {sorted(neuralpde.archs())}); call "
            f"neuralpde.register_arch({cfg.arch!r}, YourRHS) first, then load it from Python "
            "(experiments.load_trained, experiments.certify_table, experiments.swap_table)"
        )
    d = state["data"]
    net = build_model(
        cfg,
        d["in_channels"],
        d["num_classes"],
        level=state.get("level", 0),
        image_size=d.get("image_size"),
    )
    check_state_dict(net, state["model"], str(checkpoint))
    net.load_state_dict(state["model"])
    return net.to(device).eval(), cfg


class _RowProgress:
    """Progress within one row: a tqdm bar on a terminal, else a line every
    ``PROGRESS_EVERY`` seconds (a slow row is never silent)."""

    def __init__(self, label: str, total: int, log, enabled: bool):
        self.label, self.total, self.log, self.enabled = label, total, log, enabled
        self.t0 = self.last = time.perf_counter()
        self.bar = None
        if enabled and sys.stdout.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, unit="batch", leave=False, file=sys.stdout)

    def update(self, done: int, images: int, correct: int, nfe: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(acc=f"{correct / images:.3f}", nfe=f"{nfe:.0f}", refresh=False)
            self.bar.update(1)
            return
        now = time.perf_counter()
        if self.enabled and done < self.total and now - self.last >= PROGRESS_EVERY:
            self.last = now
            self.log(
                f"{self.label}: {done}/{self.total} batches ({images:,} images), "
                f"accuracy so far {correct / images:.4f}, {now - self.t0:.0f}s"
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@torch.no_grad()
def evaluate_solver(
    net,
    ds,
    device,
    batch_size: int = 500,
    *,
    images: int | None = None,
    seconds: float | None = None,
    label: str = "",
    log=print,
    progress: bool = False,
) -> dict[str, Any]:
    """Accuracy, cross-entropy, NFE per forward pass (summed over stages, averaged over
    batches) and seconds for one pass over the first ``images`` items of ``ds`` (all:
    ``None``), in order.

    With a budget of ``seconds``, checked between batches, a pass still short of its last
    batch when the budget is spent stops there: ``accuracy`` and ``loss`` are NaN and
    ``status`` says ``"did not finish within S s"`` and how far it got (a single batch is
    not interrupted; a step limit on adaptive solvers bounds it). Otherwise ``status`` is
    ``"ok"``.
    """
    n = len(ds) if images is None else min(images, len(ds))
    sampler = EpochBatches(n, batch_size, seed=0, shuffle=False)
    total = sampler.num_batches()
    was = net.training
    net.eval()
    dtype = next(net.parameters()).dtype
    bar = _RowProgress(label, total, log, progress)
    t0 = time.perf_counter()
    loss_sum, correct, seen, nfes = 0.0, 0, 0, []
    status = "ok"
    try:
        for done, (x, y) in enumerate(batch_loader(ds, sampler), start=1):
            x, y = x.to(device, dtype), y.to(device)
            logits = net(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            nfes.append(sum(s["nfe"] for s in net.solver_stats()))
            bar.update(done, seen, correct, sum(nfes) / len(nfes))
            spent = time.perf_counter() - t0
            if seconds is not None and done < total and spent > seconds:
                status = (
                    f"did not finish within {seconds:g} s ({done} of {total} batches, "
                    f"{seen:,} of {n:,} images, accuracy so far {correct / seen:.4f})"
                )
                break
    finally:
        bar.close()
        net.train(was)
    finished = status == "ok"
    return {
        "accuracy": correct / max(seen, 1) if finished else math.nan,
        "loss": loss_sum / max(seen, 1) if finished else math.nan,
        "nfe": sum(nfes) / len(nfes) if nfes else math.nan,
        "seconds": time.perf_counter() - t0,
        "status": status,
    }


def _downstream_batchnorms(net) -> list[nn.Module]:
    """The BatchNorms whose input depends on the stages' solvers: those of the connectors
    (the opening's sees the images only, whatever the solver)."""
    opening = set(net.opening.modules()) if hasattr(net, "opening") else set()
    norms = [
        m
        for m in net.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m not in opening
    ]
    if not norms:
        raise ValueError(
            "--recalibrate-bn: the network has no BatchNorm after a stage (e.g. a --certified "
            "network, which has none), so no statistics depend on the solver; drop the option"
        )
    return norms


class RowOverBudget(RuntimeError):
    """A row's re-estimation of its BatchNorm statistics ran past the row's budget."""


@contextlib.contextmanager
def batchnorm_recalibrated(
    net, ds, images: int, device, batch_size: int = 500, seconds: float | None = None
):
    """Within the block, every BatchNorm after a stage holds statistics re-estimated under
    the stages' current solvers; on leaving it (also by an exception), the trained
    statistics, the momentum and ``net``'s train/eval mode are back. Yields ``net``, in
    eval mode.

    A solver swap keeps the weights but moves the features a stage hands to the next
    connector, whose BatchNorm normalizes them with the mean and variance seen under the
    training methods. Re-estimating those statistics under the new solver separates what
    the swap does to the dynamics from what it does to the statistics. The estimate is
    the one of stochastic weight averaging's ``torch.optim.swa_utils.update_bn`` (Izmailov
    et al., UAI 2018), weighted by batch size: per channel, the average over the batches of
    each batch's mean and unbiased variance, each batch weighing its number of images (a
    short last batch does not weigh as much as a full one). Every other layer, the opening's
    BatchNorm included (it sees the images only), stays in eval mode, so each re-estimated
    layer sees the features the deployed network gives it. Li et al. (*Revisiting Batch
    Normalization for Practical Domain Adaptation*, ICLR Workshops 2017) re-estimate the
    statistics the same way for a shift of the data. The weights do not change.

    Args:
        net: a :class:`neuralpde.PDECNN` with BatchNorm in its connectors.
        ds: the training split (a :class:`Split`, images ``(C, H, W)`` normalized); the
            first ``images`` of a fixed permutation of it (seed 0, so every class is in every
            batch) are used, without augmentation.
        images: how many training images: a positive ``int``, at most ``len(ds)``.
        device: where the forward passes run (the network's device).
        batch_size: images per forward pass (positive ``int``).
        seconds: a budget in seconds, checked between batches (``None``: none).

    Raises:
        ValueError: ``net`` has no BatchNorm after a stage, or ``images`` or
            ``batch_size`` is not a positive ``int`` or ``images`` exceeds ``len(ds)``.
        RowOverBudget: the pass ran past ``seconds`` (the statistics are restored).
    """
    norms = _downstream_batchnorms(net)
    for name, value in (("images", images), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"recalibrate_bn: {name} must be a positive int, got {value!r}")
    if images > len(ds):
        raise ValueError(
            f"--recalibrate-bn {images}: the training split has only {len(ds):,} images; "
            f"give at most {len(ds):,}"
        )
    saved = [({k: b.clone() for k, b in m.named_buffers(recurse=False)}, m.momentum) for m in norms]
    was = net.training
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))
    plain = Split(
        ds.images,
        ds.labels,
        [ds.indices[i] for i in order[:images].tolist()],
        ds.mean.view(-1),
        ds.std.view(-1),
    )
    dtype = next(net.parameters()).dtype
    sampler = EpochBatches(len(plain), batch_size, seed=0, shuffle=False)
    t0 = time.perf_counter()
    try:
        net.eval()
        for m in norms:
            m.reset_running_stats()
            m.train()
        seen = 0
        with torch.no_grad():
            for x, _ in batch_loader(plain, sampler):
                for m in norms:
                    # running <- running + (b / (seen + b)) (batch - running): the average
                    # weighted by batch size.
                    m.momentum = len(x) / (seen + len(x))
                net(x.to(device, dtype))
                seen += len(x)
                spent = time.perf_counter() - t0
                if seconds is not None and seen < images and spent > seconds:
                    raise RowOverBudget(
                        f"did not finish within {seconds:g} s (re-estimating the BatchNorm "
                        f"statistics: {seen:,} of {images:,} training images)"
                    )
        for m in norms:
            m.eval()
        yield net
    finally:
        for m, (buffers, momentum) in zip(norms, saved):
            for k, b in buffers.items():
                getattr(m, k).copy_(b)
            m.momentum = momentum
            m.eval()
        net.train(was)


def spread_test_images(data, images: int | None):
    """``data`` with its test split cut to ``images`` images spread evenly over it (every
    (n/images)-th; ``None``, 0 or at least the split's size: all of it). Not the first
    ``images``: an image folder lists its test images class by class, so the first 2,000
    of CIFAR-10's would be its airplanes and automobiles."""
    t = data.test
    n = len(t.indices)
    if not images or images >= n:
        return data
    part = Split(
        t.images,
        t.labels,
        [t.indices[i * n // images] for i in range(images)],
        t.mean.view(-1),
        t.std.view(-1),
    )
    return dataclasses.replace(data, test=part)


def swap_table(
    checkpoint: str | Path,
    *,
    data=None,
    data_root: str | None = None,
    device: str = "cpu",
    batch_size: int = 500,
    plan: list[dict[str, Any]] | None = None,
    images: int | None = None,
    row_seconds: float | None = None,
    max_steps: int | None = None,
    recalibrate_bn: int | None = None,
    progress: bool = False,
    log=print,
) -> list[dict[str, Any]]:
    """Evaluate the network of ``checkpoint`` on its test set under every item of ``plan``
    (default :func:`swap_plan`). The weights never change; only the stages' solvers do.

    Args:
        checkpoint: a ``best.pt`` or ``last.pt`` of :func:`experiments.fit`.
        data: the data splits (default: loaded as the checkpoint's config says, from
            ``data_root`` if given).
        images: evaluate on ``images`` test images spread evenly over the test set
            (:func:`spread_test_images`: every class is represented; default: all).
        row_seconds: a budget per row, checked between batches: a row still running after
            it stops and is reported ``"did not finish within S s"``.
        max_steps: a step limit for each adaptive solve (torchdiffeq's ``max_num_steps``
            option, per stage and batch; default 10,000): a row that needs more is
            reported ``"did not finish within N steps"``.
        recalibrate_bn: re-estimate the statistics of every BatchNorm after a stage under
            each row's solver on this many training images (at most the training split's)
            before evaluating the row (``batchnorm_recalibrated``: a batch-size-weighted
            average, the weights unchanged, the trained statistics restored after the
            row). The pass counts in the row's ``seconds`` and its ``row_seconds`` budget.
            Default: the trained statistics, as the network was saved.
        progress: show progress within a row (a tqdm bar on a terminal, else a line to
            ``log`` every ``PROGRESS_EVERY`` seconds).

    Returns one row per discretization (``SWAP_FIELDS``); ``batchnorm`` says whose
    BatchNorm statistics it used (``"saved"``, or re-estimated under ``recalibrate_bn``;
    empty in a row without an accuracy).
    ``status`` is ``"ok"``, or says
    why the row has no accuracy: a row over its budget, or a discretization that fails
    (e.g. non-finite states) gets ``accuracy`` and ``loss`` NaN, and its status is logged.

    Raises:
        ValueError: ``images``, ``row_seconds``, ``max_steps`` or ``recalibrate_bn`` not
            positive; ``recalibrate_bn`` on a network without BatchNorm after a stage, or
            above the number of training images.
        experiments.CheckpointError: an unreadable or mismatched checkpoint.
        experiments.DatasetNotFoundError: the checkpoint's data is not where it says.
    """
    limits = (
        ("images", images),
        ("row_seconds", row_seconds),
        ("max_steps", max_steps),
        ("recalibrate_bn", recalibrate_bn),
    )
    for name, value in limits:
        if value is not None and not value > 0:
            raise ValueError(f"swap_table: {name} must be positive, got {value}")
    net, cfg = load_trained(checkpoint, device)
    if recalibrate_bn:
        _downstream_batchnorms(net)  # no BatchNorm: say so before loading the data
        if not isinstance(recalibrate_bn, int) or isinstance(recalibrate_bn, bool):
            raise ValueError(f"swap_table: recalibrate_bn must be an int, got {recalibrate_bn!r}")
    if data is None:
        if data_root is not None:
            cfg.data_root = data_root
        data = load_data(cfg)
    data = spread_test_images(data, images)
    if recalibrate_bn and recalibrate_bn > len(data.train):
        raise ValueError(
            f"--recalibrate-bn {recalibrate_bn}: the training split has only "
            f"{len(data.train):,} images; give at most {len(data.train):,}"
        )
    # The network's own step: the training step, refined with θ(t) under multilevel training.
    own = net.stages[0]
    own_step = None if own.kind == "adaptive" else own.step_size
    plan = swap_plan(cfg.arch, own_step, cfg.solver) if plan is None else plan
    trained = [s.solver for s in net.stages]  # what the network was trained (and loaded) with
    rows = []
    for item in plan:
        opts = {k: v for k, v in item.items() if k not in ("label", "method", "step_size")}
        method = item["method"]
        step = item.get("step_size")
        # Each item is a whole discretization: from the defaults, not from the last item.
        net.reset_solver()
        if method is not None and solvers.methods()[method] == "adaptive":
            step = None
            if max_steps is not None:
                opts.setdefault("max_num_steps", int(max_steps))
        net.set_solver(method, step, **opts)
        t0 = time.perf_counter()
        try:
            if recalibrate_bn:
                with batchnorm_recalibrated(
                    net, data.train, recalibrate_bn, device, batch_size, seconds=row_seconds
                ):
                    spent = time.perf_counter() - t0
                    left = None if row_seconds is None else max(row_seconds - spent, 0.0)
                    r = evaluate_solver(
                        net, data.test, device, batch_size, seconds=left,
                        label=item["label"], log=log, progress=progress,
                    )  # fmt: skip
                # The row's time and budget are the pass's and the evaluation's together.
                r["seconds"] = time.perf_counter() - t0
                if r["status"].startswith("did not finish within"):
                    r["status"] = r["status"].replace(f"{left:g} s", f"{row_seconds:g} s", 1)
            else:
                r = evaluate_solver(
                    net, data.test, device, batch_size, seconds=row_seconds,
                    label=item["label"], log=log, progress=progress,
                )  # fmt: skip
        except RowOverBudget as err:
            nan = float("nan")
            r = {"accuracy": nan, "loss": nan, "nfe": nan, "seconds": time.perf_counter() - t0,
                 "status": str(err)}  # fmt: skip
        except (solvers.SolverError, solvers.NonFiniteError) as err:
            if getattr(err, "status", None) == "max_num_steps":
                limit = net.stages[0].solver.options.get("max_num_steps", 10_000)
                status = f"did not finish within {limit:,} steps ({err})"
            else:
                status = f"failed ({err})"
            nan = float("nan")
            r = {"accuracy": nan, "loss": nan, "nfe": nan, "seconds": time.perf_counter() - t0,
                 "status": status}  # fmt: skip
        row = {
            "solver": item["label"],
            "method": item["method"] or net.stages[0].method,
            "step_size": item.get("step_size") or "",
            "rtol": item.get("rtol", ""),
            **r,
            # Whose BatchNorm statistics the row's accuracy is of, in the CSV too; a row
            # without an accuracy has none to name.
            "batchnorm": ""
            if r["status"] != "ok"
            else "saved"
            if recalibrate_bn is None
            else f"re-estimated on {recalibrate_bn} training images",
        }
        rows.append(row)
        if row["status"] == "ok":
            log(
                f"{row['solver']:<22} accuracy {row['accuracy']:.4f}  loss {row['loss']:.4f}  "
                f"NFE {row['nfe']:7.1f}  {row['seconds']:.2f}s"
            )
        else:
            log(f"{row['solver']:<22} {row['status']}")
    for stage, solver in zip(net.stages, trained):
        stage.solver = solver
    return rows


def swap_markdown(rows: list[dict[str, Any]], title: str) -> str:
    """The table of a :func:`swap_table` run in Markdown: one line per row; a row without
    an accuracy says why ("did not finish within ...", "failed ...")."""
    lines = [
        f"# {title}",
        "",
        "| solver | accuracy | loss | NFE | seconds |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        finished = r["accuracy"] == r["accuracy"]
        status = r.get("status") or ("ok" if finished else "failed")
        if status == "ok":
            lines.append(
                f"| {r['solver']} | {r['accuracy']:.2%} | {r['loss']:.4f} | {r['nfe']:.1f} "
                f"| {r['seconds']:.1f} |"
            )
        else:
            lines.append(f"| {r['solver']} | {status} | | | {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def write_swap(rows: list[dict[str, Any]], out: Path, title: str) -> None:
    """``solver_swap.csv``, ``solver_swap.md`` (the table, with each row's status) and
    ``solver_swap.png`` (accuracy against NFE, rows without an accuracy left out) in
    ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "solver_swap.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SWAP_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "ok" if k == "status" else "") for k in SWAP_FIELDS})
    (out / "solver_swap.md").write_text(swap_markdown(rows, title))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in rows:
        if r["accuracy"] == r["accuracy"]:
            ax.scatter(r["nfe"], r["accuracy"], s=30)
            ax.annotate(
                r["solver"],
                (r["nfe"], r["accuracy"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.set(
        xscale="log",
        xlabel="function evaluations per forward pass (all stages)",
        ylabel="test accuracy",
        title=textwrap.fill(title, 70),
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "solver_swap.png", dpi=110)
    plt.close(fig)


def swap_verdict(
    rows: list[dict[str, Any]],
    tolerance: float = 0.01,
    *,
    method: str | None = None,
    rate_bound: float | None = None,
    shared: tuple[str, ...] = (),
) -> neuralpde.ConvergenceVerdict:
    """Whether the network behind the rows of :func:`swap_table` is a converged
    discretization of its ODE (:class:`neuralpde.ConvergenceVerdict`): its training scheme
    against half the step and against dopri5 at rtol 1e-4; ``print()`` it for the verdict
    in plain words. ``method``, ``rate_bound`` (the training method and the fraction of
    the stability limit it was trained at, 0 for none) and ``shared`` (the methods that
    shared each training batch, ``--random-methods``) choose its advice.

    Raises:
        ValueError: ``rows`` lack one of the rows the verdict reads (a custom plan), or one
            of them has no accuracy (it did not finish within its budget, or failed).
    """
    by = {r["solver"]: r["accuracy"] for r in rows}
    first = rows[0]["solver"] if rows else None
    refined = "euler x2" if first == "euler x1" else "training scheme x2"
    need = [first, refined, "rk4", "dopri5 rtol=0.0001"]
    missing = [n for n in need if n not in by]
    if missing:
        raise ValueError(
            f"swap_verdict: the table has no {missing} row(s); run swap_table with its "
            "default plan (swap_plan)"
        )
    unknown = [n for n in need if by[n] != by[n]]
    if unknown:
        why = {r["solver"]: r.get("status", "failed") for r in rows}
        raise ValueError(
            "swap_verdict: no accuracy for "
            + "; ".join(f"{n} ({why[n]})" for n in unknown)
            + ": the verdict needs all four rows"
        )
    return neuralpde.ConvergenceVerdict(
        training=by[first],
        refined=by[refined],
        rk4=by["rk4"],
        reference=by["dopri5 rtol=0.0001"],
        tolerance=tolerance,
        method=method,
        rate_bound=rate_bound,
        shared=tuple(shared),
    )
