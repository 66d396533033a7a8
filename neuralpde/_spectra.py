"""Spectral estimates of convolutions, and the ``Spectrum`` a right-hand side declares.

Kept apart from :mod:`neuralpde.stability` so that a right-hand side can compute its own
spectrum (:meth:`neuralpde.RHS.spectrum`) without importing the report that reads it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

MODELS = ("dissipative", "oscillatory")


@dataclass(frozen=True)
class Spectrum:
    """The frozen-coefficient linearization of a stage, per parameter set θ_j.

    What :func:`neuralpde.stability.report` reads from :meth:`neuralpde.RHS.spectrum`. A
    step ``h`` of a method is stable on a mode of rate ``z`` when ``h z <= c``, where ``c``
    is the method's limit on the unit model problem (forward Euler: 2 on
    ``"dissipative"``; symplectic Euler and leapfrog: 2 on ``"oscillatory"``).

    Attributes:
        model: ``"dissipative"`` (a mode ``y' = -z y``: parabolic dynamics),
            ``"oscillatory"`` (``q' = -z p``, ``p' = z q``: hyperbolic dynamics), or
            ``None``: no step limit exists (e.g. the non-symmetric ResNet control).
        layers: ``{layer: [(rho, rho_upper) per parameter set]}``: for each linear
            operator ``K``, an estimate (a lower bound) and a rigorous upper bound of
            ``ρ(KᵀK)``; see :func:`kernel_spectrum`.
        rates: ``[(z, z_upper) per parameter set]``: the largest rate ``z`` of the
            linearization computed from ``rho`` and from ``rho_upper``; ``None`` when
            ``model`` is ``None``.
        normalized: whether a nonlinear normalization sits between ``K`` and ``σ`` (the
            bound then describes ``K`` and ``σ'`` only, not the normalization's gain).

    Raises:
        ValueError: on construction, an unknown ``model``, an empty ``layers``, or lists
            of different lengths.
    """

    model: str | None
    layers: dict[str, list[tuple[float, float]]]
    rates: list[tuple[float, float]] | None
    normalized: bool

    def __post_init__(self) -> None:
        if self.model is not None and self.model not in MODELS:
            raise ValueError(f"Spectrum: model must be one of {MODELS} or None, got {self.model!r}")
        if not self.layers:
            raise ValueError("Spectrum: layers must name at least one operator")
        sizes = {len(v) for v in self.layers.values()}
        if self.rates is not None:
            sizes.add(len(self.rates))
        if len(sizes) != 1 or 0 in sizes:
            raise ValueError(
                f"Spectrum: every layer (and rates) needs one entry per parameter set, got "
                f"lengths {sorted(sizes)}"
            )
        if (self.model is None) != (self.rates is None):
            raise ValueError("Spectrum: give rates exactly when a model is given")

    @property
    def sets(self) -> int:
        """The number of parameter sets."""
        return len(next(iter(self.layers.values())))


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

    Raises:
        ValueError: a kernel that holds NaN or Inf.
    """
    w = weight.detach().to(torch.float64)
    _check_finite(w.unsqueeze(0), "symbol_bound", one=True)
    sym = torch.fft.fft2(w, s=(height + 1, width + 1))
    sym = sym.permute(2, 3, 0, 1)
    return float(torch.linalg.matrix_norm(sym, ord=2).max()) ** 2


def _check_kernels(kernels: Tensor, who: str) -> None:
    if not isinstance(kernels, Tensor) or kernels.dim() != 5 or kernels.shape[-2:] != (3, 3):
        shape = tuple(kernels.shape) if isinstance(kernels, Tensor) else type(kernels).__name__
        raise ValueError(
            f"{who}: expected 3×3 kernels (n, c_out, c_in, 3, 3), one per parameter set, "
            f"got {shape}"
        )


def _check_finite(kernels: Tensor, who: str, one: bool = False) -> None:
    """A ValueError naming the parameter sets whose kernels hold NaN or Inf: LAPACK's
    eigensolvers would otherwise fail with a convergence error that names no kernel. The
    message says "NaN or Inf", which the trainer's non-finite guard (``--nan``) reads."""
    bad = ~torch.isfinite(kernels.reshape(kernels.shape[0], -1)).all(dim=1)
    if bad.any():
        sets = bad.nonzero().flatten().tolist()
        what = "the kernel holds" if one else f"the kernels of parameter set(s) {sets} hold"
        raise ValueError(
            f"{who}: {what} NaN or Inf, and a "
            "non-finite operator has no norm to bound; such weights come from a diverged "
            "optimizer step: restore the last good checkpoint, or lower the learning rate"
        )


def _grouped(weights: Tensor) -> Tensor:
    # n kernels (n, c_out, c_in, kh, kw) as one grouped convolution on (1, n·c_in, h, w).
    n, c_out, c_in, kh, kw = weights.shape
    return weights.reshape(n * c_out, c_in, kh, kw)


def _same_padding(weights: Tensor) -> tuple[int, int]:
    # Zero padding that keeps the image size for odd kernels (1x1: none, 3x3: one pixel).
    return weights.shape[-2] // 2, weights.shape[-1] // 2


def _conv(v: Tensor, weights: Tensor) -> Tensor:
    """``K_i v_i`` for ``v (n, c_in, h, w)`` and the ``n`` kernels ``(n, c_out, c_in, kh, kw)``
    (odd ``kh``, ``kw``, zero-padded to the same size), as ``(n, c_out, h, w)``."""
    n, c_in = weights.shape[0], weights.shape[2]
    x = F.conv2d(
        v.reshape(1, n * c_in, *v.shape[2:]),
        _grouped(weights),
        padding=_same_padding(weights),
        groups=n,
    )
    return x.reshape(n, -1, *v.shape[2:])


def _conv_normal_op(weights: Tensor) -> Callable[[Tensor], Tensor]:
    """``v (n, c_in, h, w) -> K_iᵀ K_i v_i`` for ``n`` kernels ``(n, c_out, c_in, kh, kw)``
    of odd size."""
    n = weights.shape[0]
    w, pad = _grouped(weights), _same_padding(weights)

    def op(v: Tensor) -> Tensor:
        x = _conv(v, weights).reshape(1, -1, *v.shape[2:])
        # conv_transpose2d with the same weight and padding is the exact adjoint of conv2d.
        x = F.conv_transpose2d(x, w, padding=pad, groups=n)
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


def kernel_spectrum(
    kernels: Tensor | tuple[Tensor, ...],
    height: int,
    width: int,
    *,
    iters: int = 500,
    tol: float = 1e-6,
    seed: int = 0,
) -> list[tuple[float, float]]:
    """``(rho, rho_upper)`` of ``ρ(KᵀK)`` for each parameter set of a zero-padded convolution.

    ``rho`` is :func:`power_iteration` on the actual operator (``F.conv2d`` followed by
    ``F.conv_transpose2d`` with the same weight, at ``height × width``), a lower bound that
    converges to ``ρ``; ``rho_upper`` is :func:`symbol_bound`, rigorous.

    Args:
        kernels: ``(n, c_out, c_in, 3, 3)``, the 3×3 kernels of ``n`` parameter sets; or a
            pair ``(K1, K2)`` of such tensors for the composite ``K = K2 K1`` (then
            ``rho_upper`` bounds ``‖K2‖²‖K1‖²``).
        height, width: the image size the convolution acts on.
        iters, tol, seed: of :func:`power_iteration`.

    Returns:
        ``[(rho, rho_upper)]``, one pair per parameter set.

    Raises:
        ValueError: kernels of another shape, or holding NaN or Inf (naming the set).
    """
    pair = isinstance(kernels, tuple)
    ks = [k.detach() for k in (kernels if pair else (kernels,))]
    for k in ks:
        _check_kernels(k, "kernel_spectrum")
        _check_finite(k, "kernel_spectrum")  # names the set; symbol_bound sees one at a time
    if pair and (len(ks) != 2 or ks[0].shape[0] != ks[1].shape[0]):
        raise ValueError("kernel_spectrum: a composite needs two kernel stacks of equal length")
    op = _composite_normal_op(*ks) if pair else _conv_normal_op(ks[0])
    n, c_in = ks[0].shape[0], ks[0].shape[2]
    with torch.no_grad():
        rho = power_iteration(
            op,
            (n, c_in, height, width),
            iters=iters,
            tol=tol,
            seed=seed,
            dtype=ks[0].dtype,
            device=ks[0].device,
        )
    up = [math.prod(symbol_bound(k[j], height, width) for k in ks) for j in range(n)]
    return list(zip(rho.tolist(), up))


# Eager under torch.compile: once per forward pass, on kernels, not on activations, and
# inductor generates no code for its complex FFTs and eigensolvers.
@torch.compiler.disable
def symbol_rho(kernels: Tensor, height: int, width: int, *, warm: dict | None = None) -> Tensor:
    """A rigorous upper bound of ``ρ(KᵀK) = ‖K‖²`` per kernel, differentiable in the kernels.

    The bound of :func:`symbol_bound` for kernels of any odd size ``kh × kw``: the
    zero-padded "same" convolution on ``height × width`` is a restriction of the circular
    one on the ``(height + kh//2) × (width + kw//2)`` torus, whose singular values are those
    of the kernel's symbol ``Ŵ(ω)`` at that torus's frequencies (Sedghi, Gupta & Long,
    "The singular values of convolutional layers", ICLR 2019). The value is the largest
    eigenvalue of ``Ŵ(ω)ᴴŴ(ω)`` over the frequencies, computed in float64 without
    gradient; the gradient is that of ``‖Ŵ(ω*) v‖²`` at the maximizing frequency ``ω*``
    and top singular vector ``v``, which equals the value and is the derivative of the
    largest singular value where it is simple (the device of spectral normalization,
    Miyato et al., ICLR 2018, with a rigorous value instead of a power-iteration estimate).

    Args:
        kernels: ``(n, c_out, c_in, kh, kw)``, odd ``kh`` and ``kw``.
        height, width: the image size the convolutions act on.
        warm: a dict this function keeps between calls on kernels that change a little
            (a parametrization's, from one training step to the next): the last call's
            kernels and per-frequency upper bounds, per device. With it, only the
            frequencies whose bound (Weyl: ``‖Ŵ'(ω)‖ <= ‖Ŵ(ω)‖ + ‖Ŵ'(ω) - Ŵ(ω)‖_F``)
            reaches the largest exact value are solved exactly, and the value is the same
            maximum (to rounding). An empty dict starts it; kernels of another shape or
            another image size restart it; inside a ``torch.func`` transform it is not
            used.

    Returns:
        ``(n,)`` in the kernels' dtype: ``max_ω λ_max(Ŵ(ω)ᴴŴ(ω))`` per kernel.

    Raises:
        ValueError: kernels that hold NaN or Inf (the message names the parameter sets;
            not checked inside a ``torch.func`` transform, where a check that branches on
            values cannot run).
    """
    n, c_out, c_in, kh, kw = kernels.shape
    size = (height + kh // 2, width + kw // 2)
    with torch.no_grad():
        # Ŵ(-ω) is the conjugate of Ŵ(ω): the half spectrum of rfft2 holds every value.
        # A copy even in float64: the warm start keeps it, and an optimizer updates the
        # parameter in place (a view would always show zero drift).
        k64 = kernels.detach().to(torch.float64, copy=True)
        if torch._C._are_functorch_transforms_active():
            warm = None  # a vmapped tensor kept past its transform would break later calls
        else:  # (inside a transform, a check that branches on values cannot run)
            _check_finite(k64, "symbol_rho")
        sym = _symbols(k64, size)
        lam, best, vec = _top_eigen(sym, k64, size, warm)
        # The frequencies of the rfft2 grid, in the order of the flattened (N1, N2 // 2 + 1).
        f1 = torch.fft.fftfreq(size[0], dtype=torch.float64)
        f2 = torch.fft.rfftfreq(size[1], dtype=torch.float64)
        w1, w2 = f1[best // f2.numel()], f2[best % f2.numel()]
        a = torch.arange(kh, dtype=torch.float64)
        b = torch.arange(kw, dtype=torch.float64)
        phase = torch.exp(
            -2j
            * math.pi
            * (w1.view(n, 1, 1) * a.view(1, kh, 1) + w2.view(n, 1, 1) * b.view(1, 1, kw))
        )
        value = lam
    # Ŵ(ω*) v, differentiable in the kernels: (n, c_out).
    wv = torch.einsum("noiab,nab,ni->no", kernels.to(torch.complex128), phase, vec)
    surrogate = wv.abs().pow(2).sum(dim=1)
    # The exact value, with the surrogate's gradient (they agree to round-off).
    return (value + (surrogate - surrogate.detach())).to(kernels.dtype)


# Relative slack on a carried upper bound: covers the rounding of the bound's own
# arithmetic (a few float64 ulps), so a frequency is skipped only when it surely lies below.
_WARM_SLACK = 1e-12
# Absolute slack on a squared drift, in units of tr(ΔKᵀΔK): see _drift.
_DRIFT_SLACK = 1e-11


def _phases(size: tuple[int, int], kh: int, kw: int, device: torch.device) -> Tensor:
    """``e^{-2πi(j₁a/N₁ + j₂b/N₂)}`` as ``(F, kh·kw, 2)`` float64 (real and imaginary
    parts) at the half spectrum of the ``size`` torus, in the order of the flattened
    ``rfft2`` output: ``Ŵ(ω_f) = Σ_ab K[:, :, a, b] e_ab(ω_f)``. Kept per torus."""
    key = (size, kh, kw, str(device))
    table = _PHASES.get(key)
    if table is None:
        j1 = torch.arange(size[0], dtype=torch.float64, device=device) / size[0]
        j2 = torch.arange(size[1] // 2 + 1, dtype=torch.float64, device=device) / size[1]
        a = torch.arange(kh, dtype=torch.float64, device=device).view(1, 1, -1, 1)
        b = torch.arange(kw, dtype=torch.float64, device=device)
        turns = j1.view(-1, 1, 1, 1) * a + j2.view(1, -1, 1, 1) * b
        # Whole turns dropped before the 2π: no large arguments to cos and sin.
        angle = -2 * math.pi * torch.remainder(turns, 1.0).reshape(-1, kh * kw)
        table = torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1)
        if len(_PHASES) >= 64:  # a few tori per network: bounded all the same
            _PHASES.clear()
        _PHASES[key] = table
    return table


_PHASES: dict[tuple, Tensor] = {}


def _drift(dk: Tensor, size: tuple[int, int]) -> Tensor:
    """An upper bound of ``‖ΔŴ(ω)‖_F`` at every frequency of the ``size`` torus, ``(n, F)``,
    for the kernel differences ``dk`` ``(n, c_out, c_in, kh, kw)`` float64.

    ΔŴ is the symbol of ΔK (the transform is linear), and ``‖ΔŴ(ω)‖_F² = eᴴ G e`` with
    ``G = ΔKᵀΔK`` over the taps (``kh·kw × kh·kw``, real symmetric) and ``e`` the taps'
    phases at ω: one small product per kernel, not a transform of the whole spectrum.
    The form's rounding, a few ulps of its largest possible value ``kh·kw·tr G``, is
    covered by ``1e-11·tr G`` under the root (an overestimate by at most
    ``sqrt(1e-11)·‖ΔK‖_F``), so the result is never below the exact drift.
    """
    n, kh, kw = dk.shape[0], dk.shape[-2], dk.shape[-1]
    d = dk.reshape(n, -1, kh * kw)
    g = d.mT @ d
    re, im = _phases(size, kh, kw, dk.device).unbind(-1)  # (F, kh·kw) each
    sq = torch.einsum("fk,nkl,fl->nf", re, g, re) + torch.einsum("fk,nkl,fl->nf", im, g, im)
    trace = g.diagonal(dim1=1, dim2=2).sum(dim=1, keepdim=True)
    return (sq.clamp(min=0) + _DRIFT_SLACK * trace).sqrt()


def _symbols(k64: Tensor, size: tuple[int, int]) -> Tensor:
    """``Ŵ(ω)`` at the half spectrum of the ``size`` torus: ``(n, F, c_out, c_in)``."""
    n, c_out, c_in = k64.shape[:3]
    sym = torch.fft.rfft2(k64, s=size)
    return sym.permute(0, 3, 4, 1, 2).reshape(n, -1, c_out, c_in)


def _top_eigen(
    sym: Tensor, k64: Tensor, size: tuple[int, int], warm: dict | None
) -> tuple[Tensor, Tensor, Tensor]:
    """``(λ, j, v)`` per kernel: the largest eigenvalue of ``ŴᴴŴ`` over the frequencies,
    the frequency index where it is reached and its eigenvector. ``sym``: ``(n, F, c_out,
    c_in)`` complex128, the symbols of ``k64`` on the ``size`` torus. ``warm``: see
    :func:`symbol_rho`; it holds, per device, one tuple (the kernels, the torus, an upper
    bound of λ_max at every frequency, the last maximizers), read once and replaced whole, so
    replicas sharing it in threads (``nn.DataParallel``) never mix two calls' parts."""
    n, nf = sym.shape[:2]
    key = str(sym.device)
    last = None if warm is None else warm.get(key)
    upper = None
    if last is not None and last[0].shape == k64.shape and last[1] == size:
        k_last, _, u_last, best_last = last
        # ‖Ŵ'‖ <= ‖Ŵ‖ + ‖Ŵ' - Ŵ‖ <= sqrt(u) + ‖ΔŴ‖_F, u an upper bound of λ_max(ŴᴴŴ).
        drift = _drift(k64 - k_last, size)
        # clamp: a rank-deficient Ŵ has eigenvalues of -1e-17 or so, whose root is NaN, and
        # a NaN bound would never be solved again.
        upper = (u_last.clamp(min=0).sqrt() + drift).square() * (1 + _WARM_SLACK)
        if not torch.isfinite(upper).all():
            upper = None  # an overflow (kernels near float64's range): solve every frequency
    if upper is None:
        lam = torch.linalg.eigvalsh(_gram(sym))[..., -1]
    else:
        # The likeliest maxima first (the largest bound, the last maximizer), exactly; then
        # every frequency whose bound reaches the largest exact value found for its kernel.
        lam = torch.full((n, nf), -math.inf, dtype=torch.float64, device=sym.device)
        rows = torch.arange(n, device=sym.device)
        first = torch.zeros((n, nf), dtype=torch.bool, device=sym.device)
        first[rows, upper.argmax(dim=1)] = True
        first[rows, best_last] = True
        lam[first] = torch.linalg.eigvalsh(_gram(sym[first]))[..., -1]
        need = (upper >= lam.amax(dim=1, keepdim=True)) & ~first
        if need.any():
            lam[need] = torch.linalg.eigvalsh(_gram(sym[need]))[..., -1]
    best = lam.argmax(dim=1)
    rows = torch.arange(n, device=sym.device)
    vec = torch.linalg.eigh(_gram(sym[rows, best])).eigenvectors[..., -1]
    if warm is not None:
        # Exact where solved, the carried bound elsewhere: an upper bound at every frequency.
        bound = lam if upper is None else torch.where(lam > -math.inf, lam, upper)
        warm[key] = (k64, size, bound, best)
    return lam.amax(dim=1), best, vec


def _gram(sym: Tensor) -> Tensor:
    return sym.mH @ sym
