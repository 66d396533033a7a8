"""Is a trained network a converged discretization of its ODE? One check, in plain words."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

import solvers

# The converged flow of θ(t): dopri5 with tolerances far below what a classifier notices.
REFERENCE = {"method": "dopri5", "rtol": 1e-4, "atol": 1e-5}
# Far below one image in a billion, far above the rounding of a difference of two scores.
_ROUNDING = 1e-9


@dataclass(frozen=True)
class ConvergenceVerdict:
    """Whether a network's training discretization has converged to its ODE.

    A ResNet trained with one discretization can solve that discretization and not the
    ODE it stands for (Ott et al., "ResNet after all? Neural ODEs and their numerical
    solution", ICLR 2021; Queiruga et al., "Continuous-in-depth neural networks", 2020):
    then a finer solver, the very thing solver swap is for, changes what it predicts. Two
    gaps tell: halving the training step (a converged discretization barely moves), and
    the training scheme against the converged flow (dopri5 at rtol 1e-4).

    Attributes:
        training, refined, rk4, reference: the score (accuracy in ``[0, 1]``, or agreement
            with the reference's predictions when there are no labels) at the training
            scheme, at half its step, under RK4 at the training step, and under the
            reference solver (dopri5, rtol 1e-4, atol 1e-5).
        tolerance: the largest gap, in the same units, that still counts as converged.
        labelled: whether the scores are accuracies (``False``: agreement with the
            reference solver's predictions).
        converged: both gaps are at most ``tolerance``.
        method: the training method (``None``: unknown); with ``rate_bound`` it picks the
            advice when the network has not converged.
        rate_bound: the fraction of the stability limit its rates were held to in training
            (:func:`neuralpde.stability.constrain`), ``0`` for none, ``None`` if unknown.
        shared: the methods that shared each training batch (:attr:`Stage.training_mix`;
            ``experiments.train --random-methods``), one entry per share; empty for one
            method. The advice keeps them: a retraining option that names the method
            alone would replace the mix.

    The verdict reads these four solvers only; a swap table's worst row (e.g. midpoint
    at the training step) can lie further from the training scheme.

    ``str(verdict)`` says it in plain words, with what to do when it has not converged.
    """

    training: float
    refined: float
    rk4: float
    reference: float
    tolerance: float = 0.01
    labelled: bool = True
    method: str | None = None
    rate_bound: float | None = None
    shared: tuple[str, ...] = ()

    @property
    def step_gap(self) -> float:
        """``|training − refined|``: how much halving the training step changes the score."""
        return abs(self.training - self.refined)

    @property
    def ode_gap(self) -> float:
        """``|training − reference|``: the training scheme against the converged flow."""
        return abs(self.training - self.reference)

    @property
    def converged(self) -> bool:
        # Scores are counts over the images, each rounded to a float: a gap of exactly the
        # tolerance (20 images of 2,000 at one point) computes as 0.010000000000000009.
        limit = self.tolerance + _ROUNDING
        return self.step_gap <= limit and self.ode_gap <= limit

    def __str__(self) -> str:
        pts = lambda v: f"{100 * v:.1f} points"  # noqa: E731
        what = "accuracy" if self.labelled else "agreement with the converged solution"
        facts = (
            f"halving the training step changes the {what} by {pts(self.step_gap)}; the "
            f"converged solution (dopri5, rtol 1e-4) gives {self.reference:.1%} against "
            f"{self.training:.1%} at the training scheme, RK4 at the training step "
            f"{self.rk4:.1%}; tolerance {pts(self.tolerance)}"
        )
        if self.converged:
            return (
                f"converged: the network is a discretization of its ODE ({facts}). Its "
                "solver can be swapped after training for a converged one (another method at "
                "the training step, e.g. forward Euler or midpoint at h = 1, can still lie "
                "further from it: see the swap table's worst row)."
            )
        return (
            f"NOT converged: the weights solve the training discretization, not the ODE "
            f"({facts}). A finer solver changes its predictions. {self._advice()}"
        )

    def _advice(self) -> str:
        """What to retrain with, from what the network was trained with."""
        stable = (
            "stable by construction (an elementwise-bias normalization and every step's rate "
            "held to a fraction of the stability limit: neuralpde.stability.constrain; "
            "experiments.train's default, e.g. `--normalization bias --rate-bound 0.25` on "
            "digits)"
        )
        if self.rate_bound == 0:
            return f"It was trained without a rate bound. Retrain {stable}."
        if self.rate_bound is None:
            return f"Retrain {stable}; if it is so trained already, with {self._finer(None)}."
        return (
            f"It was trained with every rate at {self.rate_bound:g} of the stability limit. "
            f"Retrain with {self._finer(self.rate_bound)}."
        )

    def _finer(self, bound: float | None) -> str:
        # A second-order training method is the remedy measured on CIFAR-10 (tutorial 02):
        # trained with Verlet the hyperbolic networks are their flow.
        from .stability import second_order_method

        higher = second_order_method(self.method)
        # The method goes with the bound: a discretization option given alone replaces the
        # recipe's whole default (experiments.train), the method and the mix included.
        mix = ",".join(self.shared)
        keep = (f"--solver {self.method} " if self.method else "") + (
            f"--random-methods {mix} " if mix else ""
        )
        tighter = "a tighter bound" + (
            f" (`{keep}--rate-bound {bound / 2.5:.2g}`, with the same training steps)"
            if bound
            else ""
        )
        if higher and higher in self.shared:
            # Already sharing the batches with it: a larger share, not the method alone.
            more = ",".join((*self.shared, higher))
            rate = f" --rate-bound {bound:g}" if bound else ""
            second = [
                f"a larger share of each batch for {higher} "
                f"(`--solver {self.method} --random-methods {more}{rate}`)"
            ]
        elif higher:
            second = [f"a second-order training method (`--solver {higher}`)"]
        else:
            second = []
        options = second + [
            tighter,
            "a finer training step (`--step-size 0.5`: 1/n divides a piecewise-constant θ's cells)",
            "multilevel refinement in time (PDECNN.refine; `--multilevel`)",
        ]
        return ", ".join(options[:-1]) + " or " + options[-1]


def _scores(net: nn.Module, x: Tensor, y: Tensor | None, batch_size: int) -> dict[str, float]:
    stage = net.stages[0]
    own: dict[str, Any] = {"method": stage.method}
    if stage.kind == "adaptive":
        own.update(rtol=stage.rtol, atol=stage.atol)
        refined = {"method": stage.method, "rtol": stage.rtol / 10, "atol": stage.atol / 10}
        rk4_step = stage.rhs.step_size
    else:
        own["step_size"] = stage.step_size
        refined = {"method": stage.method, "step_size": stage.step_size / 2}
        rk4_step = stage.step_size
    plan = {
        "training": own,
        "refined": refined,
        "rk4": {"method": "rk4", "step_size": rk4_step},
        "reference": dict(REFERENCE),
    }
    saved = [s.solver for s in net.stages]
    preds: dict[str, Tensor] = {}
    try:
        for name, settings in plan.items():
            solver = solvers.Solver(**settings)
            for s in net.stages:
                s.solver = solver
            with torch.no_grad():
                batches = [net(xb).argmax(1).cpu() for xb in x.split(batch_size)]
            preds[name] = torch.cat(batches) if batches else torch.zeros(0, dtype=torch.long)
    finally:
        for s, solver in zip(net.stages, saved):
            s.solver = solver
    target = preds["reference"] if y is None else y.cpu()
    n = max(len(target), 1)
    return {k: float((p == target).sum()) / n for k, p in preds.items()}


def convergence_check(
    net: nn.Module,
    x: Tensor,
    y: Tensor | None = None,
    *,
    tolerance: float = 0.01,
    batch_size: int = 500,
) -> ConvergenceVerdict:
    """Check whether a trained network is a converged discretization of its ODE.

    Evaluates ``net`` (in its current mode; call ``net.eval()`` first) on ``x`` under its
    own solver, the same method at half the step (an adaptive method: rtol and atol / 10),
    RK4 at the training step and dopri5 at rtol 1e-4, then restores the stages' solvers.

    Args:
        net: a :class:`~neuralpde.PDECNN` (every stage is re-discretized the same way as
            stage 0).
        x: ``(n, channels, height, width)`` inputs.
        y: ``(n,)`` labels: scores are accuracies. Without labels the scores are the
            agreement of each solver's predictions with the reference's.
        tolerance: the largest gap (a fraction: 0.01 is one point) counted as converged.
        batch_size: images per forward pass.

    Returns:
        A :class:`ConvergenceVerdict`; ``print(verdict)`` says it in plain words.

    Raises:
        ValueError: ``x`` and ``y`` differ in length, or ``tolerance`` is not in (0, 1).
    """
    if y is not None and len(y) != len(x):
        raise ValueError(
            f"convergence_check: x has {len(x)} images but y has {len(y)} labels; give one "
            "label per image (or none)"
        )
    if not 0 < tolerance < 1:
        raise ValueError(f"convergence_check: tolerance must be in (0, 1), got {tolerance!r}")
    from .stability import rate_fraction

    return ConvergenceVerdict(
        **_scores(net, x, y, batch_size),
        tolerance=tolerance,
        labelled=y is not None,
        method=net.stages[0].method,
        rate_bound=rate_fraction(net),
        shared=tuple(s.method for s in net.stages[0].training_mix),
    )
