"""Evaluate one trained network, unchanged, under many discretizations of its stages."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import torch

import neuralpde
import solvers

from ._checkpoint import check_state_dict, load_checkpoint
from ._config import TrainConfig
from ._data import load_data
from ._trainer import build_model, evaluate

SWAP_FIELDS = ("solver", "method", "step_size", "rtol", "accuracy", "loss", "nfe", "seconds")


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
    the network is in eval mode with the checkpoint's weights, verified before loading."""
    state = load_checkpoint(checkpoint)
    cfg = TrainConfig.from_dict(state["config"])
    d = state["data"]
    net = build_model(cfg, d["in_channels"], d["num_classes"], level=state.get("level", 0))
    check_state_dict(net, state["model"], str(checkpoint))
    net.load_state_dict(state["model"])
    return net.to(device).eval(), cfg


@torch.no_grad()
def evaluate_solver(net, ds, device, batch_size: int = 500) -> dict[str, float]:
    """Accuracy, cross-entropy, NFE per forward pass (summed over stages, averaged over
    batches) and seconds for one pass over ``ds``."""
    t0 = time.perf_counter()
    r = evaluate(net, ds, device, batch_size, nfe=True)
    seconds = time.perf_counter() - t0
    return {"accuracy": r["accuracy"], "loss": r["loss"], "nfe": r["nfe"], "seconds": seconds}


def swap_table(
    checkpoint: str | Path,
    *,
    data=None,
    data_root: str | None = None,
    device: str = "cpu",
    batch_size: int = 500,
    plan: list[dict[str, Any]] | None = None,
    log=print,
) -> list[dict[str, Any]]:
    """Evaluate the network of ``checkpoint`` on its test set under every item of ``plan``
    (default :func:`swap_plan`). The weights never change; only the stages' solvers do.

    Returns one row per discretization (``SWAP_FIELDS``); a discretization that fails
    (e.g. too many adaptive steps) gets ``accuracy`` NaN and its error is logged.
    """
    net, cfg = load_trained(checkpoint, device)
    if data is None:
        if data_root is not None:
            cfg.data_root = data_root
        data = load_data(cfg)
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
        if method is not None and solvers.methods()[method] == "adaptive":
            step = None
        # Each item is a whole discretization: from the defaults, not from the last item.
        net.reset_solver()
        net.set_solver(method, step, **opts)
        try:
            r = evaluate_solver(net, data.test, device, batch_size)
        except (solvers.SolverError, solvers.NonFiniteError) as err:
            log(f"{item['label']}: failed ({err})")
            r = {"accuracy": float("nan"), "loss": float("nan"), "nfe": float("nan"), "seconds": 0}
        row = {
            "solver": item["label"],
            "method": item["method"] or net.stages[0].method,
            "step_size": item.get("step_size") or "",
            "rtol": item.get("rtol", ""),
            **r,
        }
        rows.append(row)
        log(
            f"{row['solver']:<22} accuracy {row['accuracy']:.4f}  loss {row['loss']:.4f}  "
            f"NFE {row['nfe']:7.1f}  {row['seconds']:.2f}s"
        )
    for stage, solver in zip(net.stages, trained):
        stage.solver = solver
    return rows


def write_swap(rows: list[dict[str, Any]], out: Path, title: str) -> None:
    """``solver_swap.csv`` and ``solver_swap.png`` (accuracy against NFE) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "solver_swap.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SWAP_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in SWAP_FIELDS})
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
        title=title,
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "solver_swap.png", dpi=110)
    plt.close(fig)


def swap_verdict(
    rows: list[dict[str, Any]], tolerance: float = 0.01
) -> neuralpde.ConvergenceVerdict:
    """Whether the network of a :func:`swap_table` is a converged discretization of
    its ODE (:class:`neuralpde.ConvergenceVerdict`): its training scheme against half the
    step and against dopri5 at rtol 1e-4; ``print()`` it for the verdict in plain words.

    Raises:
        ValueError: ``rows`` lack one of the rows the verdict reads (a custom plan).
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
    return neuralpde.ConvergenceVerdict(
        training=by[first],
        refined=by[refined],
        rk4=by["rk4"],
        reference=by["dopri5 rtol=0.0001"],
        tolerance=tolerance,
    )
