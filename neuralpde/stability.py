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

Use :func:`report`; :func:`power_iteration` and :func:`symbol_bound` are the two
estimates it is built on (a lower and an upper bound of ``ρ(KᵀK)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import solvers

from ._rhs import HamiltonianRHS, ParabolicRHS, ResNetRHS, SecondOrderRHS
from ._stage import Stage

__all__ = ["Report", "power_iteration", "report", "symbol_bound"]

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
)

_ARCH = {
    ParabolicRHS: "parabolic",
    HamiltonianRHS: "hamiltonian",
    SecondOrderRHS: "second_order",
    ResNetRHS: "resnet",
}


def power_iteration(
    op: Callable[[Tensor], Tensor],
    shape: tuple[int, ...],
    *,
    iters: int = 500,
    tol: float = 1e-6,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Largest eigenvalues of symmetric positive semi-definite operators by power iteration.

    Args:
        op: ``v -> A v`` for ``v`` of shape ``shape = (n, ...)``, acting independently on
            each of the ``n`` slices ``v[i]`` (``n`` problems solved at once); ``A`` must be
            symmetric PSD (e.g. ``v -> Kᵀ(K v)``) and is never formed as a matrix.
        shape: ``(n, *vector_shape)``, e.g. ``(n, c, height, width)``.
        iters: at most this many applications of ``op``.
        tol: stop when every Rayleigh quotient changes by less than ``tol`` relative.
        seed: seed of the random start (the estimate is deterministic).
        dtype, device: of the iterate (default: torch's default dtype, the CPU); they must
            match what ``op`` expects.

    Returns:
        ``(n,)`` float64: the Rayleigh quotients ``vᵀAv`` of the last unit iterates, *lower*
        bounds of ``ρ(A)`` that converge to it (:func:`symbol_bound` gives an upper bound).
    """
    dtype = torch.get_default_dtype() if dtype is None else dtype
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(shape, generator=gen, dtype=dtype).to(device)
    n = shape[0]

    def unit(x: Tensor) -> Tensor:
        norms = x.reshape(n, -1).norm(dim=1).clamp_min(torch.finfo(dtype).tiny)
        return x / norms.view(n, *([1] * (x.dim() - 1)))

    v = unit(v)
    lam = torch.zeros(n, dtype=torch.float64)
    for _ in range(iters):
        w = op(v)
        new = (v * w).reshape(n, -1).sum(dim=1).to(torch.float64).cpu()
        v = unit(w)
        done = bool(((new - lam).abs() <= tol * new.abs()).all())
        lam = new
        if done:
            break
    return lam


def _grouped(weights: Tensor) -> Tensor:
    # n kernels (n, c, c, 3, 3) as one grouped convolution on (1, n·c, h, w).
    n, c_out, c_in = weights.shape[:3]
    return weights.reshape(n * c_out, c_in, 3, 3)


def _conv_normal_op(weights: Tensor) -> Callable[[Tensor], Tensor]:
    """``v (n, c, h, w) -> K_iᵀ K_i v_i`` for the ``n`` kernels ``weights (n, c, c, 3, 3)``."""
    n, c = weights.shape[:2]
    w = _grouped(weights)

    def op(v: Tensor) -> Tensor:
        x = v.reshape(1, n * c, *v.shape[2:])
        # conv_transpose2d with the same weight and padding is the exact adjoint of conv2d.
        x = F.conv2d(x, w, padding=1, groups=n)
        x = F.conv_transpose2d(x, w, padding=1, groups=n)
        return x.reshape(v.shape)

    return op


def _composite_normal_op(w1: Tensor, w2: Tensor) -> Callable[[Tensor], Tensor]:
    """``v -> (K2 K1)ᵀ (K2 K1) v`` per slice, for kernels ``(n, c, c, 3, 3)``."""
    n, c = w1.shape[:2]
    g1, g2 = _grouped(w1), _grouped(w2)

    def op(v: Tensor) -> Tensor:
        x = v.reshape(1, n * c, *v.shape[2:])
        x = F.conv2d(F.conv2d(x, g1, padding=1, groups=n), g2, padding=1, groups=n)
        x = F.conv_transpose2d(x, g2, padding=1, groups=n)
        x = F.conv_transpose2d(x, g1, padding=1, groups=n)
        return x.reshape(v.shape)

    return op


def symbol_bound(weight: Tensor, height: int, width: int) -> float:
    """An upper bound of ``ρ(KᵀK) = ‖K‖²`` for the zero-padded 3×3 convolution ``K``.

    The zero-padded convolution on ``height × width`` is a restriction of the circular one
    on the ``(height+1) × (width+1)`` torus (the extra row and column hold the zeros the
    padding reads), so ``‖K‖`` is at most the largest singular value of the kernel's
    symbol ``Ŵ(ω) = Σ W[:, :, a, b] e^{-i(ω₁a + ω₂b)}`` over that torus's frequencies.

    Args:
        weight: ``(c_out, c_in, 3, 3)``.
        height, width: the image size ``K`` acts on.

    Returns:
        ``max_ω σ_max(Ŵ(ω))²`` (float).
    """
    w = weight.detach().to(torch.float64)
    sym = torch.fft.fft2(w, s=(height + 1, width + 1))
    sym = sym.permute(2, 3, 0, 1)
    return float(torch.linalg.matrix_norm(sym, ord=2).max()) ** 2


def _model_step(method: str, model: str, z: Tensor) -> Tensor:
    """Spectral radius of one step (size 1) of ``method`` on the unit model problems.

    ``"dissipative"``: ``y' = -z y`` (a parabolic mode). ``"oscillatory"``: ``q' = -z p``,
    ``p' = z q`` (a hyperbolic mode of frequency ``z``). ``z``: ``(m,)`` float64.
    """
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    kind = solvers.methods()[method]
    if model == "dissipative":
        y1 = solvers.odeint(
            lambda _, y: -z * y, torch.ones_like(z), t, method=method, step_size=1.0
        )
        return y1[-1].abs()
    # Columns of the 2×2 one-step matrix: start from (1, 0) and from (0, 1), batched.
    q0 = torch.stack([torch.ones_like(z), torch.zeros_like(z)])
    p0 = torch.stack([torch.zeros_like(z), torch.ones_like(z)])
    f_q = lambda _, p: -z * p  # noqa: E731
    f_p = lambda _, q: z * q  # noqa: E731
    if kind == "symplectic":
        q, p = solvers.odeint((f_q, f_p), (q0, p0), t, method=method, step_size=1.0)
    else:
        q, p = solvers.odeint(
            lambda _, s: (f_q(_, s[1]), f_p(_, s[0])), (q0, p0), t, method=method, step_size=1.0
        )
    a, b, c, d = q[-1][0], q[-1][1], p[-1][0], p[-1][1]
    tr, det = a + d, a * d - b * c
    disc = tr * tr - 4 * det
    complex_pair = det.clamp(min=0).sqrt()
    real_pair = (tr.abs() + disc.clamp(min=0).sqrt()) / 2
    return torch.where(disc < 0, complex_pair, real_pair)


@cache
def _unit_limit(method: str, model: str) -> float | None:
    """Largest ``z`` with a non-growing step on the unit model for all ``0 < z' <= z``.

    Computed from the solver itself: forward Euler gives 2 (dissipative), RK4 2.785...,
    symplectic Euler, leapfrog and Verlet give 2 (oscillatory: ``h ω <= 2``).
    ``None`` for adaptive and multistep methods, which have no fixed one-step map.
    """
    kind = solvers.methods().get(method)
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
        """Whether every row that has a bound satisfies it (rows with ``ok=None`` skip)."""
        return all(r["ok"] is not False for r in self.rows)

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


def _estimates(rhs, arch, height, width, iters, tol, seed) -> dict[str, list[tuple[float, float]]]:
    """``{layer: [(rho, rho_upper) per parameter set]}`` for one stage."""

    def both(op, kernels):
        n, c = kernels[0].shape[:2]
        rho = power_iteration(
            op,
            (n, c, height, width),
            iters=iters,
            tol=tol,
            seed=seed,
            dtype=kernels[0].dtype,
            device=kernels[0].device,
        )
        up = [math.prod(symbol_bound(w[j], height, width) for w in kernels) for j in range(n)]
        return list(zip(rho.tolist(), up))

    with torch.no_grad():
        if arch == "hamiltonian":
            w1, w2 = rhs.theta_q.weight.detach(), rhs.theta_p.weight.detach()
            return {"K1": both(_conv_normal_op(w1), [w1]), "K2": both(_conv_normal_op(w2), [w2])}
        if arch == "resnet":
            w1, w2 = rhs.theta.weight1.detach(), rhs.theta.weight2.detach()
            return {"K2K1": both(_composite_normal_op(w1, w2), [w1, w2])}
        w = rhs.theta.weight.detach()
        return {"K": both(_conv_normal_op(w), [w])}


def report(
    net: nn.Module,
    input_shape: tuple[int, ...],
    *,
    iters: int = 500,
    tol: float = 1e-6,
    seed: int = 0,
) -> Report:
    """Spectral bounds and step limits of every stage and step of a network.

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
      a perturbation by at most ``1 + h sqrt(rho_upper)`` for any ``D``), and ``max_step``, ``ok``, ``suggested_step`` are ``None``.

    What is covered: the unnormalized layer exactly (for the parabolic one even
    nonlinearly: a step ``h <= 2/ρ`` is non-expansive). The normalization ``N`` of the
    trained layers is nonlinear with a gain up to ``|scale|/sqrt(ε)`` near zero, so for a
    normalized layer (``normalized=True``) the bound describes ``K`` and ``D`` only.

    Args:
        net: a :class:`~neuralpde.PDECNN`, a :class:`~neuralpde.Stage` or a sequence of
            stages.
        input_shape: the network input, ``(channels, height, width)`` or
            ``(batch, channels, height, width)``; stage ``k`` runs at ``height // 2**k``
            (the network pools 2×2 between stages). For a single stage, its own input.
        iters, tol, seed: of :func:`power_iteration`.

    Returns:
        A :class:`Report`; each row has ``stage``, ``step`` (the parameter set),
        ``layer`` (``"K"``; ``"K1"`` and ``"K2"`` for the two Hamiltonian layers, which share
        one ``max_step``; ``"K2K1"`` for the ResNet control), ``arch``,
        ``method``, ``h`` (the stage's step, ``None`` if adaptive), ``rho``,
        ``rho_upper``, ``max_step`` (from ``rho``), ``ok`` (``h <= max_step``; ``None``
        without a bound), ``suggested_step`` and ``normalized``. ``suggested_step`` is per
        stage: the current ``h`` if it satisfies the rigorous bound from ``rho_upper``,
        else the largest ``T_cell / m`` (``m`` integer, ``T_cell`` the training step, so
        each step stays inside one cell of θ) that does.
    """
    stages = _stages(net)
    sizes = _sizes(input_shape, len(stages))
    rows: list[dict[str, Any]] = []
    for k, (stage, (height, width)) in enumerate(zip(stages, sizes)):
        rhs = stage.rhs
        arch = _ARCH.get(type(rhs))
        if arch is None:
            raise TypeError(f"report: stage {k} has an unknown right-hand side {type(rhs)}")
        h = stage.step_size if stage.kind != "adaptive" else None
        model = "dissipative" if arch == "parabolic" else "oscillatory"
        c = None if arch == "resnet" else _unit_limit(stage.method, model)
        stage_rows: list[dict[str, Any]] = []
        per_layer = _estimates(rhs, arch, height, width, iters, tol, seed)
        n_sets = len(next(iter(per_layer.values())))
        for j in range(n_sets):
            est = {name: values[j] for name, values in per_layer.items()}
            max_step = safe = None
            if c is not None:
                if arch == "parabolic":
                    ((lo, hi),) = est.values()
                elif arch == "second_order":
                    ((lo, hi),) = est.values()
                    lo, hi = math.sqrt(lo), math.sqrt(hi)
                else:
                    lo = math.sqrt(est["K1"][0] * est["K2"][0])
                    hi = math.sqrt(est["K1"][1] * est["K2"][1])
                max_step = c / lo if lo > 0 else math.inf
                safe = c / hi if hi > 0 else math.inf
            for name, (rho, up) in est.items():
                stage_rows.append(
                    {
                        "stage": k,
                        "step": j,
                        "layer": name,
                        "arch": arch,
                        "method": stage.method,
                        "h": h,
                        "rho": rho,
                        "rho_upper": up,
                        "max_step": max_step,
                        "ok": None if (max_step is None or h is None) else h <= max_step,
                        "suggested_step": None,
                        "_safe": safe,
                        "normalized": arch == "resnet" or getattr(rhs, "normalize", True),
                    }
                )
        safes = [r.pop("_safe") for r in stage_rows]
        # No suggestion for adaptive steps, the ResNet control, or a method with no stable
        # step at all on this dynamic (forward Euler on an oscillation: safe == 0).
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
