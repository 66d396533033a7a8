"""Stability you can check: spectral bounds and step limits of a network's PDE stages.

The discrete stability results of Ruthotto & Haber (2020) are statements about the
*linearization* of a stage. For the symmetric layer ``F = -Kᵀ σ(K Y)`` with a monotone σ
whose slope lies in ``[0, 1]`` (ReLU), the Jacobian is ``-Kᵀ D K`` with ``D`` diagonal,
``0 <= D <= I``, so every eigenvalue of ``Kᵀ D K`` lies in ``[0, ρ(KᵀK)]``. Each per-step
bound below holds for *every* such ``D`` at once, i.e. for the unnormalized layer along
any trajectory; for the parabolic unnormalized layer it is even a nonlinear guarantee
(``F = -∇Φ`` with ``Φ = ½‖relu(KY)‖²`` convex and ``ρ(KᵀK)``-smooth, so a forward Euler
step with ``h <= 2/ρ`` is non-expansive, Baillon–Haddad).

What the bound does not cover: the total-variation normalization ``N`` of the trained
layers is nonlinear and its Jacobian has norm up to ``max|scale| / sqrt(ε)`` near ``KY = 0``
(and is not symmetric), so for a normalized layer ``rho`` describes ``K`` alone; the row's
``normalized`` flag says so. Bounds are per parameter set ("frozen coefficients"): with θ
varying in time they are the classical necessary condition, not a proof.

Use :func:`report`. It asks each stage's right-hand side for its :class:`Spectrum`
(:meth:`neuralpde.RHS.spectrum`), so it works for every dynamics that declares one; a
dynamics of your own computes its spectrum with :func:`kernel_spectrum`, built on
:func:`power_iteration` and :func:`symbol_bound` (a lower and an upper bound of ``ρ(KᵀK)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

import solvers

from ._lipschitz import scheme_lipschitz as scheme_lipschitz
from ._rhs import arch_name
from ._spectra import Spectrum as Spectrum
from ._spectra import _conv, _conv_normal_op
from ._spectra import kernel_spectrum as kernel_spectrum
from ._spectra import power_iteration as power_iteration
from ._spectra import symbol_bound as symbol_bound
from ._spectra import symbol_rho as symbol_rho
from ._stage import Stage

__all__ = [
    "RateBound",
    "Report",
    "Spectrum",
    "StabilityPenalty",
    "constrain",
    "kernel_spectrum",
    "power_iteration",
    "rate_fraction",
    "report",
    "scheme_lipschitz",
    "second_order_method",
    "stability_limit",
    "symbol_bound",
    "symbol_rho",
]

COLUMNS = (
    "stage",
    "step",
    "layer",
    "arch",
    "method",
    "h",
    "rho",
    "rho_upper",
    "max_step",
    "ok",
    "suggested_step",
    "normalized",
    "leaves_out",
)
# What a row's bound leaves out when a normalization sits between K and σ (spec.normalized).
LEAVES_OUT_NORMALIZATION = (
    "the normalization between K and σ (TV: gain up to |scale|/sqrt(ε), Jacobian not symmetric)"
)


def _model_step(method: str, model: str, z: Tensor) -> Tensor:
    """Spectral radius of one step (size 1) of ``method`` on the unit model problems.

    ``"dissipative"``: ``y' = -z y`` (a parabolic mode). ``"oscillatory"``: ``q' = -z p``,
    ``p' = z q`` (a hyperbolic mode of frequency ``z``). ``z``: ``(m,)`` float64.
    """
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    kind = solvers.methods()[method]
    if model == "dissipative":
        y1 = solvers.odeint(
            lambda _, y: -z * y, torch.ones_like(z), t, method=method, options={"step_size": 1.0}
        )
        return y1[-1].abs()
    # Columns of the 2×2 one-step matrix: start from (1, 0) and from (0, 1), batched.
    q0 = torch.stack([torch.ones_like(z), torch.zeros_like(z)])
    p0 = torch.stack([torch.zeros_like(z), torch.ones_like(z)])
    f_q = lambda _, p: -z * p  # noqa: E731
    f_p = lambda _, q: z * q  # noqa: E731
    if kind == "symplectic":
        q, p = solvers.odeint((f_q, f_p), (q0, p0), t, method=method, options={"step_size": 1.0})
    else:
        q, p = solvers.odeint(
            lambda _, s: (f_q(_, s[1]), f_p(_, s[0])),
            (q0, p0),
            t,
            method=method,
            options={"step_size": 1.0},
        )
    a, b, c, d = q[-1][0], q[-1][1], p[-1][0], p[-1][1]
    tr, det = a + d, a * d - b * c
    disc = tr * tr - 4 * det
    complex_pair = det.clamp(min=0).sqrt()
    real_pair = (tr.abs() + disc.clamp(min=0).sqrt()) / 2
    return torch.where(disc < 0, complex_pair, real_pair)


def _unit_limit(method: str, model: str) -> float | None:
    """Largest ``z`` with a non-growing step on the unit model for all ``0 < z' <= z``.

    Computed from the solver itself: forward Euler gives 2 (dissipative), RK4 2.785...,
    symplectic Euler, leapfrog and Verlet give 2 (oscillatory: ``h ω <= 2``).
    ``None`` for adaptive and multistep methods, which have no fixed one-step map.
    """
    kind = solvers.methods().get(method)
    stepper = solvers.stepper(method) if kind == "symplectic" else None
    # Kept with the stepper it is of: a name freed and registered again with another
    # tableau (as tests and notebooks do) must not keep the first one's limit. Compared by
    # identity, so a user's stepper need not be hashable.
    kept = _LIMITS.get((method, model))
    if kept is None or kept[0] is not stepper:
        kept = _LIMITS[(method, model)] = (stepper, _limit_of(method, model, kind))
    return kept[1]


_LIMITS: dict[tuple[str, str], tuple[object, float | None]] = {}


def _limit_of(method: str, model: str, kind: str | None) -> float | None:
    if kind is None or kind == "adaptive" or "adams" in method:
        return None
    z = torch.linspace(1e-3, 8.0, 8000, dtype=torch.float64)
    # 1e-9 absorbs round-off where an eigenvalue sits on the unit circle.
    bad = (_model_step(method, model, z) > 1.0 + 1e-9).nonzero()
    if len(bad) == 0:
        return float(z[-1])
    if int(bad[0, 0]) == 0:
        return 0.0
    lo, hi = float(z[int(bad[0, 0]) - 1]), float(z[int(bad[0, 0])])
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        r = _model_step(method, model, torch.tensor([mid], dtype=torch.float64))
        lo, hi = (mid, hi) if float(r[0]) <= 1.0 + 1e-9 else (lo, mid)
    return lo


def stability_limit(method: str, model: str) -> float | None:
    """The largest ``h·z`` for which a step of ``method`` does not grow any mode of the model.

    ``z`` is a mode's rate (an eigenvalue of ``KᵀDK``, or a frequency), ``h`` the step
    size; the limit is the end of the stability interval on the real axis
    (``"dissipative"``: ``y' = -z y``, a parabolic mode) or on the imaginary axis
    (``"oscillatory"``: ``q' = -z p``, ``p' = z q``, a hyperbolic mode), the largest ``c``
    with a non-growing step for every ``0 < h·z <= c``. It is computed from the solver
    itself, so a method registered with :func:`solvers.register_stepper` has one too.
    Classical values (Hairer & Wanner, *Solving ODEs II*, §IV.2; Hairer, Lubich & Wanner,
    *Geometric Numerical Integration*, §I.5): forward Euler 2 (dissipative) and 0
    (oscillatory: it amplifies every oscillation), RK4 2.785 and 2√2, symplectic Euler,
    leapfrog and Störmer–Verlet 2 (oscillatory).

    Args:
        method: a fixed-step or symplectic method of :func:`solvers.methods`.
        model: ``"dissipative"`` or ``"oscillatory"`` (a dynamics' :class:`Spectrum`
            names its model).

    Returns:
        The limit (dimensionless; the interval is scanned up to 8, so a longer one reads
        8.0), or ``None`` for adaptive and multistep methods, which have no fixed one-step
        map.

    Raises:
        ValueError: an unknown method or model.
    """
    if model not in ("dissipative", "oscillatory"):
        raise ValueError(f"model must be 'dissipative' or 'oscillatory', got {model!r}")
    if method not in solvers.methods():
        raise ValueError(f"unknown method {method!r}; one of {sorted(solvers.methods())}")
    return _unit_limit(method, model)


@dataclass
class Report:
    """The per-step stability table of a network; see :func:`report`.

    Attributes:
        rows: one dict per (stage, step, layer) with the keys of :data:`COLUMNS`.

    ``str(report)`` is a table; :meth:`to_dict` gives columns, :attr:`rows` the rows.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, list[Any]]:
        """``{column: [value per row]}``, e.g. for ``pandas.DataFrame(report.to_dict())``."""
        return {c: [r[c] for r in self.rows] for c in COLUMNS}

    @property
    def ok(self) -> bool:
        """Whether every row that has a bound satisfies its rigorous bound (rows with
        ``ok=None`` skip)."""
        return all(r["ok"] is not False for r in self.rows)

    @property
    def proven(self) -> bool:
        """Whether every stage that has a step limit is proven stable: every such row is
        ``ok`` by a rigorous bound of its whole linearization (``leaves_out`` is ``None``).
        A network without any step limit (the ResNet control) is not proven."""
        limited = [r for r in self.rows if r["max_step"] is not None]
        return bool(limited) and all(r["ok"] and r["leaves_out"] is None for r in limited)

    def suggestions(self) -> dict[int, float]:
        """``{stage: suggested_step}`` for the stages that have a suggestion.

        Apply with ``net.set_solver(step_size=h, stage=k)`` (keeping each stage's method).
        """
        return {
            r["stage"]: r["suggested_step"] for r in self.rows if r["suggested_step"] is not None
        }

    def __str__(self) -> str:
        def fmt(v: Any) -> str:
            if v is None:
                return "-"
            if isinstance(v, bool):
                return "yes" if v else "NO"
            if isinstance(v, float):
                return f"{v:.4g}"
            return str(v)

        cells = [list(COLUMNS)] + [[fmt(r[c]) for c in COLUMNS] for r in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
        lines = ["  ".join(s.rjust(w) for s, w in zip(row, widths)) for row in cells]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Report({len(self.rows)} rows, ok={self.ok})"


def _stages(net: nn.Module) -> list[Stage]:
    if isinstance(net, Stage):
        return [net]
    stages = getattr(net, "stages", net)
    if isinstance(stages, Iterable):
        stages = list(stages)
        if stages and all(isinstance(s, Stage) for s in stages):
            return stages
    raise TypeError(
        f"report: expected a PDECNN, a Stage or a sequence of Stages, got {type(net).__name__}"
    )


def _sizes(input_shape: tuple[int, ...], n: int) -> list[tuple[int, int]]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) not in (3, 4) or min(shape) < 1:
        raise ValueError(
            f"report: input_shape must be (channels, height, width) or (batch, channels, "
            f"height, width), got {input_shape!r}"
        )
    h, w = shape[-2:]
    out = []
    for _ in range(n):
        out.append((h, w))
        # PDECNN pools 2×2 (floor) between stages; the last stage's pooling is global.
        h, w = h // 2, w // 2
    return out


def report(
    net: nn.Module,
    input_shape: tuple[int, ...],
    *,
    iters: int = 500,
    tol: float = 1e-6,
    seed: int = 0,
) -> Report:
    """Spectral bounds and step limits of every stage and step of a network.

    Each stage's right-hand side gives its :class:`Spectrum` (:meth:`neuralpde.RHS.spectrum`):
    the model problem of its linearization and, per parameter set, the spectral radii of
    its operators and the rate ``z`` they bound. The report turns that into step limits
    ``max_step = c / z`` with ``c`` the stage's method's limit on the model problem, so it
    works for every dynamics, the paper's and yours. For the paper's dynamics:

    For each parameter set θ_j of each stage (both layers of a Hamiltonian stage) the row
    holds ``rho``, an estimate of ``ρ(KᵀK)`` by power iteration on the actual operator —
    ``F.conv2d`` followed by ``F.conv_transpose2d`` with the same weight, at the stage's
    spatial size — and ``rho_upper``, a rigorous upper bound from the kernel's Fourier
    symbol (:func:`symbol_bound`); the true value lies in ``[rho, rho_upper]``.

    Step limits (linearization ``-Kᵀ D K`` with ``0 <= D <= I``, eigenvalues in
    ``[0, ρ]``; ``c`` is the method's limit on its unit model problem, computed from the
    solver itself):

    * parabolic, ``Y' = -KᵀDK Y``: a mode decays at rate ``λ <= ρ``; forward Euler is
      stable for ``h λ <= 2``, so ``max_step = c/ρ`` with ``c = 2`` (RK4: 2.785).
    * second order, ``Y'' = -KᵀDK Y``: a mode oscillates with ``ω = sqrt(λ)``; leapfrog
      is stable for ``h²ρ <= 4``: ``max_step = 2/sqrt(ρ)``.
    * Hamiltonian, ``Y' = -A Z``, ``Z' = B Y`` with ``A = K1ᵀD1K1``, ``B = K2ᵀD2K2``.
      Eliminating ``Z`` from a symplectic Euler (or Verlet) step gives
      ``Y_{j+1} - 2Y_j + Y_{j-1} = -h² A B Y_j``: a leapfrog for ``Y'' = -AB Y``. ``AB``
      is similar to the PSD ``A^½ B A^½``, so its eigenvalues ``ω²`` are real, ``>= 0``
      and ``<= ‖A‖‖B‖ <= ρ(K1ᵀK1) ρ(K2ᵀK2)``; the step is stable when ``h ω <= 2`` for
      all of them, hence ``max_step = 2/sqrt(ρ1 ρ2)``. The product bound (rather than
      ``ρ(AB)`` with ``D = I``) is used because it holds for every ``D1, D2``.
    * ResNet control, ``F = K2 σ(N(K1 Y))``: the linearization ``K2 D K1`` is not
      symmetric and may have eigenvalues with positive real part, for which no step size
      makes forward Euler non-growing; there is no step limit. ``rho`` is
      ``ρ((K2K1)ᵀ K2K1) = ‖K2K1‖²`` (``rho_upper`` bounds ``‖K2‖²‖K1‖²``, so a step grows
      a perturbation by at most ``1 + h sqrt(rho_upper)`` for any ``D``), and
      ``max_step``, ``ok``, ``suggested_step`` are ``None``.
    * the image filters (:class:`~neuralpde.HeatRHS`, ...): ``"dissipative"`` with the exact
      ``ρ(KᵀK)`` of the finite-difference gradient times the largest diffusivity.

    With ``interpolation="linear"`` the parameter sets are θ(t)'s knots. Between two knots
    a kernel is their convex combination and the spectral norm is convex, so
    ``ρ(K(t)ᵀK(t)) <= max`` of the two knots' values: the knots' rows bound every ``t``.
    The Hamiltonian rate is a product whose factors may peak at different knots, so there
    each factor is the largest over the knot and its neighbours
    (:meth:`~neuralpde.HamiltonianRHS.rates`).

    A dynamics whose ``spectrum`` returns ``None`` gets one row for the stage with
    ``step``, ``layer`` and every bound ``None``.

    What is covered: the layer without normalization or with an elementwise bias
    (``normalization="bias"``), exactly (for the parabolic one even nonlinearly: a step
    ``h <= 2/ρ`` is non-expansive). The paper's TV normalization ``N`` is nonlinear with a
    gain up to ``|scale|/sqrt(ε)`` near zero, so for such a layer (``normalized=True``) the
    bound describes ``K`` and ``D`` only, and ``leaves_out`` says so.

    Args:
        net: a :class:`~neuralpde.PDECNN`, a :class:`~neuralpde.Stage` or a sequence of
            stages.
        input_shape: the network input, ``(channels, height, width)`` or
            ``(batch, channels, height, width)``; stage ``k`` runs at ``height // 2**k``
            (the network pools 2×2 between stages). For a single stage, its own input.
        iters, tol, seed: of :func:`power_iteration`.

    Raises:
        TypeError: ``net`` holds no stages, or a ``spectrum`` returns something else than
            a :class:`Spectrum` or ``None``.
        ValueError: a malformed ``input_shape``.

    Returns:
        A :class:`Report`; each row has ``stage``, ``step`` (the parameter set),
        ``layer`` (the names of the spectrum's operators: ``"K"``; ``"K1"`` and ``"K2"``
        for the two Hamiltonian layers, which share one ``max_step``; ``"K2K1"`` for the
        ResNet control), ``arch`` (the registered name, else the class name),
        ``method``, ``h`` (the stage's step, ``None`` if adaptive), ``rho``,
        ``rho_upper``, ``max_step`` (from ``rho``), ``ok`` (``h <= c / z_upper``, the limit
        of the rigorous upper bound ``rho_upper``: a proof for what the bound covers;
        ``None`` without a bound), ``suggested_step``, ``normalized`` and ``leaves_out``
        (``None`` when the bound covers the whole linearization, else what it leaves out:
        the TV normalization). :attr:`Report.proven`: every limited row ``ok`` with nothing
        left out. ``suggested_step`` is per
        stage: the current ``h`` if it satisfies the rigorous bound from ``rho_upper``,
        else the largest ``T_cell / m`` (``m`` integer, ``T_cell`` the training step, so
        each step stays inside one cell of θ) that does.
    """
    stages = _stages(net)
    sizes = _sizes(input_shape, len(stages))
    rows: list[dict[str, Any]] = []
    for k, (stage, (height, width)) in enumerate(zip(stages, sizes)):
        rhs = stage.rhs
        arch = arch_name(type(rhs))
        h = stage.step_size if stage.kind != "adaptive" else None
        base = {"stage": k, "arch": arch, "method": stage.method, "h": h}
        spec = rhs.spectrum(height, width, iters=iters, tol=tol, seed=seed)
        if spec is None:
            # The dynamics declares no spectrum: one row that says so, no bound.
            rows.append({**dict.fromkeys(COLUMNS), **base})
            continue
        if not isinstance(spec, Spectrum):
            raise TypeError(
                f"report: {type(rhs).__name__}.spectrum must return a Spectrum or None, got "
                f"{type(spec).__name__}"
            )
        c = None if spec.model is None else _unit_limit(stage.method, spec.model)
        stage_rows: list[dict[str, Any]] = []
        safes: list[float | None] = []
        for j in range(spec.sets):
            max_step = safe = None
            if c is not None:
                lo, hi = spec.rates[j]
                max_step = c / lo if lo > 0 else math.inf
                safe = c / hi if hi > 0 else math.inf
            safes.append(safe)
            for name, values in spec.layers.items():
                rho, up = values[j]
                stage_rows.append(
                    {
                        **base,
                        "step": j,
                        "layer": name,
                        "rho": rho,
                        "rho_upper": up,
                        "max_step": max_step,
                        # Rigorous: the step against the limit of the upper bound.
                        "ok": None if (safe is None or h is None) else h <= safe,
                        "suggested_step": None,
                        "normalized": spec.normalized,
                        "leaves_out": LEAVES_OUT_NORMALIZATION if spec.normalized else None,
                    }
                )
        # No suggestion for adaptive steps, a dynamics without a step limit (the ResNet
        # control), or a method with no stable step at all on this dynamic (forward Euler
        # on an oscillation: safe == 0).
        if h is not None and all(s is not None for s in safes) and min(safes) > 0:
            safe = min(safes)
            if h <= safe:
                suggestion = h
            else:
                cell = rhs.step_size
                suggestion = cell / math.ceil(cell / safe)
            for r in stage_rows:
                r["suggested_step"] = suggestion
        rows.extend(stage_rows)
    return Report(rows)


def _check_kernel(w: Tensor, who: str) -> None:
    if not (isinstance(w, Tensor) and w.dim() == 5 and w.shape[-2] % 2 and w.shape[-1] % 2):
        raise ValueError(
            f"{who}: rho(K) needs a kernel (steps, c_out, c_in, kh, kw) with odd kh and kw, "
            f"got {getattr(w, 'shape', type(w).__name__)}"
        )


def _stability_model(rhs: nn.Module, height: int, width: int) -> str | None:
    """The unit model problem the right-hand side declares (:meth:`RHS.spectrum`)."""
    spectrum = rhs.spectrum(height, width, iters=1)
    return None if spectrum is None else spectrum.model


class StabilityPenalty(nn.Module):
    """A training penalty that keeps ``h·z`` inside the solver's stability limit.

    For every stage with a step limit (see :func:`report`) and every parameter set θ_j it
    adds ``relu(h z_j / c − margin)²``, where ``h`` is the stage's fixed step, ``c`` the
    method's limit on its unit model problem (forward Euler 2, RK4 2.785, symplectic
    Euler and leapfrog 2; in training mode with a :attr:`~neuralpde.Stage.training_mix`,
    the largest ``h / c`` of its solvers) and ``z_j`` the largest rate of the linearization, as the
    dynamics declares it in :meth:`~neuralpde.RHS.rates`: ``ρ(KᵀK)`` for a parabolic
    stage, ``sqrt(ρ(K1ᵀK1) ρ(K2ᵀK2))`` for a Hamiltonian one, ``sqrt(ρ(KᵀK))`` for a
    second-order one; a dynamics of the user's writes its own. ``ρ`` is the Rayleigh quotient
    ``‖K v‖²`` of a unit vector ``v`` kept between calls and advanced by ``iters`` steps of
    :func:`power_iteration` per call (the warm-started power iteration of spectral
    normalization, Miyato et al., ICLR 2018), so it costs a few convolutions per step and
    its gradient flows into ``K``. Stages of the ResNet control (no limit) and adaptive
    stages add nothing.

    The penalty acts on ``K`` only: the normalization's gain is not bounded (see the
    module docstring), so it is a regularizer towards stable steps, not a guarantee.

    Args:
        net: a :class:`~neuralpde.PDECNN`, a :class:`~neuralpde.Stage` or a sequence of
            stages.
        input_shape: the network input ``(channels, height, width)``; stage ``k`` runs at
            ``height // 2**k``.
        iters: power-iteration steps per call.
        margin: the fraction of the limit allowed, ``h z <= margin · c``.
        seed: of the vectors' random start.

    ``forward(net)`` -> a 0-d tensor (the sum over stages and parameter sets). The
    vectors are buffers (saved in ``state_dict``) and are started again when a stage's
    number of parameter sets changes (:meth:`~neuralpde.PDECNN.refine`).

    Raises:
        ValueError: ``iters`` < 1 or ``margin`` not positive; a dynamics whose
            :meth:`~neuralpde.RHS.spectrum` declares a step limit but that declares no
            :meth:`~neuralpde.RHS.rates`; ``rates`` asking ``rho`` for something that is
            not a kernel ``(steps, c_out, c_in, kh, kw)`` of odd size, or returning other
            than one rate per parameter set.
    """

    def __init__(
        self,
        net: nn.Module,
        input_shape: tuple[int, ...],
        *,
        iters: int = 2,
        margin: float = 1.0,
        seed: int = 0,
    ):
        super().__init__()
        if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
            raise ValueError(f"StabilityPenalty: iters must be a positive int, got {iters!r}")
        if not margin > 0:
            raise ValueError(f"StabilityPenalty: margin must be positive, got {margin!r}")
        self.iters, self.margin, self.seed = iters, float(margin), seed
        stages = _stages(net)
        self.sizes = _sizes(input_shape, len(stages))
        # The model of each stage's linearization, read once: it is a property of the
        # dynamics, not of the weights.
        self.models = [_stability_model(s.rhs, *hw) for s, hw in zip(stages, self.sizes)]
        # Each stage's kernels, in the order its rates(rho) asks for them: one
        # warm-started vector each, named after the parameter where the kernel is one.
        self.keys: list[list[str]] = []
        for k, stage in enumerate(stages):
            kernels = [] if self.models[k] is None else self._declared(stage, self.models[k])
            names = {id(p): n for n, p in stage.rhs.named_parameters()}
            keys = [self._key(k, names.get(id(w), f"kernel{i}")) for i, w in enumerate(kernels)]
            for key, w in zip(keys, kernels):
                self.register_buffer(key, self._start(w, *self.sizes[k]))
            self.keys.append(keys)

    @staticmethod
    def _key(k: int, name: str) -> str:
        return f"v{k}_{name.replace('.', '_')}"

    @staticmethod
    def _declared(stage: Stage, model: str) -> list[Tensor]:
        """The kernels ``stage.rhs.rates`` asks ``rho`` for, checked."""
        seen: list[Tensor] = []
        who = type(stage.rhs).__name__

        def record(w: Tensor) -> Tensor:
            _check_kernel(w, who)
            seen.append(w)
            return torch.ones(w.shape[0], dtype=w.dtype, device=w.device)

        if stage.rhs.rates(record) is None:
            raise ValueError(
                f"StabilityPenalty: {who} declares a step limit (its spectrum is "
                f"{model!r}) but no rates(rho), the differentiable rate the penalty bounds; "
                f"define rates(rho) on {who} (see neuralpde.RHS.rates), or train without "
                "the penalty (stability_penalty=0)"
            )
        return seen

    def _start(self, w: Tensor, height: int, width: int) -> Tensor:
        n, c = w.shape[0], w.shape[2]
        gen = torch.Generator().manual_seed(self.seed)
        v = torch.randn((n, c, height, width), generator=gen, dtype=torch.float64)
        v = v / v.reshape(n, -1).norm(dim=1).view(n, 1, 1, 1)
        return v.to(device=w.device, dtype=w.dtype)

    def _rho(self, k: int) -> Callable[[Tensor], Tensor]:
        """Stage ``k``'s ``rho(K)``: the Rayleigh quotient ``‖K v‖²`` of each kernel's own
        vector, advanced ``iters`` power-iteration steps (without gradient) first."""
        keys, calls = self.keys[k], [0]
        who = f"StabilityPenalty: stage {k}"

        def rho(w: Tensor) -> Tensor:
            i = calls[0]
            calls[0] += 1
            if i >= len(keys):
                raise ValueError(f"{who}: rates(rho) called rho {i + 1} times, {len(keys)} before")
            _check_kernel(w, who)
            v = getattr(self, keys[i])
            n, c = w.shape[0], w.shape[2]
            if v.shape[:2] != (n, c):  # θ(t) was prolongated: start again
                v = self._start(w, *self.sizes[k])
            with torch.no_grad():
                op = _conv_normal_op(w.detach())
                for _ in range(self.iters):
                    v = op(v)
                    v = v / v.reshape(n, -1).norm(dim=1).clamp_min(1e-30).view(n, 1, 1, 1)
            setattr(self, keys[i], v)
            return _conv(v, w).reshape(n, -1).pow(2).sum(dim=1)

        return rho

    def forward(self, net: nn.Module) -> Tensor:
        total = None
        for k, stage in enumerate(_stages(net)):
            model = self.models[k]
            if model is None:
                continue
            # Every discretization the stage trains with (each share of a training mix),
            # the one with the largest h/c: the penalty holds them all.
            limits = [
                (h, _unit_limit(method, model)) for method, h in stage._training_discretizations()
            ]
            limits = [(h, c) for h, c in limits if c]
            if not limits:
                continue
            h_over_c = max(h / c for h, c in limits)
            rate = stage.rhs.rates(self._rho(k))
            if not isinstance(rate, Tensor) or rate.shape != (stage.rhs.steps,):
                raise ValueError(
                    f"StabilityPenalty: {type(stage.rhs).__name__}.rates must return a tensor "
                    f"of shape ({stage.rhs.steps},), one rate per parameter set; got "
                    f"{getattr(rate, 'shape', type(rate).__name__)}"
                )
            term = torch.relu(h_over_c * rate - self.margin).pow(2).sum()
            total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return total


class RateBound(nn.Module):
    """The parametrization ``K -> K · min(1, sqrt(cap / ρ̄(K)))`` of a stack of kernels.

    ``ρ̄`` is :func:`symbol_rho`, a rigorous upper bound of ``ρ(KᵀK)`` at the stage's image
    size, so every kernel the parametrization returns has ``ρ(KᵀK) <= cap``, whatever the
    raw parameter holds: a kernel inside the bound is returned unchanged, one outside it is
    scaled onto it (spectral normalization, Miyato et al., ICLR 2018, with a rigorous
    norm; Convex Potential Layers, Meunier et al., ICML 2022, scale onto ``h = 2/‖K‖²``).
    Registered by :func:`constrain` through ``torch.nn.utils.parametrize``.

    Args:
        cap: the largest allowed ``ρ(KᵀK)``.
        height, width: the image size the kernels act on.

    ``forward(K)``: ``K (n, c_out, c_in, kh, kw)`` -> the same shape.

    ``fraction``: the fraction of the stability limit the cap stands for, where
    :func:`constrain` set it (``None`` otherwise); :func:`rate_fraction` reads it.
    """

    fraction: float | None = None

    def __init__(self, cap: float, height: int, width: int):
        super().__init__()
        if not (isinstance(cap, float) and math.isfinite(cap) and cap > 0):
            raise ValueError(f"RateBound: cap must be a positive finite float, got {cap!r}")
        self.cap, self.height, self.width = cap, int(height), int(width)

    def forward(self, kernels: Tensor) -> Tensor:
        # Warm-started from the last call: a training step moves the kernels a little, so
        # only the frequencies that may hold the maximum are solved again (same value).
        warm = self.__dict__.setdefault("_warm", {})
        rho = symbol_rho(kernels, self.height, self.width, warm=warm)
        # 1 - 1e-5: the product K·scale is rounded to the kernels' dtype; the margin keeps
        # ρ̄ of the rounded kernel below the cap.
        scale = (self.cap * (1 - 1e-5) / rho).clamp(max=1.0).sqrt()
        return kernels * scale.view(-1, *([1] * (kernels.dim() - 1)))

    def right_inverse(self, kernels: Tensor) -> Tensor:
        """The raw value stored when a kernel is assigned: the kernel itself (the bound
        applies when it is read)."""
        return kernels

    def extra_repr(self) -> str:
        return f"cap={self.cap:.6g}, size={self.height}x{self.width}"


def _rate_homogeneity(rhs: nn.Module) -> tuple[Tensor, Tensor]:
    """``(g1, p)``: the rates at ``ρ = 1`` for every kernel, and their degree in ``ρ``.

    The built-in dynamics' rates are ``ρ``, ``sqrt(ρ1 ρ2)`` and ``sqrt(ρ)``: positively
    homogeneous in the kernels' ``ρ`` and non-decreasing in each, so capping every ``ρ`` at
    one common value caps the rate.
    """

    def rates_at(value: float) -> Tensor:
        return rhs.rates(lambda w: torch.full((w.shape[0],), value, dtype=torch.float64))

    g1, g4, g16 = rates_at(1.0), rates_at(4.0), rates_at(16.0)
    p = torch.log(g4 / g1) / math.log(4.0)
    homogeneous = torch.allclose(g16, g4 * 4.0**p, rtol=1e-9)
    if not (homogeneous and torch.isfinite(p).all() and (p > 0).all() and torch.allclose(p, p[0])):
        raise ValueError(
            f"constrain: {type(rhs).__name__}.rates is not positively homogeneous in the "
            "kernels' rho (rates(4 rho) = 4**p rates(rho) with one p > 0), so capping each "
            "kernel cannot cap the rate; constrain its kernels yourself with "
            "neuralpde.stability.RateBound, or train without the bound (experiments.train: "
            "--rate-bound 0)"
        )
    return g1, p[0]


def rate_fraction(net: nn.Module) -> float | None:
    """The fraction of the stability limit :func:`constrain` held ``net``'s rates to (the
    largest, if stages differ), or ``None`` when no kernel is so parametrized
    (unconstrained, or constrained some other way).

    Args:
        net: any module (a :class:`~neuralpde.PDECNN`, a stage, a list of stages).
    """
    fractions = {m.fraction for m in net.modules() if isinstance(m, RateBound)}
    fractions.discard(None)
    return max(fractions) if fractions else None


# First-order training schemes and the second-order method of the same kind: one stage
# evaluation more per step (midpoint), or the same count with a symmetric splitting (Verlet).
_SECOND_ORDER = {"euler": "midpoint", "symplectic_euler": "verlet", "leapfrog": "verlet"}


def second_order_method(method: str) -> str | None:
    """The second-order method of the same kind as the training ``method``, or ``None``
    where there is none to suggest (the method is second order or higher already, or not
    a name :func:`solvers.methods` knows).

    A network trained with a first-order scheme at ``h = 1`` can learn to use its error
    and then sit away from its own flow; trained with a second-order method of the same
    kind it is much closer to it (Ott et al., "ResNet after all? Neural ODEs and their
    numerical solution", ICLR 2021; measured on CIFAR-10 in tutorial 02). Forward Euler ->
    explicit midpoint (RK2, same real stability interval ``[-2, 0]``); symplectic Euler and
    the leapfrog with its first-order start -> Störmer–Verlet (Hairer, Lubich & Wanner,
    *Geometric Numerical Integration*, 2006, §I.1.4).

    ``"leapfrog"`` maps to ``"verlet"``: the same two-step recursion with a second-order
    first step.
    """
    return _SECOND_ORDER.get(method) if isinstance(method, str) else None


def constrain(
    net: nn.Module, input_shape: tuple[int, ...], *, fraction: float = 0.5, raw_scale: float = 1.0
):
    """Make every stage stable by construction: ``h z_j <= fraction · c`` for every θ_j.

    For each stage whose dynamics declares a step limit (:meth:`~neuralpde.RHS.spectrum`)
    and its rates (:meth:`~neuralpde.RHS.rates`), every kernel the rates are computed from
    is parametrized by :class:`RateBound` (``torch.nn.utils.parametrize``), with the cap
    that puts the rate ``z_j`` at ``fraction`` of the limit ``c/h`` of the stage's method
    and step: forward Euler ``c = 2`` on a parabolic stage, symplectic Euler and leapfrog
    ``c = 2`` on an oscillatory one. The bound is rigorous (:func:`symbol_rho`), holds
    after every optimizer step whatever the optimizer does (the parametrization reads the
    raw parameter each forward pass), and covers the whole linearization where the
    normalization's gain is 1 (``normalization="bias"`` or ``"none"``); with the paper's
    TV normalization the rate describes ``K`` alone (:func:`report` says so). A step
    finer than the stage's at constrain time only moves ``h z`` further inside the limit.

    Raw kernels outside the bound are scaled onto it first (the network's function changes
    accordingly: constrain before training, not after), then multiplied by ``raw_scale``.
    Outside the bound the parametrization is invariant to the raw kernel's scale, so
    an SGD step moves the returned kernel by ``1/s²`` of what it would at raw scale
    ``s`` = 1 (the gradient is ``1/s`` as large, and a step of the raw kernel is ``1/s`` as
    large relative to it; under Adam, whose steps do not follow the gradient's size,
    ``1/s``): ``raw_scale`` sets the kernels' effective learning rate, the other
    parameters' untouched (the effective learning rate of scale-invariant weights: van
    Laarhoven, arXiv:1706.05350, 2017; Hoffer et al., NeurIPS 2018). The raw norm grows
    in training anyway (each step adds a component orthogonal to it), so the rate falls as
    it does; a raw scale above 1 starts it lower (at 1 the raw kernels sit just inside the
    bound, by the rounding margin, until a step leaves it). Kernels inside the bound, where the
    parametrization is the identity, are left as they are, so the network's function is
    the same for every ``raw_scale``.

    Rates must be positively homogeneous and non-decreasing in each kernel's ``ρ`` (the
    built-in dynamics' are): every kernel is capped at one common ``ρ``. Dynamics without a
    limit (the ResNet control), adaptive stages, and stages whose method has no stable step
    on their model (forward Euler on an oscillatory dynamics, which :func:`report` flags
    with ``max_step = 0``) are left as they are.

    Args:
        net: a :class:`~neuralpde.PDECNN`, a :class:`~neuralpde.Stage` or a sequence of
            stages, in the scheme it will be trained with (method and step).
        input_shape: the network input ``(channels, height, width)``; stage ``k`` runs at
            ``height // 2**k``. The bound holds at that size.
        fraction: of the method's limit, in ``(0, 1]``.
        raw_scale: where the raw kernels start, as a multiple (``>= 1``) of their bounded
            value: ``1`` on the bound, ``2`` a quarter of SGD's learning rate for them.

    Returns:
        ``net``, in place. The raw kernels are
        ``<theta>.parametrizations.weight.original`` in ``named_parameters`` and
        ``state_dict``: load a checkpoint of a constrained network into a network
        constrained the same way.

    Raises:
        ValueError: ``fraction`` outside ``(0, 1]``; ``raw_scale`` below 1 or not finite
            (below 1 would put a kernel inside the bound, where the scale is no longer
            a learning rate but a smaller kernel); a stage already constrained; a
            dynamics that declares a limit but no rates, whose rates are not homogeneous,
            or that asks ``rho`` for a tensor that is not a kernel of its
            :class:`~neuralpde.TimeWeights`.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise ValueError(f"constrain: fraction must be a number in (0, 1], got {fraction!r}")
    if not 0 < fraction <= 1:
        raise ValueError(f"constrain: fraction must be in (0, 1], got {fraction!r}")
    if (
        isinstance(raw_scale, bool)
        or not isinstance(raw_scale, (int, float))
        or not 1 <= raw_scale < math.inf
    ):
        raise ValueError(
            f"constrain: raw_scale must be a finite number >= 1 (1 starts the raw kernels on "
            f"the bound), got {raw_scale!r}"
        )
    stages = _stages(net)
    sizes = _sizes(input_shape, len(stages))
    for k, (stage, (height, width)) in enumerate(zip(stages, sizes)):
        rhs = stage.rhs
        model = _stability_model(rhs, height, width)
        if model is None or stage.kind == "adaptive":
            continue
        c = _unit_limit(stage.method, model)
        if not c:
            continue
        kernels = StabilityPenalty._declared(stage, model)
        owners = {
            id(getattr(w, name)): (w, name)
            for w in rhs.thetas()
            for name in w.names
            if not parametrize.is_parametrized(w, name)
        }
        targets = []
        for kernel in kernels:
            if id(kernel) not in owners:
                if any(parametrize.is_parametrized(w) for w in rhs.thetas()):
                    raise ValueError(f"constrain: stage {k} is constrained already")
                raise ValueError(
                    f"constrain: {type(rhs).__name__}.rates asks rho for a tensor that is not "
                    "a parameter of one of its TimeWeights; pass the kernel parameter "
                    "itself (e.g. rho(self.theta.weight))"
                )
            targets.append(owners[id(kernel)])
        g1, p = _rate_homogeneity(rhs)
        rate_cap = fraction * c / stage.step_size
        cap = float((rate_cap / g1).min() ** (1.0 / p))
        for w, name in targets:
            bound = RateBound(cap, height, width)
            bound.fraction = float(fraction)
            with torch.no_grad():
                # Raw kernels outside the bound start on it (times raw_scale), not far
                # outside: the parametrization is scale invariant there, and a raw kernel
                # many times too large would learn at a fraction of the learning rate.
                # Inside the bound it is the identity: a scaled kernel would be another one.
                raw = getattr(w, name)
                bounded = bound(raw)
                outside = (bounded != raw).flatten(1).any(1)
                scale = torch.where(outside, float(raw_scale), 1.0).to(raw.dtype)
                raw.copy_(bounded * scale.view(-1, *([1] * (raw.dim() - 1))))
            parametrize.register_parametrization(w, name, bound)
    return net
